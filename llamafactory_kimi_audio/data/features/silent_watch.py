"""Silent clips with a transcript met by a training run, where the collator reads their samples anyway.

The collator sees token ids, not dataset rows: an input clip has a transcript when the assistant turn after it holds
a token before its ``text_eos`` (``answered_audios``). A clip served whole from the feature cache is not read, so not
checked here (``precompute`` checked it when it encoded it).

Two lines per rank at most, however many DataLoader workers, epochs and steps meet the clips: ``enable()`` (the
training process, before its DataLoader workers fork) puts the count, a bitmap of the clip names already counted and
the first names in shared memory, so that every worker adds to the same tally. The first silent clip is named at
once; at exit the rank prints the total and the first names. ``KIMI_AUDIO_SILENT_CLIPS=error`` stops at the first
one instead (exit 2).
"""

from __future__ import annotations

import atexit
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from ...fileio.audio_silence import (
    SETTING_SWITCH,
    SHOWN_CLIPS,
    SilentClipError,
    error_line,
    is_silent,
    silent_clips_mode,
    warning_line,
)
from ...logs import get_logger, process_rank

BITMAP_BYTES = 1 << 13  # 65536 name hashes: a repeated clip (next epoch, another worker) is counted once
NAMES_BYTES = 4096
logger = get_logger(__name__)


class _Tally:
    """Shared by the training process and its forked DataLoader workers (``multiprocessing`` shared memory)."""

    def __init__(self) -> None:
        import multiprocessing

        self.lock = multiprocessing.Lock()
        self.count = multiprocessing.RawValue("q", 0)
        self.seen = multiprocessing.RawArray("B", BITMAP_BYTES)
        self.names = multiprocessing.RawArray("c", NAMES_BYTES)  # the first names, newline-separated

    def add(self, name: str) -> int:
        """Count ``name`` once; the new count, or 0 when it was counted before."""
        bit = zlib.crc32(name.encode("utf-8", "surrogateescape")) % (BITMAP_BYTES * 8)
        with self.lock:
            if self.seen[bit // 8] & (1 << bit % 8):
                return 0
            self.seen[bit // 8] |= 1 << bit % 8
            self.count.value += 1
            shown = self.shown()
            if len(shown) < SHOWN_CLIPS:
                data = "\n".join([*shown, name]).encode("utf-8", "surrogateescape")[: NAMES_BYTES - 1]
                self.names.value = data
            return int(self.count.value)

    def shown(self) -> list[str]:
        text = self.names.value.decode("utf-8", "surrogateescape")
        return text.split("\n") if text else []


_tally: _Tally | None = None


def enable() -> None:
    """Watch this training process and the DataLoader workers it forks later; the rank's total is printed at exit."""
    global _tally
    if _tally is None and silent_clips_mode() != "off":
        _tally = _Tally()
        atexit.register(_summary, _tally)


def watching() -> bool:
    return _tally is not None


def note(audios: Sequence[str], waves: Sequence[np.ndarray], answered: Sequence[bool] | None) -> None:
    """Count (or, in error mode, refuse) the batch's silent clips that have a transcript."""
    if _tally is None or answered is None:
        return
    for audio, wave, has_text in zip(audios, waves, answered):
        if not has_text or not is_silent(wave):
            continue
        if silent_clips_mode() == "error":
            raise SilentClipError(error_line([(audio, None)], SETTING_SWITCH, " in a training batch"))
        if _tally.add(audio) == 1:
            kept = f"{_rank()}; training on it (the run's end sums up the others)"
            logger.warning("%s", warning_line([(audio, None)], SETTING_SWITCH, kept))


def _summary(tally: _Tally) -> None:
    total = int(tally.count.value)
    if total:
        clips = [(name, None) for name in tally.shown()]
        logger.warning("%s", warning_line(clips, SETTING_SWITCH, f"{_rank()}; trained on", total))


def _rank() -> str:
    import os

    return f" (rank {process_rank()})" if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 else ""


def answered_audios(batch_ids: list[list[int]], audlens: list[int], tokenizer: Any) -> list[bool] | None:
    """Per audio of the batch (in frame order): an input clip whose next assistant turn holds text. None when the
    audio spans do not match the audios one to one (nothing is then checked)."""
    from ...models import special_tokens as st

    ids_of = tokenizer.convert_tokens_to_ids
    begin, speech, end = ids_of(st.MEDIA_BEGIN), ids_of(st.SPEECH_START), ids_of(st.MSG_END)
    openers = np.array([ids_of(st.ASSISTANT_MSG_START), speech])
    empty = np.array([ids_of(st.TEXT_EOS), end, ids_of(st.USER_MSG_START)])  # what follows an empty answer
    flags: list[bool] = []
    for sample, count in zip(batch_ids, audlens):
        ids = np.asarray(sample)
        ends = np.flatnonzero(ids == end)
        last_end = ends[-1] if len(ends) else -1
        spans = np.flatnonzero((ids == begin) | ((ids == speech) & (np.arange(len(ids)) < last_end)))
        if len(spans) != count:
            return None
        opened = np.flatnonzero(np.isin(ids, openers))
        for at in spans:
            after = opened[opened > at]
            first = after[0] + 1 if len(after) else len(ids)
            flags.append(bool(ids[at] == begin and first < len(ids) and not np.isin(ids[first], empty)))
    return flags
