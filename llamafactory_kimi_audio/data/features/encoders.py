"""The audio front-end of a checkpoint, loaded without its language model: processor, Whisper encoder (bf16 on
CUDA, fp32 on CPU) and GLM-4-Voice tokenizer (fp32). ``precompute`` drives it; it computes exactly what
``KimiAudioForCausalLM`` computes online.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from ...constants import chunk_count
from ...errors import ModelError


class EncoderError(ModelError):
    """The checkpoint's audio encoders cannot be identified or loaded (a model problem, not a data problem)."""


@dataclass
class AudioEncoders:
    """The audio front-end of a checkpoint: processor, Whisper encoder and GLM-4-Voice tokenizer."""

    processor: Any
    whisper: Any
    semantic: Any
    device: Any

    def encode(self, waveforms: list[Any]) -> list[tuple[Any, Any]]:
        """``(codes, rows)`` per 16 kHz waveform, as ``KimiAudioForCausalLM.frame_inputs`` computes them."""
        return self.encode_features(self.features(waveforms), [len(w) for w in waveforms])

    def features(self, waveforms: list[Any]) -> dict[str, Any]:
        """Both log-mels of a batch (CPU); thread-safe, so it can run while the encoders work on the last batch."""
        return self.processor.audio_inputs(waveforms)

    def encode_features(
        self, features: dict[str, Any], lengths: list[int], with_rows: bool = True
    ) -> list[tuple[Any, Any]]:
        """``(codes, rows)`` per waveform of ``lengths`` samples from ``features`` (the encoders' device); rows are
        None without ``with_rows`` (codes-only caches: Whisper is not run)."""
        import torch

        from ...models.whisper_encoder import encode_whisper_rows

        inputs = {k: v.to(self.device) for k, v in features.items()}
        with torch.no_grad():
            codes = torch.cat(
                self.semantic.encode_features(
                    _as_float(inputs["semantic_input_features"]), inputs["semantic_frame_mask"]
                )
            )
            rows = None
            if with_rows:
                rows = encode_whisper_rows(self.whisper, inputs["audio_input_features"], inputs["audio_chunk_tokens"])
        chunk_tokens = iter(inputs["audio_chunk_tokens"].tolist())  # per 30 s chunk, audio after audio
        sizes = [sum(next(chunk_tokens) for _ in range(chunk_count(n))) for n in lengths]
        return list(zip(codes.split(sizes), rows.split(sizes) if rows is not None else [None] * len(sizes)))


def _as_float(features: Any) -> Any:
    import torch

    # The processor ships GLM features as int32 bit patterns (immune to the collator's casts), as the model reads them.
    return features.view(torch.float32) if features.dtype == torch.int32 else features.float()


def load_audio_encoders(model_dir: str, device: str = "cpu", whisper_dtype: str | None = None) -> AudioEncoders:
    """Load the processor and both audio encoders of ``model_dir`` (no language model); Whisper runs in
    ``whisper_dtype`` (the dtype training runs it in), by default bf16 on CUDA and fp32 on CPU."""
    import torch

    from ...models.configuration_kimi_audio import KimiAudioConfig
    from ...models.constants import WHISPER_SUBDIR
    from ...models.glm4_voice import load_glm4_voice_tokenizer
    from ...models.processing_kimi_audio import KimiAudioProcessor

    config = KimiAudioConfig.from_pretrained(model_dir)
    if not config.whisper_config:
        raise FileNotFoundError(
            f"{os.path.join(model_dir, WHISPER_SUBDIR, 'config.json')}: Whisper encoder config not found"
        )
    if not config.semantic_tokenizer_path:
        raise FileNotFoundError(f"{model_dir}: GLM-4-Voice tokenizer not found (glm-4-voice-tokenizer/ next to it)")
    target = torch.device(device)
    dtype = (
        getattr(torch, whisper_dtype) if whisper_dtype else torch.bfloat16 if target.type == "cuda" else torch.float32
    )
    whisper_file = os.path.join(model_dir, WHISPER_SUBDIR, "model.safetensors")
    whisper = load_whisper_encoder(config.whisper_config, whisper_file, target, dtype)
    semantic = load_glm4_voice_tokenizer(config.semantic_tokenizer_path, device=target)
    return AudioEncoders(KimiAudioProcessor.from_pretrained(model_dir), whisper, semantic, target)


def load_whisper_encoder(whisper_config: dict[str, Any], weights: str, device: Any, dtype: Any) -> Any:
    """``build_whisper_encoder`` filled from the ``model.encoder.*`` tensors only (the decoder is never read)."""
    import torch

    from ...models.whisper_encoder import build_whisper_encoder, read_whisper_encoder_state

    if not os.path.isfile(weights):
        raise FileNotFoundError(f"{weights}: Whisper encoder weights not found")
    with torch.device("meta"):
        encoder = build_whisper_encoder(whisper_config)
    state = read_whisper_encoder_state(weights, encoder.state_dict())
    encoder.load_state_dict({k: v.to(device=device, dtype=dtype) for k, v in state.items()}, assign=True)
    return encoder.requires_grad_(False).eval()
