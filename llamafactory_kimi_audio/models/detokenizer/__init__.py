"""Native port of Kimi-Audio's audio detokenizer: GLM-4-Voice codes -> 24 kHz waveform (pure torch)."""

from __future__ import annotations

from .bigvgan import BigVGAN
from .flow_model import DiTConfig, FlowDiT
from .loading import has_detokenizer, load_detokenizer
from .streaming import Detokenizer, MelNorm, StreamingSettings

__all__ = [
    "BigVGAN",
    "DiTConfig",
    "Detokenizer",
    "FlowDiT",
    "MelNorm",
    "StreamingSettings",
    "has_detokenizer",
    "load_detokenizer",
]
