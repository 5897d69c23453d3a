"""Fine-tune Kimi-Audio with stock LLaMA-Factory.

Importing this package is cheap (stdlib only); the model, the LLaMA-Factory integration and the CLIs live in
sub-packages that are imported on demand.
"""

from __future__ import annotations

__version__ = "0.1.0"

DISABLE_ENV = "KIMI_AUDIO_DISABLE"  # settings.py; LLAMAFACTORY_KIMI_AUDIO_DISABLE still works (deprecated)


def activate() -> None:
    """Apply the LLaMA-Factory integration in this process now (for code that imported LLaMA-Factory first)."""
    from ._startup import activate_now

    activate_now()


def use_native_auto_classes() -> None:
    """Route ``transformers.Auto*.from_pretrained`` on Kimi-Audio directories to the native classes (idempotent).

    For plain transformers code, outside LLaMA-Factory: afterwards ``AutoModelForCausalLM`` / ``AutoTokenizer`` /
    ``AutoProcessor`` / ``AutoConfig`` load an official or exported Kimi-Audio directory natively, with or without
    ``trust_remote_code=True``; other models are untouched.
    """
    from .integration.patches import AUTO_PATCHES, apply_patches
    from .models.auto import register_auto_classes

    register_auto_classes()
    apply_patches(AUTO_PATCHES)
