"""The post-import hooks this package declares as entry points (group ``llamafactory_extensions``).

One generic hook per trigger module of the patch table (``patches.py``): right after that module has executed it
applies the table's registrations and patch rows for it. Triggers without an entry point are served by the same hook
(:data:`DEFERRED`). This module stays import-light: the table is imported
only when a trigger module is imported.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

# Triggers without an entry point of their own (a new trigger needs no reinstall of the entry points): the start-up
# finder registers them with the entry points (``Hook.deferred``), before any LLaMA-Factory module executes. Most are
# the modules that DEFINE a patched function, so that the row applies before any importer binds the name.
DEFERRED = (
    "llamafactory.hparams.parser",
    "llamafactory.model.model_utils.misc",
    "llamafactory.model.adapter",
    "llamafactory.model.patcher",
    "llamafactory.train.sft.metric",
    "llamafactory.webui.runner",
    "llamafactory.webui.chatter",
)


@dataclass(frozen=True)
class Hook:
    module: str  # the module whose execution triggers the hook
    deferred: tuple[str, ...] = ()  # further modules this hook is run for (registered along with the entry point)

    def __call__(self, module: ModuleType) -> None:
        from .patches import apply_trigger

        apply_trigger(module)


# The entry points of pyproject.toml, one per trigger of the table (tests/integration/test_startup.py checks that
# they match).
MODEL_GROUPS = Hook("llamafactory.extras.constants", deferred=DEFERRED)
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
