"""The frozen Whisper-large-v3 encoder of the official layout: built from ``whisper-large-v3/config.json``, read from
and written to ``whisper-large-v3/model.safetensors`` (a full Whisper; only ``model.encoder.*`` is used), and run to
the 12.5 Hz rows the VQ adaptor reads."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from ..errors import ModelError
from .constants import WHISPER_MEL_BINS

ENCODER_PREFIX = "model.encoder."


def build_whisper_encoder(whisper_config: dict[str, Any] | None) -> nn.Module | None:
    if not whisper_config:
        return None
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    keys = ("d_model", "encoder_layers", "encoder_attention_heads", "encoder_ffn_dim", "num_mel_bins")
    config = WhisperConfig(**{k: whisper_config[k] for k in keys if k in whisper_config})
    config.max_source_positions = whisper_config.get("max_source_positions", 1500)
    config._attn_implementation = "sdpa"
    encoder = WhisperEncoder(config)
    encoder.requires_grad_(False)
    return encoder


def read_whisper_encoder_state(weights: str, expected: Iterable[str]) -> dict[str, torch.Tensor]:
    """The ``model.encoder.*`` tensors named by ``expected`` from a full Whisper file; the decoder is never read."""
    from safetensors import safe_open

    prefix, expected = ENCODER_PREFIX, set(expected)
    with safe_open(weights, framework="pt", device="cpu") as f:
        names = [k for k in f.keys() if k.startswith(prefix) and k[len(prefix) :] in expected]
        state = {k[len(prefix) :]: f.get_tensor(k) for k in names}
    missing = sorted(expected - set(state))
    if missing:
        raise ModelError(f"{weights}: missing Whisper encoder tensors {missing[:5]} (expected keys model.encoder.*)")
    return state


def save_whisper_dir(
    directory: str, encoder_state: dict[str, torch.Tensor], whisper_config: dict[str, Any] | None
) -> None:
    from safetensors.torch import save_file
    from transformers import WhisperFeatureExtractor

    os.makedirs(directory, exist_ok=True)
    tensors = {f"{ENCODER_PREFIX}{k}": v.detach().contiguous().cpu() for k, v in encoder_state.items()}
    save_file(tensors, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(directory, "config.json"), "w", encoding="utf-8") as f:
        json.dump(whisper_config or {}, f, indent=2, sort_keys=True)
    WhisperFeatureExtractor(feature_size=WHISPER_MEL_BINS).save_pretrained(directory)


def encode_whisper_rows(encoder: nn.Module, input_features: torch.Tensor, chunk_tokens: torch.Tensor) -> torch.Tensor:
    """Whisper frames of every 30 s chunk, first 4·T kept, stacked 4 → 1 to 12.5 Hz rows (spec §3.2).

    Shared by the model and ``kimi-audio-lf precompute``, so cached rows are computed exactly as online ones.
    """
    dtype = next(encoder.parameters()).dtype
    frozen = not any(p.requires_grad for p in encoder.parameters())
    # no autocast: online rows (inside the Trainer's bf16 autocast) must equal precomputed ones (none)
    autocast_off = torch.autocast(input_features.device.type, enabled=False)
    with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen), autocast_off:
        hidden = encoder(input_features.to(dtype)).last_hidden_state
    rows = [hidden[i, : 4 * int(n)].reshape(int(n), -1) for i, n in enumerate(chunk_tokens.tolist())]
    return torch.cat(rows)
