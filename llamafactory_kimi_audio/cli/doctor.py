"""``kimi-audio-lf doctor``: thin wrapper over ``llamafactory_kimi_audio.doctor.checks`` (a table, or ``--json``)."""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import EXIT_ENV, EXIT_OK

HELP = "check versions, the LLaMA-Factory start-up hook and patches, a checkpoint, GPU and tools"
MARKS = {"ok": ("✓", "ok"), "fail": ("✗", "FAIL"), "optional": ("!", "warn")}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", metavar="DIR", help="also check this Kimi-Audio checkpoint directory")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
    from ..doctor.checks import all_required_ok, as_json, run_checks

    checks = run_checks(args.model, progress=_progress)
    if args.json:
        print(json.dumps(as_json(checks), indent=2, ensure_ascii=False))
    else:
        print("\n".join(render(checks, unicode=_can_print("✓✗"))))
    return EXIT_OK if all_required_ok(checks) else EXIT_ENV


def _progress(line: str) -> None:
    """Stages on stderr (stdout stays the table or the JSON): the fresh-interpreter probe takes a while."""
    print(f"doctor: {line} …", file=sys.stderr, flush=True)


def render(checks: list, unicode: bool = True) -> list[str]:
    """One line per check (mark, name, detail), the fix under each failure, and a verdict line."""
    width = max(len(c.name) for c in checks)
    lines = []
    for check in checks:
        state = "ok" if check.ok else ("fail" if check.required else "optional")
        mark = MARKS[state][0 if unicode else 1]
        lines.append(f"{mark} {check.name:<{width}}  {check.detail}")
        if check.fix and not check.ok:
            lines.append(f"  {' ' * width}  fix: {check.fix}")
    failed = [c for c in checks if c.required and not c.ok]
    optional = sum(1 for c in checks if not c.required and not c.ok)
    note = f" ({optional} optional item(s) unavailable)" if optional else ""
    lines.append(f"{len(failed)} required check(s) failed{note}" if failed else f"all required checks passed{note}")
    return lines


def _can_print(text: str) -> bool:
    try:
        text.encode(sys.stdout.encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        return False
    return True
