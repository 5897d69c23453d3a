"""Segments: a sample may be a time span of a longer file, written ``PATH#t=BEGIN,END`` (W3C Media Fragments,
seconds). ``media_value`` writes it, ``split_media`` / ``split_fragment`` read it, and ``span_frames`` is the one
rule turning seconds into frames (Kaldi's ``extract-segments``), shared by every stage.
"""

from __future__ import annotations

import math
import os
import re

from .audio_errors import SpanError

_FRAGMENT = re.compile(r"^(?P<path>.+)#t=(?P<begin>\d+(?:\.\d+)?),(?P<end>\d+(?:\.\d+)?)$")
MAX_OVERSHOOT = 0.5  # seconds an end may pass the end of the file and be cut there (Kaldi's extract-segments)


def media_value(path: str, begin: float | None = None, end: float | None = None) -> str:
    """The ``audios`` entry of a file (``begin is None``) or of its span [begin, end) in seconds."""
    if begin is None or end is None:
        return path
    return f"{path}#t={float(begin)!r},{float(end)!r}"


def split_media(value: str) -> tuple[str, float | None, float | None]:
    """``"a.opus#t=1.5,3.25"`` → ``("a.opus", 1.5, 3.25)``; a plain path (or an existing file whose name contains
    ``#t=``) → ``(value, None, None)``."""
    match = _FRAGMENT.match(value) if "#t=" in value else None
    if match is None or os.path.isfile(value):
        return value, None, None
    return match["path"], float(match["begin"]), float(match["end"])


def split_fragment(value: str) -> tuple[str, str]:
    """``"a.opus#t=1.5,3.25"`` → ``("a.opus", "#t=1.5,3.25")`` (text kept as written); ``(value, "")`` otherwise."""
    path, begin, _ = split_media(value)
    return (path, value[len(path) :]) if begin is not None else (value, "")


def span_frames(sample_rate: int, file_frames: int, begin: float, end: float) -> tuple[int, int, bool]:
    """``(start, stop, clamped)`` frames of [begin, end) s in a file of ``file_frames`` frames at ``sample_rate``.

    Kaldi's rule: ``int(t * sr + 0.5)``; an end up to MAX_OVERSHOOT past the file's end is cut there (clamped),
    further is a SpanError, as are non-finite (nan, inf), negative, reversed and empty spans.
    """
    if not (math.isfinite(begin) and math.isfinite(end)):
        raise SpanError(f"span [{begin}, {end}] s is not finite", "nonfinite_span")
    if begin < 0 or end < 0:
        raise SpanError(f"negative span [{begin}, {end}] s", "negative_span")
    if begin > end:
        raise SpanError(f"reversed span: begin {begin} s is after end {end} s", "reversed_span")
    start, stop = int(begin * sample_rate + 0.5), int(end * sample_rate + 0.5)
    length = file_frames / sample_rate
    if stop > file_frames and end - length > MAX_OVERSHOOT:
        raise SpanError(f"span [{begin}, {end}] s ends past the end of the file ({length:.3f} s)", "segment_past_end")
    clamped = stop > file_frames
    stop = min(stop, file_frames)
    if stop <= start:
        raise SpanError(f"empty span [{begin}, {end}] s (no audio frame in it)", "empty_span")
    return start, stop, clamped
