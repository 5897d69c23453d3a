"""Environment and checkpoint checks behind ``kimi-audio-lf doctor``: each is a ``Check`` with a fix for failures.

The integration is checked where it matters, in a *fresh* interpreter of this environment (``sys.executable``): the
start-up hook must have registered the template and applied the named patches before any user code runs.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import site
import sys
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from .. import settings
from ..integration.fp8 import fp8_check
from ..patching import SUPPORTED_VERSIONS, VERIFIED_VERSIONS
from . import probe as doctor_probe
from .audio_formats import codec_checks
from .checkpoint import Check, checkpoint_checks
from .probe import TEMPLATE

DISABLE = "KIMI_AUDIO_DISABLE"
MIN_PYTHON = (3, 11)
PTH_FILE = "llamafactory_kimi_audio.pth"


def all_required_ok(checks: list[Check]) -> bool:
    return all(c.ok for c in checks if c.required)


def run_checks(model_dir: str | None = None, progress: Callable[[str], None] | None = None) -> list[Check]:
    """Every check: versions, start-up hook and patches (fresh interpreter), the checkpoint, GPU and tools.

    The fresh interpreter (it imports LLaMA-Factory and torch: most of doctor's time) starts first and runs while this
    process does the other checks; it also runs the checks that need torch. ``progress`` gets a line before each
    stage and every ``probe.PROGRESS_S`` while waiting.
    """
    say = progress or (lambda _line: None)
    settings.reload()  # the environment as it is now, not as this process first saw it
    off = _opted_out()[0]
    if not off:
        started = doctor_probe.start()
        say(
            "starting a fresh interpreter that imports LLaMA-Factory (hooks, template, patches), in the background"
            if started
            else "the fresh interpreter's result is known from earlier in this process"
        )
    try:
        say("checking Python, package versions and the start-up hook")
        checks = [python_check(), *version_checks(), pth_check(), opt_out_check()]
        model = []
        if model_dir is not None:
            say(f"checking the checkpoint {model_dir}")
            model = checkpoint_checks(model_dir)
        say("checking tools")
        tools = [espeak_check(), *codec_checks(), *settings_checks()]
        state = {} if off else doctor_probe.result(progress=say)
    except BaseException:  # Ctrl-C or a crash: the background interpreter must not outlive doctor
        doctor_probe.stop()
        raise
    integration = integration_checks(probe=lambda: state)
    return [*checks, *integration, *model, *_torch_checks_of(state), *tools]


def _torch_checks_of(state: dict[str, Any]) -> list[Check]:
    """The probe's torch checks; computed here when there was no probe (opted out) or it failed."""
    if "torch_checks" in state:
        return [Check(**check) for check in state["torch_checks"]]
    return torch_checks()


# ----------------------------------------------------------------------------------------------- versions
def python_check() -> Check:
    version = ".".join(map(str, sys.version_info[:3]))
    ok = sys.version_info[:2] >= MIN_PYTHON
    return Check("python", ok, version, "" if ok else f"use Python >= {'.'.join(map(str, MIN_PYTHON))}")


def version_checks() -> list[Check]:
    return [version_check(dist, spec, VERIFIED_VERSIONS.get(dist)) for dist, spec in SUPPORTED_VERSIONS.items()]


def version_check(dist: str, spec: str, verified: str | None = None) -> Check:
    from importlib.metadata import PackageNotFoundError, version

    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version

    fix = f'pip install "{dist}{spec}"'
    try:
        installed = version(dist)
    except PackageNotFoundError:
        return Check(dist, False, f"not installed (supported: {spec})", fix)
    try:
        ok = SpecifierSet(spec).contains(Version(installed), prereleases=True)
        unverified = verified is not None and not SpecifierSet(verified).contains(Version(installed), prereleases=True)
    except InvalidVersion:
        ok = unverified = False
    note = f"; verified with {verified} only, patch signatures are checked at start-up" if ok and unverified else ""
    return Check(dist, ok, f"{installed} (supported: {spec}{note})", "" if ok else fix)


# -------------------------------------------------------------------------------------------- integration
def site_dirs() -> list[str]:
    dirs = list(getattr(site, "getsitepackages", list)())
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    import sysconfig

    dirs.append(sysconfig.get_paths()["purelib"])
    return list(dict.fromkeys(os.path.abspath(d) for d in dirs))


def pth_check() -> Check:
    fix = "reinstall the package (pip install -e <repo> or pip install --force-reinstall llamafactory-kimi-audio)"
    for directory in site_dirs():
        path = os.path.join(directory, PTH_FILE)
        if os.path.isfile(path):
            with open(path, encoding="utf-8", errors="replace") as f:
                hooked = "_startup" in f.read()
            return Check(
                "startup hook (.pth)",
                hooked,
                path if hooked else f"{path} does not call _startup",
                "" if hooked else fix,
            )
    return Check("startup hook (.pth)", False, f"{PTH_FILE} not found in {', '.join(site_dirs())}", fix)


def _opted_out() -> tuple[bool, str, str | None]:
    """(opted out?, the variable that says so or the setting's name, its raw value); ``run_checks`` reloads first."""
    raw, variable = settings.raw_value(DISABLE)
    return settings.enabled(DISABLE), variable, raw


def opt_out_check() -> Check:
    off, variable, raw = _opted_out()
    if off:
        detail = f"{variable}={raw}: the integration is off in every interpreter"
        return Check("opt-out variable", False, detail, f"unset {variable}")
    return Check("opt-out variable", True, f"{variable} not set" if raw is None else f"{variable}={raw}")


PROBE_PROGRESS_S = 15.0  # a line this often while doctor waits for the fresh interpreter


def integration_checks(probe: Callable[[], dict[str, Any]] = doctor_probe.result) -> list[Check]:
    """Hooks + template active in a fresh interpreter, and the state of every named patch there."""
    off, variable, _ = _opted_out()
    state = {} if off else probe()
    rows = _patch_rows(state.get("rows"))
    names = [row["name"] for row in rows]
    if off:  # the .pth and install() both return at once: nothing to probe
        detail = f"off: {variable} is set, so no hook runs and the template is not registered"
        return [
            Check("integration active", False, detail, f"unset {variable}"),
            Check("patches", False, f"not applied (opted out): {', '.join(names)}", f"unset {variable}"),
        ]
    if "error" in state:
        fix = "run `python -c 'import llamafactory.data.template'` to see the error; check the versions above"
        return [
            Check("integration active", False, f"a fresh interpreter failed: {state['error']}", fix),
            Check("patches", False, f"unknown: {', '.join(names)}", fix),
        ]
    return [_active_check(state), *(_patch_check(row, state) for row in rows)]


def _patch_rows(rows: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The patch table as ``integration.patches.patch_rows`` lists it (the probe's copy when given: importing the
    table here would import transformers and torch once more), less the opt-out notice."""
    if rows is None:
        from ..integration.patches import patch_rows

        rows = patch_rows()
    return [row for row in rows if not row["opt_out_only"]]


def _active_check(state: dict[str, Any]) -> Check:
    expected = _declared_hooks()
    applied, failed = set(state["applied"]), state["failed"]
    missing = sorted(set(expected) - applied)
    ok = state["finder"] and state["template"] and not failed and not missing
    if ok:
        return Check("integration active", True, f"template {TEMPLATE!r}; hooks {', '.join(state['applied'])}")
    problems = [] if state["finder"] else ["the start-up finder is not installed"]
    problems += [] if state["template"] else [f"template {TEMPLATE!r} missing"]
    problems += [f"hook {name} failed ({error})" for name, error in failed.items()]
    problems += [f"hooks not applied: {', '.join(missing)}"] if missing else []
    fix = "see the .pth check above; reinstall the package; KIMI_AUDIO_STRICT=1 shows hook tracebacks"
    return Check("integration active", False, "; ".join(problems), fix)


def _declared_hooks() -> list[str]:
    from importlib.metadata import entry_points

    from .._startup import GROUP

    return [ep.name for ep in entry_points(group=GROUP) if ep.value.startswith("llamafactory_kimi_audio.")]


def _patch_check(row: dict[str, Any], state: dict[str, Any]) -> Check:
    name = f"patch {row['name']}"
    if state["patches"].get(row["name"]):
        return Check(name, True, "applied")
    fix = (
        f"{row['target']} changed or its hook failed; the row is written for {row['distribution']} "
        f"{row['supported']} (installed: {row['installed']})"
    )
    return Check(name, False, f"NOT applied ({row['why']})", fix)


# ------------------------------------------------------------------------------------------------- system
def torch_checks() -> list[Check]:
    """The checks that import torch (the probe runs them: it has imported torch already)."""
    return [*gpu_checks(), packed_attention_check(), compiled_layers_check(), fp8_check()]


def gpu_checks() -> list[Check]:
    import torch

    if not torch.cuda.is_available():
        return [
            Check("GPU", False, *_no_gpu(torch.version.cuda), required=False),
            Check("bf16", False, "needs a CUDA GPU: none here (see the GPU line)", required=False),
        ]
    names = sorted({torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())})
    bf16 = torch.cuda.is_bf16_supported()
    return [
        Check("GPU", True, f"{torch.cuda.device_count()} x {', '.join(names)}", required=False),
        Check(
            "bf16",
            bf16,
            "supported" if bf16 else "not supported by this GPU",
            "" if bf16 else "train in fp16 (fp16: true) or use an Ampere or newer GPU",
            required=False,
        ),
    ]


def _no_gpu(cuda_build: str | None) -> tuple[str, str]:
    """(detail, fix) when torch sees no GPU: a CPU-only torch needs another build; a CUDA build needs a device."""
    if cuda_build is None:
        detail = "this torch is a CPU-only build (CPU runs only the tiny demo)"
        return detail, "for a GPU machine, install a CUDA build of torch (see pytorch.org for the command)"
    detail = f"torch is a CUDA {cuda_build} build but sees no GPU (CPU runs only the tiny demo)"
    return detail, "check the driver (nvidia-smi) and CUDA_VISIBLE_DEVICES"


def packed_attention_check() -> Check:
    """Packed rows (``packing`` + ``neat_packing``) attend per utterance only with torch's variable-length kernel,
    which runs on CUDA only."""
    import torch

    from ..models import packed_attention

    name = "packed-row attention"
    if packed_attention.varlen_attn is None:
        detail = f"torch {torch.__version__} has no torch.nn.attention.varlen: packed rows use SDPA with a dense mask"
        fix = "torch >= 2.9 makes packing: true + neat_packing: true faster"
        return Check(name, False, detail, fix, required=False)
    if not settings.enabled("KIMI_AUDIO_VARLEN_ATTENTION"):
        detail = "KIMI_AUDIO_VARLEN_ATTENTION=0: packed rows use SDPA with a dense mask"
        return Check(name, False, detail, "unset KIMI_AUDIO_VARLEN_ATTENTION", required=False)
    if not torch.cuda.is_available():
        detail = "no CUDA device: packed rows use SDPA with a dense mask (variable-length FlashAttention is CUDA-only)"
        return Check(name, False, detail, "", required=False)
    return Check(name, True, f"variable-length FlashAttention (torch {torch.__version__})", required=False)


def compiled_layers_check() -> Check:
    """What ``KIMI_AUDIO_COMPILE_POINTWISE`` becomes for an unquantised LoRA / full training run on this machine."""
    import types

    from ..integration.speed import compile_mode

    requested = settings.get("KIMI_AUDIO_COMPILE_POINTWISE")
    mode = compile_mode(requested, True, types.SimpleNamespace(quantization_bit=None))
    name, how = "compiled decoder layers (training)", f"KIMI_AUDIO_COMPILE_POINTWISE={requested} → {mode}"
    if mode == "layers":
        return Check(name, True, f"{how}: each decoder layer one torch.compile graph (+40% tokens/s)", required=False)
    if requested != "auto":
        return Check(name, False, f"{how}: eager layers", required=False)
    import torch

    has_triton = importlib.util.find_spec("triton") is not None
    reason, fix = why_not_compiled(torch.cuda.is_available(), torch.version.cuda, has_triton)
    return Check(name, False, f"{how}: eager layers ({reason})", fix, required=False)


def why_not_compiled(cuda: bool, cuda_build: str | None, has_triton: bool) -> tuple[str, str]:
    """(reason, fix) when ``auto`` keeps eager layers: no GPU (nothing to install: see the GPU line), or a GPU
    without Triton."""
    if not cuda:
        return ("no GPU: this torch is a CPU-only build" if cuda_build is None else "no CUDA GPU visible"), ""
    if not has_triton:
        return "Triton is not installed", "pip install triton (auto then compiles them on this GPU)"
    return "compiling does not pay in this process (ZeRO-3 enabled)", ""


def espeak_check() -> Check:
    found = shutil.which("espeak-ng") or shutil.which("espeak")
    fix = "apt-get install espeak-ng (kimi-audio-lf synth falls back to tone words without it)"
    return Check(
        "espeak-ng",
        bool(found),
        found or "not on PATH (only the demo corpus needs it)",
        "" if found else fix,
        required=False,
    )


def settings_checks() -> list[Check]:
    """Every ``KIMI_AUDIO_*`` setting with its value now (informational, never a failure)."""
    return [
        Check(f"setting {name}", True, f"{value}: {doc}", required=False) for name, value, doc in settings.describe()
    ]


def as_json(checks: list[Check]) -> dict[str, Any]:
    return {"ok": all_required_ok(checks), "checks": [asdict(c) for c in checks]}
