"""Whether ``--model`` / ``--adapter`` can be what ``evaluate`` and ``respond`` load, checked without torch or
transformers: a wrong path ends in a fraction of a second instead of after seconds of imports."""

from __future__ import annotations

import os

from ..errors import ModelError
from ..models.auto import is_kimi_audio_checkpoint
from ..models.constants import MODEL_TYPE, OFFICIAL_ARCHITECTURE


def check_model_dir(model_path: str, adapter_path: str | None = None) -> None:
    """Raise ModelError (exit 3) naming the directory when the model or adapter cannot be what we load."""
    if not os.path.isdir(model_path):
        raise ModelError(
            f"{model_path}: no such model directory; pass a local Kimi-Audio checkpoint to --model "
            "(download it first; nothing is downloaded here)"
        )
    if not is_kimi_audio_checkpoint(model_path):
        raise ModelError(
            f"{model_path}: not a Kimi-Audio checkpoint (its config.json has neither model_type "
            f"{MODEL_TYPE!r} nor architectures {OFFICIAL_ARCHITECTURE!r} / an auto_map to its code); "
            "pass the model directory itself"
        )
    if adapter_path and not os.path.isfile(os.path.join(adapter_path, "adapter_config.json")):
        raise ModelError(f"{adapter_path}: no adapter_config.json; pass the output_dir of a LoRA run to --adapter")
