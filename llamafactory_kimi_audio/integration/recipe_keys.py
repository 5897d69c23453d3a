"""Recipe keys a Kimi-Audio run needs, said with LLaMA-Factory's / transformers' own keys instead of a patch.

The run guard (``run_guard.py``) completes a ``kimi_audio`` recipe before LLaMA-Factory parses it. Only keys the
recipe leaves out are added, each with one line on rank 0 that names the key; what the recipe says is kept, except a
value that cannot work (an error naming the fix):

- ``streaming: true`` needs ``accelerator_config: {dispatch_batches: false}``: with batch dispatching, accelerate
  slices every tensor of a batch to the batch size, audio frames included. There is no working alternative, so a
  recipe that leaves it out gets it, and ``dispatch_batches: true`` is an error.
- ``predict_with_generate: true`` scores CER/WER on greedy transcripts (the model's ASR decoding): without
  ``do_sample`` in the recipe, LLaMA-Factory would sample (``do_sample: true``, T=0.95), so ``do_sample: false`` is
  added. A recipe's ``do_sample: true`` is honoured.
- Greedy decoding ignores ``temperature`` / ``top_p``; unless the recipe sets them they are set to transformers'
  neutral 1.0, so that ``generate`` does not report LLaMA-Factory's sampling defaults as invalid flags.
"""

from __future__ import annotations

from typing import Any

from ..errors import InputError
from ..logs import get_logger, warning_rank0

logger = get_logger(__name__)
NEUTRAL_SAMPLING = {"temperature": 1.0, "top_p": 1.0}  # GenerationConfig's defaults: no notice under greedy


def complete_recipe(recipe: dict[str, Any]) -> dict[str, Any]:
    """A copy of a ``kimi_audio`` recipe with the keys above added where it lacks them (one line each)."""
    completed = dict(recipe)
    notices = _streaming_keys(completed) + _prediction_keys(completed)
    for notice in notices:
        warning_rank0(logger, "%s", notice)
    return completed


def recipe_true(value: Any) -> bool:
    """A recipe value that says yes: YAML's true, or a command-line string such as ``true`` / ``1``."""
    return value is True or str(value).strip().lower() in ("true", "1", "yes", "on")


def _streaming_keys(recipe: dict[str, Any]) -> list[str]:
    if not recipe_true(recipe.get("streaming")):
        return []
    config = recipe.get("accelerator_config")
    if isinstance(config, str):  # a JSON file or text: not ours to rewrite
        return [f"streaming: true: make sure accelerator_config {config} sets dispatch_batches: false"]
    config = dict(config or {})
    if "dispatch_batches" in config:
        if recipe_true(config["dispatch_batches"]):
            raise InputError(
                "streaming: true with accelerator_config.dispatch_batches: true would cut every audio tensor of a "
                "batch to the batch size; set accelerator_config: {dispatch_batches: false}"
            )
        return []
    recipe["accelerator_config"] = {**config, "dispatch_batches": False}
    return [
        "streaming: true: added accelerator_config: {dispatch_batches: false} (each rank reads its own part of the "
        "stream; dispatching would cut the audio tensors); put it in the recipe to silence this line"
    ]


def _prediction_keys(recipe: dict[str, Any]) -> list[str]:
    if not recipe_true(recipe.get("predict_with_generate")):
        return []
    notices = []
    if "do_sample" not in recipe:
        recipe["do_sample"] = False
        notices.append(
            "predict_with_generate: added do_sample: false (CER/WER of greedy transcripts; LLaMA-Factory would "
            "sample); set do_sample: true in the recipe to sample"
        )
    if not recipe_true(recipe["do_sample"]):
        for key, value in NEUTRAL_SAMPLING.items():
            recipe.setdefault(key, value)
    return notices
