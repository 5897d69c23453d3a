"""The audio inputs of one collated batch, with the feature cache when ``KIMI_AUDIO_FEATURE_CACHE`` is set.

- Every clip cached with rows: ``audio_codes`` + ``whisper_features`` from the cache (no audio read).
- Every clip cached, some codes-only: cached ``audio_codes`` + Whisper log-mels (the audio is read; Whisper online).
- Any clip missing: the raw inputs of the whole batch (the model encodes them; in training, write-through stores
  what it computed: ``write_through.py``, epoch 2 never re-encodes). With ``KIMI_AUDIO_CACHE_STRICT=1`` a missing
  clip stops the run instead, naming it.

In a training process (``enable_clip_records()``, called before the DataLoader forks its workers, which inherit it)
the batch also carries ``audio_clips``: a plain list of ``AudioClip``, one per audio in frame order, saying what the
plugin decided (input or speech-output target) and where the feature cache stands (hit, or the key to store it
under). A list survives DataLoader workers and the Trainer's device moves unchanged; the model hands it to its
feature sink, the non-finite guard reads the names. Other callers (chat, API, ``generate``) never see it.
The training process also counts the silent clips with a transcript that the collator reads (``silent_watch.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ... import settings
from ...constants import SAMPLE_RATE
from ...fileio.audio import load_audio
from ...fileio.audio_errors import AudioError
from . import silent_watch
from .cache_format import ClipKey
from .feature_cache import STRICT_ENV, CacheMissError, FeatureCache, process_cache

CLIPS_KEY = "audio_clips"  # the batch's list[AudioClip]
_records = False  # set by enable_clip_records() in the training process; forked workers inherit it


@dataclass(frozen=True)
class AudioClip:
    """One audio of a batch: its name, whether it is a speech-output target (codes only: the model never listens to
    it) or an input, and its feature-cache state: ``hit`` (read from the cache) or ``key`` + ``cache`` (root,
    identity) of a clip the cache lacks, which write-through stores."""

    name: str
    target: bool = False
    hit: bool = False
    key: ClipKey | None = None
    cache: tuple[str, str] | None = None


def enable_clip_records() -> None:
    global _records
    _records = True
    silent_watch.enable()


def audio_model_inputs(
    audios: list[Any], processor: Any, targets: list[bool] | None = None, answered: list[bool] | None = None
) -> dict[str, Any]:
    """The model inputs of a batch's audios (flat list, in the order of their frames in the ids). ``targets`` flags
    the speech-output targets among them: they get codes only, no Whisper input (the model never listens to them).
    ``answered`` flags the input clips with a transcript: a silent one is counted where its samples are read."""
    flags = targets or [False] * len(audios)
    inputs, found, cache = _audio_inputs(audios, processor, targets, answered)
    if _records:
        inputs[CLIPS_KEY] = _records_of(audios, flags, found, cache)
    return inputs


def _records_of(audios: list[Any], targets: list[bool], found: list | None, cache: Any) -> list[AudioClip]:
    if found is None:
        return [AudioClip(_clip_name(audio), target) for audio, target in zip(audios, targets)]
    where = (cache.root, cache.identity)
    return [
        AudioClip(audio, target, hit=True) if at is not None else AudioClip(audio, target, key=key, cache=where)
        for audio, target, (key, at) in zip(audios, targets, found)
    ]


def _clip_name(audio: Any) -> str:
    if isinstance(audio, dict):
        audio = audio.get("path") or "(an audio array)"
    return audio if isinstance(audio, str) else "(an audio array)"


def _audio_inputs(
    audios: list[Any], processor: Any, targets: list[bool] | None, answered: list[bool] | None = None
) -> tuple[dict[str, Any], Any, Any]:
    """(model inputs, the cache lookup per clip or None, the cache or None)."""
    listened = None if targets is None or not any(targets) else [not target for target in targets]
    cache = None
    if all(isinstance(a, str) for a in audios):
        cache = process_cache(getattr(processor, "name_or_path", None))
    if cache is None:
        return _online(audios, processor, listened=listened, answered=answered), None, None
    try:
        found = cache.lookup(audios)
    except OSError:  # a clip that cannot be stat-ed: the online path reports it by name, with the fix
        return _online(audios, processor), None, None
    return _with_cache(cache, audios, found, processor, listened, answered), found, cache


def _online(
    audios: list[Any], processor: Any, with_semantic: bool = True, listened: Any = None, answered: Any = None
) -> dict[str, Any]:
    rate = getattr(processor, "audio_sampling_rate", SAMPLE_RATE)
    waves = [load_audio(audio, rate) for audio in audios]
    silent_watch.note([_clip_name(audio) for audio in audios], waves, answered)
    if listened is None:  # keeps the call of processors without the per-clip argument
        return processor.audio_inputs(waves, with_semantic=with_semantic)
    return processor.audio_inputs(waves, with_semantic=with_semantic, with_whisper=listened)


def _with_cache(
    cache: FeatureCache, audios: list[str], found: list, processor: Any, listened: Any = None, answered: Any = None
) -> dict[str, Any]:
    import torch

    missing = [audio for audio, (_, at) in zip(audios, found) if at is None]
    if missing and settings.enabled(STRICT_ENV):
        raise CacheMissError(
            f"{missing[0]}: not in the feature cache {cache.folder} ({STRICT_ENV}=1); run `kimi-audio-lf precompute` "
            f"on the dataset with this model, or unset {STRICT_ENV} to encode missing clips during training"
        )
    if missing:  # the model encodes the whole batch; write-through stores the missing clips (AudioClip.key)
        return _online(audios, processor, listened=listened, answered=answered)
    entries = [cache.read(at, audio) for audio, (_, at) in zip(audios, found)]
    _refuse_non_finite_rows(entries, audios)
    inputs = {"audio_codes": torch.cat([codes for codes, _ in entries])}
    heard = [rows for (_, rows), listen in zip(entries, listened or [True] * len(entries)) if listen]
    if all(rows is not None for rows in heard):
        if heard:  # rows of the input clips only when the batch has speech targets (the model expects that)
            inputs["whisper_features"] = torch.cat(heard)
    else:  # codes-only entries: Whisper runs online on the log-mels
        inputs.update(_online(audios, processor, with_semantic=False, listened=listened, answered=answered))
    return inputs


def _refuse_non_finite_rows(entries: list, audios: list[str]) -> None:
    """Entries written from NaN/inf audio (before precompute refused such clips) would train a NaN model."""
    for (_, rows), audio in zip(entries, audios):
        if rows is not None and not bool(rows.isfinite().all()):
            raise AudioError(
                f"{audio}: its feature-cache entry holds non-finite Whisper rows (the clip has NaN/inf samples); "
                "re-export the clip or delete its row, then run `kimi-audio-lf precompute` again"
            )
