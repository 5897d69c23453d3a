"""Which directories hold a Kimi-Audio checkpoint, and transformers' registries for the native classes.

Pure transformers: the routing of ``Auto*.from_pretrained`` that registries cannot express (``trust_remote_code=True``,
official exports whose ``config.json`` says ``model_type: "qwen2"``) is a patch in ``integration/auto_classes.py``.
"""

from __future__ import annotations

import json
import os
from typing import Any

from .constants import MODEL_TYPE, OFFICIAL_ARCHITECTURE

KIMI_MODEL_TYPES = (MODEL_TYPE, "kimi_audio")
_REMOTE_MODULE = MODEL_TYPE  # configuration_moonshot_kimia / modeling_moonshot_kimia in auto_map


def read_config_json(model_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The ``config.json`` of a local directory, or ``None`` (no directory, no file, not JSON)."""
    config_file = os.path.join(os.fspath(model_dir), "config.json")
    if not os.path.isfile(config_file):
        return None
    try:
        with open(config_file, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _fields(source: Any) -> dict[str, Any] | None:
    if isinstance(source, (str, os.PathLike)):
        return read_config_json(source)
    if hasattr(source, "model_type"):  # a config object
        return {key: getattr(source, key, None) for key in ("model_type", "architectures", "auto_map")}
    return None


def _named_kimi_audio(fields: dict[str, Any]) -> bool:
    """The official classes named by ``architectures`` or ``auto_map``, whatever ``model_type`` says."""
    architectures = fields.get("architectures") or []
    auto_map = fields.get("auto_map") or {}
    auto_targets = [v for value in auto_map.values() for v in (value if isinstance(value, list) else [value])]
    return OFFICIAL_ARCHITECTURE in architectures or any(_REMOTE_MODULE in str(t) for t in auto_targets)


def is_kimi_audio_checkpoint(source: Any) -> bool:
    """True for a Kimi-Audio config object or local directory: by ``model_type``, ``architectures`` or ``auto_map``.

    The official fine-tune export writes ``model_type: "qwen2"`` (its config class inherits it) next to
    ``architectures: ["MoonshotKimiaForCausalLM"]`` and the ``auto_map``; those directories count as well.
    """
    fields = _fields(source)
    if fields is None:
        return False
    return fields.get("model_type") in KIMI_MODEL_TYPES or _named_kimi_audio(fields)


def mismatched_model_type(source: Any) -> str | None:
    """The ``model_type`` of a Kimi-Audio checkpoint that does not say ``moonshot_kimia`` (e.g. "qwen2"), else None."""
    fields = _fields(source)
    if fields is None or fields.get("model_type") in KIMI_MODEL_TYPES or not _named_kimi_audio(fields):
        return None
    return str(fields.get("model_type"))


def register_auto_classes() -> None:
    """Make ``moonshot_kimia`` a model type transformers knows, processor included (idempotent). Enough for a
    ``from_pretrained`` without ``trust_remote_code`` on a directory whose ``config.json`` says ``moonshot_kimia``."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    from .configuration_kimi_audio import KimiAudioConfig
    from .modeling_kimi_audio import KimiAudioForCausalLM
    from .processing_kimi_audio import register_auto_processor
    from .tokenization_kimi_audio import KimiAudioTokenizer

    AutoConfig.register(KimiAudioConfig.model_type, KimiAudioConfig, exist_ok=True)
    AutoModelForCausalLM.register(KimiAudioConfig, KimiAudioForCausalLM, exist_ok=True)
    AutoModel.register(KimiAudioConfig, KimiAudioForCausalLM, exist_ok=True)
    AutoTokenizer.register(KimiAudioConfig, slow_tokenizer_class=KimiAudioTokenizer, exist_ok=True)
    register_auto_processor()
