"""Log lines of LLaMA-Factory that do not apply to a Kimi-Audio run, filtered out (``logging.Filter``, no patch).

- ``We recommend enable mixed precision training.``: a ``kimi_audio`` recipe on a machine without a CUDA device (the
  demo, the tests, ``examples/tiny_demo.yaml``) trains in fp32 on purpose: fp16 needs a GPU and the demo's figure is
  measured in fp32. On a GPU, and for every other recipe, the line stays.
"""

from __future__ import annotations

import logging
from types import ModuleType

PRECISION_ADVICE = "We recommend enable mixed precision training."
PARSER_LOGGER = "llamafactory.hparams.parser"  # LLaMA-Factory's get_logger(__name__) of the module that says it


class CpuPrecisionAdvice(logging.Filter):
    """Drops :data:`PRECISION_ADVICE` for a ``kimi_audio`` recipe when torch sees no CUDA device."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage() != PRECISION_ADVICE:
            return True
        import torch

        return torch.cuda.is_available() or not _kimi_recipe_running()


def _kimi_recipe_running() -> bool:
    """The recipe of this ``llamafactory-cli`` process (its command line, as LLaMA-Factory reads it) is kimi_audio."""
    from .registration import TEMPLATE_NAME
    from .run_guard import _recipe

    recipe = _recipe(None)
    return recipe is not None and recipe.get("template") == TEMPLATE_NAME


def quiet_cpu_precision_advice(tuner: ModuleType) -> None:
    """Callback of the tuner hook (``patches.REGISTRATIONS``); idempotent."""
    logger = logging.getLogger(PARSER_LOGGER)
    if not any(isinstance(f, CpuPrecisionAdvice) for f in logger.filters):
        logger.addFilter(CpuPrecisionAdvice())
