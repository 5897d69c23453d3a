"""A tiny random detokenizer + vocoder in the official file layout, for tests and the CLI on CPU.

Writes ``audio_detokenizer/{config.yaml, model.pt}`` (``{"state_dict": {"speech_model.<name>": ...}}``) and
``vocoder/{config.json, model.pt}`` (``{"generator": {...}}`` with ``weight_g`` / ``weight_v`` pairs), as the
official Kimi-Audio checkpoint ships them, so the loader is exercised exactly as on the real files.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import torch
from torch import nn

from .bigvgan import BigVGAN
from .flow_model import DiTConfig, FlowDiT
from .loading import FLOW_SUBDIR, VOCODER_SUBDIR


def tiny_dit_config(semantic_vocab_size: int) -> dict[str, Any]:
    return {
        "input_size": 80,
        "semantic_vocab_size": semantic_vocab_size,
        "hidden_size": 32,
        "depth": 2,
        "num_heads": 2,
        "mlp_ratio": 2.0,
        "ffn_type": "vanilla_mlp",
        "use_rope": True,  # as the released config (rope on q/k plus the sincos input positions)
        "rope_params": {"max_position_embeddings": 4096, "rope_base": 10000.0, "rope_interpolation_factor": 1.0},
        "position_embedding_type": "sincos",
        "max_seq_len": 4096,
    }


def tiny_vocoder_config() -> dict[str, Any]:
    """Real mel/rate fields (80 mels, 24 kHz, hop 480 = 10 * 8 * 6); tiny channels and resblocks."""
    return {
        "resblock": "1",
        "num_mels": 80,
        "upsample_rates": [10, 8, 6],
        "upsample_kernel_sizes": [20, 16, 12],
        "upsample_initial_channel": 32,
        "resblock_kernel_sizes": [3],
        "resblock_dilation_sizes": [[1, 3]],
        "activation": "snakebeta",
        "snake_logscale": True,
        "sampling_rate": 24000,
        "hop_size": 480,
        "n_fft": 1920,
        "win_size": 1920,
        "fmin": 0,
        "fmax": None,
    }


def _randomize(module: nn.Module, generator: torch.Generator) -> None:
    """Seeded weights that keep activations O(1) (the official init zeroes the adaLN outputs: a silent model)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith(("alpha", "beta")):
                p.copy_(0.2 * torch.randn(p.shape, generator=generator))
            elif p.dim() == 1:
                p.copy_(0.05 * torch.randn(p.shape, generator=generator))
            else:
                p.copy_(torch.randn(p.shape, generator=generator) / math.sqrt(p[0].numel()))


def write_tiny_flow(directory: str, semantic_vocab_size: int, seed: int = 0) -> None:
    os.makedirs(directory, exist_ok=True)
    dit = tiny_dit_config(semantic_vocab_size)
    model = FlowDiT(DiTConfig.from_yaml_dict(dit))
    _randomize(model, torch.Generator().manual_seed(seed))
    state = {f"speech_model.{k}": v.clone() for k, v in model.state_dict().items()}
    torch.save({"state_dict": state}, os.path.join(directory, "model.pt"))
    lines = ["model:", "  dit:"] + [f"    {k}: {json.dumps(v)}" for k, v in dit.items()]
    lines += ["normalize_mel: true", "mel_mean: -5.0", "mel_std: 2.0"]
    with open(os.path.join(directory, "config.yaml"), "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")


def write_tiny_vocoder(directory: str, seed: int = 0) -> None:
    """Random BigVGAN whose convolutions are saved as (weight_g, weight_v) pairs, the weight_norm layout."""
    os.makedirs(directory, exist_ok=True)
    config = tiny_vocoder_config()
    model = BigVGAN(config)
    generator = torch.Generator().manual_seed(seed + 1)
    _randomize(model, generator)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv1d, nn.ConvTranspose1d)):
            v = state.pop(f"{name}.weight")
            g_shape = (v.shape[0],) + (1,) * (v.dim() - 1)
            norm = v.reshape(v.shape[0], -1).norm(dim=1).reshape(g_shape)
            g = norm * (1.0 + 0.1 * torch.randn(g_shape, generator=generator))
            state[f"{name}.weight_g"], state[f"{name}.weight_v"] = g, 3.0 * v
    state["conv_post.weight_g"] *= 0.05  # keep the tiny wave inside tanh's linear range (a real, unclipped signal)
    torch.save({"generator": state}, os.path.join(directory, "model.pt"))
    with open(os.path.join(directory, "config.json"), "w", encoding="utf-8") as handle:
        json.dump(config, handle, indent=2)


def write_tiny_detokenizer(checkpoint: str, semantic_vocab_size: int, seed: int = 0) -> None:
    """Both official directories inside ``checkpoint``."""
    write_tiny_flow(os.path.join(checkpoint, FLOW_SUBDIR), semantic_vocab_size, seed)
    write_tiny_vocoder(os.path.join(checkpoint, VOCODER_SUBDIR), seed)
