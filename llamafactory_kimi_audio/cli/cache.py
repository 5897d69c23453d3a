"""``kimi-audio-lf cache stats|verify|gc``: thin wrapper over ``llamafactory_kimi_audio.data.cache_admin``."""

from __future__ import annotations

import argparse
import os

from ..errors import EXIT_BAD_INPUT, EXIT_OK, InputError

HELP = "inspect, verify or compact the feature cache (hours, entries, bytes, bytes per audio hour, orphans)"
EXAMPLES = """examples:
  kimi-audio-lf cache stats                       # every encoder identity under $KIMI_AUDIO_FEATURE_CACHE
  kimi-audio-lf cache verify --cache /data/feats  # read every entry back; exit 2 if any is damaged
  kimi-audio-lf cache gc --dry-run                # what compaction would free (orphans, dead bytes, old layout)
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
    parser.add_argument("--dry-run", action="store_true", help="gc: report what would be freed, delete nothing")


def run(args: argparse.Namespace) -> int:
    from ..data import cache_admin
    from ..data.feature_cache import encoder_identity
    from ..data.precompute import default_cache_dir

    root = os.path.abspath(os.path.expanduser(args.cache)) if args.cache else default_cache_dir()
    if not os.path.isdir(root):
        raise InputError(f"{root}: no feature cache there; pass --cache DIR or set KIMI_AUDIO_FEATURE_CACHE")
    names = [encoder_identity(args.model)] if args.model else cache_admin.identities(root)
    damaged = 0
    for identity in names:
        if args.action == "gc":
            report, freed = cache_admin.gc(root, identity, dry_run=args.dry_run)
            print("\n".join(report.lines()))
            verb = "would free" if args.dry_run else "freed"
            print(f"  gc: {verb} {freed} bytes ({len(report.orphans)} orphans, {len(report.damaged)} damaged)")
            continue
        report = cache_admin.scan(root, identity, verify=args.action == "verify")
        print("\n".join(report.lines()))
        damaged += len(report.damaged)
    if damaged:
        print(f"{damaged} damaged entries; fix: re-run `kimi-audio-lf precompute` on the dataset (it rewrites them)")
    return EXIT_BAD_INPUT if damaged else EXIT_OK
