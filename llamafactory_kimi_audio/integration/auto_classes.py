"""Route ``transformers.Auto*.from_pretrained`` on a Kimi-Audio directory to the native classes.

transformers' registries (``models/auto.py``) cover a directory whose ``config.json`` says ``moonshot_kimia`` when no
``trust_remote_code`` is given. Two cases need the wrappers below (rows of the patch table):
``trust_remote_code=True`` (LLaMA-Factory and its Web UI always pass it, and transformers then prefers the
flash-attn-only remote code of ``auto_map``), and official fine-tune exports, whose ``config.json`` says
``model_type: "qwen2"`` (they would load as a plain Qwen2). Every other model is untouched.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from ..logs import get_logger
from ..models.auto import is_kimi_audio_checkpoint, mismatched_model_type

AUTO_CLASSES = ("AutoConfig", "AutoModelForCausalLM", "AutoModel", "AutoTokenizer", "AutoProcessor")
logger = get_logger(__name__)
_warned: set[str] = set()


def native_class(auto_name: str) -> type:
    from ..models.configuration_kimi_audio import KimiAudioConfig
    from ..models.modeling_kimi_audio import KimiAudioForCausalLM
    from ..models.processing_kimi_audio import KimiAudioProcessor
    from ..models.tokenization_kimi_audio import KimiAudioTokenizer

    return {
        "AutoConfig": KimiAudioConfig,
        "AutoModelForCausalLM": KimiAudioForCausalLM,
        "AutoModel": KimiAudioForCausalLM,
        "AutoTokenizer": KimiAudioTokenizer,
        "AutoProcessor": KimiAudioProcessor,
    }[auto_name]


def warn_model_type_mismatch(source: Any) -> None:
    """One warning per directory whose ``config.json`` names the Kimi-Audio classes under another ``model_type``."""
    found = mismatched_model_type(source)
    if found is None or not isinstance(source, (str, os.PathLike)) or os.fspath(source) in _warned:
        return
    _warned.add(os.fspath(source))
    logger.warning(
        "%s: config.json says model_type %r but names the Kimi-Audio classes (architectures "
        "MoonshotKimiaForCausalLM / auto_map), as the official fine-tune export writes it; loading it as Kimi-Audio "
        "(moonshot_kimia). save_pretrained writes model_type 'moonshot_kimia'.",
        os.fspath(source),
        found,
    )


def native_config(pretrained: Any, **kwargs: Any) -> Any:
    """``KimiAudioConfig.from_pretrained`` for a directory whose ``config.json`` may say another ``model_type``: no
    transformers warning about it (ours names the mismatch) and ``config.model_type`` stays ``moonshot_kimia``."""
    from transformers.utils import logging as hf_logging

    config_logger = hf_logging.get_logger("transformers.configuration_utils")
    level = config_logger.level
    config_logger.setLevel(hf_logging.ERROR)
    try:
        loaded = native_class("AutoConfig").from_pretrained(pretrained, **kwargs)
    finally:
        config_logger.setLevel(level)
    config = loaded[0] if isinstance(loaded, tuple) else loaded
    config.__dict__.pop("model_type", None)  # the file's "qwen2" would shadow the class's model_type
    return loaded


def modern_dtype_keyword(kwargs: dict[str, Any]) -> None:
    """transformers 5 renamed ``from_pretrained(torch_dtype=...)`` to ``dtype`` and warns on the old name, which
    LLaMA-Factory 0.9.5 still passes (``torch_dtype="auto"``); 4.55 knows only the old name."""
    from ..versions import TRANSFORMERS_MAJOR

    if "torch_dtype" in kwargs and TRANSFORMERS_MAJOR >= 5:
        value = kwargs.pop("torch_dtype")
        kwargs.setdefault("dtype", value)


def _kimi_source(auto_name: str, pretrained: Any, kwargs: dict[str, Any]) -> bool:
    config = kwargs.get("config") if auto_name.startswith("AutoModel") else None
    return is_kimi_audio_checkpoint(config) or is_kimi_audio_checkpoint(pretrained)


def route_to_native(auto_name: str):
    """``make_replacement`` for ``transformers.<auto_name>.from_pretrained``."""

    def make(original):
        @functools.wraps(original)
        def from_pretrained(cls, pretrained_model_name_or_path=None, *args: Any, **kwargs: Any):
            if not _kimi_source(auto_name, pretrained_model_name_or_path, kwargs):
                return original(cls, pretrained_model_name_or_path, *args, **kwargs)
            kwargs.pop("trust_remote_code", None)
            if mismatched_model_type(pretrained_model_name_or_path) is not None:
                warn_model_type_mismatch(pretrained_model_name_or_path)
                if auto_name == "AutoConfig":
                    return native_config(pretrained_model_name_or_path, **kwargs)
                if auto_name.startswith("AutoModel") and kwargs.get("config") is None:
                    kwargs["config"] = native_config(pretrained_model_name_or_path)
            if auto_name in ("AutoTokenizer", "AutoProcessor"):
                kwargs.pop("use_fast", None)
            if auto_name.startswith("AutoModel"):
                modern_dtype_keyword(kwargs)
            return native_class(auto_name).from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

        return from_pretrained

    return make
