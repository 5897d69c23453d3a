"""``KimiAudioProcessor``: tokenizer + Whisper feature extractor + GLM-4-Voice feature front-end.

It holds no neural network: the Whisper encoder is part of the model and the GLM-4-Voice encoder is loaded by the
model on first use, so the processor pickles cheaply into ``datasets.map`` and DataLoader workers. Audio inputs per
30 s chunk (spec §3.2, glm doc §4):

- ``audio_input_features`` [C, 128, 3000]: Whisper log-mel of the chunk padded to 30 s,
- ``audio_chunk_tokens`` [C]: 12.5 Hz frames of the chunk, ``(L - 1) // 1280 + 1`` (``num_audio_tokens``),
- ``semantic_input_features`` [C, 128, F] int32 (fp32 bit patterns, immune to dtype casts) + ``semantic_frame_mask``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from transformers import BatchFeature, ProcessorMixin, WhisperFeatureExtractor

from ..errors import InputError
from . import special_tokens as st
from .constants import CHUNK_SAMPLES, SAMPLE_RATE, WHISPER_MEL_BINS, WHISPER_SUBDIR, num_audio_tokens
from .layout import LayoutEncoder, Segment


def split_chunks(wave: np.ndarray) -> list[np.ndarray]:
    return [wave[start : start + CHUNK_SAMPLES] for start in range(0, len(wave), CHUNK_SAMPLES)]


class KimiAudioProcessor(ProcessorMixin):
    """A ``ProcessorMixin`` (as ``Qwen2AudioProcessor``): ``feature_extractor`` (Whisper, 128 mel bins) and
    ``tokenizer``, plus what LLaMA-Factory reads (``audio_sampling_rate``) and what the plugin calls
    (``audio_inputs``). Saved by the mixin; registered with ``AutoProcessor`` by ``register_auto_processor``."""

    # transformers 4.x reads the attributes and their classes from here, 5.x from the signature of __init__
    attributes = ["feature_extractor", "tokenizer"]
    feature_extractor_class = "WhisperFeatureExtractor"
    tokenizer_class = "AutoTokenizer"

    def __init__(self, feature_extractor=None, tokenizer=None, **kwargs: Any):
        if tokenizer is None:
            raise InputError("KimiAudioProcessor needs a tokenizer (a KimiAudioTokenizer)")
        feature_extractor = feature_extractor or WhisperFeatureExtractor(feature_size=WHISPER_MEL_BINS)
        super().__init__(feature_extractor, tokenizer, **kwargs)
        self.audio_sampling_rate = SAMPLE_RATE
        self.name_or_path: str | None = None  # the checkpoint dir; keys the precompute cache

    @property
    def layout(self) -> LayoutEncoder:
        return LayoutEncoder(self.tokenizer)

    def __call__(self, audio: list[np.ndarray] | None = None, text: Any = None, **kwargs: Any) -> BatchFeature:
        """ASR prompts for 16 kHz mono ``audio`` clips, each with an optional instruction in ``text`` (the
        ``asr_inputs`` batch: ids, mask and audio inputs)."""
        if audio is None:
            raise InputError("KimiAudioProcessor needs audio: a list of 16 kHz mono waveforms")
        instructions = text if isinstance(text, (list, tuple)) else [text] * len(audio)
        return BatchFeature(self.asr_inputs(list(audio), list(instructions), kwargs.get("padding_side", "left")))

    # ----------------------------------------------------------------------------------------------- audio
    def audio_inputs(
        self, waveforms: list[np.ndarray], with_semantic: bool = True, with_whisper: list[bool] | None = None
    ) -> dict[str, torch.Tensor]:
        """Model inputs for a flat list of 16 kHz mono clips (order = order of their frames in the ids).
        ``with_whisper``: per clip, whether it gets Whisper log-mels (default all); speech *targets* need only their
        codes, and the model takes the Whisper rows of the input clips alone (``frame_inputs``)."""
        per_clip = [split_chunks(np.asarray(wave, dtype=np.float32)) for wave in waveforms]
        chunks = [chunk for clip in per_clip for chunk in clip]
        if not chunks:
            raise InputError("audio clip is empty (0 samples)")
        wanted = [True] * len(waveforms) if with_whisper is None else list(with_whisper)
        if len(wanted) != len(waveforms):
            raise InputError(f"with_whisper has {len(wanted)} flags for {len(waveforms)} clips")
        listened = [chunk for clip, w in zip(per_clip, wanted) if w for chunk in clip]
        inputs: dict[str, torch.Tensor] = {}
        if listened:
            whisper = self.feature_extractor(
                listened,
                sampling_rate=SAMPLE_RATE,
                padding="max_length",
                return_attention_mask=False,
                return_tensors="pt",
            )
            inputs["audio_input_features"] = whisper["input_features"]
            inputs["audio_chunk_tokens"] = torch.tensor([num_audio_tokens(len(c)) for c in listened], dtype=torch.long)
        if with_semantic:
            from .glm4_voice import glm4_voice_features

            features, frame_mask = glm4_voice_features(chunks)
            inputs["semantic_input_features"] = features.float().contiguous().view(torch.int32)
            inputs["semantic_frame_mask"] = frame_mask
        return inputs

    # -------------------------------------------------------------------------------------------- prompts
    def asr_inputs(
        self, waveforms: list[np.ndarray], instructions: list[str | None], padding_side: str = "left"
    ) -> dict[str, torch.Tensor]:
        """A padded batch of ASR prompts (instruction before audio, as in the official examples) + audio inputs."""
        layout = self.layout
        prompts = [layout.asr_prompt(num_audio_tokens(len(w)), text) for w, text in zip(waveforms, instructions)]
        features = [{"input_ids": prompt} for prompt in prompts]
        batch = self.tokenizer.pad(features, padding=True, padding_side=padding_side, return_tensors="pt")
        batch = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        batch.update(self.audio_inputs(waveforms))
        return batch

    def speech_prompt_inputs(self, waveform: np.ndarray | None = None, text: str | None = None) -> dict[str, Any]:
        """One official ``output_type="both"`` prompt (batch 1): the question as text, audio, or text then audio;
        no default instruction, CTD after the audio (speech-output spec §1.2, §3.1)."""
        if waveform is None and not text:
            raise InputError("a spoken reply needs a question: audio, text, or both")
        segments = [Segment(text=text)] if text else []
        if waveform is not None:
            segments.append(Segment(audio_tokens=num_audio_tokens(len(waveform))))
        inputs: dict[str, Any] = {"input_ids": torch.tensor([self.layout.speech_prompt(segments)])}
        if waveform is not None:
            inputs.update(self.audio_inputs([waveform]))
        return inputs

    def decode_transcripts(self, generated: torch.Tensor) -> list[str]:
        return [transcript_text(self.tokenizer, row) for row in generated.tolist()]

    # ---------------------------------------------------------------------------------------- persistence
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> KimiAudioProcessor:
        """The official layout, which the mixin's loader cannot read: the tokenizer is ``KimiAudioTokenizer`` (the
        directory names remote code for it), the feature extractor sits in ``whisper-large-v3/`` (or at the top of a
        directory this class saved; the official 128-bin defaults when neither has one)."""
        from .tokenization_kimi_audio import KimiAudioTokenizer

        path = os.fspath(pretrained_model_name_or_path)
        tokenizer_kwargs = {k: v for k, v in kwargs.items() if k in ("cache_dir", "revision", "padding_side")}
        tokenizer = KimiAudioTokenizer.from_pretrained(path, **tokenizer_kwargs)
        processor = cls(feature_extractor=load_feature_extractor(path), tokenizer=tokenizer)
        processor.name_or_path = os.path.abspath(path)
        return processor


def load_feature_extractor(model_dir: str) -> WhisperFeatureExtractor | None:
    for directory in (os.path.join(model_dir, WHISPER_SUBDIR), model_dir):
        if os.path.isfile(os.path.join(directory, "preprocessor_config.json")):
            extractor = WhisperFeatureExtractor.from_pretrained(directory)
            if extractor.feature_size != WHISPER_MEL_BINS:
                raise InputError(
                    f"{directory}: Kimi-Audio needs {WHISPER_MEL_BINS} mel bins, preprocessor_config.json has "
                    f"{extractor.feature_size}"
                )
            return extractor
    return None


def register_auto_processor() -> None:
    """``AutoProcessor.from_pretrained`` → ``KimiAudioProcessor`` for Kimi-Audio configs and for directories this
    class saved (transformers' registry API; idempotent)."""
    from transformers import AutoProcessor

    from .configuration_kimi_audio import KimiAudioConfig

    AutoProcessor.register(KimiAudioConfig, KimiAudioProcessor, exist_ok=True)


def transcript_text(tokenizer, ids: list[int]) -> str:
    """Text before ``<|im_kimia_text_eos|>``, audio ids and specials dropped (spec §7)."""
    eos = tokenizer.convert_tokens_to_ids(st.TEXT_EOS)
    text_vocab = getattr(tokenizer, "num_base_tokens", None) or eos
    ids = ids[: ids.index(eos)] if eos in ids else ids
    return tokenizer.decode([t for t in ids if t < text_vocab]).strip()
