"""``kimi-audio-lf make-tiny DIR``: a tiny random Kimi-Audio checkpoint in the official layout."""

from __future__ import annotations

import argparse

HELP = "write a deterministic tiny random Kimi-Audio checkpoint (official file layout) for tests and demos"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", help="output directory (created)")
    parser.add_argument(
        "--preset", choices=["tiny", "full"], default="tiny", help="full = configs of the real shapes only"
    )
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    from ..models.tiny import make_tiny_checkpoint

    info = make_tiny_checkpoint(args.directory, preset=args.preset, seed=args.seed)
    what = f"{info.num_parameters:,} parameters" if info.num_parameters else "configs only (real shapes)"
    print(
        f"make-tiny: {info.path} ({args.preset}: {what}, vocab {info.vocab_size}, base vocab {info.num_base_tokens})"
    )
    return 0
