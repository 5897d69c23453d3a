"""``KimiAudioProcessor``: tokenizer + Whisper feature extractor + GLM-4-Voice feature front-end.

It holds no neural network: the Whisper encoder is part of the model and the GLM-4-Voice encoder is loaded by the
model on first use, so the processor pickles cheaply into ``datasets.map`` and DataLoader workers. Audio inputs per
30 s chunk (spec §3.2, glm doc §4):

- ``audio_input_features`` [C, 128, 3000]: Whisper log-mel of the chunk padded to 30 s,
- ``audio_chunk_tokens`` [C]: 12.5 Hz frames of the chunk, ``(L - 1) // 1280 + 1``,
- ``semantic_input_features`` [C, 128, F] int32 (fp32 bit patterns, immune to dtype casts) + ``semantic_frame_mask``.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import torch

from . import special_tokens as st
from .configuration_kimi_audio import WHISPER_SUBDIR
from .layout import LayoutEncoder

SAMPLE_RATE = 16000
CHUNK_SAMPLES = 30 * SAMPLE_RATE
SAMPLES_PER_TOKEN = 1280


def num_audio_tokens(num_samples: int) -> int:
    """12.5 Hz frames of a 16 kHz clip; equal for Whisper rows and GLM-4-Voice codes (480000 is a multiple of 1280)."""
    if num_samples <= 0:
        raise ValueError("audio clip is empty (0 samples)")
    return (num_samples - 1) // SAMPLES_PER_TOKEN + 1


def split_chunks(wave: np.ndarray) -> list[np.ndarray]:
    return [wave[start : start + CHUNK_SAMPLES] for start in range(0, len(wave), CHUNK_SAMPLES)]


class KimiAudioProcessor:
    """Processor in the LLaMA-Factory sense: ``tokenizer``, ``feature_extractor``, ``audio_sampling_rate``."""

    def __init__(self, tokenizer, feature_extractor=None):
        from transformers import WhisperFeatureExtractor

        self.tokenizer = tokenizer
        self.feature_extractor = feature_extractor or WhisperFeatureExtractor(feature_size=128)
        self.audio_sampling_rate = SAMPLE_RATE
        self.name_or_path: str | None = None  # the checkpoint dir; keys the precompute cache
        self._layout: LayoutEncoder | None = None

    @property
    def layout(self) -> LayoutEncoder:
        if self._layout is None:
            self._layout = LayoutEncoder(self.tokenizer)
        return self._layout

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_layout"] = None
        return state

    # ----------------------------------------------------------------------------------------------- audio
    def audio_inputs(self, waveforms: list[np.ndarray], with_semantic: bool = True) -> dict[str, torch.Tensor]:
        """Model inputs for a flat list of 16 kHz mono clips (order = order of their frames in the ids)."""
        chunks = [chunk for wave in waveforms for chunk in split_chunks(np.asarray(wave, dtype=np.float32))]
        if not chunks:
            raise ValueError("audio clip is empty (0 samples)")
        whisper = self.feature_extractor(
            chunks, sampling_rate=SAMPLE_RATE, padding="max_length", return_attention_mask=False, return_tensors="pt"
        )
        inputs = {
            "audio_input_features": whisper["input_features"],
            "audio_chunk_tokens": torch.tensor([num_audio_tokens(len(c)) for c in chunks], dtype=torch.long),
        }
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
        prompts = [self.layout.asr_prompt(num_audio_tokens(len(w)), text) for w, text in zip(waveforms, instructions)]
        batch = pad_ids(prompts, self.tokenizer.convert_tokens_to_ids(st.PAD), padding_side)
        batch.update(self.audio_inputs(waveforms))
        return batch

    def decode_transcripts(self, generated: torch.Tensor) -> list[str]:
        return [transcript_text(self.tokenizer, row) for row in generated.tolist()]

    # ---------------------------------------------------------------------------------------- persistence
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> KimiAudioProcessor:
        from transformers import WhisperFeatureExtractor

        from .tokenization_kimi_audio import KimiAudioTokenizer

        path = os.fspath(pretrained_model_name_or_path)
        tokenizer_kwargs = {k: v for k, v in kwargs.items() if k in ("cache_dir", "revision", "padding_side")}
        tokenizer = KimiAudioTokenizer.from_pretrained(path, **tokenizer_kwargs)
        extractor_dir = next(
            (
                d
                for d in (os.path.join(path, WHISPER_SUBDIR), path)
                if os.path.isfile(os.path.join(d, "preprocessor_config.json"))
            ),
            None,
        )
        extractor = WhisperFeatureExtractor.from_pretrained(extractor_dir) if extractor_dir else None
        if extractor is not None and extractor.feature_size != 128:
            raise ValueError(
                f"{extractor_dir}: Kimi-Audio needs 128 mel bins, preprocessor_config.json has "
                f"{extractor.feature_size}"
            )
        processor = cls(tokenizer, extractor)
        processor.name_or_path = os.path.abspath(path)
        return processor

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> list[str]:
        save_directory = os.fspath(save_directory)
        os.makedirs(save_directory, exist_ok=True)
        files = list(self.tokenizer.save_pretrained(save_directory))
        whisper_dir = os.path.join(save_directory, WHISPER_SUBDIR)
        os.makedirs(whisper_dir, exist_ok=True)
        files += list(self.feature_extractor.save_pretrained(whisper_dir))
        marker = os.path.join(save_directory, "processor_config.json")
        with open(marker, "w", encoding="utf-8") as f:
            json.dump({"processor_class": type(self).__name__}, f, indent=2)
        return files + [marker]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(tokenizer={type(self.tokenizer).__name__}, feature_size=128, sampling_rate=16000)"
        )


def pad_ids(sequences: list[list[int]], pad_id: int, padding_side: str = "left") -> dict[str, torch.Tensor]:
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, seq in enumerate(sequences):
        span = slice(length - len(seq), length) if padding_side == "left" else slice(0, len(seq))
        ids[row, span] = torch.tensor(seq, dtype=torch.long)
        mask[row, span] = 1
    return {"input_ids": ids, "attention_mask": mask}


def transcript_text(tokenizer, ids: list[int]) -> str:
    """Text before ``<|im_kimia_text_eos|>``, audio ids and specials dropped (spec §7)."""
    eos = tokenizer.convert_tokens_to_ids(st.TEXT_EOS)
    text_vocab = getattr(tokenizer, "num_base_tokens", None) or eos
    ids = ids[: ids.index(eos)] if eos in ids else ids
    return tokenizer.decode([t for t in ids if t < text_vocab]).strip()
