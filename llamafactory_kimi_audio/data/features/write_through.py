"""Write-through: a training process stores the codes and Whisper rows its model computes for clips that were not
in the feature cache, so each clip is encoded once per cache (epoch 2 onwards reads them back).

``WriteThrough`` is the model's feature sink (``models/feature_sink.py``): ``frame_inputs`` hands it each clip as
encoded, and the batch's ``audio_clips`` (``collate_inputs.AudioClip``: hit, or the key of a missing clip), in the
same order. A missing clip is appended to this process's own shards: an input clip with its Whisper rows, a
speech-output target with its codes only (the model never listens to it; a target later used as an ASR input runs
Whisper online until ``precompute`` adds the rows). ``integration/feature_cache_hook.py``'s TrainerCallback sets
the sink at train begin and removes it at train end; each process logs one line at each: hits, misses and writes.
"""

from __future__ import annotations

import os
from typing import Any

from ...logs import process_rank
from .cache_format import ClipKey
from .collate_inputs import AudioClip
from .feature_cache import FeatureCache, cache_mode


class CacheCounters:
    """Hits / misses / writes of one training process (one rank)."""

    def __init__(self, rank: str) -> None:
        self.rank, self.hits, self.misses, self.writes = rank, 0, 0, 0

    def line(self, when: str) -> str:
        return (
            f"llamafactory-kimi-audio: feature cache, rank {self.rank}, {when}: {self.hits} hits, "
            f"{self.misses} misses, {self.writes} writes"
        )


class WriteThrough:
    """The feature sink that stores missing clips: ``sink(encoded_clips, audio_clips)``."""

    def __init__(self, rank: str | None = None) -> None:
        self.counters = CacheCounters(process_rank() if rank is None else rank)
        self._caches: dict[tuple[str, str], FeatureCache] = {}

    def __call__(self, encoded: list[Any], clips: list[AudioClip] | None) -> None:
        if not clips:  # a batch the collator did not describe (generate's prefill, a plain forward): nothing to store
            return
        self.counters.hits += sum(clip.hit for clip in clips)
        if len(clips) != len(encoded):  # never file codes under the wrong clip (the clip is encoded again later)
            return
        codes_only = cache_mode() == "codes"
        for clip, features in zip(clips, encoded):
            if clip.key is None or clip.cache is None:
                continue
            self.counters.misses += 1
            rows = None if codes_only or features.rows is None else features.rows.cpu()
            self.cache(*clip.cache).write(ClipKey(*_fields(clip.key)), features.codes.cpu(), rows)
            self.counters.writes += 1

    def cache(self, root: str, identity: str) -> FeatureCache:
        if (root, identity) not in self._caches:
            self._caches[(root, identity)] = FeatureCache(root, identity)
        return self._caches[(root, identity)]


def _fields(key: Any) -> tuple[str, int, int]:
    return (key.path, key.size, key.mtime_ns) if isinstance(key, ClipKey) else tuple(key)


def preload(model: Any) -> str:
    """Read the index now, in the training process: DataLoader workers forked later share its pages."""
    from .feature_cache import process_cache

    name = getattr(model.config, "_name_or_path", None)
    try:
        cache = process_cache(os.path.abspath(name) if name else None)
    except OSError:  # no encoder weights to identify: collate falls back to online inputs, as without a cache
        return ""
    if cache is None:
        return ""
    frames = int(cache.index.records["frames"].sum()) if len(cache.index) else 0
    return f"; {len(cache.index)} clips ({frames / 45000:.2f} audio h) cached in {cache.folder}"
