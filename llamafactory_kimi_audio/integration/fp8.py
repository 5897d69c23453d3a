"""``fp8: true`` for Kimi-Audio through the stock ``llamafactory-cli train`` (issue 28).

What LLaMA-Factory 0.9.5 does with ``fp8: true`` (``train/fp8_utils.py``): its trainer sets
``ACCELERATE_MIXED_PRECISION=fp8`` before the Trainer builds its Accelerator, so that Accelerate's torchao recipe
(``AORecipeKwargs`` → ``convert_to_float8_training`` with Accelerate's default filter: every ``nn.Linear`` but the
first and the last) converts the model. Two things make that wrong for Kimi-Audio, and the first makes it a no-op:

- transformers 5 passes ``mixed_precision=args.mixed_precision`` to the Accelerator, which the TrainingArguments fixed
  before the variable was set (``bf16`` with ``bf16: true``): Accelerate never enables FP8, and LLaMA-Factory logs
  "FP8 was requested but Accelerate shows fp8_enabled=False";
- its filter would also convert Whisper, the VQ adaptor, the MIMO branch and every LoRA A/B matrix, and torchao's
  ``Float8Linear`` re-casts frozen weights and computes their (unused) weight gradient every step.

So for Kimi-Audio models the package converts the model itself, once, just before the optimizer is built (the
``fp8_decoder_linears`` row of ``patches.py`` wraps ``CustomSeq2SeqTrainer.create_optimizer``): only the decoder's
Linear layers (``models/fp8_linear.is_decoder_linear``), frozen ones quantised once, trainable ones (full / freeze
fine-tuning) through torchao's ``Float8Linear``. Autocast stays bf16. Other models keep LLaMA-Factory's path.

Before the run (the run guard): a machine without FP8 tensor cores is refused in one line, exit code 4.
"""

from __future__ import annotations

import functools
import importlib.util
from typing import Any

from .. import settings
from ..errors import EnvironmentProblem, InputError
from ..logs import get_logger, is_main_process
from .recipe_keys import recipe_true
from .wrappers import kimi_base_model

logger = get_logger(__name__)

FP8_MARK = "kimi_audio_fp8"  # instance attribute of a converted KimiAudioForCausalLM: what was converted
NEEDS = "an NVIDIA GPU with FP8 tensor cores (compute capability 8.9 or newer: L4, L40S, RTX 4090, H100, H200)"
FIX = "remove fp8: true to train in bf16"


def emulated() -> bool:
    return settings.enabled("KIMI_AUDIO_FP8_EMULATE")


def device_problem(use_cpu: bool = False) -> str | None:
    """Why this machine cannot train in FP8, or None (also None when ``KIMI_AUDIO_FP8_EMULATE`` is on)."""
    if emulated():
        return None
    if use_cpu:
        return "use_cpu: true trains on the CPU, which has no FP8 matmuls"
    from ..models.fp8_linear import fp8_device_problem

    return fp8_device_problem()


def torchao_available() -> bool:
    return importlib.util.find_spec("torchao") is not None


def check_fp8_recipe(recipe: dict[str, Any]) -> None:
    """A ``kimi_audio`` recipe with ``fp8: true``: refuse, before the model loads, what cannot run (one line)."""
    if not recipe_true(recipe.get("fp8", False)):
        return
    backend = str(recipe.get("fp8_backend", "auto")).strip().lower()
    if backend not in ("auto", "torchao"):
        raise InputError(
            f"fp8_backend: {backend} would convert every Linear layer of Kimi-Audio (Whisper, the adaptor, the MIMO "
            "branch, the LoRA matrices); use fp8_backend: torchao (or leave it out): the package then converts only "
            "the decoder's Linear layers"
        )
    if recipe_true(recipe.get("use_hyper_parallel", False)):
        raise InputError(
            "fp8: true with use_hyper_parallel: true would train in bf16 (the package converts Kimi-Audio for FP8 in "
            "LLaMA-Factory's SFT trainer; the hyper-parallel trainer is another); remove one of them"
        )
    if recipe.get("quantization_bit") is not None:
        raise InputError(
            f"fp8: true and quantization_bit: {recipe['quantization_bit']} exclude each other (FP8 needs the bf16 "
            "weights); remove one of them"
        )
    problem = device_problem(recipe_true(recipe.get("use_cpu", False)))
    if problem is not None:
        raise EnvironmentProblem(f"fp8: true needs {NEEDS}: {problem}; {FIX}")
    full = str(recipe.get("finetuning_type", "lora")).strip().lower() in ("full", "freeze")
    if full and not torchao_available():
        raise EnvironmentProblem(
            f"fp8: true with finetuning_type: {recipe.get('finetuning_type')} trains decoder weights through "
            "torchao's Float8Linear, and torchao is not installed; pip install torchao (0.17 for torch 2.11), or "
            "train LoRA (finetuning_type: lora needs no torchao)"
        )


def _torchao_factory() -> Any:
    from torchao.float8 import Float8LinearConfig
    from torchao.float8.float8_linear import Float8Linear

    config = Float8LinearConfig.from_recipe_name("rowwise")  # LLaMA-Factory's choice for its torchao backend
    return functools.partial(Float8Linear.from_float, config=config)


def convert_for_fp8(model: Any, training_args: Any) -> dict[str, list[str]] | None:
    """Convert a Kimi-Audio ``model`` (PEFT-wrapped or not) for ``fp8: true``, once. None for other models."""
    from ..models.fp8_linear import convert_decoder_linears, is_decoder_linear

    base = kimi_base_model(model)
    if base is None:
        return None
    if FP8_MARK in base.__dict__:
        return base.__dict__[FP8_MARK]
    problem = device_problem(bool(getattr(training_args, "use_cpu", False)))
    if problem is not None:  # the run guard refuses this earlier; runs that bypass it (run_exp(args=dict)) land here
        raise EnvironmentProblem(f"fp8: true needs {NEEDS}: {problem}; {FIX}")
    if any(hasattr(p, "ds_id") for p in base.parameters()):
        raise InputError("fp8: true does not work with DeepSpeed ZeRO-3 (partitioned weights); use ZeRO-2 or DDP")
    trainable = any(is_decoder_linear(m, n) and m.weight.requires_grad for n, m in model.named_modules())
    if trainable and not torchao_available():
        raise EnvironmentProblem("fp8: true with trainable decoder weights needs torchao; pip install torchao")
    park_now = _park_at_conversion(training_args)
    done = convert_decoder_linears(
        model,
        _torchao_factory() if trainable else None,
        matmuls=settings.get("KIMI_AUDIO_FP8_MATMULS"),
        fast_accum=settings.get("KIMI_AUDIO_FP8_FAST_ACCUM"),
        center=settings.enabled("KIMI_AUDIO_FP8_CENTER"),
        park_to="cpu" if park_now else None,
    )
    if park_now:
        _hide_parked_weights_from_ddp(model)
    base.__dict__[FP8_MARK] = done
    _log(base, done)
    return done


def _park_at_conversion(training_args: Any) -> bool:
    """Park each bf16 weight as its layer is quantised (``KIMI_AUDIO_PARK_IDLE``), so that a 24 GB card never holds
    both copies. Not under DeepSpeed (its engine broadcasts every parameter through NCCL at start: the train-begin
    parking of ``speed.park_idle_weights`` does it there, after the wrapping) nor FSDP (flat parameters: nothing is
    parked)."""
    if not settings.enabled("KIMI_AUDIO_PARK_IDLE"):
        return False
    return not getattr(training_args, "deepspeed", None) and not getattr(training_args, "fsdp", None)


def _hide_parked_weights_from_ddp(model: Any) -> None:
    """DDP (wrapping ``model`` next) requires one device type and broadcasts every parameter at start: the parked
    bf16 weights (identical on every rank, never trained) are left out by name, DDP's documented opt-out."""
    from torch.nn.parallel import DistributedDataParallel

    from ..models.fp8_linear import FrozenFloat8Linear

    parked = [
        f"{name}.weight"
        for name, module in model.named_modules()
        if isinstance(module, FrozenFloat8Linear) and module.weight_parked_on is not None
    ]
    ignored = list(getattr(model, "_ddp_params_and_buffers_to_ignore", ()))
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, ignored + parked)


def _log(base: Any, done: dict[str, list[str]]) -> None:
    if not is_main_process():
        return
    frozen = [base.get_submodule(_strip(n)) for n in done["frozen"]]
    extra = sum(m.fp8_bytes() for m in frozen) / 2**30
    parked = sum(m.weight.numel() * m.weight.element_size() for m in frozen if _parked_off_device(m)) / 2**30
    logger.warning(
        "fp8: %d frozen decoder Linear layers run FP8 GEMMs (weights quantised once, +%.1f GiB%s), %d trainable ones "
        "through torchao; Whisper, the adaptor, the MIMO branch, embeddings, heads and LoRA stay bf16%s.",
        len(done["frozen"]),
        extra,
        f"; their bf16 weights kept in host memory, -{parked:.1f} GiB" if parked else "",
        len(done["trainable"]),
        " (emulated: KIMI_AUDIO_FP8_EMULATE)" if emulated() else "",
    )


def _parked_off_device(layer: Any) -> bool:
    return layer.weight_parked_on is not None and layer.weight_parked_on != layer.weight_fp8.device


def _strip(name: str) -> str:
    """A name of the trained model (maybe ``base_model.model.…``) as a name inside the Kimi-Audio model."""
    for prefix in ("module.", "base_model.model."):
        name = name[len(prefix) :] if name.startswith(prefix) else name
    return name


def make_fp8_decoder(original):
    """``CustomSeq2SeqTrainer.create_optimizer``: with ``fp8: true``, a Kimi-Audio model is converted first (the
    model is on its device then, the optimizer not yet built, the first forward still to come)."""

    @functools.wraps(original)
    def create_optimizer(self: Any, *args: Any, **kwargs: Any):
        if recipe_true(getattr(self.args, "fp8", False)):
            convert_for_fp8(self.model, self.args)
        return original(self, *args, **kwargs)

    return create_optimizer


def fp8_check() -> Any:
    """``kimi-audio-lf doctor``: can ``fp8: true`` run here (FP8 tensor cores; torchao for full fine-tuning)?"""
    from ..doctor.checkpoint import Check
    from ..models.fp8_linear import fp8_device_problem

    name = "FP8 training (fp8: true)"
    problem = fp8_device_problem()
    if problem is not None:
        return Check(name, False, f"not available: {problem}", f"needs {NEEDS}; bf16 training is unaffected", False)
    import torch

    gpu = torch.cuda.get_device_name()
    if torchao_available():
        return Check(name, True, f"{gpu}: FP8 GEMMs for LoRA and full fine-tuning (torchao found)", required=False)
    detail = f"{gpu}: FP8 GEMMs for LoRA; full fine-tuning in FP8 also needs torchao (not installed)"
    return Check(name, True, detail, "pip install torchao (for fp8: true with finetuning_type: full)", False)
