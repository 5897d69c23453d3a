"""Kimi-Audio self-attention (Qwen2 shape: q/k/v with bias, GQA, RoPE) through transformers' attention registry.

The kernel comes from ``ALL_ATTENTION_FUNCTIONS`` under ``config._attn_implementation`` (``sdpa`` by default), packed
rows go to the registered ``kimi_audio_varlen`` (``packed_attention.py``), and ``eager`` is the local reference
implementation, as in transformers' own models.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .configuration_kimi_audio import KimiAudioConfig
from .grouped_lora import project_together
from .packed_attention import VARLEN_ATTENTION, PackedSequences
from .pointwise import fused, rotary


def repeat_kv(hidden: torch.Tensor, n_rep: int) -> torch.Tensor:
    if n_rep == 1:
        return hidden
    batch, heads, length, dim = hidden.shape
    return hidden[:, :, None].expand(batch, heads, n_rep, length, dim).reshape(batch, heads * n_rep, length, dim)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain matmul-softmax-matmul (``AttentionInterface`` signature) → ([B,L,H,D], weights)."""
    key, value = repeat_kv(key, module.num_key_value_groups), repeat_kv(value, module.num_key_value_groups)
    scores = torch.matmul(query, key.transpose(2, 3)) / (query.shape[-1] ** 0.5)
    if is_causal:
        length = query.shape[2]
        causal = torch.ones(length, length, dtype=torch.bool, device=query.device).tril()
        scores = scores.masked_fill(~causal, torch.finfo(scores.dtype).min)
    elif attention_mask is not None:
        scores = scores + attention_mask
    probs = F.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    probs = F.dropout(probs, p=dropout)
    return torch.matmul(probs, value).transpose(1, 2), probs


def single_query_attention(q, k, v, bias: torch.Tensor, groups: int) -> torch.Tensor:
    """A decode step (one query per row) under a padding / cache bias, as [B, 1, H, D]. The G query heads of each
    KV head become G query rows, so SDPA reads the cache once: transformers' SDPA path copies K/V G times (7x here)
    whenever a mask is given, which at batch 32+ moves more bytes per step than the weights."""
    batch, heads, _, dim = q.shape
    out = F.scaled_dot_product_attention(q.reshape(batch, heads // groups, groups, dim), k, v, attn_mask=bias)
    return out.reshape(batch, heads, 1, dim).transpose(1, 2)


def attention_function(implementation: str | None, mask: Any):
    if isinstance(mask, PackedSequences):  # packed rows: one causal sequence per utterance
        return ALL_ATTENTION_FUNCTIONS[VARLEN_ATTENTION]
    if implementation == "eager":
        return eager_attention_forward
    return ALL_ATTENTION_FUNCTIONS[implementation or "sdpa"]


class KimiAudioAttention(nn.Module):
    is_causal = True  # read by transformers' sdpa_attention_forward when no mask is given

    def __init__(self, config: KimiAudioConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.num_key_value_groups = self.num_heads // self.num_kv_heads
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=True)
        self.k_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=True)
        self.v_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=True)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=False)

    def forward(self, hidden_states, position_embeddings, attention_bias, is_causal, past_key_values=None):
        batch, length, _ = hidden_states.shape
        q, k, v = project_together((self.q_proj, self.k_proj, self.v_proj), hidden_states)  # LoRA: one A matmul
        q = q.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)
        k = k.view(batch, length, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(batch, length, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = fused(rotary, self.config.compile_pointwise)(q, k, *position_embeddings)
        if past_key_values is not None:
            k, v = past_key_values.update(k, v, self.layer_idx)
        implementation = getattr(self.config, "_attn_implementation", None)
        if (
            length == 1
            and not self.training
            and isinstance(attention_bias, torch.Tensor)
            and implementation in (None, "sdpa")
        ):
            out = single_query_attention(q, k, v, attention_bias, self.num_key_value_groups)
            return self.o_proj(out.reshape(batch, length, -1))
        attention = attention_function(implementation, attention_bias)
        dropout = self.config.attention_dropout if self.training else 0.0
        out, _ = attention(self, q, k, v, attention_bias, dropout=dropout, is_causal=is_causal)
        return self.o_proj(out.reshape(batch, length, -1))
