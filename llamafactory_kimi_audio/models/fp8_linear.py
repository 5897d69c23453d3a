"""FP8 matmuls for the decoder's frozen Linear layers (``fp8: true``), quantised once; everything else stays bf16.

Which layers: only the 28 decoder layers' projections (``model.layers.N.self_attn.{q,k,v,o}_proj`` and
``model.layers.N.mlp.{gate,up,down}_proj``; under PEFT their ``base_layer``). Whisper, the VQ adaptor, the MIMO branch,
the embeddings, both heads and every LoRA A/B matrix keep their bf16 (fp32 for LoRA) matmuls:
:func:`is_decoder_linear` is the one filter, shared with torchao's ``module_filter_fn`` for trainable layers.

How (a frozen layer, i.e. the base layer of a LoRA run): :class:`FrozenFloat8Linear` quantises its weight once, at
conversion, to ``float8_e4m3fn`` with one power-of-two scale per output row, and keeps it as a non-persistent buffer
(1 byte per weight; checkpoints and adapters never see it). Each step then runs

- forward: ``y = x W^T`` as one FP8 GEMM (``torch._scaled_mm``, row-wise scales; the activation is cast per token);
- backward: ``dx = dy W``. The weight's row scales are folded into ``dy``'s columns before ``dy`` is cast per row, so
  the same FP8 weight serves (its transposed copy is made per call: 1 byte per weight of traffic, no storage). No
  weight gradient is computed, which is what a frozen bf16 layer does too (torchao's ``Float8Linear`` computes one).

Trainable decoder layers (full / freeze fine-tuning) go to torchao's ``Float8Linear`` with the row-wise recipe, which
re-casts its changing weight every step; that needs torchao. On a device without FP8 tensor cores (CUDA capability
< 8.9, or the CPU) the same math is emulated in fp32 from the FP8 values, for tests only (``KIMI_AUDIO_FP8_EMULATE``):
the integration refuses ``fp8: true`` there (``integration/fp8.py``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)  # 448
MIN_CAPABILITY = (8, 9)  # Ada (sm_89) and Hopper (sm_90) are the first with FP8 tensor cores
_DECODER_LINEAR = re.compile(r"(?:^|\.)model\.layers\.\d+\.(?:self_attn\.[qkvo]_proj|mlp\.(?:gate|up|down)_proj)$")


def is_decoder_linear(module: nn.Module, fqn: str) -> bool:
    """True for an ``nn.Linear`` of a decoder layer (or the base layer of its LoRA wrapper) that FP8 GEMMs accept.

    ``fqn`` is the name in ``named_modules()`` of the model as trained (PEFT prefixes ``base_model.model.``); the
    torchao ``module_filter_fn`` signature. LoRA's ``lora_A`` / ``lora_B`` never match: only the projection itself or
    its ``base_layer`` does."""
    if not isinstance(module, nn.Linear) or isinstance(module, FrozenFloat8Linear):
        return False
    name = fqn[: -len(".base_layer")] if fqn.endswith(".base_layer") else fqn
    if not _DECODER_LINEAR.search(name):
        return False
    return module.in_features % 16 == 0 and module.out_features % 16 == 0  # the FP8 GEMM's alignment


def fp8_device_problem(device: torch.device | None = None) -> str | None:
    """Why FP8 GEMMs cannot run on ``device`` (default: the current CUDA device), or None when they can."""
    if not torch.cuda.is_available() or (device is not None and device.type != "cuda"):
        return "this machine has no CUDA GPU (FP8 training needs an NVIDIA GPU)"
    index = device.index if device is not None and device.index is not None else torch.cuda.current_device()
    capability = torch.cuda.get_device_capability(index)
    if capability < MIN_CAPABILITY:
        name = torch.cuda.get_device_name(index)
        return f"{name} is compute capability {capability[0]}.{capability[1]}, without FP8 tensor cores"
    if not hasattr(torch, "_scaled_mm"):
        return f"torch {torch.__version__} has no torch._scaled_mm (FP8 GEMM)"
    return None


def _pow2_scale(amax: torch.Tensor) -> torch.Tensor:
    """Multiplier that maps ``amax`` to at most FP8's max, rounded down to a power of two (exact to undo)."""
    return torch.exp2(torch.floor(torch.log2(FP8_MAX / amax.float().clamp(min=1e-12))))


def cast_rowwise(t: torch.Tensor, column_scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``t`` (2-D; times ``column_scale`` per column when given) as FP8 with one scale per row.

    Returns (FP8 values, dequantisation scale of shape [rows, 1] in fp32)."""
    wide = t if column_scale is None else t.float() * column_scale  # abs / max are exact in bf16: no fp32 copy
    scale = _pow2_scale(wide.abs().amax(dim=-1, keepdim=True))
    return (wide * scale).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale.reciprocal()


def scaled_mm(
    a: torch.Tensor, b: torch.Tensor, scale_a: torch.Tensor, scale_b: torch.Tensor, **how: Any
) -> torch.Tensor:
    """``(a * scale_a) @ (b * scale_b)`` in ``how["out_dtype"]``: one FP8 GEMM, or (``how["emulate"]``) the same
    math in fp32 from the FP8 values, for devices without FP8 tensor cores."""
    out_dtype, fast = how["out_dtype"], how["fast"]
    if not how["emulate"]:  # row-wise scales: bf16 output only
        out = torch._scaled_mm(a, b, scale_a=scale_a, scale_b=scale_b, out_dtype=torch.bfloat16, use_fast_accum=fast)
        return out.to(out_dtype)
    return ((a.float() * scale_a) @ (b.float() * scale_b)).to(out_dtype)


@torch._dynamo.allow_in_graph  # compiled layers: one opaque call for dynamo (torch 2.11 cannot trace into it), which
class _FrozenFp8Matmul(torch.autograd.Function):  # AOTAutograd then traces, so the casts still fuse (as torchao's)
    """``x @ W^T`` with a pre-quantised frozen ``W``: gradient for ``x`` only (in FP8, or in bf16 from ``weight``
    when it is given)."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight_fp8: torch.Tensor,
        weight_scale: torch.Tensor,
        weight: torch.Tensor | None,
        emulate: bool,
        fast_accum: bool,
    ) -> torch.Tensor:
        ctx.save_for_backward(weight_fp8, weight_scale, weight)
        ctx.emulate = emulate
        x_fp8, x_scale = cast_rowwise(x)
        # B = W^T is column-major as stored (W is row-major): no copy
        scale_b = weight_scale.view(1, -1)
        return scaled_mm(x_fp8, weight_fp8.t(), x_scale, scale_b, out_dtype=x.dtype, fast=fast_accum, emulate=emulate)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        weight_fp8, weight_scale, weight = ctx.saved_tensors
        if weight is not None:  # gradients in bf16: the frozen layer's own backward
            return grad @ weight.to(grad.dtype), None, None, None, None, None
        # dy @ (diag(s) Wq) = (dy * s) @ Wq: the weight's row scales go into dy's columns before dy's row-wise cast
        grad_fp8, grad_scale = cast_rowwise(grad, weight_scale.view(1, -1))
        ones = torch.ones(1, weight_fp8.shape[1], device=grad.device, dtype=torch.float32)
        weight_cols = weight_fp8.t().contiguous().t()  # FP8 GEMMs take B column-major
        grad_x = scaled_mm(
            grad_fp8, weight_cols, grad_scale, ones, out_dtype=grad.dtype, fast=False, emulate=ctx.emulate
        )
        return grad_x, None, None, None, None, None


class FrozenFloat8Linear(nn.Linear):
    """A frozen ``nn.Linear`` whose matmuls run in FP8 from a weight quantised once (see the module docstring).

    ``weight`` and ``bias`` are the original (frozen, bf16) parameters, unchanged: saving, merging, parking and
    parameter counts see the layer as before. ``requantize()`` refreshes the FP8 copy if the weight was changed."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, **kwargs: Any) -> None:
        super().__init__(in_features, out_features, bias=bias, **kwargs)
        self.register_buffer("weight_fp8", torch.empty(0, dtype=FP8), persistent=False)
        self.register_buffer("weight_scale", torch.empty(0, dtype=torch.float32), persistent=False)
        self.emulate = True  # decided where the FP8 copy is made (requantize)
        self.fp8_gradients = True  # False: the input gradient from the bf16 weight (forward FP8 only)
        self.fast_accum = True  # the forward GEMM's fast (lower-precision) accumulation, as torchao's recipes
        self.center = False  # FP8 GEMM of x - mean_t(x), the mean token's product in bf16 (see forward)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> FrozenFloat8Linear:
        with torch.device("meta"):
            new = cls(linear.in_features, linear.out_features, bias=linear.bias is not None)
        new.weight, new.bias = linear.weight, linear.bias
        new.weight_fp8 = torch.empty(0, dtype=FP8, device=linear.weight.device)
        new.weight_scale = torch.empty(0, dtype=torch.float32, device=linear.weight.device)
        new.train(linear.training)
        new.requantize()
        return new

    @torch.no_grad()
    def requantize(self) -> None:
        weight_fp8, scale = cast_rowwise(self.weight)
        self.weight_fp8, self.weight_scale = weight_fp8, scale.view(-1)
        self.emulate = fp8_device_problem(self.weight.device) is not None

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> FrozenFloat8Linear:
        super()._apply(fn, *args, **kwargs)  # .to(device) moves the FP8 copy too; its device decides emulation
        if self.weight_fp8.device.type != "meta":
            self.emulate = fp8_device_problem(self.weight_fp8.device) is not None
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_autocast_enabled(x.device.type):  # what F.linear would compute in under autocast
            x = x.to(torch.get_autocast_dtype(x.device.type))
        bf16_grad_weight = None if self.fp8_gradients else self.weight
        flat = x.reshape(-1, x.shape[-1])
        mean = None
        if self.center:  # x W^T = (x - m) W^T + m W^T: FP8 rounds only what differs between tokens (the common part
            with torch.no_grad():  # is a systematic error otherwise); m W^T is one bf16 GEMV; the gradient as before
                mean = flat.float().mean(0, keepdim=True).to(flat.dtype)
            flat = flat - mean
        out = _FrozenFp8Matmul.apply(
            flat, self.weight_fp8, self.weight_scale, bf16_grad_weight, self.emulate, self.fast_accum
        )
        if mean is not None:
            out = out + mean @ self.weight.to(mean.dtype).t()
        out = out.view(*x.shape[:-1], self.out_features)
        return out if self.bias is None else out + self.bias.to(out.dtype)

    def extra_repr(self) -> str:
        grads = "FP8" if self.fp8_gradients else "bf16"
        center = ", token mean in bf16" if self.center else ""
        return (
            f"{super().extra_repr()}, fp8=e4m3 row-wise{center}, frozen weight quantised once, {grads} input gradient"
        )


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def convert_decoder_linears(
    model: nn.Module,
    trainable: Callable[[nn.Module], nn.Module] | None = None,
    fp8_gradients: bool = True,
    fast_accum: bool = True,
    center: bool = False,
) -> dict[str, list[str]]:
    """Swap the decoder's Linear layers in place: frozen ones to :class:`FrozenFloat8Linear`, trainable ones through
    ``trainable(module)`` (torchao's ``Float8Linear.from_float``; None leaves them bf16). Returns the converted names
    by kind ("frozen", "trainable", "kept": trainable layers left in bf16). ``fp8_gradients=False`` computes the
    frozen layers' input gradients in bf16; ``fast_accum=False`` accumulates their forward GEMMs at full precision;
    ``center=True`` quantises each input minus the batch's mean token and adds the mean token's product in bf16."""
    done: dict[str, list[str]] = {"frozen": [], "trainable": [], "kept": []}
    for name, module in list(model.named_modules()):
        if not is_decoder_linear(module, name):
            continue
        if not module.weight.requires_grad:
            frozen = FrozenFloat8Linear.from_linear(module)
            frozen.fp8_gradients, frozen.fast_accum, frozen.center = fp8_gradients, fast_accum, center
            _set_submodule(model, name, frozen)
            done["frozen"].append(name)
        elif trainable is not None:
            _set_submodule(model, name, trainable(module))
            done["trainable"].append(name)
        else:
            done["kept"].append(name)
    return done
