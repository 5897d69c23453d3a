"""A reversible, idempotent attribute patch (OpenTelemetry's instrument/uninstrument shape), with its compatibility
check.

Every monkeypatch of this package is one ``Patch`` row of the table in ``integration/patches.py``: LLaMA-Factory,
transformers' Auto classes and PEFT's LoRA layer alike. A row names the module whose import triggers it, the
distribution that owns the patched attribute and, for wrappers that pass arguments by position, the parameters the
original must have. :func:`version_problem` and :meth:`Patch.problem` check both before anything is replaced
(``integration/patches.py: apply_patches``), so a new LLaMA-Factory / PEFT / transformers release gives one warning
at start-up instead of a ``TypeError`` in the middle of a run.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

_MARK = "__kimi_audio_patch__"
_MISSING = object()

# Distribution -> supported versions (pyproject.toml's ranges): what the patch rows are written for; `doctor` checks.
SUPPORTED_VERSIONS = {
    "torch": ">=2.4",
    "transformers": ">=4.55.0,<=5.6.0,!=4.57.0",
    "peft": ">=0.18.0,<0.19",
    "llamafactory": ">=0.9.5,<0.10",
}
# Narrower than the range where the rows were run against fewer releases (the tests; scripts/check_patches.py for a
# source tree): a version in the range but outside these still gets one warning, and each row's signature check.
VERIFIED_VERSIONS = {"llamafactory": "==0.9.5"}
DISTRIBUTION_NAMES = {
    "torch": "torch",
    "llamafactory": "LLaMA-Factory",
    "transformers": "transformers",
    "peft": "PEFT",
}


@cache
def installed_version(distribution: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def version_problem(distribution: str) -> str | None:
    """``None`` when the installed ``distribution`` is supported and verified, else a phrase naming both versions."""
    from packaging.specifiers import SpecifierSet

    found, wanted = installed_version(distribution), SUPPORTED_VERSIONS[distribution]
    if found is None:
        return None
    name = DISTRIBUTION_NAMES[distribution]
    if not SpecifierSet(wanted).contains(found, prereleases=True):
        return f"{name} {found} is installed, the patches are written for {wanted}"
    verified = VERIFIED_VERSIONS.get(distribution)
    if verified is not None and not SpecifierSet(verified).contains(found, prereleases=True):
        return f"{name} {found} is installed, the patches were verified with {verified} only (signatures are checked)"
    return None


@dataclass
class Patch:
    name: str  # stable id shown by `kimi-audio-lf doctor`
    trigger: str  # the module whose import applies this patch (its hook in integration/hooks.py)
    owner: str  # "package.module" or "package.module:Class"
    attribute: str
    make_replacement: Callable[[Any], Any]  # original -> replacement
    why: str = ""
    distribution: str = "llamafactory"  # who owns `owner`: its version is checked before patching
    parameters: tuple[str, ...] = ()  # leading parameter names the wrapper relies on ("" = not checked)
    wrap_classmethod: bool = False
    _original: Any = field(default=_MISSING, repr=False)

    def resolve_owner(self) -> Any:
        module_name, _, class_name = self.owner.partition(":")
        owner = importlib.import_module(module_name)
        return getattr(owner, class_name) if class_name else owner

    def _current(self) -> Any:
        """The attribute as stored (a classmethod object stays one), looked up through the MRO."""
        return inspect.getattr_static(self.resolve_owner(), self.attribute)

    def original(self) -> Any:
        """The function the patch wraps (a classmethod's underlying function); meant for an unpatched owner."""
        raw = self._current()
        return raw.__func__ if isinstance(raw, (classmethod, staticmethod)) else raw

    @property
    def applied(self) -> bool:
        try:
            current = self._current()
        except (ImportError, AttributeError):
            return False
        return getattr(getattr(current, "__func__", current), _MARK, None) == self.name

    def signature_problem(self) -> str | None:
        """``None`` when the original still takes :attr:`parameters` first, else what changed."""
        if not self.parameters or self.applied:
            return None
        try:
            found = tuple(inspect.signature(self.original(), follow_wrapped=False).parameters)
        except (TypeError, ValueError) as err:
            return f"{self.owner}.{self.attribute} has no readable signature ({err})"
        except (ImportError, AttributeError) as err:
            return f"{self.owner}.{self.attribute} is gone ({type(err).__name__}: {err})"
        if found[: len(self.parameters)] != self.parameters:
            return f"{self.owner}.{self.attribute}{_args(found)} no longer takes {_args(self.parameters)}"
        return None

    def problem(self) -> str | None:
        """Why this patch must not be applied here (a changed signature), or ``None``."""
        return self.signature_problem()

    def apply(self) -> bool:
        """Install the replacement; a second call is a no-op. Returns True when something changed."""
        if self.applied:
            return False
        owner = self.resolve_owner()
        raw = owner.__dict__.get(self.attribute)  # None: inherited (revert deletes ours again)
        original = inspect.getattr_static(owner, self.attribute) if raw is None else raw
        original = original.__func__ if isinstance(original, classmethod) else original
        replacement = self.make_replacement(original)
        setattr(replacement, _MARK, self.name)
        self._original = raw
        installed = classmethod(replacement) if self.wrap_classmethod else replacement
        setattr(owner, self.attribute, installed)
        if ":" not in self.owner and raw is not None:
            _rebind(self.owner, self.attribute, raw, installed)
        return True

    def revert(self) -> bool:
        """Put the original object back (or remove ours when the attribute was inherited)."""
        if not self.applied:
            return False
        owner = self.resolve_owner()
        if self._original is None:
            delattr(owner, self.attribute)
        else:
            if ":" not in self.owner:  # the importers that bound the replacement get the original back as well
                _rebind(self.owner, self.attribute, owner.__dict__[self.attribute], self._original)
            setattr(owner, self.attribute, self._original)
        self._original = _MISSING
        return True


def _rebind(owner: str, attribute: str, original: Any, replacement: Any) -> list[Any]:
    """Modules of the owner's package that hold ``original`` under ``attribute`` (``from owner import attribute``
    executed before the row was applied, in a process that activated the integration late; or before it is
    reverted) get ``replacement`` instead; returns them."""
    root = owner.split(".")[0] + "."
    held = [
        module
        for name, module in list(sys.modules.items())
        if name.startswith(root) and name != owner and getattr(module, "__dict__", {}).get(attribute) is original
    ]
    for module in held:
        setattr(module, attribute, replacement)
    return held


def _args(names: tuple[str, ...]) -> str:
    return f"({', '.join(names)})"
