"""Unreadable test clips: skipped with their reason (counted in the report), or the end of the run with ``strict``.

A clip is checked twice: its header before the model loads (missing file, unreadable header, WAV cut short: cheap,
so a broken set fails before a 16 GB load with ``strict``), then its samples when it is decoded for the model (a
compressed file cut short is only found then). A test set none of whose clips can be read is an error: nothing
scored is not a result.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from ..errors import InputError
from ..fileio.audio import probe
from ..fileio.audio_errors import AudioError

T = TypeVar("T")
SKIP_HINT = "fix or remove these clips (pass --root if relative paths resolve against another folder)"


@dataclass(frozen=True)
class Unreadable:
    """A test utterance not scored because one of its clips cannot be read."""

    id: str
    audio: str
    reason: str  # the audio reader's one line: names the file and the fix

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def clip_problem(path: str | None) -> str | None:
    """Why the clip at ``path`` cannot be read, judged from its header; None when it looks readable."""
    if not path:
        return "the record has no audio file"
    try:
        probe(path)
    except AudioError as err:
        return str(err)
    return None


def first_problem(paths: Sequence[str | None]) -> tuple[str, str] | None:
    """``(path, reason)`` of the first unreadable clip of an utterance (e.g. a question and its target audio)."""
    for path in paths:
        problem = clip_problem(path)
        if problem is not None:
            return path or "", problem
    return None


def split_readable(
    items: Sequence[T], clips_of: Callable[[T], Sequence[str | None]], id_of: Callable[[T], str], strict: bool
) -> tuple[list[T], list[Unreadable]]:
    """``(items whose clips all look readable, the others)``; raises with ``strict`` or when no item is readable."""
    kept: list[T] = []
    skipped: list[Unreadable] = []
    for item in items:
        problem = first_problem(clips_of(item))
        if problem is None:
            kept.append(item)
        else:
            skipped.append(Unreadable(id_of(item), *problem))
    check_skipped(skipped, len(items), strict)
    return kept, skipped


def check_skipped(skipped: Sequence[Unreadable], total: int, strict: bool) -> None:
    """InputError (exit 2) when ``strict`` and a clip was unreadable, or when every clip was."""
    if not skipped:
        return
    first = skipped[0]
    if strict:
        raise strict_error(first, len(skipped) - 1)
    if len(skipped) >= total:
        raise InputError(
            f"none of the {total} test clips can be read, nothing to score (e.g. utterance {first.id}: {first.reason})"
        )


def strict_error(first: Unreadable, more: int) -> InputError:
    others = f" ({more} more unreadable)" if more else ""
    return InputError(
        f"test utterance {first.id}: {first.reason}{others}; --strict stops at an unreadable clip "
        "(without it such clips are skipped and listed in summary.json)"
    )


def skipped_warning(skipped: Sequence[Unreadable]) -> str:
    """The stderr line of a run that skipped clips."""
    examples = "; ".join(f"{u.id}: {u.reason}" for u in skipped[:2])
    return (
        f"{len(skipped)} test utterances skipped, their audio cannot be read (e.g. {examples}); {SKIP_HINT} "
        "(summary.json and report.md list them all; --strict makes this an error)"
    )
