"""``integration/llamaboard.py`` without the Web UI: what goes into fields and what into the Extra arguments.
Loading the result through LlamaBoard itself is ``test_llamaboard_args.py``."""

from __future__ import annotations

import json

from llamafactory_kimi_audio.integration.llamaboard import to_llamaboard

RECIPE = {
    "model_name_or_path": "models/Kimi-Audio-7B",
    "stage": "sft",
    "do_train": True,
    "finetuning_type": "lora",
    "template": "kimi_audio",
    "dataset": "a, b",
    "bf16": True,
}


def test_values_outside_a_slider_travel_as_extra_arguments() -> None:
    """save_steps 10000 is past the slider's 5000: the field shows 5000, the extra argument carries 10000."""
    fields = to_llamaboard({**RECIPE, "save_steps": 10000, "lora_rank": 16})
    extra = json.loads(fields["train.extra_args"])
    assert fields["train.save_steps"] == 5000 and extra["save_steps"] == 10000
    assert fields["train.lora_rank"] == 16 and "lora_rank" not in extra


def test_fields_take_llamafactory_defaults_and_the_rest_goes_to_extra() -> None:
    fields = to_llamaboard({**RECIPE, "eval_dataset": "dev", "logging_nan_inf_filter": False, "seed": 0})
    extra = json.loads(fields["train.extra_args"])
    assert fields["top.model_name"] == "Kimi-Audio-7B" and fields["train.dataset"] == ["a", "b"]
    assert fields["train.compute_type"] == "bf16" and fields["train.lr_scheduler_type"] == "linear"  # not the UI's
    assert fields["train.lora_alpha"] == 2 * fields["train.lora_rank"]  # LLaMA-Factory's rule for no lora_alpha
    assert extra["eval_dataset"] == "dev" and extra["seed"] == 0
    assert extra["logging_nan_inf_filter"] == 0 and extra["logging_nan_inf_filter"] is not False  # survives _clean_cmd
    assert extra["max_samples"] is None and extra["preprocessing_num_workers"] is None  # the UI's cap and constant go
    assert "train.output_dir" not in fields  # no output_dir: the UI's dated default
