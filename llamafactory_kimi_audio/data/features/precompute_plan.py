"""How a precompute run is split and shown: deterministic shards over ranks, the order clips are batched in, the
progress bar (clips, audio hours, ETA) and the result line.

Sharding: the unique paths, longest file first (ties by path), are dealt round-robin to the N shards, so shards get
nearly equal audio hours and the union of shards K = 0..N-1 is exactly the one-process run, whatever the order of
the dataset rows. Inside a shard, clips are batched shortest first: similar durations share a batch and GLM-4-Voice
pads little. File size stands in for duration (one ``stat``, no header read; the clips of one corpus share a codec).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Any

from ...constants import SAMPLE_RATE
from ...errors import InputError
from ...fileio.audio_silence import Clip, warning_line
from ...fileio.audio_spans import split_media


@dataclass
class PrecomputeResult:
    cache_dir: str  # the root to export as $KIMI_AUDIO_FEATURE_CACHE
    identity: str  # sub-folder of this checkpoint's audio encoders
    shard: tuple[int, int] = (0, 1)
    computed: int = 0
    repaired: int = 0  # of the computed: entries that existed but were damaged
    skipped: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)
    missing: int = 0  # entries computed or found that the cache's index no longer holds at the end
    silent: list[Clip] = field(default_factory=list)  # decoded clips that are silent but have a transcript
    silent_mode: str = "warn"  # warn: cached and named below the counts; error: counted (the CLI exits 2)

    def summary(self) -> str:
        part = f"shard {self.shard[0]}/{self.shard[1]}: " if self.shard[1] > 1 else ""
        lines = [
            f"precompute: {part}{self.computed} computed{self._repaired}, {self.skipped} skipped (already cached), "
            f"{self.failed} failed{self._silent}; cache {os.path.join(self.cache_dir, self.identity)}"
        ]
        if self.silent and self.silent_mode == "warn":
            lines.append(f"precompute: {part}{warning_line(self.silent, '--silent-clips ', '; cached anyway')}")
        if self.missing:
            lines.append(
                f"precompute: {part}{self.missing} of those entries are not in the cache's index any more (removed "
                "or torn while this run wrote them); re-run precompute, then `kimi-audio-lf cache verify`"
            )
        return "\n".join([*lines, f"  use it: export KIMI_AUDIO_FEATURE_CACHE={self.cache_dir}"])

    @property
    def _silent(self) -> str:
        return f", {len(self.silent)} silent with a transcript" if self.silent and self.silent_mode == "error" else ""

    @property
    def _repaired(self) -> str:
        return f" ({self.repaired} replacing damaged entries)" if self.repaired else ""


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` → (K, N) with 0 <= K < N; InputError otherwise."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        index, count = -1, 0
    if not 0 <= index < count:
        raise InputError(f"--shard {text!r}: expected K/N with 0 <= K < N, e.g. --shard 0/4")
    return index, count


def launcher_shard() -> tuple[int, int]:
    """(RANK, WORLD_SIZE) under torchrun, else (0, 1)."""
    return int(os.environ.get("RANK", "0") or 0), int(os.environ.get("WORLD_SIZE", "1") or 1)


def _size(audio: str) -> int:
    """A cheap proxy of a clip's length: the file size, or for a ``PATH#t=B,E`` segment its span as 16-bit 16 kHz."""
    path, begin, end = split_media(audio)
    if begin is not None and end is not None:
        return int((end - begin) * 32000)
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def shard_paths(paths: list[str], shard: tuple[int, int] | None = None) -> tuple[tuple[int, int], list[str]]:
    """This shard's paths, shortest first; ``shard`` None: torchrun's rank, else everything."""
    index, count = shard if shard is not None else launcher_shard()
    unique = sorted(set(paths), key=lambda p: (-_size(p), p))
    mine = unique[index::count]
    return (index, count), sorted(mine, key=lambda p: (_size(p), p))


class Progress:
    """A tqdm bar over this shard's clips (rank 0 only), with audio hours done and the estimated total."""

    def __init__(self, paths: list[str], shard: tuple[int, int], enabled: bool | None) -> None:
        from tqdm.auto import tqdm

        self.total_bytes = sum(_size(p) for p in paths) or 1
        self.bytes_done, self.samples_done = 0, 0
        disable = True if shard[0] != 0 else (None if enabled is None else not enabled)
        desc = "precompute" if shard[1] == 1 else f"precompute (rank 0 of {shard[1]})"
        self.bar = tqdm(total=len(paths), desc=desc, unit="clip", disable=disable, file=sys.stderr)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bar.close()

    def write(self, line: str) -> None:
        self.bar.write(line, file=sys.stderr)

    def done(self, audio: str, samples: int) -> None:
        """One clip finished (``samples`` at 16 kHz; 0 for a failure)."""
        self.bytes_done += _size(audio)
        self.samples_done += samples
        hours = self.samples_done / SAMPLE_RATE / 3600
        estimate = hours * self.total_bytes / max(self.bytes_done, 1)
        self.bar.set_postfix_str(f"{hours:.2f} of ~{estimate:.2f} audio h", refresh=False)
        self.bar.update(1)
