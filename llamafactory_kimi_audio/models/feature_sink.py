"""The model's feature-sink hook: what ``frame_inputs`` encoded, handed per clip to an optional consumer.

``KimiAudioForCausalLM.feature_sink`` is None by default. A caller that wants the features the model computes (the
feature cache's write-through, ``data/features/write_through.py``) sets it with ``set_feature_sink(sink)`` and
removes it with ``set_feature_sink(None)``; the model's methods stay the class's own. ``sink(encoded, clips)`` gets one
``EncodedClip`` per clip of the batch, in the order of their frames in the ids (the order of the batch's audios),
and ``clips``: whatever the caller put in the batch as ``audio_clips`` (the collator's per-clip description), or
None. The model never interprets ``clips``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class EncodedClip:
    """One clip as the model encoded it: its semantic codes (no offset) and, for a clip the model listened to (an
    input, not a speech-output target), its Whisper rows."""

    codes: torch.Tensor  # [frames] long
    rows: torch.Tensor | None  # [frames, adaptor input dim], None for a speech-output target
    target: bool


FeatureSink = Callable[[list[EncodedClip], Any], None]


def clip_sizes(is_frame: torch.Tensor) -> list[int]:
    """Frames per clip: runs of frame positions in row-major order (a clip never spans rows; two clips are always
    separated by their span tokens). One device sync."""
    flat = is_frame.reshape(-1).nonzero().squeeze(1)
    if flat.numel() == 0:
        return []
    columns = flat % is_frame.shape[-1]
    starts = torch.ones_like(flat, dtype=torch.bool)
    starts[1:] = (flat[1:] != flat[:-1] + 1) | (columns[1:] == 0)
    bounds = torch.cat([starts.nonzero().squeeze(1), flat.new_tensor([flat.numel()])])
    return (bounds[1:] - bounds[:-1]).tolist()


def split_clips(is_frame: torch.Tensor, codes: torch.Tensor, rows: torch.Tensor | None, is_input) -> list[EncodedClip]:
    """``frame_inputs``' result per clip: ``codes`` cover every frame, ``rows`` the input frames (``is_input`` selects
    them among the frames; None: every frame is an input)."""
    sizes = clip_sizes(is_frame)
    flags = [True] * len(sizes) if is_input is None else _first_flags(is_input, sizes)
    clips, start, row = [], 0, 0
    for size, listened in zip(sizes, flags):
        clip_rows = rows[row : row + size] if listened and rows is not None else None
        clips.append(EncodedClip(codes[start : start + size], clip_rows, not listened))
        start, row = start + size, row + (size if listened else 0)
    return clips


def _first_flags(is_input: torch.Tensor, sizes: list[int]) -> list[bool]:
    firsts = torch.tensor([0, *sizes[:-1]]).cumsum(0)
    return is_input.detach().cpu()[firsts].tolist()
