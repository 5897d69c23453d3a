"""FP8 matmuls for the decoder's frozen Linear layers (``fp8: true``), quantised once; everything else stays bf16.

Which layers: only the 28 decoder layers' projections (``model.layers.N.self_attn.{q,k,v,o}_proj`` and
``model.layers.N.mlp.{gate,up,down}_proj``; under PEFT their ``base_layer``). Whisper, the VQ adaptor, the MIMO branch,
the embeddings, both heads and every LoRA A/B matrix keep their bf16 (fp32 for LoRA) matmuls:
:func:`is_decoder_linear` is the one filter, shared with torchao's ``module_filter_fn`` for trainable layers.

How (a frozen layer, i.e. the base layer of a LoRA run): :class:`FrozenFloat8Linear` quantises its weight once, at
conversion, to ``float8_e4m3fn`` twice: ``W`` with one power-of-two scale per output row (the forward's operand) and
``W^T`` with one per input column (the backward's), 1 byte per weight each. Each step then runs

- forward: ``y = x W^T`` as one FP8 GEMM (``torch._scaled_mm``, row-wise scales; the activation is cast per token);
- backward: ``dx = dy W`` as one FP8 GEMM on the stored ``W^T`` copy (``dy`` cast per token): no per-call transpose
  and no weight scale to fold into ``dy``. No weight gradient is computed, which is what a frozen bf16 layer does too
  (torchao's ``Float8Linear`` computes one).

``matmuls`` (``KIMI_AUDIO_FP8_MATMULS``) can keep one direction in bf16 from the bf16 weight: ``forward`` (FP8 forward
only) or ``backward`` (FP8 input gradients only, the forward exact); then only that direction's FP8 copy is made.

The FP8 copies are plain tensor attributes, not buffers: checkpoints and adapters never see them, and DDP (which
broadcasts every buffer before each forward) does not send 6 GiB per step. The bf16 ``weight`` stays registered for
saving, merging and parameter counts; with both matmuls in FP8 nothing in a step reads it, so
:func:`park_bf16_weights` can keep it in host memory during training (the two FP8 copies then take the GPU memory the
bf16 weight took).

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


def cast_rowwise(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``t`` (2-D) as FP8 with one scale per row: (FP8 values, dequantisation scale [rows, 1] in fp32)."""
    scale = _pow2_scale(t.abs().amax(dim=-1, keepdim=True))  # abs / max are exact in bf16: no fp32 copy
    return (t * scale).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale.reciprocal()


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
    """``x @ W^T`` with a frozen ``W``, gradient for ``x`` only. Each direction is one FP8 GEMM on its pre-quantised
    copy (forward: ``W``, backward: ``W^T``), or a bf16 matmul with ``bf16_weight`` where its copy is None."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        w_fp8: torch.Tensor | None,
        w_scale: torch.Tensor | None,
        wt_fp8: torch.Tensor | None,
        wt_scale: torch.Tensor | None,
        bf16_weight: torch.Tensor | None,
        emulate: bool,
        fast_forward: bool,
        fast_backward: bool,
    ) -> torch.Tensor:
        ctx.save_for_backward(wt_fp8, wt_scale, bf16_weight)
        ctx.emulate, ctx.fast_backward = emulate, fast_backward
        if w_fp8 is None:
            return x @ bf16_weight.to(x.dtype).t()
        x_fp8, x_scale = cast_rowwise(x)
        # B = W^T is column-major as stored (W is row-major): no copy
        how = dict(out_dtype=x.dtype, fast=fast_forward, emulate=emulate)
        return scaled_mm(x_fp8, w_fp8.t(), x_scale, w_scale.view(1, -1), **how)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        wt_fp8, wt_scale, bf16_weight = ctx.saved_tensors
        if wt_fp8 is None:  # gradients in bf16: the frozen layer's own backward
            return (grad @ bf16_weight.to(grad.dtype),) + (None,) * 8
        grad_fp8, grad_scale = cast_rowwise(grad)
        # B = W is column-major as W^T is stored, scaled per input feature: the FP8 GEMM's row-wise layout as is
        how = dict(out_dtype=grad.dtype, fast=ctx.fast_backward, emulate=ctx.emulate)
        grad_x = scaled_mm(grad_fp8, wt_fp8.t(), grad_scale, wt_scale.view(1, -1), **how)
        return (grad_x,) + (None,) * 8


_FP8_COPIES = ("weight_fp8", "weight_scale", "weight_t_fp8", "weight_t_scale")


class FrozenFloat8Linear(nn.Linear):
    """A frozen ``nn.Linear`` whose matmuls run in FP8 from a weight quantised once (see the module docstring).

    ``weight`` and ``bias`` are the original (frozen, bf16) parameters, unchanged: saving, merging, parking and
    parameter counts see the layer as before. ``requantize()`` refreshes the FP8 copies if the weight was changed."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, **kwargs: Any) -> None:
        super().__init__(in_features, out_features, bias=bias, **kwargs)
        for name in _FP8_COPIES:  # plain attributes: not in state_dict, not broadcast by DDP (see module docstring)
            self.__dict__[name] = None
        self.emulate = True  # decided where the FP8 copy is made (requantize)
        self.matmuls = "both"  # which matmuls run in FP8: both, forward (dx = dy W in bf16), backward (y in bf16)
        self.fast_accum = "all"  # which GEMMs accumulate in the tensor cores' fast mode: off, forward, all
        self.center = False  # FP8 GEMM of x - mean_t(x), the mean token's product in bf16 (see forward)
        self.weight_parked_on: torch.device | None = None  # park_weight(): the bf16 weight stays there

    @classmethod
    def from_linear(cls, linear: nn.Linear, matmuls: str = "both") -> FrozenFloat8Linear:
        with torch.device("meta"):
            new = cls(linear.in_features, linear.out_features, bias=linear.bias is not None)
        new.weight, new.bias = linear.weight, linear.bias
        new.matmuls = matmuls
        new.train(linear.training)
        new.requantize()
        return new

    @torch.no_grad()
    def requantize(self) -> None:
        """(Re)make the FP8 copies from ``weight``: ``W`` for an FP8 forward, ``W^T`` for FP8 input gradients. They
        stay on the device of the copies they replace (a parked weight is in host memory)."""
        previous = self._fp8_copy()
        weight = self.weight if previous is None else self.weight.to(previous.device)
        for name in _FP8_COPIES:
            self.__dict__[name] = None
        if self.matmuls in ("both", "forward"):
            weight_fp8, scale = cast_rowwise(weight)
            self.weight_fp8, self.weight_scale = weight_fp8, scale.view(-1)
        if self.matmuls in ("both", "backward"):
            weight_t_fp8, scale_t = cast_rowwise(weight.t())
            self.weight_t_fp8, self.weight_t_scale = weight_t_fp8.contiguous(), scale_t.view(-1)
        self.emulate = fp8_device_problem(weight.device) is not None

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> FrozenFloat8Linear:
        parked = self._parameters["weight"] if self.weight_parked_on is not None else None
        if parked is not None:  # a parked weight stays parked (the trainer's model.to(device) would bring it back)
            self._parameters["weight"] = None  # nn.Module._apply skips a None slot; the order stays
        try:
            super()._apply(fn, *args, **kwargs)
        finally:
            if parked is not None:
                self._parameters["weight"] = parked
        for name in _FP8_COPIES:  # .to(device) moves the FP8 copies too (their dtypes stay)
            copy = self.__dict__[name]
            if copy is not None:
                self.__dict__[name] = fn(copy).to(copy.dtype)
        copy = self._fp8_copy()  # their device decides emulation
        if copy is not None and copy.device.type != "meta":
            self.emulate = fp8_device_problem(copy.device) is not None
        return self

    def park_weight(self, device: torch.device | str = "cpu") -> int:
        """Keep the bf16 ``weight`` on ``device`` (host memory) from now on, also through ``model.to(...)``; only
        when no step reads it (``weight_is_idle``). Returns the bytes moved off its device."""
        device = torch.device(device)
        if not self.weight_is_idle or self.weight_parked_on == device:
            return 0
        self.weight_parked_on = device
        return self._move_weight(device)

    def _move_weight(self, device: torch.device) -> int:
        if self.weight.device == device:
            return 0
        moved = self.weight.data.to(device)
        if torch._has_compatible_shallow_copy_type(self.weight, moved):  # as nn.Module._apply: the same Parameter
            self.weight.data = moved  # object (whoever holds it sees the move)
        else:  # e.g. to the meta device
            self.weight = nn.Parameter(moved, requires_grad=False)
        return moved.numel() * moved.element_size()

    def _fp8_copy(self) -> torch.Tensor | None:
        return self.weight_fp8 if self.weight_fp8 is not None else self.weight_t_fp8

    def fp8_bytes(self) -> int:
        """GPU bytes of the FP8 copies (the scales left out)."""
        return sum(c.numel() for c in (self.weight_fp8, self.weight_t_fp8) if c is not None)

    @property
    def weight_is_idle(self) -> bool:
        """True when no step reads the bf16 ``weight`` (both matmuls FP8, no centring): it may leave the GPU."""
        return self.matmuls == "both" and not self.center

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_autocast_enabled(x.device.type):  # what F.linear would compute in under autocast
            x = x.to(torch.get_autocast_dtype(x.device.type))
        flat = x.reshape(-1, x.shape[-1])
        mean = None
        if self.center and self.weight_fp8 is not None:  # x W^T = (x - m) W^T + m W^T: FP8 rounds only what differs
            with torch.no_grad():  # between tokens (the common part is a systematic error otherwise); m W^T is one
                mean = flat.float().mean(0, keepdim=True).to(flat.dtype)  # bf16 GEMV; the gradient as before
            flat = flat - mean
        copies = (self.weight_fp8, self.weight_scale, self.weight_t_fp8, self.weight_t_scale)
        bf16_weight = None if self.matmuls == "both" else self.weight
        fast = (self.fast_accum in ("forward", "all"), self.fast_accum == "all")
        out = _FrozenFp8Matmul.apply(flat, *copies, bf16_weight, self.emulate, *fast)
        if mean is not None:
            out = out + mean @ self.weight.to(mean.dtype).t()
        out = out.view(*x.shape[:-1], self.out_features)
        return out if self.bias is None else out + self.bias.to(out.dtype)

    def extra_repr(self) -> str:
        center = ", token mean in bf16" if self.center and self.weight_fp8 is not None else ""
        return f"{super().extra_repr()}, fp8=e4m3 row-wise{center}, frozen weight quantised once, FP8 {self.matmuls}"


def park_bf16_weights(model: nn.Module, device: torch.device | str = "cpu") -> int:
    """``park_weight(device)`` on every :class:`FrozenFloat8Linear` of ``model``; returns the bytes moved."""
    moved = sum(m.park_weight(device) for m in model.modules() if isinstance(m, FrozenFloat8Linear))
    if moved and torch.cuda.is_available():
        torch.cuda.empty_cache()
    return moved


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def convert_decoder_linears(
    model: nn.Module,
    trainable: Callable[[nn.Module], nn.Module] | None = None,
    matmuls: str = "both",
    fast_accum: str = "all",
    center: bool = False,
    park_to: torch.device | str | None = None,
) -> dict[str, list[str]]:
    """Swap the decoder's Linear layers in place: frozen ones to :class:`FrozenFloat8Linear`, trainable ones through
    ``trainable(module)`` (torchao's ``Float8Linear.from_float``; None leaves them bf16). Returns the converted names
    by kind ("frozen", "trainable", "kept": trainable layers left in bf16). ``matmuls`` says which of the frozen
    layers' matmuls run in FP8 (``"both"``, ``"forward"``, ``"backward"``: the input gradient), ``fast_accum`` which
    of their FP8 GEMMs accumulate in the fast mode (``"off"``, ``"forward"``, ``"all"``);
    ``center=True`` quantises each input minus the batch's mean token and adds the mean token's product in bf16;
    ``park_to`` parks each frozen layer's idle bf16 weight there right after its quantisation (so the GPU never
    holds both for more than one layer)."""
    done: dict[str, list[str]] = {"frozen": [], "trainable": [], "kept": []}
    for name, module in list(model.named_modules()):
        if not is_decoder_linear(module, name):
            continue
        if not module.weight.requires_grad:
            frozen = FrozenFloat8Linear.from_linear(module, matmuls)
            frozen.fast_accum, frozen.center = fast_accum, center
            if park_to is not None:
                frozen.park_weight(park_to)
            _set_submodule(model, name, frozen)
            done["frozen"].append(name)
        elif trainable is not None:
            _set_submodule(model, name, trainable(module))
            done["trainable"].append(name)
        else:
            done["kept"].append(name)
    return done
