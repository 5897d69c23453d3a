"""``kimi-audio-lf demo``: the README's first command — a real fine-tune on CPU from nothing, before/after CER.

A failing step prints the last lines of its log and exits with that step's exit code.
"""

from __future__ import annotations

import argparse

# The README ("Two commands") gives the same time range: keep them together.
DURATION = "10 to 60 minutes on 2 busy cores, less on an idle machine"
HELP = f"tiny Kimi-Audio + synthetic speech → convert → llamafactory-cli train → evaluate (CPU: {DURATION})"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..demo import DEFAULT_THREADS

    parser.add_argument("--out-dir", default="demo_out", help="everything goes here (default: demo_out)")
    parser.add_argument("--n-train", type=int, default=600, help="training utterances (default: 600)")
    parser.add_argument("--n-test", type=int, default=40, help="held-out test utterances (default: 40)")
    parser.add_argument("--max-steps", type=int, default=600, help="training steps of batch 16 (default: 600)")
    parser.add_argument(
        "--lang", choices=["en", "zh", "mixed"], default="en", help="vocabulary of the synthetic speech (default: en)"
    )
    parser.add_argument(
        "--backend",
        choices=["auto", "espeak", "tones"],
        default="auto",
        help="speech: auto = espeak-ng if installed, else the tone-word fallback (default: auto)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the checkpoint, corpus and training (default: 0)")
    parser.add_argument(
        "--threads",
        type=int,
        default=DEFAULT_THREADS,
        help=f"CPU threads of every step; fixed so the figure does not depend on the core count "
        f"(default: {DEFAULT_THREADS}; 0 = torch's default)",
    )
    parser.add_argument("--silence", action="store_true", help="control run: every audio replaced by silence")


def run(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    result = run_demo(
        args.out_dir,
        n_train=args.n_train,
        n_test=args.n_test,
        max_steps=args.max_steps,
        backend=args.backend,
        lang=args.lang,
        seed=args.seed,
        silence=args.silence,
        threads=args.threads,
    )
    timings = ", ".join(f"{name} {sec:.0f}s" for name, sec in result.seconds.items())
    print(f"{result.summary()}\n  steps: {timings}")
    return 0
