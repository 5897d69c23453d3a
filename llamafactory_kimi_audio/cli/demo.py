"""``kimi-audio-lf demo``: the README's first command — a real fine-tune on CPU from nothing, before/after CER."""

from __future__ import annotations

import argparse

HELP = "tiny Kimi-Audio + synthetic speech → convert → llamafactory-cli train → evaluate (CPU, a few minutes)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out-dir", default="demo_out", help="everything goes here (default: demo_out)")
    parser.add_argument("--n-train", type=int, default=600)
    parser.add_argument("--n-test", type=int, default=40)
    parser.add_argument("--max-steps", type=int, default=600, help="training steps of batch 16")
    parser.add_argument("--lang", choices=["en", "zh", "mixed"], default="en")
    parser.add_argument("--backend", choices=["auto", "espeak", "tones"], default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--silence", action="store_true", help="control run: every audio replaced by silence")


def run(args: argparse.Namespace) -> int:
    from ..demo import run_demo
    from ._errors import EXIT_ENV, CliError

    try:
        result = run_demo(
            args.out_dir, n_train=args.n_train, n_test=args.n_test, max_steps=args.max_steps, backend=args.backend,
            lang=args.lang, seed=args.seed, silence=args.silence,
        )  # fmt: skip
    except RuntimeError as err:  # a step failed; the message names its log and shows the tail
        raise CliError(str(err), EXIT_ENV) from err
    timings = ", ".join(f"{name} {sec:.0f}s" for name, sec in result.seconds.items())
    print(f"{result.summary()}\n  steps: {timings}")
    return 0
