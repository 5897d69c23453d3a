"""Deterministic tiny random Kimi-Audio checkpoints in the official file layout (for tests and the CPU demo).

``make_tiny_checkpoint(dir)`` writes::

    config.json  generation_config.json  model-0000x-of-0000n.safetensors  model.safetensors.index.json
    tiktoken.model  tokenizer_config.json  special_tokens_map.json
    whisper-large-v3/{config.json, preprocessor_config.json, model.safetensors (model.encoder.* + a decoder stub)}
    glm-4-voice-tokenizer/{config.json, preprocessor_config.json, model.safetensors}

The tokenizer keeps the real structure (421 specials right after the base vocabulary, audio ids after the text
vocabulary), only the base vocabulary is small, so every id is resolved at run time exactly as for the real model.
``preset="full"`` writes only the configs with the real shapes (GPU benchmarks build random weights from them).
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import regex
import torch

from ..errors import InputError
from ..versions import DTYPE_KWARG
from .configuration_kimi_audio import KimiAudioConfig
from .constants import SAMPLE_RATE, SEMANTIC_SUBDIR, WHISPER_SUBDIR
from .glm4_voice import Glm4VoiceConfig, Glm4VoiceEncoder, glm4_voice_features, save_glm4_voice_tokenizer, sinusoids
from .special_tokens import DEFAULT_INSTRUCTION, MEDIA_BEGIN, MEDIA_END, NUM_SPECIAL_TOKENS, SPECIAL_TOKENS
from .tokenization_kimi_audio import PAT_STR, write_tokenizer_files

TINY_CORPUS = [
    *DEFAULT_INSTRUCTION.values(),
    "zero one two three four five six seven eight nine ten red blue green yellow black white",
    "the quick brown fox jumps over the lazy dog. Transcribe this audio, please!",
    "一 二 三 四 五 六 七 八 九 十 零 红 蓝 绿 你好 世界 语音 识别 音频 内容 转换 文字",
]
TINY_WHISPER = {"d_model": 32, "encoder_layers": 1, "encoder_attention_heads": 2, "encoder_ffn_dim": 64}
FULL_WHISPER = {"d_model": 1280, "encoder_layers": 32, "encoder_attention_heads": 20, "encoder_ffn_dim": 5120}
GLM_VOCAB = {"tiny": 256, "full": 16384}


@dataclass(frozen=True)
class TinyCheckpoint:
    path: str
    num_parameters: int
    vocab_size: int
    num_base_tokens: int


def whisper_config(shape: dict[str, int]) -> dict[str, Any]:
    return {
        "architectures": ["WhisperForConditionalGeneration"],
        "model_type": "whisper",
        "num_mel_bins": 128,
        "max_source_positions": 1500,
        "decoder_layers": shape["encoder_layers"],
        "decoder_attention_heads": shape["encoder_attention_heads"],
        "decoder_ffn_dim": shape["encoder_ffn_dim"],
        "vocab_size": 51866,
        "torch_dtype": "float16",
        **shape,
    }


def kimi_config(num_base_tokens: int, preset: str) -> KimiAudioConfig:
    text_vocab = num_base_tokens + NUM_SPECIAL_TOKENS
    shapes = {
        "tiny": dict(
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            kimia_mimo_layers=2,
            kimia_mimo_transformer_from_layer_index=2,
            max_position_embeddings=2048,
        ),
        "full": dict(
            hidden_size=3584,
            intermediate_size=18944,
            num_hidden_layers=28,
            num_attention_heads=28,
            num_key_value_heads=4,
            kimia_mimo_layers=6,
            kimia_mimo_transformer_from_layer_index=21,
            max_position_embeddings=8192,
        ),
    }[preset]
    whisper = whisper_config(TINY_WHISPER if preset == "tiny" else FULL_WHISPER)
    return KimiAudioConfig(
        vocab_size=text_vocab + GLM_VOCAB[preset],
        kimia_token_offset=text_vocab,
        kimia_text_output_vocab=text_vocab,
        kimia_audio_output_vocab=GLM_VOCAB[preset] + 512,
        num_base_tokens=num_base_tokens,
        kimia_media_begin=num_base_tokens + SPECIAL_TOKENS.index(MEDIA_BEGIN),
        kimia_media_end=num_base_tokens + SPECIAL_TOKENS.index(MEDIA_END),
        kimia_adaptor_input_dim=4 * whisper["d_model"],
        rope_theta=1000000.0,  # Qwen2.5-7B's base; the real config.json is always read for the real model
        whisper_config=whisper,
        **{DTYPE_KWARG: "float32" if preset == "tiny" else "bfloat16"},  # 5.x warns on torch_dtype
        **shapes,
    )


def make_tiny_checkpoint(
    directory: str, preset: str = "tiny", seed: int = 0, detokenizer: bool = False
) -> TinyCheckpoint:
    """Write a complete checkpoint (``tiny``) or only the configs of the real shapes (``full``).

    ``detokenizer``: also write a tiny random ``audio_detokenizer/`` + ``vocoder/`` (official layout) so that speech
    output becomes a waveform (opt-in: most tests do not need it)."""
    if preset not in GLM_VOCAB:
        raise InputError(f"unknown preset {preset!r}; choose 'tiny' or 'full'")
    os.makedirs(directory, exist_ok=True)
    num_base = (
        write_tokenizer_files(directory, train_tiny_tiktoken(TINY_CORPUS, num_merges=192))
        if preset == "tiny"
        else 151643
    )
    config = kimi_config(num_base, preset)
    if preset == "full":
        return _write_configs_only(directory, config)
    from .checkpoint_io import align_token_ids, default_generation_config
    from .modeling_kimi_audio import KimiAudioForCausalLM

    glm_dir = os.path.join(directory, SEMANTIC_SUBDIR)
    make_tiny_glm4_voice_tokenizer(glm_dir, seed=seed, vocab_size=GLM_VOCAB[preset])
    config.semantic_tokenizer_path = os.path.abspath(glm_dir)
    torch.manual_seed(seed)
    model = KimiAudioForCausalLM(config)
    _reinit_deterministically(model, seed)
    model.generation_config = default_generation_config(config)
    align_token_ids(model.config, model.generation_config)  # config.json agrees with the tokenizer, as the loader's
    model.save_pretrained(directory, max_shard_size="1MB", safe_serialization=True)
    _add_whisper_decoder_stub(os.path.join(directory, WHISPER_SUBDIR))
    if detokenizer:
        from .detokenizer.tiny import write_tiny_detokenizer

        write_tiny_detokenizer(directory, GLM_VOCAB[preset], seed=seed)
    params = sum(p.numel() for p in model.parameters())
    return TinyCheckpoint(os.path.abspath(directory), params, config.vocab_size, num_base)


def _reinit_deterministically(model, seed: int) -> None:
    """Seeded, version-independent weights (transformers' own init order differs between 4.x and 5.x)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if name.endswith("embed_positions.weight"):
                continue  # Whisper's sinusoids
            if param.ndim == 1:
                param.copy_(
                    torch.ones_like(param) if "norm" in name and name.endswith("weight") else torch.zeros_like(param)
                )
            else:
                # LM: the usual 0.02 (trains well from scratch); the frozen random Whisper: fan-in scaled, so its
                # features keep the input's variance instead of vanishing.
                fan_in = param[0].numel()
                std = fan_in**-0.5 if name.startswith("whisper_encoder.") else 0.02
                if name.startswith("whisper_encoder.") and name.endswith(("out_proj.weight", "fc2.weight")):
                    std *= 0.1  # small residual branches: random attention would smear every frame over the clip
                param.copy_(torch.randn(param.shape, generator=generator) * std)


def _add_whisper_decoder_stub(whisper_dir: str) -> None:
    """The real ``whisper-large-v3/model.safetensors`` is a full Whisper; keep a decoder key so loaders must filter."""
    from safetensors.torch import load_file, save_file

    path = os.path.join(whisper_dir, "model.safetensors")
    tensors = load_file(path)
    tensors["model.decoder.layer_norm.weight"] = torch.ones(tensors["model.encoder.layer_norm.weight"].shape)
    save_file(dict(sorted(tensors.items())), path, metadata={"format": "pt"})


def _write_configs_only(directory: str, config: KimiAudioConfig) -> TinyCheckpoint:
    config.save_pretrained(directory)
    whisper_dir = os.path.join(directory, WHISPER_SUBDIR)
    os.makedirs(whisper_dir, exist_ok=True)
    with open(os.path.join(whisper_dir, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config.whisper_config, f, indent=2, sort_keys=True)
    return TinyCheckpoint(os.path.abspath(directory), 0, config.vocab_size, config.num_base_tokens)


def train_tiny_tiktoken(texts: list[str], num_merges: int = 256, pat_str: str = PAT_STR) -> dict[bytes, int]:
    """Deterministic tiny byte-level BPE: bytes 0..255 get ranks 0..255, then up to ``num_merges`` learned tokens.

    Merges are learned greedily over the pre-tokenizer pieces of ``texts`` (most frequent adjacent pair first, ties
    broken by the merged bytes, then by the left part); ranks stay contiguous.
    """
    ranks = {bytes([b]): b for b in range(256)}
    words = Counter(piece.encode("utf-8") for text in texts for piece in regex.findall(pat_str, text))
    seqs = [[bytes([b]) for b in word] for word in words]
    freqs = list(words.values())
    while len(ranks) < 256 + num_merges:
        pairs: dict[tuple[bytes, bytes], int] = {}
        for seq, freq in zip(seqs, freqs):
            for pair in zip(seq, seq[1:]):
                pairs[pair] = pairs.get(pair, 0) + freq
        if not pairs:
            break
        left, right = min(pairs, key=lambda p: (-pairs[p], p[0] + p[1], p[0]))
        merged = left + right
        ranks.setdefault(merged, len(ranks))
        for k, seq in enumerate(seqs):
            out, i = [], 0
            while i < len(seq):
                pair = i + 1 < len(seq) and seq[i] == left and seq[i + 1] == right
                out.append(merged if pair else seq[i])
                i += 2 if pair else 1
            seqs[k] = out
    return ranks


def synthetic_audio(rng: np.random.Generator, count: int, seconds: float = 2.5) -> list[np.ndarray]:
    """Chirps, tone pairs, harmonic stacks, noise bursts and AM noise: varied content for the tiny codebook."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    kinds = (
        lambda f0, f1: np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * seconds))),
        lambda f0, f1: np.sin(2 * np.pi * f0 * t) + 0.3 * np.sin(2 * np.pi * f1 * t),
        lambda f0, f1: sum(np.sin(2 * np.pi * (f0 / 8) * h * t) / h for h in range(1, 12)),
        lambda f0, f1: rng.standard_normal(t.size) * (rng.random(t.size // 1600 + 1).repeat(1600)[: t.size] > 0.5),
        lambda f0, f1: rng.standard_normal(t.size) * (1 + np.sin(2 * np.pi * f1 / 500 * t)),
    )
    clips = [kinds[i % len(kinds)](*rng.uniform(80, 4000, size=2)) for i in range(count)]
    return [(rng.uniform(0.05, 0.8) * x / np.abs(x).max()).astype(np.float32) for x in clips]


def make_tiny_glm4_voice_tokenizer(directory: str | os.PathLike, seed: int = 0, vocab_size: int = 256) -> str:
    """A deterministic tiny tokenizer of the spec §7 test config, saved in the Hub layout; returns ``directory``."""
    cfg = Glm4VoiceConfig(d_model=64, encoder_layers=4, encoder_attention_heads=4, encoder_ffn_dim=256,
                          quantize_position=2, pooling_position=2, quantize_vocab_size=vocab_size,
                          extra={"_name_or_path": "tiny-glm-4-voice-tokenizer"})  # fmt: skip
    gen = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        module = Glm4VoiceEncoder(cfg)
    module.to_empty(device="cpu")
    with torch.no_grad():
        for name, p in module.state_dict().items():
            if name.endswith("layer_norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif p.ndim == 1:  # biases, layer-norm shifts, ema_count
                p.copy_(0.02 * torch.randn(p.shape, generator=gen))
            else:  # fan-in scaled projections (codebook and positions are overwritten below)
                # small residual branches keep codes local in time (random attention would blur a 4 s block)
                scale = 0.1 if name.endswith(("out_proj.weight", "fc2.weight")) else 1.0
                p.copy_(scale * torch.randn(p.shape, generator=gen) / math.sqrt(p[0].numel()))
        module.embed_positions.weight.copy_(0.1 * sinusoids(cfg.max_source_positions, cfg.d_model))
        module.embed_positions2.weight.copy_(0.1 * sinusoids(module.embed_positions2.num_embeddings, cfg.d_model))
        rng = np.random.default_rng(seed)
        feats, mask = glm4_voice_features(synthetic_audio(rng, 12))
        states, keep = module(feats, mask)
        pool = states[keep]  # [N, d], N = 12 * 32
        rows = torch.from_numpy(rng.integers(0, pool.shape[0], size=vocab_size))
        rows[: min(vocab_size, pool.shape[0])] = torch.from_numpy(rng.permutation(pool.shape[0])[:vocab_size])
        jitter = torch.randn(vocab_size, cfg.d_model, generator=gen) * 0.05 * pool.std(0)
        module.codebook.weight.copy_(pool[rows] + jitter)
        module.ema_count.fill_(1.0)
        module.ema_weight.copy_(module.codebook.weight)
    save_glm4_voice_tokenizer(module, directory)
    return str(directory)
