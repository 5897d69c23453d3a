"""THE table of every patch this package applies: LLaMA-Factory and transformers' Auto classes.

Where to add a patch: one ``Patch`` row in :data:`PATCHES` (the wrapper goes in ``wrappers.py`` or a module of its
own). ``trigger`` is the module whose import applies the row; :func:`apply_trigger` is the one generic hook that
``hooks.py`` runs for every trigger. Registrations into LLaMA-Factory's and transformers' own registries are no
patches; they are listed per trigger in :data:`REGISTRATIONS`, as are the log filters of ``quiet_logs.py``. Before a
row is applied, the installed version of the patched distribution and the parameters of the wrapped function are
checked (``patching.py``): a mismatch is one warning that names both versions and the opt-out variable, and a row
whose signature changed is skipped.
``kimi-audio-lf doctor`` reads :func:`patch_rows`; the README's table is this one.

The rows live per area (``rows_model.py``, ``rows_train.py``, ``rows_serve.py``); this module assembles them. A
module-level LLaMA-Factory function is replaced in the module that defines it and applied when that module executes
(its trigger, ``hooks.DEFERRED`` when it has no entry point), so every importer binds the replacement;
tests/integration/test_patches.py scans the installed LLaMA-Factory for the importers of each patched name to prove it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any

from .. import settings
from ..errors import EnvironmentProblem
from ..logs import get_logger, warning_rank0
from ..patching import SUPPORTED_VERSIONS, Patch, installed_version, version_problem
from . import registration as reg
from .quiet_logs import quiet_cpu_precision_advice
from .rows_model import AUTO_PATCHES, LOADER, MODEL_PATCHES
from .rows_serve import SERVE_PATCHES, WEBUI_PATCHES
from .rows_train import OPT_OUT, OPT_OUT_NOTICE, TRAIN_PATCHES, TUNER, TUNER_PATCHES

logger = get_logger(__name__)

__all__ = ["AUTO_PATCHES", "OPT_OUT_NOTICE", "PATCHES", "apply_patches", "apply_trigger", "patch_rows", "revert_all"]


def _registries(loader: ModuleType) -> None:
    from ..models.auto import register_auto_classes

    register_auto_classes()


PATCHES: tuple[Patch, ...] = (
    *AUTO_PATCHES,
    *MODEL_PATCHES,
    *TRAIN_PATCHES,
    *TUNER_PATCHES,
    *WEBUI_PATCHES,
    *SERVE_PATCHES,
)

REGISTRATIONS: dict[str, tuple[Callable[[ModuleType], None], ...]] = {
    "llamafactory.extras.constants": (reg.register_model_groups,),
    "llamafactory.data.mm_plugin": (reg.register_plugin,),
    "llamafactory.data.template": (reg.register_kimi_template,),
    "llamafactory.model.model_utils.visual": (reg.register_composite,),
    LOADER: (_registries,),
    TUNER: (quiet_cpu_precision_advice,),  # a logging.Filter on LLaMA-Factory's logger (integration/quiet_logs.py)
}


def triggers() -> list[str]:
    """Every module whose import applies something (an entry-point hook or a ``hooks.DEFERRED`` one), first first."""
    return list(dict.fromkeys([*REGISTRATIONS, *(patch.trigger for patch in PATCHES)]))


def apply_trigger(module: ModuleType) -> list[str]:
    """The generic hook: the registrations and patch rows of ``module``. Returns the names of the rows applied."""
    for register in REGISTRATIONS.get(module.__name__, ()):
        register(module)
    return apply_patches(patch for patch in PATCHES if patch.trigger == module.__name__)


def apply_patches(patches: Iterable[Patch]) -> list[str]:
    """Apply rows after the version / signature check; a row whose signature changed is skipped, with one warning."""
    patches = list(patches)
    skipped = {patch.name: problem for patch in patches if (problem := patch.problem()) is not None}
    _warn_incompatible(patches, skipped)
    return [patch.name for patch in patches if patch.name not in skipped and patch.apply()]


_warned: set[str] = set()


def _warn_incompatible(patches: list[Patch], skipped: dict[str, str]) -> None:
    versions = [v for d in dict.fromkeys(p.distribution for p in patches) if (v := version_problem(d)) is not None]
    versions = [text for text in versions if text not in _warned]
    if not versions and not skipped:
        return
    _warned.update(versions)
    parts = versions + [f"skipped patch {name}: {problem}" for name, problem in skipped.items()]
    message = (
        f"{'; '.join(parts)}. Kimi-Audio runs may fail: install a supported version, or set {OPT_OUT}=1 to run "
        "LLaMA-Factory without this integration"
    )
    if settings.enabled("KIMI_AUDIO_STRICT"):
        raise EnvironmentProblem(message)
    warning_rank0(logger, "%s", message)


def apply_opt_out_notice(tuner: ModuleType) -> list[str]:
    return apply_patches([OPT_OUT_NOTICE])


def patch_rows() -> list[dict[str, Any]]:
    """One dict per row (for ``doctor`` and the README): what, where, why, versions, state in this process."""
    return [
        {
            "name": patch.name,
            "trigger": patch.trigger,
            "target": f"{patch.owner}.{patch.attribute}",
            "distribution": patch.distribution,
            "supported": SUPPORTED_VERSIONS[patch.distribution],
            "installed": installed_version(patch.distribution),
            "applied": patch.applied,
            "opt_out_only": patch is OPT_OUT_NOTICE,  # applied instead of the others when KIMI_AUDIO_DISABLE is set
            "why": patch.why,
        }
        for patch in (*PATCHES, OPT_OUT_NOTICE)
    ]


def all_patches() -> list[Patch]:
    return list(PATCHES)


def revert_all() -> list[str]:
    """Undo every applied row (tests; a process that wants stock LLaMA-Factory back). Returns the reverted names."""
    return [patch.name for patch in reversed((*PATCHES, OPT_OUT_NOTICE)) if patch.revert()]
