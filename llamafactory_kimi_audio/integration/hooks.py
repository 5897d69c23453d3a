"""The post-import hooks this package declares as entry points (group ``llamafactory_extensions``).

One generic hook per trigger module of the patch table (``patches.py``): right after that module has executed it
applies the table's registrations and patch rows for it. This module stays import-light: the table is imported
only when a trigger module is imported.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType


@dataclass(frozen=True)
class Hook:
    module: str  # the module whose execution triggers the hook

    def __call__(self, module: ModuleType) -> None:
        from .patches import apply_trigger

        apply_trigger(module)


# The entry points of pyproject.toml, one per trigger of the table (tests/test_startup.py checks they match).
MODEL_GROUPS = Hook("llamafactory.extras.constants")
MM_PLUGIN = Hook("llamafactory.data.mm_plugin")
TEMPLATE = Hook("llamafactory.data.template")
COMPOSITE = Hook("llamafactory.model.model_utils.visual")
LOADER = Hook("llamafactory.model.loader")
METRICS = Hook("llamafactory.train.sft.workflow")
TUNER = Hook("llamafactory.train.tuner")
API_PROTOCOL = Hook("llamafactory.api.protocol")
API_CHAT = Hook("llamafactory.api.chat")
API_APP = Hook("llamafactory.api.app")

ALL_HOOKS = (MODEL_GROUPS, MM_PLUGIN, TEMPLATE, COMPOSITE, LOADER, METRICS, TUNER, API_PROTOCOL, API_CHAT, API_APP)
