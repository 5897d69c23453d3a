"""Fine-tune Kimi-Audio with stock LLaMA-Factory.

Importing this package is cheap (stdlib only); the model, the LLaMA-Factory integration and the CLIs live in
sub-packages that are imported on demand.
"""

from __future__ import annotations

__version__ = "0.1.0"

DISABLE_ENV = "KIMI_AUDIO_DISABLE"  # settings.py


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


# transformers module defining each Auto class the native routing wraps (integration/auto_classes.py: AUTO_CLASSES)
AUTO_CLASS_MODULES = {
    "transformers.models.auto.configuration_auto": ("AutoConfig",),
    "transformers.models.auto.modeling_auto": ("AutoModelForCausalLM", "AutoModel"),
    "transformers.models.auto.tokenization_auto": ("AutoTokenizer",),
    "transformers.models.auto.processing_auto": ("AutoProcessor",),
}


class _NativeAutoHook:
    """Applies the native routing of the Auto classes that ``module`` defines, right after it has executed."""

    def __init__(self, module: str) -> None:
        self.module = module

    def __call__(self, module: object) -> None:
        from .integration.patches import AUTO_PATCHES, apply_patches

        names = AUTO_CLASS_MODULES[self.module]
        apply_patches(patch for patch in AUTO_PATCHES if patch.owner.partition(":")[2] in names)


def _route_auto_classes_on_import() -> None:
    """``import llamafactory_kimi_audio`` is all plain transformers code needs: ``AutoModelForCausalLM`` & co. load
    Kimi-Audio directories natively (also with ``trust_remote_code=True``) once transformers' Auto modules are
    imported, before or after this package. Stdlib only here; nothing of transformers is imported by this."""
    from . import _startup, settings

    if settings.enabled(DISABLE_ENV):
        return
    _startup.install()  # the finder (already there when the .pth ran)
    for module in AUTO_CLASS_MODULES:
        _startup.register(f"kimi_audio_native_{module.rsplit('.', 1)[1]}", module, _NativeAutoHook(module))


_route_auto_classes_on_import()
