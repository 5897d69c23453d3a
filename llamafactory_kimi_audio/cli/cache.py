"""``kimi-audio-lf cache stats|verify|gc``: thin wrapper over ``data.cache_admin`` and ``data.cache_gc``."""

from __future__ import annotations

import argparse
import os

from ..errors import EXIT_BAD_INPUT, EXIT_OK

HELP = "inspect, verify or compact the feature cache (hours, entries, bytes, bytes per audio hour, orphans)"
EXAMPLES = """examples:
  kimi-audio-lf cache stats                       # every encoder identity under $KIMI_AUDIO_FEATURE_CACHE
  kimi-audio-lf cache verify --cache /data/feats  # read every entry and index back; exit 2 if anything is damaged
  kimi-audio-lf cache gc --dry-run                # name what compaction would remove and free; remove nothing
A directory counts as a cache only when it holds <16-hex-digit encoder id>/shards/ folders; gc removes only those
folders' shard files, never anything else, and refuses while a precompute or training run uses the cache (--wait:
wait for them).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EXAMPLES
    parser.add_argument("action", choices=("stats", "verify", "gc"), help="what to do")
    parser.add_argument(
        "--cache",
        metavar="DIR",
        help="cache root (default: $KIMI_AUDIO_FEATURE_CACHE or ~/.cache/llamafactory_kimi_audio/features)",
    )
    parser.add_argument("--model", metavar="DIR", help="only the entries of this checkpoint's audio encoders")
    parser.add_argument("--dry-run", action="store_true", help="gc: name what would be removed and freed; remove none")
    parser.add_argument("--wait", action="store_true", help="gc: wait for precompute / training using the cache")


def run(args: argparse.Namespace) -> int:
    from ..data.features.cache_admin import cache_identities
    from ..data.features.feature_cache import encoder_identity
    from ..data.features.precompute import default_cache_dir

    root = os.path.abspath(os.path.expanduser(args.cache)) if args.cache else default_cache_dir()
    names = cache_identities(root, encoder_identity(args.model) if args.model else None)
    if args.action == "gc":
        return _gc(root, names, args.dry_run, args.wait)
    return _inspect(root, names, verify=args.action == "verify")


def _inspect(root: str, names: list[str], verify: bool) -> int:
    from ..data.features.cache_admin import inspect

    problems = 0
    for identity in names:
        report = inspect(root, identity, verify)
        print("\n".join(report.verify_lines() if verify else report.lines()), flush=True)
        problems += report.problems
    if problems:
        print(f"{problems} problem(s); fix: re-run `kimi-audio-lf precompute` on the dataset (it rewrites them)")
    return EXIT_BAD_INPUT if problems else EXIT_OK


def _gc(root: str, names: list[str], dry_run: bool, wait: bool) -> int:
    from ..data.features.cache_gc import gc

    for identity in names:
        todo, freed = gc(root, identity, dry_run=dry_run, wait=wait)
        report = todo.report
        print("\n".join(report.lines()))
        for line in report.index_problems:
            print(f"  note: {line}")
        removals = todo.removal_lines(dry_run) or ["  gc: nothing to remove (every shard holds only live entries)"]
        print("\n".join(removals))
        verb = "would free" if dry_run else "freed"
        print(
            f"  gc: {verb} {freed} bytes ({len(report.orphans)} orphans and {len(report.damaged)} damaged entries "
            f"{'would be dropped; --dry-run: nothing removed' if dry_run else 'dropped'})",
            flush=True,
        )
    return EXIT_OK
