"""One LoRA-A matmul for the projections that read the same input (q/k/v, gate/up): :func:`project_together`.

With LoRA on every projection, q, k and v each run ``x @ A_iᵀ`` on the same ``x`` (and gate, up likewise). These
products are thin (rank 16 against 3,584 inputs), so each is a memory-bound pass over ``x``; their backward reads
``x`` again for every ``dA_i`` and writes one [tokens, 3584] input gradient per projection, which autograd then adds.
Here the A matrices are stacked, ``x @ cat(A_q, A_k, A_v)ᵀ`` runs once (one pass over ``x``, one ``dA`` GEMM, one
input gradient from the A side), and its columns are split by rank; each projection then adds its own ``B_i`` product
onto its base layer's output as the fused path does (``fused_lora.add_lora_product``). The base layers are called as
modules, so FP8 base layers (``fp8_linear.py``) and any other base layer keep working unchanged.

Same math as calling the layers one by one: each output column is the same dot product, and the input gradient's
A-side parts are summed inside one GEMM instead of as separate tensors (a rounding difference only: fp32 ~1e-7
relative; in bf16 one rounding instead of three). It applies only where every layer would take the fused path
(installed with ``grouped=True``, the ``KIMI_AUDIO_GROUPED_LORA`` setting), without LoRA dropout (each layer draws its
own mask), with LoRA A weights of one dtype and device; everything else (no PEFT, PEFT's own forward, merged or
disabled adapters, DoRA, ZeRO-3-partitioned weights) calls each layer as before. The one difference in behaviour: the
LoRA layers and their ``lora_A`` modules are not *called* as modules (as ``lora_B`` already is not on the fused path,
and as the fused path already skips ZeRO-3 weights, whose gathering hooks fire on module calls only). So that no hook
is silently skipped, the layers are called one by one whenever a LoRA layer or its ``lora_A`` has a module hook (e.g.
PEFT's mixed-adapter-batch pre-hook) or a process-wide one is registered (``register_module_forward_hook`` & co.).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .fused_lora import GROUPED_FLAG, _single_plain_adapter, add_lora_product, fused_or_peft_forward

_GLOBAL_HOOKS = tuple(
    getattr(nn.modules.module, f"_global_{kind}", {})
    for kind in ("forward_hooks", "forward_pre_hooks", "backward_hooks", "backward_pre_hooks")
)  # register_module_forward_hook & co.: the dicts themselves, filled in place


def _has_hooks(module: nn.Module) -> bool:
    return bool(
        module._forward_hooks or module._forward_pre_hooks or module._backward_hooks or module._backward_pre_hooks
    )


def _global_hooks() -> bool:
    return any(bool(hooks) for hooks in _GLOBAL_HOOKS)


def grouped_adapters(layers: Sequence[nn.Module], x: torch.Tensor) -> list[str] | None:
    """Each layer's active adapter when all of them can share one LoRA-A matmul on ``x``, else None."""
    if _global_hooks():
        return None
    names = []
    for layer in layers:
        if not getattr(layer, GROUPED_FLAG, False) or _has_hooks(layer):
            return None
        if getattr(layer.forward, "__func__", None) is not fused_or_peft_forward:
            return None  # the fused forward was replaced (e.g. by accelerate's offload hooks)
        name = _single_plain_adapter(layer, x, (), {})
        if name is None or not isinstance(layer.lora_dropout[name], nn.Identity):
            return None
        lora_a = layer.lora_A[name]
        if lora_a.bias is not None or _has_hooks(lora_a):
            return None
        names.append(name)
    first = layers[0].lora_A[names[0]].weight
    for layer, name in zip(layers, names):
        weight = layer.lora_A[name].weight
        if weight.dtype != first.dtype or weight.device != first.device:
            return None
    return names


def grouped_lora_forward(layers: Sequence[nn.Module], x: torch.Tensor, names: Sequence[str]) -> list[torch.Tensor]:
    """``base_layer_i(x) + scaling_i · (x A_iᵀ) B_iᵀ`` for every layer, the ``x A_iᵀ`` products as one matmul."""
    stacked = torch.cat([layer.lora_A[name].weight for layer, name in zip(layers, names)])
    hidden = F.linear(x, stacked)
    ranks = [layer.lora_A[name].weight.shape[0] for layer, name in zip(layers, names)]
    parts = hidden.reshape(-1, hidden.shape[-1]).split(ranks, dim=-1)
    outputs = []
    for layer, name, part in zip(layers, names, parts):
        result = layer.base_layer(x)
        outputs.append(add_lora_product(result, part, layer.lora_B[name].weight, layer.scaling[name]))
    return outputs


def project_together(layers: Sequence[nn.Module], x: torch.Tensor) -> list[torch.Tensor]:
    """``[layer(x) for layer in layers]``, with one LoRA-A matmul for all of them where :func:`grouped_adapters`
    allows it."""
    names = grouped_adapters(layers, x)
    if names is None:
        return [layer(x) for layer in layers]
    return grouped_lora_forward(layers, x, names)
