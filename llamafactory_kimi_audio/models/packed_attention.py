"""Packed rows (LLaMA-Factory's ``packing`` + ``neat_packing``) through variable-length FlashAttention.

A packed row holds several utterances, and the collator's 4-D mask lets each token see only the earlier tokens of its
own utterance. SDPA takes that mask as a dense [B,1,L,L] bias and computes every query/key pair of the row, ~6× the
work of the utterances themselves at ASR lengths (~175 tokens per utterance, 1,024-token rows). PyTorch's
``varlen_attn`` (≥ 2.9, CUDA, fp16/bf16) instead runs causal attention over each utterance as its own sequence of the
flattened batch. Real tokens get the same attention; the pad tail of a row becomes one sequence of its own, which
nothing reads. Used automatically where it applies; ``KIMI_AUDIO_VARLEN_ATTENTION=0`` keeps the dense mask.
"""

from __future__ import annotations

import inspect
import os
from typing import NamedTuple

import torch

VARLEN_ENV = "KIMI_AUDIO_VARLEN_ATTENTION"

try:
    from torch.nn.attention.varlen import varlen_attn
except ImportError:  # PyTorch < 2.9
    varlen_attn = None
# the signature moved between releases: causality by ``is_causal`` or by a (-1, 0) window; GQA native only in later
# ones (before, K/V heads are repeated to the query heads)
_PARAMETERS = inspect.signature(varlen_attn).parameters if varlen_attn is not None else {}
_CAUSAL = {"window_size": (-1, 0)} if "window_size" in _PARAMETERS else {"is_causal": True}
_NATIVE_GQA = "enable_gqa" in _PARAMETERS


class PackedSequences(NamedTuple):
    """Utterances of packed rows as offsets into the flattened [B·L] token stream (``cu_seqlens`` [N+1], int32)."""

    cu_seqlens: torch.Tensor
    max_len: int  # an upper bound (the row length): the exact maximum would cost a device sync


HALF_DTYPES = (torch.float16, torch.bfloat16)


def varlen_applies(hidden: torch.Tensor) -> bool:
    if os.environ.get(VARLEN_ENV, "1") == "0" or varlen_attn is None:
        return False
    return hidden.is_cuda and compute_dtype(hidden.dtype) in HALF_DTYPES


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """What attention runs in: fp32 activations under CUDA autocast go to its fp16/bf16, as SDPA's inputs would."""
    if dtype not in HALF_DTYPES and torch.is_autocast_enabled("cuda"):
        return torch.get_autocast_dtype("cuda")
    return dtype


def packed_sequences(position_ids: torch.Tensor, bias: torch.Tensor) -> PackedSequences:
    """An utterance starts where its positions restart at 0 (``neat_packing`` rows); the pad tail of a row (the
    tokens the [B,1,L,L] ``bias`` does not even let see themselves) is one more sequence."""
    real = torch.diagonal(bias[:, 0], dim1=-2, dim2=-1) == 0
    starts = (position_ids == 0) & real
    starts[:, 1:] |= real[:, 1:] != real[:, :-1]
    starts[:, 0] = True
    flat = starts.flatten()
    end = torch.tensor([flat.numel()], device=flat.device)
    cu_seqlens = torch.cat([flat.nonzero().flatten(), end]).to(torch.int32)
    return PackedSequences(cu_seqlens, position_ids.shape[1])


def varlen_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, packed: PackedSequences) -> torch.Tensor:
    """Causal attention of [B,H,L,D] queries over [B,Hkv,L,D] keys/values within each packed sequence → [B,H,L,D]."""
    batch, heads, length, dim = q.shape
    half = compute_dtype(q.dtype)

    def tokens(x: torch.Tensor) -> torch.Tensor:  # [B,h,L,D] → [B·L, h, D] in fp16/bf16
        return x.transpose(1, 2).reshape(batch * length, x.shape[1], dim).to(half)

    if not _NATIVE_GQA and k.shape[1] != heads:
        groups = heads // k.shape[1]
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    out = call_varlen(tokens(q), tokens(k), tokens(v), packed.cu_seqlens, packed.max_len)
    return out.view(batch, length, heads, dim).transpose(1, 2)


def call_varlen(q, k, v, cu_seqlens: torch.Tensor, max_len: int) -> torch.Tensor:
    gqa = {"enable_gqa": True} if k.shape[1] != q.shape[1] else {}
    return varlen_attn(q, k, v, cu_seqlens, cu_seqlens, max_len, max_len, **_CAUSAL, **gqa)
