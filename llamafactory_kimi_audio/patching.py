"""A reversible, idempotent attribute patch (OpenTelemetry's instrument/uninstrument shape).

Every monkeypatch of this package is a named ``Patch`` listed in one table (``integration/patches.py`` for
LLaMA-Factory, ``models/auto.py`` for transformers' Auto classes), so ``apply`` / ``revert`` / ``doctor`` all read
the same source of truth.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

_MARK = "__kimi_audio_patch__"


@dataclass
class Patch:
    name: str  # stable id shown by `kimi-audio-lf doctor`
    owner: str  # "package.module" or "package.module:Class"
    attribute: str
    make_replacement: Callable[[Any], Any]  # original -> replacement
    why: str = ""
    wrap_classmethod: bool = False
    _original: Any = field(default=None, repr=False)

    def resolve_owner(self) -> Any:
        module_name, _, class_name = self.owner.partition(":")
        owner = importlib.import_module(module_name)
        return getattr(owner, class_name) if class_name else owner

    @property
    def applied(self) -> bool:
        try:
            current = self.resolve_owner().__dict__.get(self.attribute)
        except ImportError:
            return False
        return getattr(getattr(current, "__func__", current), _MARK, None) == self.name

    def apply(self) -> bool:
        """Install the replacement; a second call is a no-op. Returns True when something changed."""
        if self.applied:
            return False
        owner = self.resolve_owner()
        raw = owner.__dict__.get(self.attribute, getattr(owner, self.attribute))
        original = raw.__func__ if isinstance(raw, classmethod) else raw
        replacement = self.make_replacement(original)
        setattr(replacement, _MARK, self.name)
        self._original = raw
        setattr(owner, self.attribute, classmethod(replacement) if self.wrap_classmethod else replacement)
        return True

    def revert(self) -> bool:
        if not self.applied:
            return False
        setattr(self.resolve_owner(), self.attribute, self._original)
        self._original = None
        return True

