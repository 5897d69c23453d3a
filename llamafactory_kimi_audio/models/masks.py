"""Positions, attention masks and packed-utterance boundaries of a batch (LLaMA-Factory rows, padded or packed)."""

from __future__ import annotations

import torch
from transformers.utils import logging

logger = logging.get_logger(__name__)


def utterance_starts(position_ids: torch.Tensor) -> torch.Tensor:
    """[B, L] bool: where an utterance of a packed row begins, i.e. where its positions restart at 0. Every row opens
    one, even if its positions do not start at 0."""
    starts = position_ids == 0
    starts[:, 0] = True
    return starts


def packed_segments(position_ids: torch.Tensor | None, mask: torch.Tensor | None) -> torch.Tensor | None:
    """Batch-wide utterance numbers [B, L] of packed rows, or None for unpacked batches. Packing is recognised by
    its 4-D block-diagonal mask (``neat_packing``). A row's pad tail counts to its last utterance: pads carry no
    label, so the loss never sees them (``packed_sequences`` instead gives them a sequence of their own)."""
    if position_ids is None or mask is None or mask.dim() != 4 or position_ids.dim() != 2:
        return None
    return utterance_starts(position_ids).long().flatten().cumsum(0).view_as(position_ids) - 1


def warn_if_packed_without_blocks(position_ids: torch.Tensor) -> None:
    """Positions that restart inside a row mean packed utterances; without a 4-D block mask they see each other."""
    if position_ids.dim() == 2 and position_ids.shape[1] > 1 and bool((position_ids[:, 1:] == 0).any()):
        logger.warning_once(
            "packed rows without a block-diagonal mask: utterances attend to the ones packed before them; "
            "set neat_packing: true next to packing: true"
        )


def default_position_ids(mask: torch.Tensor | None, length: int, past_len: int, device) -> torch.Tensor:
    """Positions 0..L-1 of every sample's real tokens (left padding included), continuing after the cache."""
    if mask is None:
        return torch.arange(past_len, past_len + length, device=device)[None]
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    return positions[:, -length:]


def attention_bias(
    mask: torch.Tensor | None, length: int, past_len: int, dtype, device=None
) -> tuple[torch.Tensor | None, bool]:
    """Additive [B,1,L,K] bias for causal + padding masking; (None, True) when plain causal attention suffices.

    A 4-D mask is taken as given (LLaMA-Factory's ``neat_packing`` passes a block-diagonal causal one, additive or
    boolean): it already says which keys each query may see.
    """
    if mask is not None and mask.dim() == 4:
        if mask.dtype == torch.bool:
            mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
        return mask.to(dtype), False
    if mask is not None and past_len == 0 and length > 1 and mask.shape[-1] == length:
        if bool((mask[:, 1:] <= mask[:, :-1]).all()):
            # Right padding (training batches; no padding at all included): pads only follow the real tokens, so
            # causal attention alone gives every real query exactly its keys; only the pad rows (never read: no
            # labels, later than every real token) change. No [B,1,L,L] bias, and SDPA can take the flash kernel.
            return None, True
    return padding_bias(mask, length, past_len, dtype, device)


def padding_bias(
    mask: torch.Tensor | None, length: int, past_len: int, dtype, device=None
) -> tuple[torch.Tensor | None, bool]:
    """Causal + 2-D padding masking with an explicit bias wherever a key is masked (no shortcut for right padding)."""
    if mask is None or bool(mask.all()):
        if past_len == 0:
            return None, length > 1
        if length == 1:
            return None, False
        mask = torch.ones(1, past_len + length, dtype=torch.long, device=device)
    device = mask.device
    query_pos = torch.arange(past_len, past_len + length, device=device)
    key_pos = torch.arange(mask.shape[-1], device=device)
    allowed = (key_pos[None, :] <= query_pos[:, None])[None] & mask[:, None, :].bool()
    bias = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)
    return bias[:, None], False
