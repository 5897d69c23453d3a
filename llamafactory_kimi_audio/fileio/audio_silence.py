"""Digitally silent clips that carry a transcript: the check and its messages, shared by precompute, training and
evaluate (each runs it where it reads the samples anyway). ``convert`` reads the samples of compressed and float
clips only (``audio_verify``) and warns ``silent_audio`` about those; a PCM WAV's it does not read (speed).

A clip is *silent* when the peak of its 16 kHz mono samples (what the model hears) is below ``SILENT_PEAK`` = 1e-4,
i.e. -80 dBFS: all zeros, or at most 3 steps of 16-bit PCM (dither, a muted input, a recorder that never started).
Speech, even quiet far-field speech, peaks tens of dB higher. Paired with a non-empty transcript, such a clip teaches
the model to write text for silence (hallucinated words on pauses and muted microphones). A silent clip with an
EMPTY transcript is a no-speech example and is never flagged.

``KIMI_AUDIO_SILENT_CLIPS`` (settings.py) says what happens: ``warn`` (default; one summary line naming the first
clips and their rows), ``error`` (exit 2, one line naming the first clip) or ``off``. ``precompute --silent-clips``
overrides it for one run.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import InputError

SILENT_PEAK = 1e-4  # -80 dBFS: 3.3 steps of 16-bit PCM (dither is 1-2 steps; quiet speech peaks near -40 dBFS)
SILENT_DBFS = -80
SETTING = "KIMI_AUDIO_SILENT_CLIPS"
SETTING_SWITCH = SETTING + "="  # how messages outside precompute say to change the mode
MODES = ("off", "warn", "error")
SHOWN_CLIPS = 3  # clip names in a message (then "and N more")
FIX = (
    "the model would learn to write text for silence; fix or replace the audio, give the row an empty transcript "
    "(a no-speech example) or delete the row"
)
EVAL_FIX = (
    "no model can transcribe silence, so they count as errors in CER/WER; fix or replace the audio, or remove them "
    "from the test set (an empty reference is not scored)"
)

Clip = tuple[str, str | None]  # (audio, where its transcript is: "train.json line 3"; None when unknown)


class SilentClipError(InputError):
    """A silent clip with a non-empty transcript while ``KIMI_AUDIO_SILENT_CLIPS=error`` (exit 2)."""


def is_silent(wave: np.ndarray) -> bool:
    """Whether every sample of ``wave`` is within ``SILENT_PEAK`` of zero (one pass over the clip)."""
    wave = np.asarray(wave)
    return wave.size == 0 or float(np.max(np.abs(wave))) < SILENT_PEAK


def silent_clips_mode(override: str | None = None) -> str:
    """``override`` (a CLI flag) or ``KIMI_AUDIO_SILENT_CLIPS``: off, warn or error."""
    from .. import settings

    if override is not None:
        if override not in MODES:
            raise InputError(f"--silent-clips must be one of {', '.join(MODES)}, got {override!r}")
        return override
    return str(settings.get(SETTING))


def shown_clips(clips: Sequence[Clip], total: int | None = None) -> str:
    """``a.wav (train.json line 3), b.wav (…) and 4 more``; ``total``: the count when ``clips`` holds the first few."""
    names = [f"{audio} ({where})" if where else audio for audio, where in clips[:SHOWN_CLIPS]]
    total = len(clips) if total is None else total
    more = f" and {total - len(names)} more" if total > len(names) else ""
    return ", ".join(names) + more


def warning_line(clips: Sequence[Clip], switch: str, kept: str = "", total: int | None = None, fix: str = FIX) -> str:
    """The one-line summary of warn mode. ``switch`` tells how to change the mode (``--silent-clips`` or
    ``KIMI_AUDIO_SILENT_CLIPS=``), ``kept`` what was done with the clips (e.g. ``; cached anyway``), ``total`` the
    count when ``clips`` holds only the first few, ``fix`` what to do."""
    total = len(clips) if total is None else total
    count = f"{total} silent clip{'s' if total != 1 else ''}"
    shown = shown_clips(clips, total)
    return (
        f"warning: {count} (peak below {SILENT_DBFS} dBFS) with a non-empty transcript{kept}: {shown}; "
        f"{fix}; {switch}error stops on them, {switch}off hides this"
    )


def error_line(clips: Sequence[Clip], switch: str, done: str = "", fix: str = FIX) -> str:
    """The one-line error of error mode, naming the first clips; ``done`` says what happened to the others."""
    audio, where = clips[0]
    row = f" ({where})" if where else ""
    more = f" ({len(clips) - 1} more: {shown_clips(clips[1:])})" if len(clips) > 1 else ""
    return (
        f"{audio}{row}: silent clip (peak below {SILENT_DBFS} dBFS) with a non-empty transcript{more}{done}; "
        f"{fix} ({switch}warn keeps such clips with a warning)"
    )
