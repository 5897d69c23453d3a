"""The semantic flow-matching DiT of Kimi-Audio's detokenizer (codes at 50 Hz -> 80-bin mel velocity).

Module and parameter names follow the official ``DiTPrefix`` state dict (``kimia_infer/models/detokenizer/
flow_matching``), so the official ``model.pt`` loads by name. Attention is full (not causal) over the committed prefix
key/values of earlier chunks plus the current chunk, as the official flash-attention varlen call computes it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

REQUIRED_DIT_FIELDS = (
    "input_size",
    "semantic_vocab_size",
    "hidden_size",
    "depth",
    "num_heads",
    "mlp_ratio",
    "position_embedding_type",
    "max_seq_len",
)


@dataclass
class DiTConfig:
    """``model.dit`` of the official ``audio_detokenizer/config.yaml``; optional fields default as the official
    loader (``ffn_type`` defaults to the official ``conv1d_conv1d``, which the official block rejects too)."""

    input_size: int
    semantic_vocab_size: int  # the yaml value; the embedding has one more row (the CFG token)
    hidden_size: int
    depth: int
    num_heads: int
    mlp_ratio: float
    position_embedding_type: str
    max_seq_len: int
    ffn_type: str = "conv1d_conv1d"
    use_rope: bool = False
    rope_params: dict[str, Any] = field(
        default_factory=lambda: {"max_position_embeddings": 4096, "rope_base": 10000, "rope_interpolation_factor": 1}
    )

    @classmethod
    def from_yaml_dict(cls, dit: dict[str, Any]) -> DiTConfig:
        """Raises KeyError naming the first missing required field."""
        for name in REQUIRED_DIT_FIELDS:
            if name not in dit:
                raise KeyError(f"model.dit.{name}")
        names = set(cls.__dataclass_fields__)
        return cls(**{key: value for key, value in dit.items() if key in names})


def sincos_table(num_positions: int, dim: int) -> torch.Tensor:
    """fairseq-style table: [sin | cos] halves, frequencies 10000^(-i/(half-1)), row 0 (padding) zero."""
    half = dim // 2
    rate = math.log(10000) / (half - 1)
    freqs = torch.exp(torch.arange(half, dtype=torch.float) * -rate)
    angles = torch.arange(num_positions, dtype=torch.float).unsqueeze(1) * freqs.unsqueeze(0)
    table = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    if dim % 2:
        table = torch.cat([table, torch.zeros(num_positions, 1)], dim=1)
    table[0] = 0
    return table


class SinCosPositions(nn.Module):
    """Fixed positions. Like the official module, the row index is ``cumsum(id != 0)`` masked, not the id itself:
    a chunk that starts at position 0 gets rows 0..L-1, every later chunk gets rows 1..L."""

    def __init__(self, dim: int, max_seq_len: int) -> None:
        super().__init__()
        self.dim = dim
        self.table = sincos_table(max_seq_len + 1, dim)
        self.register_buffer("_float_tensor", torch.zeros(1))  # in the official state dict

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:
        if 1 + position_ids.shape[1] > self.table.shape[0]:
            self.table = sincos_table(1 + position_ids.shape[1], self.dim)
        nonzero = position_ids.ne(0).long()
        rows = torch.cumsum(nonzero, dim=1) * nonzero
        return self.table.to(self._float_tensor)[rows]


def rope_angles(head_dim: int, params: dict[str, Any], max_seq_len: int) -> torch.Tensor:
    """Complex rotations [positions, head_dim/2] of the official ``precompute_freqs_cis``."""
    freqs = 1.0 / (float(params["rope_base"]) ** (torch.arange(0, head_dim, 2)[: head_dim // 2].float() / head_dim))
    steps = torch.arange(int(params["max_position_embeddings"])).float() / float(params["rope_interpolation_factor"])
    angles = torch.outer(steps, freqs).float()
    return torch.polar(torch.ones_like(angles), angles)[:max_seq_len]


def apply_rope(x: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs (x0, x1), (x2, x3)... of [B, T, H, D] by [B, T, D/2] complex rotations."""
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(pairs * rotations.unsqueeze(2)).flatten(3).type_as(x)


class PrefixKVCache:
    """Per-layer key/values: ``prev`` = committed prefix, ``cur`` = prefix + the chunk of the latest forward."""

    def __init__(self, depth: int) -> None:
        self.prev: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * depth
        self.cur: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * depth

    def extend(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.prev[layer] is not None:
            k = torch.cat([self.prev[layer][0], k], dim=1)
            v = torch.cat([self.prev[layer][1], v], dim=1)
        self.cur[layer] = (k, v)
        return k, v

    def commit(self, max_tokens: int) -> None:
        """The latest forward becomes the prefix; keep only the newest ``max_tokens`` (official cap: 900)."""
        for layer, entry in enumerate(self.cur):
            if entry is None:
                continue
            k, v = entry
            if k.shape[1] > max_tokens:
                k, v = k[:, -max_tokens:], v[:, -max_tokens:]
            self.prev[layer], self.cur[layer] = (k, v), None


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, rotations, cache: PrefixKVCache | None, layer: int) -> torch.Tensor:
        batch, length, dim = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.num_heads, self.head_dim).unbind(2)
        if rotations is not None:
            q, k = apply_rope(q, rotations), apply_rope(k, rotations)
        if cache is not None:
            k, v = cache.extend(layer, k, v)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.proj(out.transpose(1, 2).reshape(batch, length, dim))


class Mlp(nn.Module):
    """timm ``Mlp`` with tanh-approximated GELU (the official ``vanilla_mlp``)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class DiTBlock(nn.Module):
    """adaLN-Zero block: c -> (shift, scale, gate) for attention and MLP; LayerNorms without affine, eps 1e-6."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.attn = Attention(dim, num_heads)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x, c, rotations, cache: PrefixKVCache | None, layer: int) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c).chunk(6, dim=2)
        normed = F.layer_norm(x, x.shape[-1:], eps=1e-6)
        x = x + gate1 * self.attn(modulate(normed, shift1, scale1), rotations, cache, layer)
        normed = F.layer_norm(x, x.shape[-1:], eps=1e-6)
        return x + gate2 * self.mlp(modulate(normed, shift2, scale2))


class FinalLayer(nn.Module):
    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, out_dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=2)
        return self.linear(modulate(F.layer_norm(x, x.shape[-1:], eps=1e-6), shift, scale))


class TimestepEmbedder(nn.Module):
    def __init__(self, dim: int, frequency_dim: int = 256) -> None:
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """``t``: integer steps 0..999 (the official ``(t * 1000).long()``); [cos | sin] of t * 10000^(-i/half)."""
        half = self.frequency_dim // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half).to(t.device)
        angles = t[:, None].float() * freqs[None]
        features = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
        return self.mlp(features.to(self.mlp[0].weight.dtype))


class FlowDiT(nn.Module):
    """Velocity field v(x_t, t | semantic codes) of the conditional flow matching model."""

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        if config.ffn_type != "vanilla_mlp":
            raise ValueError(f"ffn_type {config.ffn_type!r}: only 'vanilla_mlp' exists in the official detokenizer")
        dim = config.hidden_size
        self.config = config
        self.t_embedder = TimestepEmbedder(dim)
        self.semantic_token_embedding = nn.Embedding(config.semantic_vocab_size + 1, dim)
        self.input_linear = nn.Linear(config.input_size, dim)
        if config.position_embedding_type == "sincos":
            self.position_embedding = SinCosPositions(dim, config.max_seq_len)
        elif config.position_embedding_type == "learnable":
            self.position_embedding = nn.Embedding(config.max_seq_len + 1, dim)
        elif config.position_embedding_type == "skip":
            self.position_embedding = None
        else:
            raise ValueError(f"position_embedding_type {config.position_embedding_type!r}: sincos, learnable or skip")
        rope = (
            rope_angles(dim // config.num_heads, config.rope_params, config.max_seq_len) if config.use_rope else None
        )
        self.rope = rope
        self.blocks = nn.ModuleList(DiTBlock(dim, config.num_heads, config.mlp_ratio) for _ in range(config.depth))
        self.final_layer = FinalLayer(dim, config.input_size)

    def forward(
        self,
        x: torch.Tensor,
        tokens: torch.Tensor,
        steps: torch.Tensor,
        position_ids: torch.Tensor,
        cache: PrefixKVCache | None = None,
    ) -> torch.Tensor:
        """x [B, T, 80], tokens [B, T], steps [B] (0..999), position_ids [B, T] -> velocity [B, T, 80]."""
        h = self.input_linear(x)
        if self.position_embedding is not None:
            h = h + self.position_embedding(position_ids)
        rotations = self.rope.to(x.device)[position_ids] if self.rope is not None else None
        c = self.t_embedder(steps).unsqueeze(1) + self.semantic_token_embedding(tokens)
        for layer, block in enumerate(self.blocks):
            h = block(h, c, rotations, cache, layer)
        return self.final_layer(h, c)
