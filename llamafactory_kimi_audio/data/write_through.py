"""Write-through: a training process stores the codes and Whisper rows its model computes for clips that were not
in the feature cache, so each clip is encoded once per cache (epoch 2 onwards reads them back).

``attach(model)`` wraps one ``KimiAudioForCausalLM`` instance: ``forward`` takes the batch's ``audio_cache_meta``
(``collate_inputs.py``), ``frame_inputs`` splits what it computed per clip and appends the missing clips to this
process's own shards, and ``generate`` drops the meta (evaluation batches). In a batch with speech-output targets
the model listens only to the input clips: those are stored with their rows, the targets with their codes only (a
target clip later used as an ASR input runs Whisper online until ``precompute``, which adds the rows). Each process
logs one line when attached and one at exit: hits, misses and writes.
"""

from __future__ import annotations

import atexit
import os
import sys
from typing import Any

from .cache_format import ClipKey
from .collate_inputs import META_KEY, decode_meta, enable_write_through
from .feature_cache import FeatureCache

_COUNTS_ATTR = "_kimi_audio_cache_counts"


class CacheCounters:
    """Hits / misses / writes of one training process (one rank)."""

    def __init__(self, rank: str) -> None:
        self.rank, self.hits, self.misses, self.writes = rank, 0, 0, 0
        self._caches: dict[tuple[str, str], FeatureCache] = {}

    def line(self, when: str) -> str:
        return (
            f"llamafactory-kimi-audio: feature cache, rank {self.rank}, {when}: {self.hits} hits, "
            f"{self.misses} misses, {self.writes} writes"
        )

    def cache(self, root: str, identity: str) -> FeatureCache:
        if (root, identity) not in self._caches:
            self._caches[(root, identity)] = FeatureCache(root, identity)
        return self._caches[(root, identity)]

    def record(self, meta: dict[str, Any], codes: Any, rows: Any) -> None:
        """Count the batch and store its missing clips: ``codes`` cover every clip in order, ``rows`` the clips the
        model listened to (all of them, or the input clips of a batch with speech targets)."""
        clips = meta.get("clips")
        self.hits += int(meta.get("hits", 0))
        if not clips:
            return
        cache = self.cache(meta["root"], meta["identity"])
        codes_only = meta.get("mode") == "codes"
        start = row = 0
        for clip in clips:
            frames, missing, listened = clip[0], clip[1], _listened(clip)
            if missing is not None:  # a speech target is stored codes-only: the model never listens to it
                self.misses += 1
                clip_rows = rows[row : row + frames] if listened and not codes_only else None
                cache.write(ClipKey(*missing), codes[start : start + frames], clip_rows)
                self.writes += 1
            start += frames
            row += frames if listened else 0


def _listened(clip: list) -> bool:
    """A clip of the collator's meta: ``[frames, key or None, listened]``; metas written before speech targets had
    two fields (every clip listened to)."""
    return bool(clip[2]) if len(clip) > 2 else True


def _aligned(clips: list, is_input: Any) -> bool:
    """The collator's per-clip "listened" flags name exactly the frames whose Whisper rows the model returned
    (a batch whose targets the collator did not recognise stores nothing rather than misaligned rows)."""
    import torch

    flags = [_listened(clip) for clip in clips]
    if is_input is None:
        return all(flags)
    expected = torch.cat([torch.full((int(clip[0]),), flag) for clip, flag in zip(clips, flags)])
    return expected.shape == is_input.shape and bool((expected == is_input.detach().cpu()).all())


def _preload(model: Any) -> str:
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


def attach(model: Any) -> CacheCounters:
    """Make ``model`` (a ``KimiAudioForCausalLM``) store what it encodes; idempotent. Returns its counters."""
    counters = getattr(model, _COUNTS_ATTR, None)
    if counters is not None:
        return counters
    counters = CacheCounters(os.environ.get("RANK", "0"))
    forward, frame_inputs = model.forward, model.frame_inputs
    pending: list[dict[str, Any]] = []

    def forward_with_meta(*args: Any, **kwargs: Any) -> Any:
        meta = kwargs.pop(META_KEY, None)
        if meta is not None:
            pending.append(decode_meta(meta))
        try:
            return forward(*args, **kwargs)
        finally:
            if meta is not None and pending:  # a batch without audio frames never reached frame_inputs
                counters.hits += int(pending.pop().get("hits", 0))

    def frame_inputs_writing(
        input_ids: Any, is_frame: Any, num_frames: int, audio: dict[str, Any], is_input: Any = None
    ) -> Any:
        codes, rows = frame_inputs(input_ids, is_frame, num_frames, audio, is_input)
        if pending:
            meta = pending.pop()
            # copies to the host only for batches with clips to store; speech targets (no Whisper rows) are stored
            # codes-only, input clips with the rows of their own frames
            if meta.get("clips") and _aligned(meta["clips"], is_input):
                counters.record(meta, codes.detach().cpu(), None if rows is None else rows.detach().cpu())
            else:
                counters.hits += int(meta.get("hits", 0))
        return codes, rows

    generate = model.generate

    def generate_without_meta(*args: Any, **kwargs: Any) -> Any:  # evaluation batches: nothing is stored
        kwargs.pop(META_KEY, None)
        return generate(*args, **kwargs)

    object.__setattr__(model, "forward", forward_with_meta)
    object.__setattr__(model, "frame_inputs", frame_inputs_writing)
    object.__setattr__(model, "generate", generate_without_meta)
    enable_write_through()
    object.__setattr__(model, _COUNTS_ATTR, counters)
    print(f"{counters.line('start')}{_preload(model)}", file=sys.stderr)
    atexit.register(lambda: print(counters.line("end"), file=sys.stderr, flush=True))
    return counters
