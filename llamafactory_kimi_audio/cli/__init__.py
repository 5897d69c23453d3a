"""``kimi-audio-lf``: one command, thin subcommands over the libraries in ``data/``, ``eval/`` and ``models/``.

Each subcommand module exposes ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``. Known errors become
one line on stderr and a documented exit code (the table in ``_errors.py``); ``--debug`` or ``KIMI_AUDIO_DEBUG=1``
shows the traceback instead. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .. import settings
from ._errors import EXIT_INTERRUPTED, exit_code_for

DESCRIPTION = (
    "Kimi-Audio fine-tuning tools for LLaMA-Factory: speech recognition (ASR) and speech output (TTS, spoken "
    "replies) — data conversion, feature cache, evaluation, spoken answers, checks and a CPU demo"
)
SUBCOMMANDS = {
    "convert": "convert",
    "precompute": "precompute",
    "cache": "cache",
    "evaluate": "evaluate",
    "doctor": "doctor",
    "make-tiny": "make_tiny",
    "synth": "synth",
    "demo": "demo",
    "respond": "respond",
    "webui-args": "webui_args",
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole parser. With ``command`` (the one argv names), only that subcommand's module is imported: the
    others get a bare entry, which that argv never reaches (the modules of convert and evaluate alone import numpy,
    tqdm and jiwer)."""
    parser = argparse.ArgumentParser(prog="kimi-audio-lf", description=DESCRIPTION)
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in SUBCOMMANDS.items():
        if command is not None and name != command:
            sub.add_parser(name)
            continue
        module = importlib.import_module(f"{__name__}.{module_name}")
        sub_parser = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(sub_parser)
        sub_parser.set_defaults(_run=module.run)
    return parser


def named_command(argv: list[str]) -> str | None:
    """The subcommand ``argv`` names (its first word that is not an option: ``--debug`` takes no value), if any."""
    first = next((arg for arg in argv if not arg.startswith("-")), None)
    return first if first in SUBCOMMANDS else None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(named_command(argv)).parse_args(argv)
    debug = args.debug or settings.enabled("KIMI_AUDIO_DEBUG")
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("kimi-audio-lf: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:
        code = exit_code_for(err)
        if debug or code is None:
            raise
        print(f"kimi-audio-lf {args.command}: error: {err}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
