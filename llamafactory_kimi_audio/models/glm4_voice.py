"""Native GLM-4-Voice speech tokenizer (THUDM ``WhisperVQEncoder``): 16 kHz audio -> 12.5 Hz codes in [0, 16384).

Spec: shared/docs/glm4-voice-tokenizer.md. Pure torch plus transformers' ``WhisperFeatureExtractor``; the module is
constructed and filled with ``load_state_dict`` (``from_pretrained`` of the original re-initialises weights on 5.x).
Codes are returned without Kimi's ``kimia_token_offset`` (152064).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError, ModelError
from .constants import CHUNK_SAMPLES, SAMPLE_RATE, SAMPLES_PER_TOKEN, WHISPER_MEL_BINS

HOP_LENGTH = 160
_OPTIONAL_KEYS = ("embed_positions2.weight", "ema_count", "ema_weight")  # stored in the Hub file, unused for codes

# WhisperVQConfig class defaults: what the original reads for a key absent from config.json (spec §1).
_CLASS_DEFAULTS: dict[str, Any] = dict(
    d_model=384, encoder_layers=4, encoder_attention_heads=6, encoder_ffn_dim=1536, num_mel_bins=80,
    max_source_positions=1500, quantize_position=16, pooling_position=0, pooling_kernel_size=None,
    pooling_type="max", quantize_vocab_size=None, quantize_causal_block_size=None,
    encoder_causal_convolution=False, encoder_causal_attention=False, quantize_causal_encoder=False,
    quantize_encoder_only=False, quantize_ema_decay=None,
)  # fmt: skip
# The remaining released config.json keys (spec §1); decoder shapes default to the encoder's (equal in the release).
_HUB_EXTRA: dict[str, Any] = dict(
    _name_or_path="THUDM/glm-4-voice-tokenizer", architectures=["WhisperVQEncoder"], model_type="whisper",
    activation_dropout=0.0, activation_function="gelu", apply_spec_augment=False, attention_dropout=0.0,
    begin_suppress_tokens=[220, 50257], bos_token_id=50257, classifier_proj_size=256, decoder_layerdrop=0.0,
    decoder_start_token_id=50258, dropout=0.0, encoder_layerdrop=0.0, eos_token_id=50257, init_std=0.02,
    is_encoder_decoder=True, mask_feature_length=10, mask_feature_min_masks=0, mask_feature_prob=0.0,
    mask_time_length=10, mask_time_min_masks=2, mask_time_prob=0.05, max_length=448, max_target_positions=448,
    median_filter_width=7, pad_token_id=50256, quantize_commit_coefficient=0.25, quantize_loss_scale=10.0,
    quantize_restart_interval=100, scale_embedding=False, skip_language_detection=True, torch_dtype="float32",
    transformers_version="4.44.1", use_cache=True, use_weighted_layer_sum=False, vocab_size=51866,
)  # fmt: skip
_PREPROCESSOR = dict(
    chunk_length=30, feature_extractor_type="WhisperFeatureExtractor", feature_size=128, hop_length=HOP_LENGTH,
    n_fft=400, n_samples=CHUNK_SAMPLES, nb_max_frames=3000, padding_side="right", padding_value=0.0,
    processor_class="WhisperProcessor", return_attention_mask=False, sampling_rate=SAMPLE_RATE,
)  # fmt: skip


@dataclasses.dataclass
class Glm4VoiceConfig:
    """The encoder fields of the tokenizer's config.json; constructor defaults are the released values."""

    d_model: int = 1280
    encoder_layers: int = 32
    encoder_attention_heads: int = 20
    encoder_ffn_dim: int = 5120
    num_mel_bins: int = 128
    max_source_positions: int = 1500
    quantize_position: int = 16
    pooling_position: int = 16
    pooling_kernel_size: int | None = 4
    pooling_type: str = "avg"
    quantize_vocab_size: int | None = 16384
    quantize_causal_block_size: int | None = 200
    encoder_causal_convolution: bool = True
    encoder_causal_attention: bool = False
    quantize_causal_encoder: bool = False
    quantize_encoder_only: bool = True
    quantize_ema_decay: float | None = 0.99
    # the other config.json keys, kept for saving; not part of equality
    extra: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        b, k, q = self.quantize_causal_block_size, self.pooling_kernel_size, self.quantize_position
        bad = [msg for failed, msg in (
            (self.encoder_causal_attention or self.quantize_causal_encoder,
             "encoder_causal_attention / quantize_causal_encoder must be false (causal encoder not implemented)"),
            (not isinstance(b, int) or b < 1, f"quantize_causal_block_size must be a positive int, got {b!r}"),
            (self.pooling_type not in ("avg", "max"), f"pooling_type {self.pooling_type!r} is not 'avg' or 'max'"),
            (not isinstance(k, int) or k < 1, f"pooling_kernel_size must be a positive int, got {k!r}"),
            (self.pooling_position != q, f"pooling_position {self.pooling_position} must equal quantize_position {q}"),
            (not 1 <= q <= self.encoder_layers, f"quantize_position {q} must be in 1..encoder_layers"),
            (not self.quantize_vocab_size, "quantize_vocab_size must be set"),
            (self.d_model % self.encoder_attention_heads != 0, "d_model must be divisible by encoder_attention_heads"),
            (self.extra.get("activation_function", "gelu") != "gelu", "activation_function must be 'gelu'"),
        ) if failed]  # fmt: skip
        if bad:
            raise ModelError("unsupported GLM-4-Voice tokenizer config: " + "; ".join(bad))

    @property
    def samples_per_code(self) -> int:
        return HOP_LENGTH * 2 * int(self.pooling_kernel_size)  # 1280: conv2 stride 2, pooling x4, hop 160

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Glm4VoiceConfig:
        kwargs = {k: data.get(k, v) for k, v in _CLASS_DEFAULTS.items()}
        return cls(**kwargs, extra={k: v for k, v in data.items() if k not in _CLASS_DEFAULTS})

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> Glm4VoiceConfig:
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    def to_dict(self) -> dict[str, Any]:
        """The full config.json key set of the Hub file (spec §1)."""
        shapes = dict(decoder_layers=self.encoder_layers, decoder_attention_heads=self.encoder_attention_heads,
                      decoder_ffn_dim=self.encoder_ffn_dim, num_hidden_layers=self.encoder_layers)  # fmt: skip
        own = {k: getattr(self, k) for k in _CLASS_DEFAULTS}
        return copy.deepcopy(dict(sorted({**_HUB_EXTRA, **shapes, **self.extra, **own}.items())))


@functools.lru_cache(maxsize=4)
def _feature_extractor(num_mel_bins: int) -> Any:
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(feature_size=num_mel_bins)


def _as_waveform(wave: Any, what: str) -> np.ndarray:
    arr = np.asarray(wave.detach().cpu() if isinstance(wave, torch.Tensor) else wave, dtype=np.float32)
    if arr.ndim != 1:
        raise InputError(f"{what}: expected mono 1-D audio at 16 kHz, got shape {arr.shape}")
    if arr.size == 0:
        raise InputError(f"{what}: empty audio (0 samples) cannot be tokenized")
    return arr


def glm4_voice_features(
    chunks: Sequence[np.ndarray], num_mel_bins: int = WHISPER_MEL_BINS, pad_to_multiple_of: int = SAMPLES_PER_TOKEN
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-mel features of <= 30 s chunks, as the reference computes them (spec §3.1), on CPU.

    Returns ``features`` float32 ``[C, num_mel_bins, F]`` and ``frame_mask`` int64 ``[C, F]`` (1 = valid mel frame),
    ``F = P / 160`` with ``P`` the longest chunk rounded up to a multiple of ``pad_to_multiple_of``.
    """
    if len(chunks) == 0:
        raise InputError("glm4_voice_features needs at least one chunk")
    arrays = [_as_waveform(c, f"chunk {i}") for i, c in enumerate(chunks)]
    if max(a.size for a in arrays) > CHUNK_SAMPLES:
        raise InputError(f"chunks must be at most {CHUNK_SAMPLES} samples (30 s); split longer audio first")
    out = _feature_extractor(num_mel_bins)(
        arrays, sampling_rate=SAMPLE_RATE, padding="longest", pad_to_multiple_of=pad_to_multiple_of,
        return_attention_mask=True, return_tensors="pt",
    )  # fmt: skip
    return out["input_features"].to(torch.float32), out["attention_mask"].to(torch.long)  # mask already [:, ::160]


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> torch.Tensor:
    inv = torch.exp(-math.log(max_timescale) / (channels // 2 - 1) * torch.arange(channels // 2, dtype=torch.float32))
    angle = torch.arange(length, dtype=torch.float32)[:, None] * inv[None, :]
    return torch.cat([angle.sin(), angle.cos()], dim=1)


class _SelfAttention(nn.Module):
    def __init__(self, d_model: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, d = h.shape
        q, k, v = (p(h).view(b, t, self.heads, -1).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # scale 1/sqrt(head_dim)
        return self.out_proj(out.transpose(1, 2).reshape(b, t, d))


class _EncoderLayer(nn.Module):
    def __init__(self, cfg: Glm4VoiceConfig) -> None:
        super().__init__()
        self.self_attn = _SelfAttention(cfg.d_model, cfg.encoder_attention_heads)
        self.self_attn_layer_norm = nn.LayerNorm(cfg.d_model)
        self.fc1 = nn.Linear(cfg.d_model, cfg.encoder_ffn_dim)
        self.fc2 = nn.Linear(cfg.encoder_ffn_dim, cfg.d_model)
        self.final_layer_norm = nn.LayerNorm(cfg.d_model)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = h + self.self_attn(self.self_attn_layer_norm(h), mask)
        return h + self.fc2(F.gelu(self.fc1(self.final_layer_norm(h))))


class Glm4VoiceEncoder(nn.Module):
    """The first ``quantize_position`` layers of the WhisperVQ encoder, pooling and VQ; parameter names = Hub keys."""

    def __init__(self, config: Glm4VoiceConfig) -> None:
        super().__init__()
        self.config = cfg = config
        pad = 0 if cfg.encoder_causal_convolution else 1  # causal convs left-pad in forward instead
        self.conv1 = nn.Conv1d(cfg.num_mel_bins, cfg.d_model, kernel_size=3, padding=pad)
        self.conv2 = nn.Conv1d(cfg.d_model, cfg.d_model, kernel_size=3, stride=2, padding=pad)
        self.embed_positions = nn.Embedding(cfg.max_source_positions, cfg.d_model)
        self.embed_positions.requires_grad_(False)
        self.layers = nn.ModuleList(_EncoderLayer(cfg) for _ in range(cfg.quantize_position))
        self.codebook = nn.Embedding(cfg.quantize_vocab_size, cfg.d_model)
        pooled_positions = math.ceil(cfg.max_source_positions / cfg.pooling_kernel_size)
        self.embed_positions2 = nn.Embedding(pooled_positions, cfg.d_model)  # unused for codes
        if cfg.quantize_ema_decay is not None:
            self.register_buffer("ema_count", torch.ones(cfg.quantize_vocab_size))
            self.register_buffer("ema_weight", torch.zeros(cfg.quantize_vocab_size, cfg.d_model))

    def _conv(self, conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(conv(F.pad(x, (2, 0)) if self.config.encoder_causal_convolution else x))

    def forward(self, input_features: torch.Tensor, frame_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled states ``[B, T/4, d]`` (before VQ) and the token keep-mask ``[B, T/4]`` (bool)."""
        cfg, weight = self.config, self.conv1.weight
        if weight.dtype != torch.float32:
            raise InputError(f"the GLM-4-Voice tokenizer must run in float32 (module is {weight.dtype})")
        if input_features.ndim != 3 or input_features.shape[1] != cfg.num_mel_bins:
            raise InputError(f"input_features must be [B, {cfg.num_mel_bins}, F], got {tuple(input_features.shape)}")
        b, _, n = input_features.shape
        if tuple(frame_mask.shape) != (b, n) or n % 2:
            raise InputError(f"frame_mask must be [B, F] with F even; got {tuple(frame_mask.shape)} for F = {n}")
        t = n // 2
        if t > cfg.max_source_positions:
            raise InputError(f"{n} mel frames exceed {2 * cfg.max_source_positions} (30 s); chunk the audio first")
        x = self._conv(self.conv2, self._conv(self.conv1, input_features.to(weight.device, torch.float32)))
        h = x.permute(0, 2, 1) + self.embed_positions.weight[:t]
        valid = frame_mask.to(weight.device).bool()[:, ::2]  # 50 Hz frame k valid iff 320k < L
        block = torch.arange(t, device=weight.device) // cfg.quantize_causal_block_size
        allowed = (block[None, :] <= block[:, None])[None] & valid[:, None, :]  # keys only; [B, T, T]
        mask = ((1.0 - allowed.to(torch.float32)) * torch.finfo(torch.float32).min)[:, None]
        for layer in self.layers:
            h = layer(h, mask)
        k = cfg.pooling_kernel_size
        h = h.permute(0, 2, 1)
        if t % k:
            h = F.pad(h, (0, k - t % k))
        h = F.avg_pool1d(h, k) if cfg.pooling_type == "avg" else F.max_pool1d(h, k)  # padded frames included
        return h.permute(0, 2, 1), valid[:, ::k]

    def quantize(self, states: torch.Tensor) -> torch.Tensor:
        """Nearest codebook rows (squared Euclidean, the reference's exact ``addmm`` order); int64 ``[...]``."""
        x, c = states.reshape(-1, states.shape[-1]), self.codebook.weight
        dist = torch.addmm(c.pow(2).sum(1) + x.pow(2).sum(1, keepdim=True), x, c.t(), beta=1.0, alpha=-2.0)
        return torch.min(dist, dim=1).indices.reshape(states.shape[:-1])

    @torch.no_grad()
    def encode_features(self, input_features: torch.Tensor, frame_mask: torch.Tensor) -> list[torch.Tensor]:
        """Codes per row (trimmed to ``ceil(L_c / 1280)``), int64 on the module's device."""
        states, keep = self(input_features, frame_mask)
        return [row[m] for row, m in zip(self.quantize(states), keep)]

    @torch.no_grad()
    def tokenize(self, waveforms: Sequence[np.ndarray], batch_size: int = 32) -> list[torch.Tensor]:
        """Codes (int64, CPU) for each mono 16 kHz waveform: 30 s chunks, batched, concatenated per waveform."""
        chunks: list[np.ndarray] = []
        spans: list[range] = []  # the chunks of each waveform
        for i, wave in enumerate(waveforms):
            arr = _as_waveform(wave, f"waveform {i}")
            spans.append(range(len(chunks), len(chunks) + math.ceil(arr.size / CHUNK_SAMPLES)))
            chunks += [arr[s : s + CHUNK_SAMPLES] for s in range(0, arr.size, CHUNK_SAMPLES)]
        # Codes do not depend on the batch's padding (spec §3.10): batch longest-first, and start a new batch
        # rather than pad a chunk to more than twice (and 1 s beyond) its length.
        batches: list[list[int]] = []
        for j in sorted(range(len(chunks)), key=lambda j: -chunks[j].size):
            size, longest = chunks[j].size, chunks[batches[-1][0]].size if batches else 0
            if not batches or len(batches[-1]) >= batch_size or longest > max(2 * size, size + 16000):
                batches.append([])
            batches[-1].append(j)
        codes: dict[int, torch.Tensor] = {}
        for idx in batches:
            feats, mask = glm4_voice_features([chunks[j] for j in idx], self.config.num_mel_bins,
                                              self.config.samples_per_code)  # fmt: skip
            codes.update(zip(idx, (c.cpu() for c in self.encode_features(feats, mask))))
        return [torch.cat([codes[j] for j in span]) for span in spans]


def _adapt_keys(state: dict[str, torch.Tensor], cfg: Glm4VoiceConfig) -> dict[str, torch.Tensor]:
    """Accept GLM training checkpoints (``model.encoder.*``) and full-depth encoders like GLM's loader does."""
    prefix = "model.encoder."
    if any(k.startswith(prefix) for k in state):
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    elif cfg.quantize_encoder_only:
        return state

    def deeper(key: str) -> bool:
        return key.startswith("layers.") and int(key.split(".")[1]) >= cfg.quantize_position

    return {k: v for k, v in state.items() if not k.startswith("layer_norm.") and not deeper(k)}


def load_glm4_voice_tokenizer(directory: str | os.PathLike, device: str | torch.device = "cpu") -> Glm4VoiceEncoder:
    """Build the encoder from ``config.json`` + ``model.safetensors`` (fp32, eval, frozen) with strict key checks."""
    from safetensors.torch import load_file

    path = os.path.join(directory, "model.safetensors")
    cfg = Glm4VoiceConfig.from_json_file(os.path.join(directory, "config.json"))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: GLM-4-Voice tokenizer weights not found")
    state = _adapt_keys(load_file(path, device=str(device)), cfg)
    with torch.device("meta"):
        module = Glm4VoiceEncoder(cfg)
    expected = module.state_dict()
    missing = [k for k in expected if k not in state and k not in _OPTIONAL_KEYS]
    unexpected = [k for k in state if k not in expected and k not in _OPTIONAL_KEYS]
    shapes = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
              if k in state and state[k].shape != v.shape]  # fmt: skip
    if missing or unexpected or shapes:
        raise ModelError(f"{path} does not match the GLM-4-Voice tokenizer config: missing keys {missing}, "
                         f"unexpected keys {unexpected}, shape mismatches {shapes}")  # fmt: skip
    zeros = {k: torch.zeros(v.shape, device=device) for k, v in expected.items() if k not in state}  # unused tensors
    loaded = {k: v.to(torch.float32) for k, v in state.items() if k in expected}
    module.load_state_dict({**zeros, **loaded}, strict=True, assign=True)
    return module.requires_grad_(False).eval()


def save_glm4_voice_tokenizer(module: Glm4VoiceEncoder, directory: str | os.PathLike) -> None:
    """Write config.json, model.safetensors (fp32, Hub key layout) and preprocessor_config.json."""
    from safetensors.torch import save_file

    os.makedirs(directory, exist_ok=True)
    cfg = module.config
    preprocessor = {**_PREPROCESSOR, "feature_size": cfg.num_mel_bins}
    for name, data in (("config.json", cfg.to_dict()), ("preprocessor_config.json", preprocessor)):
        with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
            f.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in module.state_dict().items()}
    save_file(state, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
