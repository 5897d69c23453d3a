"""Speed and memory defaults of Kimi-Audio runs: the model's speed switches, and idle weights parked off the GPU.

- ``speed_switches`` (patch row): ``KIMI_AUDIO_VARLEN_ATTENTION`` / ``KIMI_AUDIO_COMPILE_POINTWISE`` become config
  attributes before the model is built. ``auto`` (the default) compiles whole decoder layers where that is known to
  pay: LoRA/full training of an unquantised model on a CUDA GPU with Triton, outside DeepSpeed ZeRO-3.
- ``park_idle_weights`` (patch row): at train begin, the frozen MIMO branch and audio head (ASR data never runs them)
  and, with a feature cache, Whisper move to host memory (``models/parking.py``): about 5 GiB less on the GPU; with
  ``fp8: true``, so do the bf16 weights of the FP8 decoder layers (12.2 GiB: the steps read only their FP8 copies).
"""

from __future__ import annotations

import functools
import importlib.util
from typing import Any

from .. import settings
from ..logs import get_logger, is_main_process
from ..models.constants import MODEL_TYPE as KIMI_MODEL_TYPE
from .wrappers import kimi_base_model, quiet_torch_dtype_access

logger = get_logger(__name__)


def compile_mode(requested: str, is_trainable: bool, model_args: Any) -> str:
    """The config's ``compile_pointwise`` for ``requested`` (the setting): ``auto`` → ``layers`` or ``off``."""
    if requested != "auto":
        return requested
    return "layers" if is_trainable and compile_pays(model_args) else "off"


def compile_pays(model_args: Any) -> bool:
    import torch

    if getattr(model_args, "quantization_bit", None) is not None:  # bitsandbytes layers break the graph
        return False
    if not torch.cuda.is_available() or importlib.util.find_spec("triton") is None:
        return False
    return not zero3_enabled()


def zero3_enabled() -> bool:
    try:
        from transformers.integrations import is_deepspeed_zero3_enabled
    except ImportError:  # pragma: no cover - transformers without the DeepSpeed integration module
        return False
    return bool(is_deepspeed_zero3_enabled())


def make_speed_switches(original):
    """The model's speed switches are config attributes; the settings (environment) decide them, once, here."""

    @functools.wraps(original)
    def patch_config(config, tokenizer, model_args, init_kwargs, is_trainable, *args: Any, **kwargs: Any):
        if getattr(config, "model_type", None) != KIMI_MODEL_TYPE:
            return original(config, tokenizer, model_args, init_kwargs, is_trainable, *args, **kwargs)
        with quiet_torch_dtype_access():
            original(config, tokenizer, model_args, init_kwargs, is_trainable, *args, **kwargs)
        config.use_varlen_attention = settings.enabled("KIMI_AUDIO_VARLEN_ATTENTION")
        config.compile_pointwise = compile_mode(settings.get("KIMI_AUDIO_COMPILE_POINTWISE"), is_trainable, model_args)
        config.fast_greedy = settings.enabled("KIMI_AUDIO_FAST_GREEDY")

    return patch_config


def make_park_idle_weights(original):
    """Every run gets the parking callback first, so that figures taken at train begin already see the GPU without
    the parked weights."""

    @functools.wraps(original)
    def _training_function(config: dict[str, Any], *args: Any, **kwargs: Any):
        callbacks = config.setdefault("callbacks", [])
        if not any(getattr(c, "parks_idle_weights", False) for c in callbacks):
            callbacks.insert(0, park_idle_callback())
        return original(config, *args, **kwargs)

    return _training_function


@functools.cache
def _callback_class() -> type:
    from transformers import TrainerCallback

    class ParkIdleWeights(TrainerCallback):
        parks_idle_weights = True

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            park_idle_weights(model, args)

    return ParkIdleWeights


def park_idle_callback() -> Any:
    return _callback_class()()


def park_idle_weights(model: Any, training_args: Any) -> list[str]:
    """Park the idle submodules of a Kimi-Audio ``model`` (after the Trainer placed and wrapped it), and the bf16
    weights of its FP8 decoder layers (``fp8: true``: the steps read only the FP8 copies)."""
    from ..models.fp8_linear import park_bf16_weights
    from ..models.parking import park

    base = kimi_base_model(model)
    if base is None or not settings.enabled("KIMI_AUDIO_PARK_IDLE"):
        return []
    if zero3_enabled() or getattr(training_args, "fsdp", None):  # partitioned parameters are not ours to move
        return []
    cached = bool(settings.get("KIMI_AUDIO_FEATURE_CACHE")) and settings.get("KIMI_AUDIO_CACHE_MODE") == "full"
    idle = base.idle_submodules(audio_features_cached=cached)
    parked = park(idle)
    fp8_freed = park_bf16_weights(base)
    if not is_main_process():
        return parked
    if parked:
        freed = sum(p.numel() * p.element_size() for name in parked for p in idle[name].parameters())
        logger.warning(
            "%s kept in host memory, %.1f GiB less on the GPU (moved back if a batch needs "
            "them; KIMI_AUDIO_PARK_IDLE=0 keeps them on the GPU).",
            ", ".join(parked),
            freed / 2**30,
        )
    if fp8_freed:
        logger.warning(
            "fp8: the bf16 weights of the FP8 decoder layers kept in host memory, %.1f GiB less on the GPU (the steps "
            "read only their FP8 copies; KIMI_AUDIO_PARK_IDLE=0 keeps them on the GPU).",
            fp8_freed / 2**30,
        )
    return parked
