"""The recipe keys a Kimi-Audio run needs are added only where the recipe leaves them out, and LLaMA-Factory's own
parser turns them into the settings the removed patches used to force: a recipe's ``do_sample: true`` is honoured."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from llamafactory_kimi_audio.errors import InputError
from llamafactory_kimi_audio.integration.recipe_keys import complete_recipe

DATASET_DIR = Path(__file__).resolve().parents[2] / "dataset_info"


def predict_recipe(tiny_checkpoint, tmp_path, **keys) -> dict:
    return {
        "model_name_or_path": tiny_checkpoint.path,
        "trust_remote_code": True,
        "stage": "sft",
        "do_predict": True,
        "finetuning_type": "lora",
        "predict_with_generate": True,
        "eval_dataset": "kimi_audio_demo_test",
        "dataset_dir": str(DATASET_DIR),
        "template": "kimi_audio",
        "output_dir": str(tmp_path / "predict"),
        "use_cpu": True,
        "report_to": "none",
        **keys,
    }


def parsed(recipe: dict):
    import llamafactory.train.tuner  # noqa: F401  (the hooks apply as in `llamafactory-cli train`)
    from llamafactory.hparams import get_train_args

    return get_train_args(recipe)


def test_prediction_without_do_sample_decodes_greedily_and_says_so(tiny_checkpoint, tmp_path, caplog):
    recipe = predict_recipe(tiny_checkpoint, tmp_path)
    with caplog.at_level(logging.WARNING):
        completed = complete_recipe(recipe)
    assert "do_sample" not in recipe  # the caller's dict is left alone
    (line,) = [r.getMessage() for r in caplog.records]
    assert "added do_sample: false" in line and "do_sample: true" in line
    generating = parsed(completed)[4]
    assert generating.do_sample is False and generating.temperature == 1.0 and generating.top_p == 1.0


def test_a_recipe_that_asks_for_sampling_samples(tiny_checkpoint, tmp_path, caplog):
    recipe = predict_recipe(tiny_checkpoint, tmp_path, do_sample=True, temperature=0.7)
    with caplog.at_level(logging.WARNING):
        completed = complete_recipe(recipe)
    assert completed == recipe and not caplog.records
    generating = parsed(completed)[4]
    assert generating.do_sample is True and generating.temperature == 0.7 and generating.top_p == 0.7  # LF's top_p


def test_greedy_recipe_keeps_its_own_sampling_values(tiny_checkpoint, tmp_path):
    completed = complete_recipe(predict_recipe(tiny_checkpoint, tmp_path, do_sample=False, top_p=0.5))
    assert completed["top_p"] == 0.5 and completed["temperature"] == 1.0


def train_recipe(tiny_checkpoint, tmp_path, **keys) -> dict:
    recipe = predict_recipe(tiny_checkpoint, tmp_path, do_predict=False, predict_with_generate=False)
    recipe.pop("eval_dataset")
    return {**recipe, "do_train": True, "dataset": "kimi_audio_demo_train", "max_steps": 2, **keys}


def test_streaming_gets_whole_batches_per_rank(tiny_checkpoint, tmp_path, caplog):
    recipe = train_recipe(tiny_checkpoint, tmp_path, streaming=True, accelerator_config={"split_batches": False})
    with caplog.at_level(logging.WARNING):
        completed = complete_recipe(recipe)
    assert completed["accelerator_config"] == {"split_batches": False, "dispatch_batches": False}
    assert "dispatch_batches: false" in caplog.records[0].getMessage()
    training = parsed(completed)[2]
    assert training.accelerator_config.dispatch_batches is False


def test_streaming_with_dispatched_batches_is_bad_input(tiny_checkpoint, tmp_path):
    recipe = train_recipe(tiny_checkpoint, tmp_path, streaming=True, accelerator_config={"dispatch_batches": True})
    with pytest.raises(InputError, match=r"dispatch_batches: true .* set accelerator_config: \{dispatch_batches"):
        complete_recipe(recipe)


def test_recipes_that_need_nothing_are_unchanged(tiny_checkpoint, tmp_path, caplog):
    for recipe in (
        train_recipe(tiny_checkpoint, tmp_path),
        train_recipe(tiny_checkpoint, tmp_path, streaming=True, accelerator_config={"dispatch_batches": False}),
    ):
        with caplog.at_level(logging.WARNING):
            assert complete_recipe(recipe) == recipe
    assert not caplog.records
