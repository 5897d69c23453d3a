"""The post-import hooks this package declares as entry points (group ``llamafactory_extensions``).

Each hook names the LLaMA-Factory module that *defines* what it touches and the callback to run right after that
module has executed. This module stays import-light: callbacks are resolved only when their module is imported.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType


@dataclass(frozen=True)
class Hook:
    module: str  # the LLaMA-Factory module whose execution triggers the hook
    target: str  # "package.module:function", called with that module

    def __call__(self, module: ModuleType) -> None:
        owner, _, name = self.target.partition(":")
        getattr(importlib.import_module(owner), name)(module)


_REG = "llamafactory_kimi_audio.integration.registration"
_PATCHES = "llamafactory_kimi_audio.integration.patches"

MODEL_GROUPS = Hook("llamafactory.extras.constants", f"{_REG}:register_model_groups")
MM_PLUGIN = Hook("llamafactory.data.mm_plugin", f"{_REG}:register_plugin")
TEMPLATE = Hook("llamafactory.data.template", f"{_REG}:register_kimi_template")
COMPOSITE = Hook("llamafactory.model.model_utils.visual", f"{_REG}:register_composite")
LOADER = Hook("llamafactory.model.loader", f"{_PATCHES}:apply_loader_patches")
METRICS = Hook("llamafactory.train.sft.workflow", f"{_PATCHES}:apply_metric_patches")
TUNER = Hook("llamafactory.train.tuner", f"{_PATCHES}:apply_tuner_patches")

ALL_HOOKS = (MODEL_GROUPS, MM_PLUGIN, TEMPLATE, COMPOSITE, LOADER, METRICS, TUNER)
