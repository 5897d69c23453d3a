"""Patch rows of model loading: transformers' Auto classes and LLaMA-Factory's model package (``patches.py`` holds the
table). Every LLaMA-Factory function is replaced in the module that defines it, applied when that module executes,
so the loader and any other importer bind the replacement (tests/integration/test_patches.py scans for the
importers)."""

from __future__ import annotations

from ..patching import Patch
from . import speed
from . import wrappers as w
from .auto_classes import AUTO_CLASSES, route_to_native

LOADER = "llamafactory.model.loader"  # imports transformers' Auto classes and PEFT (through model.adapter)
ADAPTER = "llamafactory.model.adapter"
PATCHER = "llamafactory.model.patcher"
MISC = "llamafactory.model.model_utils.misc"
VISUAL = "llamafactory.model.model_utils.visual"

AUTO_PATCHES = [
    Patch(
        name=f"native_dispatch.{auto}",
        trigger=LOADER,
        owner=f"transformers:{auto}",
        attribute="from_pretrained",
        make_replacement=route_to_native(auto),
        distribution="transformers",
        parameters=("cls", "pretrained_model_name_or_path"),
        wrap_classmethod=True,
        why="Kimi-Audio directories load the native classes, never the flash-attn-only remote code, also with "
        "trust_remote_code=True and for official exports that say model_type 'qwen2' (integration/auto_classes.py)",
    )
    for auto in AUTO_CLASSES
]

MODEL_PATCHES = [
    Patch(
        name="fused_lora",
        trigger=ADAPTER,
        owner=ADAPTER,
        attribute="init_adapter",
        make_replacement=w.make_fused_lora,
        parameters=("config", "model", "model_args", "finetuning_args", "is_trainable"),
        why="PEFT's LoRA forward copies every input to fp32 and back under bf16 autocast and scales/adds in two "
        "extra passes; the LoRA layer instances of a Kimi-Audio model get a forward that runs the same math in one "
        "addmm (models/fused_lora.py; other models keep PEFT's; KIMI_AUDIO_FUSED_LORA=0: PEFT's own), q/k/v and "
        "gate/up one LoRA-A matmul together (models/grouped_lora.py; KIMI_AUDIO_GROUPED_LORA=0: one each)",
    ),
    Patch(
        name="mimo_lora_targets",
        trigger=VISUAL,
        owner=VISUAL,
        attribute="patch_target_modules",
        make_replacement=w.make_mimo_lora_targets,
        parameters=("model", "finetuning_args", "target_modules"),
        why="speech output: `lora_target: all,mimo` adds LoRA to the MIMO audio-head layers (opt-in; `all` keeps "
        "them frozen, as the composite entry lists them with the Whisper tower)",
    ),
    Patch(
        name="official_auto_map",
        trigger=MISC,
        owner=MISC,
        attribute="register_autoclass",
        make_replacement=w.make_official_auto_map,
        parameters=("config", "model", "tokenizer"),
        why="saved / exported checkpoints keep the official auto_map instead of pointing at copies of this "
        "package's sources (register_for_auto_class would rewrite AutoConfig/AutoModel and copy *.py files)",
    ),
    Patch(
        name="speed_switches",
        trigger=PATCHER,
        owner=PATCHER,
        attribute="patch_config",
        make_replacement=speed.make_speed_switches,
        parameters=("config", "tokenizer", "model_args", "init_kwargs", "is_trainable"),
        why="the model's speed switches are config attributes (use_varlen_attention, compile_pointwise), set from "
        "KIMI_AUDIO_VARLEN_ATTENTION / KIMI_AUDIO_COMPILE_POINTWISE before the model is built (auto: whole layers "
        "compiled for unquantised training on CUDA, integration/speed.py)",
    ),
]
