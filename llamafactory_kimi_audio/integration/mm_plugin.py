"""``KimiAudioPlugin``: LLaMA-Factory's multimodal plugin for Kimi-Audio.

- ``process_messages`` (inside ``datasets.map``): each ``<audio>`` becomes media_begin + one placeholder per
  12.5 Hz frame + media_end. The count comes from the file header (duration, resampling rule), never from decoding.
  An ``<audio>`` in an *assistant* turn is the target of a spoken answer: it becomes the speech marker
  (``speech_marker``), which the template turns into a speech turn; its codes reach the model like any audio's.
- ``get_mm_inputs`` (collate time): decides once, from the spans ``process_messages`` wrote, which audios are
  speech-output targets (``speech_targets``); audio read with soundfile, mixed to mono, resampled to 16 kHz;
  Whisper log-mel per 30 s chunk (inputs only) and the GLM-4-Voice features (or the feature cache's codes + Whisper
  rows). In training the batch also lists its clips, with that decision, as ``audio_clips``
  (``data/collate_inputs.AudioClip``), which the model hands to its feature sink and the non-finite guard reads.
The plugin holds no model and pickles by value (``datasets`` workers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from llamafactory.data.mm_plugin import BasePlugin
from llamafactory.extras.constants import AUDIO_PLACEHOLDER

from .._startup import resume
from ..errors import InputError, ModelError
from ..fileio.audio import load_audio, probe, resampled_length
from ..fileio.audio_errors import AudioError
from ..models.constants import SAMPLE_RATE
from ..models.layout import audio_marker, speech_marker
from ..models.processing_kimi_audio import num_audio_tokens


@dataclass
class KimiAudioPlugin(BasePlugin):
    def process_messages(
        self,
        messages: list[dict[str, str]],
        images: list[Any],
        videos: list[Any],
        audios: list[Any],
        processor: Any,
    ) -> list[dict[str, str]]:
        self._validate_input(processor, images, videos, audios)
        self._check_audio_count(messages, audios)
        counts = iter([audio_token_count(audio) for audio in audios])
        expanded = []
        for message in messages:
            content = message["content"]
            marker = speech_marker if message["role"] == "assistant" else audio_marker
            while self.expand_mm_tokens and AUDIO_PLACEHOLDER in content:
                content = content.replace(AUDIO_PLACEHOLDER, marker(next(counts)), 1)
            expanded.append({**message, "content": content})
        return expanded

    def _validate_input(self, processor: Any, images: list[Any], videos: list[Any], audios: list[Any]) -> None:
        extractor = getattr(processor, "feature_extractor", None) or getattr(processor, "audio_processor", None)
        if extractor is None:
            raise ModelError(  # LLaMA-Factory would say "Audio feature extractor was not found"
                "template kimi_audio needs a Kimi-Audio checkpoint, but the loaded model has no Kimi-Audio processor; "
                "set model_name_or_path to a Kimi-Audio checkpoint, or use this model's own template"
            )
        super()._validate_input(processor, images, videos, audios)

    def _check_audio_count(self, messages: list[dict[str, str]], audios: list[Any]) -> None:
        found = sum(message["content"].count(AUDIO_PLACEHOLDER) for message in messages)
        if found != len(audios):
            preview = next((m["content"] for m in messages if m["content"].strip()), "")[:80]
            raise InputError(
                f"sample {preview!r} has {found} {AUDIO_PLACEHOLDER} placeholder(s) but {len(audios)} audio file(s) "
                f"{[a for a in audios if isinstance(a, str)][:3]}; put exactly one {AUDIO_PLACEHOLDER} per audio"
            )

    def get_mm_inputs(
        self,
        images: list[Any],
        videos: list[Any],
        audios: list[Any],
        imglens: list[int],
        vidlens: list[int],
        audlens: list[int],
        batch_ids: list[list[int]],
        processor: Any,
    ) -> dict[str, Any]:
        self._validate_input(processor, images, videos, audios)
        if len(audios) == 0:
            return {}
        from ..data.features import silent_watch
        from ..data.features.collate_inputs import audio_model_inputs

        targets = speech_targets(batch_ids, audlens, processor.tokenizer)
        # training only: which input clips have a transcript, for the silent-clip check where samples are read
        answered = (
            silent_watch.answered_audios(batch_ids, audlens, processor.tokenizer) if silent_watch.watching() else None
        )
        return audio_model_inputs(audios, processor, targets, answered)  # cached entries, or the raw audio inputs


def speech_targets(batch_ids: list[list[int]], audlens: list[int], tokenizer: Any) -> list[bool] | None:
    """Per audio of the batch (in frame order), whether it is a speech-output target (a closed ``SPEECH_START`` span,
    which holds the text stream) rather than an input (a ``MEDIA_BEGIN`` span); ``None`` when the spans do not
    match the audios one to one (e.g. a prediction prompt without its answer): every clip is then an input."""
    from ..models import special_tokens as st

    begin, start, end = (tokenizer.convert_tokens_to_ids(t) for t in (st.MEDIA_BEGIN, st.SPEECH_START, st.MSG_END))
    if not any(start in ids for ids in batch_ids):  # ASR batches: one C-level scan, no per-token Python loop
        return None
    flags: list[bool] = []
    for ids, count in zip(batch_ids, audlens):
        last_end = max((i for i, token in enumerate(ids) if token == end), default=-1)
        found = [token == start for i, token in enumerate(ids) if token == begin or (token == start and i < last_end)]
        if len(found) != count:
            return None
        flags += found
    return flags if any(flags) else None


def audio_token_count(audio: Any) -> int:
    """12.5 Hz frames of one audio input without decoding it (paths) or from its length (arrays)."""
    if isinstance(audio, str):
        info = probe(audio)
        if info.frames == 0:
            raise AudioError(f"{audio}: audio is empty (0 samples); remove the sample or replace the file")
        return num_audio_tokens(info.num_samples_16k)
    if hasattr(audio, "read"):  # a file object (LLaMA-Factory's ChatModel takes BytesIO): counted, then re-read
        return num_audio_tokens(len(load_audio(rewound(audio))))
    if isinstance(audio, dict):
        if audio.get("array") is not None:
            rate = int(audio.get("sampling_rate") or SAMPLE_RATE)
            return num_audio_tokens(resampled_length(len(np.asarray(audio["array"])), rate))
        return audio_token_count(audio.get("path"))
    return num_audio_tokens(len(np.asarray(audio).reshape(-1)))


def rewound(stream: Any) -> Any:
    """``stream`` at its start again: the plugin reads a file object twice (token count, then features)."""
    if not (hasattr(stream, "seekable") and stream.seekable()):
        raise AudioError(
            "an audio stream that cannot seek was passed to the kimi_audio plugin (it reads each clip twice); pass a "
            "path, a 16 kHz array or a seekable file object such as io.BytesIO"
        )
    stream.seek(0)
    return stream


resume(__name__)  # hooks that needed this module while it was importing LLaMA-Factory run now
