"""Auto-class registration: ``Auto*.from_pretrained(<official Kimi-Audio dir>)`` returns the native classes.

``register`` makes ``moonshot_kimia`` a known local type. That is not enough on its own: the official directory
carries ``auto_map`` + remote ``.py`` files, and with ``trust_remote_code=True`` (the LLaMA-Factory Web UI always
sets it) transformers prefers remote code. The ``native_dispatch`` patches route Kimi-Audio checkpoints to the
native classes whatever ``trust_remote_code`` says; every other model is untouched.
"""

from __future__ import annotations

import json
import os
from typing import Any

from ..patching import Patch

KIMI_MODEL_TYPES = ("moonshot_kimia", "kimi_audio")


def is_kimi_audio_checkpoint(source: Any) -> bool:
    """True for a KimiAudioConfig or a local directory whose config.json is a Kimi-Audio config."""
    model_type = getattr(source, "model_type", None)
    if model_type is None and isinstance(source, (str, os.PathLike)):
        config_file = os.path.join(os.fspath(source), "config.json")
        if os.path.isfile(config_file):
            try:
                with open(config_file, encoding="utf-8") as f:
                    model_type = json.load(f).get("model_type")
            except (OSError, ValueError):
                return False
    return model_type in KIMI_MODEL_TYPES


def _native_class(auto_name: str):
    from .configuration_kimi_audio import KimiAudioConfig
    from .modeling_kimi_audio import KimiAudioForCausalLM
    from .processing_kimi_audio import KimiAudioProcessor
    from .tokenization_kimi_audio import KimiAudioTokenizer

    return {
        "AutoConfig": KimiAudioConfig,
        "AutoModelForCausalLM": KimiAudioForCausalLM,
        "AutoModel": KimiAudioForCausalLM,
        "AutoTokenizer": KimiAudioTokenizer,
        "AutoProcessor": KimiAudioProcessor,
    }[auto_name]


def _dispatch(auto_name: str):
    def make(original):
        def from_pretrained(cls, pretrained_model_name_or_path=None, *args: Any, **kwargs: Any):
            source = kwargs.get("config") if auto_name.startswith("AutoModel") else None
            if is_kimi_audio_checkpoint(source) or is_kimi_audio_checkpoint(pretrained_model_name_or_path):
                kwargs.pop("trust_remote_code", None)
                if auto_name in ("AutoTokenizer", "AutoProcessor"):
                    kwargs.pop("use_fast", None)
                return _native_class(auto_name).from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
            return original(cls, pretrained_model_name_or_path, *args, **kwargs)

        from_pretrained.__wrapped__ = original
        from_pretrained.__doc__ = original.__doc__
        return from_pretrained

    return make


AUTO_PATCHES = [
    Patch(
        name=f"native_dispatch.{auto}",
        owner=f"transformers:{auto}",
        attribute="from_pretrained",
        make_replacement=_dispatch(auto),
        wrap_classmethod=True,
        why="official Kimi-Audio dirs load the native classes, never the flash-attn-only remote code",
    )
    for auto in ("AutoConfig", "AutoModelForCausalLM", "AutoModel", "AutoTokenizer", "AutoProcessor")
]

_registered = False


def register_auto_classes() -> None:
    """Idempotent: register the native classes and route official checkpoint directories to them."""
    global _registered
    if not _registered:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        from .configuration_kimi_audio import KimiAudioConfig
        from .modeling_kimi_audio import KimiAudioForCausalLM
        from .tokenization_kimi_audio import KimiAudioTokenizer

        AutoConfig.register(KimiAudioConfig.model_type, KimiAudioConfig, exist_ok=True)
        AutoModelForCausalLM.register(KimiAudioConfig, KimiAudioForCausalLM, exist_ok=True)
        AutoTokenizer.register(KimiAudioConfig, slow_tokenizer_class=KimiAudioTokenizer, exist_ok=True)
        _registered = True
    for patch in AUTO_PATCHES:
        patch.apply()


def unregister_auto_patches() -> None:
    for patch in AUTO_PATCHES:
        patch.revert()
