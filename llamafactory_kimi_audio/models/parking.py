"""Frozen submodules that a run does not use, kept in host memory until something calls them.

ASR LoRA training never runs Kimi-Audio's MIMO branch (6 layers + the 168,448-row audio head, about 3.7 GiB in bf16)
and, with every clip's features cached, never runs Whisper (1.2 GiB). Parking moves such a submodule to the CPU after
the trainer has placed (and wrapped) the model; a forward pre-hook moves it back to the device of its first input, so
a speech-output batch or a cache miss still works, once slower. Nothing is dropped: the weights stay registered, so
``state_dict`` and ``save_pretrained`` see them as before.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from ..logs import get_logger

logger = get_logger(__name__)
_HOOK_ATTR = "_kimi_audio_unpark_hooks"


def parkable(module: nn.Module) -> bool:
    """Frozen, floating-point (not quantised: bitsandbytes 4-bit storage cannot move as plain tensors) and on a GPU."""
    tensors = [*module.parameters(), *module.buffers()]
    return (
        bool(tensors)
        and all(t.is_floating_point() and t.device.type != "cpu" for t in tensors)
        and not any(p.requires_grad for p in module.parameters())
    )


def park(modules: dict[str, nn.Module]) -> list[str]:
    """Move each parkable module of ``{name: module}`` to host memory; returns the names parked."""
    parked = []
    for name, module in modules.items():
        if is_parked(module) or not parkable(module):
            continue
        device = next(module.parameters()).device
        module.to("cpu")
        hooks = [sub.register_forward_pre_hook(_unpark_hook(name, module, device)) for sub in _called(module)]
        setattr(module, _HOOK_ATTR, hooks)
        parked.append(name)
    if parked and torch.cuda.is_available():
        torch.cuda.empty_cache()  # hand the freed blocks back, so other processes and the peak figures see them
    return parked


def is_parked(module: nn.Module) -> bool:
    return bool(module.__dict__.get(_HOOK_ATTR))


def unpark(module: nn.Module, device: torch.device | str) -> None:
    for hook in module.__dict__.pop(_HOOK_ATTR, ()):
        hook.remove()
    module.to(device)


def _called(module: nn.Module) -> Iterable[nn.Module]:
    """The submodules a forward calls directly: a ModuleList is never called itself, its items are."""
    return list(module) if isinstance(module, nn.ModuleList) else [module]


def _unpark_hook(name: str, module: nn.Module, fallback: torch.device):
    def hook(_sub: nn.Module, args: tuple[Any, ...]) -> None:
        device = next((a.device for a in args if isinstance(a, torch.Tensor)), fallback)
        logger.warning("%s is used after all; moving it back to %s.", name, device)
        unpark(module, device)

    return hook
