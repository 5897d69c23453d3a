"""Packed rows (LLaMA-Factory's ``packing`` + ``neat_packing``) through variable-length FlashAttention.

A packed row holds several utterances, and the collator's 4-D mask lets each token see only the earlier tokens of its
own utterance. SDPA takes that mask as a dense [B,1,L,L] bias and computes every query/key pair of the row, ~6× the
work of the utterances themselves at ASR lengths (~175 tokens per utterance, 1,024-token rows). PyTorch's
``varlen_attn`` (≥ 2.9, CUDA, fp16/bf16) instead runs causal attention over each utterance as its own sequence of the
flattened batch. Real tokens get the same attention; the pad tail of a row becomes one sequence of its own, which
nothing reads. Registered with transformers' ``AttentionInterface`` as ``kimi_audio_varlen``; used automatically
where it applies, unless ``config.use_varlen_attention`` is False (then the dense mask).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from transformers import AttentionInterface

from ..versions import VARLEN_AVAILABLE, varlen_kernel
from .masks import utterance_starts

VARLEN_ATTENTION = "kimi_audio_varlen"


def _varlen_attn(*args: Any, **kwargs: Any) -> torch.Tensor:
    """torch's ``varlen_attn``, imported on the first call (``versions.varlen_kernel``)."""
    return varlen_kernel().attn(*args, **kwargs)


varlen_attn = _varlen_attn if VARLEN_AVAILABLE else None  # None: this torch has no variable-length kernel


def native_gqa() -> bool:
    """Whether the kernel takes fewer key/value heads than query heads itself."""
    kernel = varlen_kernel()
    return kernel is not None and kernel.native_gqa


class PackedSequences(NamedTuple):
    """Utterances of packed rows as offsets into the flattened [B·L] token stream (``cu_seqlens`` [N+1], int32)."""

    cu_seqlens: torch.Tensor
    max_len: int  # an upper bound (the row length): the exact maximum would cost a device sync


HALF_DTYPES = (torch.float16, torch.bfloat16)


def varlen_applies(hidden: torch.Tensor) -> bool:
    return varlen_attn is not None and hidden.is_cuda and compute_dtype(hidden.dtype) in HALF_DTYPES


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """What attention runs in: fp32 activations under CUDA autocast go to its fp16/bf16, as SDPA's inputs would."""
    if dtype not in HALF_DTYPES and torch.is_autocast_enabled("cuda"):
        return torch.get_autocast_dtype("cuda")
    return dtype


def packed_sequences(position_ids: torch.Tensor, bias: torch.Tensor) -> PackedSequences:
    """An utterance starts where its positions restart at 0 (``neat_packing`` rows); the pad tail of a row (the
    tokens the [B,1,L,L] ``bias`` does not even let see themselves) is one more sequence."""
    real = torch.diagonal(bias[:, 0], dim1=-2, dim2=-1) == 0
    starts = utterance_starts(position_ids) & real
    starts[:, 1:] |= real[:, 1:] != real[:, :-1]
    starts[:, 0] = True
    flat = starts.flatten()
    end = torch.tensor([flat.numel()], device=flat.device)
    cu_seqlens = torch.cat([flat.nonzero().flatten(), end]).to(torch.int32)
    return PackedSequences(cu_seqlens, position_ids.shape[1])


def varlen_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: PackedSequences,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """``AttentionInterface`` signature: causal attention of [B,H,L,D] queries over [B,Hkv,L,D] keys/values within
    each packed sequence of ``attention_mask`` → ([B,L,H,D], no weights). No dropout: the kernel has none."""
    batch, heads, length, dim = query.shape
    half = compute_dtype(query.dtype)

    def tokens(x: torch.Tensor) -> torch.Tensor:  # [B,h,L,D] → [B·L, h, D] in fp16/bf16
        return x.transpose(1, 2).reshape(batch * length, x.shape[1], dim).to(half)

    if not native_gqa() and key.shape[1] != heads:  # K/V heads repeated to the query heads
        groups = heads // key.shape[1]
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    out = call_varlen(tokens(query), tokens(key), tokens(value), attention_mask.cu_seqlens, attention_mask.max_len)
    return out.view(batch, length, heads, dim), None


def call_varlen(q, k, v, cu_seqlens: torch.Tensor, max_len: int) -> torch.Tensor:
    gqa = {"enable_gqa": True} if k.shape[1] != q.shape[1] else {}
    causal = varlen_kernel().causal_kwargs
    return varlen_attn(q, k, v, cu_seqlens, cu_seqlens, max_len, max_len, **causal, **gqa)


AttentionInterface.register(VARLEN_ATTENTION, varlen_attention_forward)
