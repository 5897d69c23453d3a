"""A training recipe (``examples/kimi_lora_80gb.yaml``) as LlamaBoard's saved arguments, for the Web UI's *Load
arguments* button.

LlamaBoard saves and loads ``{element id: value}`` YAML files (``llamaboard_config/NAME.yaml`` under the Web UI's
working directory; the *Config path* box takes a file name there or an absolute path). A recipe key with a field on
the Train tab sets that field; every other key goes into the *Extra arguments* JSON, which LlamaBoard applies after
its base arguments (and, for a Kimi-Audio run, after all of its fields: ``webui_args.py``). A field the recipe does
not set gets LLaMA-Factory's own default, not the UI's, so the Web UI starts the same run as
``llamafactory-cli train RECIPE``. Two LlamaBoard rules shape the file: the model path is never saved (it is kept per
user: type it once into *Model path*), and ``false`` / ``null`` extra arguments are dropped from the command it runs,
so a recipe's ``false`` whose default is true is written as ``0`` (the same for every ``if flag:`` test).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from ..errors import InputError
from .registration import MODEL_GROUPS

CONFIG_DIR = "llamaboard_config"  # llamafactory.webui.common.DEFAULT_CONFIG_DIR
# recipe key -> LlamaBoard element id, value copied as is
FIELDS = {
    "finetuning_type": "top.finetuning_type",
    "template": "top.template",
    "quantization_method": "top.quantization_method",
    "dataset_dir": "train.dataset_dir",
    "cutoff_len": "train.cutoff_len",
    "per_device_train_batch_size": "train.batch_size",
    "gradient_accumulation_steps": "train.gradient_accumulation_steps",
    "lr_scheduler_type": "train.lr_scheduler_type",
    "logging_steps": "train.logging_steps",
    "save_steps": "train.save_steps",
    "warmup_steps": "train.warmup_steps",
    "val_size": "train.val_size",
    "report_to": "train.report_to",
    "output_dir": "train.output_dir",
    "neftune_noise_alpha": "train.neftune_alpha",
    "loraplus_lr_ratio": "train.loraplus_lr_ratio",
    "pissa_init": "train.use_pissa",
    **{
        key: f"train.{key}"
        for key in (
            "packing neat_packing train_on_prompt mask_history resize_vocab use_llama_pro enable_thinking lora_rank "
            "lora_alpha lora_dropout create_new_adapter use_rslora use_dora lora_target additional_target "
            "freeze_trainable_layers freeze_trainable_modules freeze_extra_modules freeze_vision_tower "
            "freeze_multi_modal_projector freeze_language_model"
        ).split()
    },
}
# LlamaBoard's sliders (components/train.py): a recipe value outside one is sent as an extra argument as well, which
# wins (LlamaBoard applies the extra arguments after its base fields; webui_args.py after all of them, for Kimi-Audio)
SLIDER_RANGES = {
    "cutoff_len": (4, 131072),
    "per_device_train_batch_size": (1, 1024),
    "gradient_accumulation_steps": (1, 1024),
    "val_size": (0, 1),
    "logging_steps": (1, 1000),
    "save_steps": (10, 5000),
    "warmup_steps": (0, 5000),
    "neftune_noise_alpha": (0, 10),
    "freeze_trainable_layers": (-128, 128),
    "lora_rank": (1, 1024),
    "lora_alpha": (1, 2048),
    "lora_dropout": (0, 1),
    "loraplus_lr_ratio": (0, 64),
}
TEXT_FIELDS = {key: f"train.{key}" for key in ("learning_rate", "num_train_epochs", "max_grad_norm")}  # textboxes
PRECISIONS = ("pure_bf16", "bf16", "fp16")  # train.compute_type, else fp32
SET_BY_THE_UI = {"do_train", "trust_remote_code", "plot_loss", "model_name_or_path", "stage", "dataset", *PRECISIONS}
SPECIAL = {"quantization_bit", "max_samples"}
# base arguments LlamaBoard sets on its own; a recipe without them gets LLaMA-Factory's default back (None: dropped)
UI_CONSTANTS = {"preprocessing_num_workers": None, "include_num_input_tokens_seen": False}
NO_FIELD_VALUE = {  # a field for an argument that defaults to None: the value LlamaBoard turns back into None
    "additional_target": "",
    "freeze_extra_modules": "",
    "loraplus_lr_ratio": 0,
    "neftune_noise_alpha": 0,
}


def llamafactory_defaults() -> dict[str, Any]:
    """Every argument's default in LLaMA-Factory's argument classes (transformers' training arguments included)."""
    from llamafactory.hparams import DataArguments, FinetuningArguments, ModelArguments, TrainingArguments

    defaults: dict[str, Any] = {}
    for cls in (TrainingArguments, ModelArguments, DataArguments, FinetuningArguments):
        for item in dataclasses.fields(cls):
            if item.default is not dataclasses.MISSING:
                defaults[item.name] = getattr(item.default, "value", item.default)  # enums: their value
    return defaults


def read_recipe(path: str) -> dict[str, Any]:
    import yaml

    if not os.path.isfile(path):
        raise InputError(f"{path}: no such recipe; pass a training YAML such as examples/kimi_lora.yaml")
    try:
        with open(path, encoding="utf-8") as handle:
            recipe = yaml.safe_load(handle)
    except yaml.YAMLError as err:
        raise InputError(f"{path}: not valid YAML ({' '.join(str(err).split())[:200]})") from None
    if not isinstance(recipe, dict):
        raise InputError(f"{path}: expected a mapping of training arguments, got {type(recipe).__name__}")
    if not recipe.get("do_train") or recipe.get("stage", "sft") != "sft":
        raise InputError(
            f"{path}: not a training recipe (do_train: true, stage: sft); the Web UI's Train tab loads only those"
        )
    return recipe


def model_name(model_path: Any) -> str:
    """The Web UI's model entry for a recipe's ``model_name_or_path`` (the Instruct model unless it names the base)."""
    base = os.path.basename(str(model_path or "").rstrip("/")).lower()
    return next((name for name in MODEL_GROUPS if name.lower() == base), next(iter(MODEL_GROUPS)))


def to_llamaboard(recipe: dict[str, Any]) -> dict[str, Any]:
    """``{element id: value}`` for LlamaBoard's *Load arguments* from a training recipe."""
    from llamafactory.extras.constants import TRAINING_STAGES

    defaults = llamafactory_defaults()
    stages = {stage: name for name, stage in TRAINING_STAGES.items()}
    value = {**defaults, **recipe}.get
    fields: dict[str, Any] = {
        "top.model_name": model_name(recipe.get("model_name_or_path")),
        "top.quantization_bit": str(recipe["quantization_bit"]) if recipe.get("quantization_bit") else "none",
        "train.training_stage": stages[recipe.get("stage", "sft")],
        "train.dataset": _names(recipe.get("dataset")),
        "train.compute_type": next((p for p in PRECISIONS if recipe.get(p)), "fp32"),
        "train.max_samples": str(recipe.get("max_samples") or 100000),
        "train.ds_stage": "none",  # a recipe's own deepspeed file travels in the extra arguments
        "train.ds_offload": False,
    }
    extra = {key: v for key, v in UI_CONSTANTS.items() if key not in recipe}
    for key, elem_id in FIELDS.items():
        if key != "output_dir" or recipe.get(key):  # no output_dir: the UI's own dated one
            fields[elem_id] = _field_value(key, value(key), recipe)
        low, high = SLIDER_RANGES.get(key, (None, None))
        if low is not None and isinstance(fields[elem_id], (int, float)) and not low <= fields[elem_id] <= high:
            extra[key] = fields[elem_id]
            fields[elem_id] = min(max(fields[elem_id], low), high)
    for key, elem_id in TEXT_FIELDS.items():
        fields[elem_id] = str(value(key))
    if not recipe.get("max_samples"):
        extra["max_samples"] = None  # every sample, not the field's cap
    for key, v in recipe.items():
        if key not in FIELDS and key not in TEXT_FIELDS and key not in SET_BY_THE_UI and key not in SPECIAL:
            extra[key] = 0 if v is False and defaults.get(key) is not False else v
    fields["train.extra_args"] = json.dumps(extra, ensure_ascii=False)
    return fields


def _field_value(key: str, value: Any, recipe: dict[str, Any]) -> Any:
    if key == "lora_alpha" and value is None:  # LLaMA-Factory: twice the rank
        return 2 * int(recipe.get("lora_rank") or 8)
    if key == "report_to":
        return value if isinstance(value, str) else "none"
    return NO_FIELD_VALUE.get(key, value) if value is None else value


def _names(value: Any) -> list[str]:
    parts = value.split(",") if isinstance(value, str) else value if isinstance(value, list) else []
    return [str(part).strip() for part in parts if str(part).strip()]


def write_llamaboard_args(recipe_path: str, out: str | None = None, force: bool = False) -> str:
    """Convert ``recipe_path`` and write it (default: ``llamaboard_config/<recipe name>.yaml`` here); the path."""
    import yaml

    from ..fileio.textio import atomic_open

    recipe = read_recipe(recipe_path)
    out = out or os.path.join(CONFIG_DIR, os.path.splitext(os.path.basename(recipe_path))[0] + ".yaml")
    if os.path.exists(out) and not force:  # before the conversion, which imports LLaMA-Factory (seconds)
        raise InputError(f"{out} exists; pass --force to replace it, or --out another")
    fields = to_llamaboard(recipe)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with atomic_open(out) as handle:
        handle.write(f"# LlamaBoard arguments of {os.path.basename(recipe_path)} (kimi-audio-lf webui-args)\n")
        yaml.safe_dump(fields, handle, allow_unicode=True, sort_keys=False)
    return out
