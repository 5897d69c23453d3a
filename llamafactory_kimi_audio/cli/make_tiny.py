"""``kimi-audio-lf make-tiny DIR``: a tiny random Kimi-Audio checkpoint in the official layout."""

from __future__ import annotations

import argparse
import os
import shutil

from ..errors import InputError

HELP = "write a deterministic tiny random Kimi-Audio checkpoint (official file layout) for tests and demos"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", help="output directory (created; must not exist unless --force)")
    parser.add_argument(
        "--preset", choices=["tiny", "full"], default="tiny", help="full = configs of the real shapes only"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed of the weights (default: 0)")
    parser.add_argument("--force", action="store_true", help="replace DIRECTORY if it already exists")
    parser.add_argument(
        "--detokenizer",
        action="store_true",
        help="also write a tiny random audio_detokenizer/ + vocoder/ (official layout): respond then writes a .wav",
    )


def run(args: argparse.Namespace) -> int:
    from ..models.tiny import make_tiny_checkpoint

    _clear(args.directory, args.force)
    info = make_tiny_checkpoint(args.directory, preset=args.preset, seed=args.seed, detokenizer=args.detokenizer)
    what = f"{info.num_parameters:,} parameters" if info.num_parameters else "configs only (real shapes)"
    print(
        f"make-tiny: {info.path} ({args.preset}: {what}, vocab {info.vocab_size}, base vocab {info.num_base_tokens})"
    )
    return 0


def _clear(directory: str, force: bool) -> None:
    """Refuse to write into an existing non-empty directory (it may be a real checkpoint) unless ``force``."""
    if os.path.isfile(directory):
        raise InputError(f"{directory}: is a file; choose a directory path")
    if not os.path.isdir(directory) or not os.listdir(directory):
        return
    if not force:
        raise InputError(f"{directory}: already exists and is not empty; choose another path or pass --force")
    shutil.rmtree(directory)
