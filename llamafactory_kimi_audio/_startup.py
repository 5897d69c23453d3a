"""Turn the LLaMA-Factory integration on in every interpreter, for the price of two stdlib-only modules.

``llamafactory_kimi_audio.pth`` (``.start`` from Python 3.15 on, PEP 829) calls :func:`install` at every Python
start-up. It only puts a finder at the front of ``sys.meta_path``; nothing but ``settings`` is imported. When
``llamafactory`` is first imported, *before* its ``__init__`` runs, the finder loads the hooks of the entry-point group
``llamafactory_extensions``: objects with a ``.module`` (an exact module name; optionally ``.deferred``, more module
names served by the same hook) that are called with that module right after it has executed, so before any other
module can bind its names with ``from ... import``.

Each hook runs at most once per process. A failing hook prints one warning line and never breaks the import
(``KIMI_AUDIO_STRICT=1`` re-raises instead); :func:`activate_now` retries it. A hook that needs one of this package's
modules while that module is itself importing LLaMA-Factory (``import llamafactory_kimi_audio.integration.mm_plugin``
first) waits for :func:`resume` at the end of that module instead of failing. ``KIMI_AUDIO_DISABLE=1`` turns all of
it off but a notice for a failing ``kimi_audio`` recipe (``settings.py``); :func:`activate_now` turns it on explicitly
in a process that imported LLaMA-Factory first.
In ``llamafactory-cli train`` (and ``lmf train``) the first ``llamafactory`` import also runs the run guard's cheap
checks of a Kimi-Audio recipe (``EARLY_CHECK_TARGET``), before torch is imported: a bad recipe ends in about a second.
No ``typing``, ``logging`` or ``threading`` here (``TYPE_CHECKING`` by hand): every interpreter loads this file.
"""

from __future__ import annotations

import sys

from . import settings

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from importlib.machinery import ModuleSpec
    from types import ModuleType

ROOT = "llamafactory"
GROUP = "llamafactory_extensions"
DISABLE_ENV = "KIMI_AUDIO_DISABLE"  # settings.py; re-exported by the package
STRICT_ENV = "KIMI_AUDIO_STRICT"

_hooks: dict[str, list[tuple[str, Callable[[ModuleType], object]]]] = {}  # module name -> [(hook name, hook)]
_started: set[str] = set()  # hook names already run or being run: at most once per process
_applied: list[str] = []
_failed: dict[str, str] = {}
_entry_points_loaded = False
_opted_out = False  # KIMI_AUDIO_DISABLE: no entry point, no patch; only the opt-out notice below
NOTICE_HOOK = "kimi_audio_opt_out_notice"
NOTICE_MODULE = "llamafactory.train.tuner"
# Named like an entry point, not imported: this module sits below the integration whose hooks it runs.
NOTICE_TARGET = "llamafactory_kimi_audio.integration.patches:apply_opt_out_notice"
# `llamafactory-cli train RECIPE`: the run guard's cheap checks before LLaMA-Factory imports torch (named likewise)
EARLY_CHECK_TARGET = "llamafactory_kimi_audio.integration.early_check:check_train_command"
CLI_NAMES = ("llamafactory-cli", "lmf")  # LLaMA-Factory's console scripts
_early_checked = False
_finding: set[str] = set()  # module names whose real spec is being looked up (no recursion into ourselves)
_waiting: dict[str, list[str]] = {}  # our module still importing -> trigger modules whose hooks wait for it


def _env_true(name: str) -> bool:
    return bool(settings.get(name))


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())  # one line, whatever the message
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def _warn(what: str, error: str) -> None:
    from .logs import is_main_process  # stdlib only; imported only when a hook failed

    if not is_main_process():  # torchrun: every rank would print the same line
        return
    try:
        sys.stderr.write(
            f"llamafactory-kimi-audio: {what} failed ({error}); LLaMA-Factory runs without it. "
            f"Set {DISABLE_ENV}=1 to turn the integration off, {STRICT_ENV}=1 to raise.\n"
        )
    except Exception:  # no usable stderr (pythonw, closed pipe)
        pass


def _fully_imported(module: ModuleType | None) -> bool:
    return module is not None and not getattr(getattr(module, "__spec__", None), "_initializing", False)


def _importing_module(exc: ImportError) -> str | None:
    """Our own module that ``exc`` found half-imported (a circular import through LLaMA-Factory), if any."""
    name = getattr(exc, "name", None) or ""
    module = sys.modules.get(name)
    return name if name.startswith(__package__ + ".") and module is not None and not _fully_imported(module) else None


def _run(module_name: str, module: ModuleType) -> None:
    for hook_name, hook in list(_hooks.get(module_name, ())):
        if hook_name in _started:
            continue
        _started.add(hook_name)
        try:
            hook(module)
        except ImportError as exc:
            if (waiting_for := _importing_module(exc)) is None:
                _hook_failed(hook_name, module_name, exc)
            else:  # runs again from resume(waiting_for) once that module has finished
                _started.discard(hook_name)
                _waiting.setdefault(waiting_for, []).append(module_name)
        except Exception as exc:
            _hook_failed(hook_name, module_name, exc)
        else:
            _failed.pop(hook_name, None)
            _applied.append(hook_name)


def _hook_failed(hook_name: str, module_name: str, exc: Exception) -> None:
    _failed[hook_name] = _describe(exc)
    if _env_true(STRICT_ENV):
        raise exc
    _warn(f"hook {hook_name!r} on {module_name}", _failed[hook_name])


def resume(module_name: str) -> None:
    """Run the hooks that waited for ``module_name`` (called at the end of the modules that import LLaMA-Factory)."""
    for trigger in dict.fromkeys(_waiting.pop(module_name, ())):
        module = sys.modules.get(trigger)
        if _fully_imported(module):
            _run(trigger, module)


def register(hook_name: str, module_name: str, hook: Callable[[ModuleType], object]) -> None:
    """Run ``hook(module)`` once, right after ``module_name`` executes (at once if it is already imported)."""
    _hooks.setdefault(module_name, []).append((hook_name, hook))
    module = sys.modules.get(module_name)
    if _fully_imported(module):
        _run(module_name, module)


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    strict = _env_true(STRICT_ENV)
    try:
        from importlib.metadata import entry_points

        found = sorted(entry_points(group=GROUP), key=lambda ep: ep.name)
    except Exception as exc:
        if strict:
            raise
        _warn(f"reading the entry points of {GROUP!r}", _describe(exc))
        return
    broken: dict[str, list[str]] = {}  # one warning line per distinct error, not one per entry point
    for ep in found:
        try:
            hook = ep.load()
            module_name = getattr(hook, "module", None)
            if not isinstance(module_name, str) or not callable(hook):
                raise TypeError(f"{ep.value} is not a hook (needs a str .module and __call__(module))")
        except Exception as exc:
            if strict:
                raise
            _failed[ep.name] = _describe(exc)
            broken.setdefault(_describe(exc), []).append(ep.name)
            continue
        register(ep.name, module_name, hook)
        for deferred in getattr(hook, "deferred", ()):  # further modules of the same hook, without entry points
            register(f"{ep.name}:{deferred}", deferred, hook)
    for text, names in broken.items():
        _warn(f"loading hook(s) {', '.join(names)}", text)


def _is_cli_train() -> bool:
    """``llamafactory-cli train ...`` / ``lmf train ...`` itself (LLaMA-Factory pops ``train`` from ``sys.argv`` only
    after importing ``llamafactory``; torchrun's children run ``launcher.py``)."""
    argv = getattr(sys, "argv", None) or []
    script = str(argv[0]).replace("\\", "/").rsplit("/", 1)[-1] if argv else ""
    return len(argv) > 2 and argv[1] == "train" and script.removesuffix(".exe") in CLI_NAMES


def _check_train_command() -> None:
    """Fail a bad Kimi-Audio recipe now, in about a second, rather than after torch's import (``EARLY_CHECK_TARGET``).
    Once per process; a failure to load the check leaves the run to the run guard."""
    global _early_checked
    if _early_checked or not _is_cli_train():
        return
    _early_checked = True
    try:
        from importlib import import_module

        module_name, _, attribute = EARLY_CHECK_TARGET.partition(":")
        getattr(import_module(module_name), attribute)(sys.argv[2:])
    except Exception:  # only its SystemExit ends the process
        return


class _Loader:
    """Runs the real loader, then the hooks of that module; the module keeps the real loader."""

    def __init__(self, real: object) -> None:
        self._real = real

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        create = getattr(self._real, "create_module", None)
        return create(spec) if create is not None else None

    def exec_module(self, module: ModuleType) -> None:
        module.__loader__ = self._real
        spec = getattr(module, "__spec__", None)
        if spec is not None:
            spec.loader = self._real
        self._real.exec_module(module)
        _run(spec.name if spec is not None else module.__name__, module)

    def __getattr__(self, name: str) -> object:  # get_source, get_filename, is_package, get_resource_reader, ...
        if name == "_real":  # copied or unpickled without __init__
            raise AttributeError(name)
        return getattr(self._real, name)


class _Finder:
    """Duck-typed meta-path finder: answers for no module itself, but wraps the loader of hooked ones."""

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> ModuleSpec | None:
        if fullname == ROOT and not _entry_points_loaded and not _opted_out:
            _check_train_command()  # may end the process with the run guard's one line
            _load_entry_points()  # before llamafactory/__init__.py runs; raises only in strict mode
        if fullname not in _hooks or fullname in _finding:
            return None
        _finding.add(fullname)
        try:
            spec = None
            for finder in sys.meta_path:
                find = getattr(finder, "find_spec", None)
                if finder is self or find is None:
                    continue
                spec = find(fullname, path, target)
                if spec is not None:
                    break
        finally:
            _finding.discard(fullname)
        if spec is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _Loader(spec.loader)
        return spec

    def __repr__(self) -> str:
        return f"<{__name__}._Finder>"


_FINDER = _Finder()


def is_installed() -> bool:
    """Whether this process has the post-import finder."""
    return any(finder is _FINDER for finder in sys.meta_path)


def _opt_out_notice(tuner: ModuleType) -> None:
    from importlib import import_module

    module_name, _, attribute = NOTICE_TARGET.partition(":")
    getattr(import_module(module_name), attribute)(tuner)


def install() -> None:
    """Put the finder first on ``sys.meta_path``; idempotent and never raises.

    Opted out (``KIMI_AUDIO_DISABLE``), the finder runs no entry point: its only hook makes a ``kimi_audio`` recipe
    that then fails in ``llamafactory-cli train`` say that the opt-out variable is set.
    """
    global _opted_out
    try:
        if is_installed():
            return
        if _env_true(DISABLE_ENV):
            _opted_out = True
            _hooks.setdefault(NOTICE_MODULE, []).append((NOTICE_HOOK, _opt_out_notice))
            sys.meta_path.insert(0, _FINDER)
            return
        sys.meta_path.insert(0, _FINDER)
        if ROOT in sys.modules:  # LLaMA-Factory came first (e.g. `python -c "import llamafactory, ..."`)
            _load_entry_points()
    except Exception:
        if _env_true(STRICT_ENV):
            raise


def activate_now() -> None:
    """Apply every hook in this process now (an explicit opt-in: ignores the opt-out variable).

    Hooks whose module is already imported run at once (again, if they failed before); the others run when their
    module is imported.
    """
    global _opted_out
    if not is_installed():
        sys.meta_path.insert(0, _FINDER)
    if _opted_out:  # the explicit opt-in wins: the notice goes, the real hooks come
        _opted_out = False
        _hooks[NOTICE_MODULE] = [hook for hook in _hooks.get(NOTICE_MODULE, []) if hook[0] != NOTICE_HOOK]
    _load_entry_points()
    _started.difference_update(_failed)  # failed hooks get another chance
    for module_name in list(_hooks):
        module = sys.modules.get(module_name)
        if _fully_imported(module):
            _run(module_name, module)


def applied_hooks() -> tuple[str, ...]:
    """Names of the hooks that ran successfully in this process, in the order they ran."""
    return tuple(_applied)


def failed_hooks() -> dict[str, str]:
    """Hook name -> one-line error for hooks that failed to load or to run in this process."""
    return dict(_failed)


def registered_hooks() -> dict[str, str]:
    """Hook name -> the module it waits for (empty until ``llamafactory`` is imported or ``activate_now``)."""
    return {hook_name: module_name for module_name, hooks in _hooks.items() for hook_name, _ in hooks}
