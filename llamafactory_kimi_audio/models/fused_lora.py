"""A leaner forward for PEFT's LoRA ``Linear`` layers (same math, fewer and cheaper kernels).

PEFT computes ``result + lora_B(lora_A(dropout(x.to(fp32)))) * scaling``. Under bf16 autocast with fp32 LoRA weights
(LLaMA-Factory's default) that copies every LoRA input to fp32 and back, then makes two more passes over the
[tokens, out_features] output (scale, add). For a 7B model at short ASR sequences these element-wise passes took about
a third of the GPU time of a LoRA step (``benchmarks/RESULTS.md``). Here the input keeps its dtype and
``addmm(result, h, Bᵀ, alpha=scaling)`` folds the scale and the add into the second matmul's epilogue. The only
numerical difference is one rounding fewer (the sum is accumulated before it is rounded to bf16).

:func:`install_fused_lora` sets this forward on each LoRA layer *instance* of one model (Kimi-Audio's, through the
patch table's ``fused_lora`` row when ``KIMI_AUDIO_FUSED_LORA`` is on): an instance attribute that shadows PEFT's
class forward, recorded by :data:`FUSED_FLAG` and removed again by :func:`remove_fused_lora`. PEFT's class is never
touched, so every other model in the process keeps PEFT's forward.
Anything unusual goes through PEFT's own forward unchanged: merged or disabled adapters, several active adapters,
mixed-adapter batches, DoRA and other variants, a LoRA bias, ZeRO-3-partitioned weights (their gathering hooks fire
on module calls only), and inputs whose dtype differs from the LoRA weights' without autocast to reconcile them.
Projections that read the same input (q/k/v, gate/up) go one step further where they all take this path:
``grouped_lora.py`` runs their LoRA-A products as one matmul (layers marked with :data:`GROUPED_FLAG`).
"""

from __future__ import annotations

from types import MethodType
from typing import Any

import torch
from torch import nn


def _single_plain_adapter(layer: Any, x: torch.Tensor, args: tuple, kwargs: dict) -> str | None:
    """The one active vanilla adapter the fused path can serve, or None to take PEFT's forward."""
    if args or kwargs or layer.disable_adapters or layer.merged:
        return None
    active = [name for name in layer.active_adapters if name in layer.lora_A]
    if len(active) != 1:
        return None
    name = active[0]
    if name in getattr(layer, "lora_variant", {}) or layer.use_dora.get(name, False):
        return None
    weight_a, lora_b = layer.lora_A[name].weight, layer.lora_B[name]
    if lora_b.bias is not None or hasattr(weight_a, "ds_id") or hasattr(lora_b.weight, "ds_id"):
        return None
    if x.dtype != weight_a.dtype and not torch.is_autocast_enabled(x.device.type):
        return None  # PEFT casts the input to the weights' dtype
    return name


FUSED_FLAG = "kimi_audio_fused_lora"  # instance attribute of the layers that take the fused path
GROUPED_FLAG = "kimi_audio_grouped_lora"  # ... and of those that may share one LoRA-A matmul (grouped_lora.py)


def add_lora_product(
    result: torch.Tensor, hidden: torch.Tensor, weight_b: torch.Tensor, scaling: float
) -> torch.Tensor:
    """``result + scaling · hidden Bᵀ``: the base layer's output plus the LoRA product (``hidden = x Aᵀ``).

    Eager: one ``addmm`` (the scale and the add in the GEMM's epilogue). Inside a compiled layer: a plain matmul on
    ``scaling · B`` (a [rank, out] scale, not a [tokens, out] one) added to ``result`` through a view, which inductor
    fuses into the kernel that reads the projection next (rotary, SwiGLU, the residual add). An ``addmm`` there is out
    of place, so cuBLAS first copies ``result`` into a new buffer (a device-to-device copy of [tokens, out] per
    projection: 14.5 ms of a 335 ms step of the 80 GB recipe on an H100); without it that recipe runs 1.029× as fast
    in bf16 and 1.092× in FP8 (``benchmarks/RESULTS.md`` sessions 10 and 11). The view keeps inductor from turning
    the sum back into an ``addmm``."""
    if torch.compiler.is_compiling():
        product = hidden.reshape(-1, hidden.shape[-1]) @ (weight_b * scaling).t()
        return result + product.view(result.shape)
    return add_lora_product_addmm(result, hidden, weight_b, scaling)


def add_lora_product_addmm(
    result: torch.Tensor, hidden: torch.Tensor, weight_b: torch.Tensor, scaling: float
) -> torch.Tensor:
    """``result + scaling · hidden Bᵀ`` as one ``addmm`` (the eager form; the benchmarks' ``*_addmm`` cases use it in
    compiled layers too)."""
    flat_hidden = hidden.reshape(-1, hidden.shape[-1])
    out = torch.addmm(result.reshape(-1, result.shape[-1]), flat_hidden, weight_b.t(), alpha=scaling)
    return out.view(result.shape)


def fused_lora_forward(self: Any, x: torch.Tensor, name: str) -> torch.Tensor:
    result = self.base_layer(x)
    hidden = self.lora_A[name](self.lora_dropout[name](x))
    return add_lora_product(result, hidden, self.lora_B[name].weight, self.scaling[name])


def fused_or_peft_forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """The per-instance forward: the fused path where it applies, else the class's (PEFT's) forward."""
    name = _single_plain_adapter(self, x, args, kwargs)
    if name is not None:
        return fused_lora_forward(self, x, name)
    return type(self).forward(self, x, *args, **kwargs)


def _lora_linear_class() -> type | None:
    try:
        from peft.tuners.lora.layer import Linear
    except ImportError:
        return None
    return Linear


def install_fused_lora(model: nn.Module, grouped: bool = True) -> int:
    """Give every plain PEFT LoRA ``Linear`` of ``model`` the fused forward (an instance attribute, marked with
    :data:`FUSED_FLAG`); idempotent. ``grouped`` also lets projections that share an input run one LoRA-A matmul
    (``grouped_lora.py``; marked with :data:`GROUPED_FLAG`). Returns how many layers changed."""
    linear = _lora_linear_class()
    if linear is None:
        return 0
    count = 0
    for module in model.modules():
        if type(module) is linear and not module.__dict__.get(FUSED_FLAG):
            module.__dict__[FUSED_FLAG] = True
            module.forward = MethodType(fused_or_peft_forward, module)  # shadows the class's forward
            count += 1
        if type(module) is linear:
            module.__dict__[GROUPED_FLAG] = grouped
    return count


def remove_fused_lora(model: nn.Module) -> int:
    """Undo ``install_fused_lora``: the layers get their class's (PEFT's) forward back. Returns how many."""
    count = 0
    for module in model.modules():
        module.__dict__.pop(GROUPED_FLAG, None)
        if module.__dict__.pop(FUSED_FLAG, False):
            module.__dict__.pop("forward", None)
            count += 1
    return count
