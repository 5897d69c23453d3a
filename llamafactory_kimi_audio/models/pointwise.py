"""The decoder's element-wise pieces — RMSNorm, rotary embedding, SwiGLU — optionally fused by ``torch.compile``.

Eager PyTorch runs each as a chain of memory-bound kernels (RMSNorm alone is eight in the forward pass); at the short
sequences of ASR fine-tuning these chains and their launches are a large share of a LoRA step. With
``config.compile_pointwise = "on"`` each function is compiled once (dynamic shapes, so varying batch lengths do not
recompile) into a few fused kernels, forward and backward. Off by default: compiling costs time at the first step and
needs Triton on GPUs (a C++ compiler on CPUs). The math is the official one either way.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

COMPILE_MODES = ("off", "on", "layers")
_compiled: dict[Callable, Callable] = {}


def rms_norm(hidden: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Qwen2 / official RMSNorm: normalise in fp32, round to the input dtype, then scale."""
    input_dtype = hidden.dtype
    hidden = hidden.to(torch.float32)
    hidden = hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + eps)
    return weight * hidden.to(input_dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rotary(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE on [B, H, L, D] queries and keys; ``cos`` / ``sin`` are [B, L, D]."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * up


def fused(function: Callable, mode: str) -> Callable:
    """``function`` itself, or its compiled twin when ``mode`` (``config.compile_pointwise``) is ``"on"`` (compiled
    once, lazily)."""
    if mode != "on":
        return function  # also for "layers": the whole layer is compiled around it
    compiled = _compiled.get(function)
    if compiled is None:
        compiled = _compiled[function] = torch.compile(function, dynamic=True)
    return compiled


def fused_layer(layer: torch.nn.Module, mode: str) -> Callable:
    """With ``mode`` (``config.compile_pointwise``) ``"layers"`` (training only), the whole decoder layer — LoRA
    linears, norms, attention — compiled as one graph, so the element-wise work between the matmuls fuses too.
    Experimental."""
    if mode != "layers" or not layer.training:
        return layer
    compiled = _compiled.get(layer)
    if compiled is None:
        compiled = _compiled[layer] = torch.compile(layer, dynamic=True)
    return compiled
