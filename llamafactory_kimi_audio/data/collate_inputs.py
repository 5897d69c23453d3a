"""The audio inputs of one collated batch, with the feature cache when ``KIMI_AUDIO_FEATURE_CACHE`` is set.

- Every clip cached with rows: ``audio_codes`` + ``whisper_features`` from the cache (no audio read).
- Every clip cached, some codes-only: cached ``audio_codes`` + Whisper log-mels (the audio is read; Whisper online).
- Any clip missing: the raw inputs of the whole batch (the model encodes them), and the batch carries
  ``audio_cache_meta`` naming the missing clips, so the training process stores what its model computes
  (``write_through.py``: epoch 2 never re-encodes). With ``KIMI_AUDIO_CACHE_STRICT=1`` a missing clip stops the
  run instead, naming it.

``audio_cache_meta`` is a uint8 tensor holding JSON (tensors survive the Trainer's device moves). It is added only
in a training process whose model has write-through attached (and in the DataLoader workers it forks), so that no
other caller (``generate``, plain ``forward``) ever sees it.
"""

from __future__ import annotations

import json
from typing import Any

from .. import settings
from ..audio_io import AudioError, load_audio
from ..constants import SAMPLE_RATE
from .feature_cache import STRICT_ENV, CacheMissError, FeatureCache, cache_mode, process_cache

META_KEY = "audio_cache_meta"
CLIP_NAMES_KEY = "audio_clip_names"  # the batch's clips, for integration/nonfinite.py's message
_write_through = False  # set by write_through.attach() in the training process; forked workers inherit it
_name_clips = False  # set by nonfinite.attach() in the training process; forked workers inherit it


def enable_write_through() -> None:
    global _write_through
    _write_through = True


def enable_clip_names() -> None:
    global _name_clips
    _name_clips = True


def audio_model_inputs(audios: list[Any], processor: Any, targets: list[bool] | None = None) -> dict[str, Any]:
    """The model inputs of a batch's audios (flat list, in the order of their frames in the ids). ``targets`` flags
    the speech-output targets among them: they get codes only, no Whisper input (the model never listens to them)."""
    inputs = _audio_inputs(audios, processor, targets)
    if _name_clips:
        inputs[CLIP_NAMES_KEY] = _encode([_clip_name(audio) for audio in audios])
    return inputs


def _clip_name(audio: Any) -> str:
    if isinstance(audio, dict):
        audio = audio.get("path") or "(an audio array)"
    return audio if isinstance(audio, str) else "(an audio array)"


def decode_names(tensor: Any) -> list[str]:
    return json.loads(bytes(tensor.detach().cpu().numpy().tobytes()).decode())


def _audio_inputs(audios: list[Any], processor: Any, targets: list[bool] | None) -> dict[str, Any]:
    listened = None if targets is None or not any(targets) else [not target for target in targets]
    cache = None
    if all(isinstance(a, str) for a in audios):
        cache = process_cache(getattr(processor, "name_or_path", None))
    if cache is None:
        return _online(audios, processor, listened=listened)
    return _with_cache(cache, audios, processor, listened)


def _online(audios: list[Any], processor: Any, with_semantic: bool = True, listened: Any = None) -> dict[str, Any]:
    rate = getattr(processor, "audio_sampling_rate", SAMPLE_RATE)
    waves = [load_audio(audio, rate) for audio in audios]
    if listened is None:  # keeps the call of processors without the per-clip argument
        return processor.audio_inputs(waves, with_semantic=with_semantic)
    return processor.audio_inputs(waves, with_semantic=with_semantic, with_whisper=listened)


def _with_cache(cache: FeatureCache, audios: list[str], processor: Any, listened: Any = None) -> dict[str, Any]:
    import torch

    try:
        found = cache.lookup(audios)
    except OSError:  # a clip that cannot be stat-ed: the online path reports it by name, with the fix
        return _online(audios, processor)
    missing = [audio for audio, (_, at) in zip(audios, found) if at is None]
    if missing and settings.enabled(STRICT_ENV):
        raise CacheMissError(
            f"{missing[0]}: not in the feature cache {cache.folder} ({STRICT_ENV}=1); run `kimi-audio-lf precompute` "
            f"on the dataset with this model, or unset {STRICT_ENV} to encode missing clips during training"
        )
    if missing:
        inputs = _online(audios, processor, listened=listened)
        if _write_through:
            inputs[META_KEY] = _meta(cache, audios, found, listened)
        return inputs
    entries = [cache.read(at, audio) for audio, (_, at) in zip(audios, found)]
    _refuse_non_finite_rows(entries, audios)
    inputs = {"audio_codes": torch.cat([codes for codes, _ in entries])}
    heard = [rows for (_, rows), listen in zip(entries, listened or [True] * len(entries)) if listen]
    if all(rows is not None for rows in heard):
        if heard:  # rows of the input clips only when the batch has speech targets (the model expects that)
            inputs["whisper_features"] = torch.cat(heard)
    else:  # codes-only entries: Whisper runs online on the log-mels
        inputs.update(_online(audios, processor, with_semantic=False, listened=listened))
    if _write_through:
        inputs[META_KEY] = _encode({"hits": len(audios)})
    return inputs


def _refuse_non_finite_rows(entries: list, audios: list[str]) -> None:
    """Entries written from NaN/inf audio (before precompute refused such clips) would train a NaN model."""
    for (_, rows), audio in zip(entries, audios):
        if rows is not None and not bool(rows.isfinite().all()):
            raise AudioError(
                f"{audio}: its feature-cache entry holds non-finite Whisper rows (the clip has NaN/inf samples); "
                "re-export the clip or delete its row, then run `kimi-audio-lf precompute` again"
            )


def _meta(cache: FeatureCache, audios: list[str], found: list, listened: list[bool] | None) -> Any:
    """Per clip ``[frames, key or None (cached), listened]``: what write-through needs to split and store."""
    from ..audio_io import probe
    from ..models.processing_kimi_audio import num_audio_tokens

    clips = []
    for index, (audio, (key, at)) in enumerate(zip(audios, found)):
        frames = num_audio_tokens(probe(audio).num_samples_16k)
        stored = None if at is not None else [key.path, key.size, key.mtime_ns]
        clips.append([frames, stored, True if listened is None else listened[index]])
    hits = sum(1 for _, at in found if at is not None)
    return _encode(
        {"hits": hits, "root": cache.root, "identity": cache.identity, "mode": cache_mode(), "clips": clips}
    )


def _encode(meta: Any) -> Any:
    import torch

    return torch.frombuffer(bytearray(json.dumps(meta).encode()), dtype=torch.uint8)


def decode_meta(tensor: Any) -> dict[str, Any]:
    return json.loads(bytes(tensor.detach().cpu().numpy().tobytes()).decode())
