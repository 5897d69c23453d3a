"""The run guard's cheap checks of a Kimi-Audio recipe, in ``llamafactory-cli train``'s own process before torch.

LLaMA-Factory imports torch and transformers (about 9 s) before ``run_exp``, where the run guard checks a recipe. So
``_startup`` calls :func:`check_train_command` when the ``llamafactory-cli`` / ``lmf`` command ``train`` first imports
``llamafactory``: a missing dataset file, an ``output_dir`` under a regular file or a wrong model path then ends in
about a second, with the run guard's own line and exit code. Nothing here imports torch, transformers or
LLaMA-Factory.

The recipe is read as LLaMA-Factory's ``read_args`` will read it (a YAML file merged with ``key=value`` overrides
through OmegaConf, or the flags through ``recipe_flags``), and the run guard's checks run in its order. Only where
each check is certain here: a recipe with ``fp8: true`` or the Megatron-Core workflow (checks that need torch or
LLaMA-Factory come first there), a Web UI or torchrun child process, ``KIMI_AUDIO_DEBUG``, a recipe that cannot be
read, or any unexpected error: nothing happens, and the run guard checks the recipe later as before.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import settings
from .recipe_keys import recipe_true
from .registration import TEMPLATE_NAME
from .run_guard import ONE_LINE_ERRORS, as_recipe, check_before_load, one_line, print_one_line

YAML_SUFFIXES = (".yaml", ".yml")  # LLaMA-Factory 0.9.5's .json branch fails (json.load of a Path): left to it
# Set by the Web UI for its training process, by torchrun for its children, by LLaMA-Factory for its v1 launcher and
# its Megatron-Core workflow: not the plain single command this check is sure about.
OTHER_PATHS_ENV = ("LLAMABOARD_ENABLED", "RANK", "LOCAL_RANK", "USE_V1", "USE_MCA")


def check_train_command(args: Sequence[str]) -> None:
    """``args``: what follows ``train`` on the command line. Ends the process (``SystemExit``) after the run guard's
    one line where the run guard would end it; returns in every other case."""
    if settings.enabled("KIMI_AUDIO_DEBUG") or any(os.environ.get(name) for name in OTHER_PATHS_ENV):
        return
    try:
        recipe = read_recipe(args)
        if recipe is None or recipe.get("template") != TEMPLATE_NAME or not _checked_here(recipe):
            return
        line = first_problem(recipe)
    except Exception:  # whatever it is, the normal path meets it and says it
        return
    if line is not None:
        print_one_line(line[0])
        raise SystemExit(line[1])


def read_recipe(args: Sequence[str]) -> dict[str, Any] | None:
    """The recipe ``read_args`` will return, as a dict for the checks (None: not one this check reads)."""
    if args and args[0].endswith(YAML_SUFFIXES):
        from omegaconf import OmegaConf

        merged = OmegaConf.merge(OmegaConf.load(Path(args[0]).absolute()), OmegaConf.from_cli(list(args[1:])))
        recipe = OmegaConf.to_container(merged)
        return recipe if isinstance(recipe, dict) else None
    if args and args[0].endswith(".json"):
        return None
    return as_recipe(list(args))


def _checked_here(recipe: dict[str, Any]) -> bool:
    """The run guard's ``check_trainer`` and ``check_fp8_recipe`` surely pass (``check_before_load`` skips them)."""
    return not recipe_true(recipe.get("use_mca", False)) and not recipe_true(recipe.get("fp8", False))


def first_problem(recipe: dict[str, Any]) -> tuple[str, int] | None:
    """(the one line, the exit code) of the run guard's first failing cheap check, or None."""
    try:
        check_before_load(recipe, with_llamafactory=False)
    except ONE_LINE_ERRORS as err:
        return one_line(err, recipe)
    return None
