"""The fresh interpreter behind ``kimi-audio-lf doctor``: it imports LLaMA-Factory as a training run would and reports
the hooks, template and patches it ends up with, plus the checks that need torch (it imports torch anyway).

It is most of doctor's time (seconds on an idle machine, minutes on a loaded one), so doctor starts it first, in the
background, does its other checks meanwhile, and says every ``PROGRESS_S`` how long it has been waiting.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from .. import settings

TEMPLATE = "kimi_audio"
PROBE_MARK = "@@kimi-audio-doctor@@"
PROBE = f"""
import json
from dataclasses import asdict
import llamafactory_kimi_audio._startup as s
started = s.is_installed()
import llamafactory.data.template as t
template = {TEMPLATE!r} in t.TEMPLATES
import llamafactory.model.loader, llamafactory.train.sft.workflow, llamafactory.train.tuner, llamafactory.api.app
import llamafactory.webui.runner, llamafactory.webui.chatter  # the Web UI rows (gradio: an LLaMA-Factory dependency)
from llamafactory_kimi_audio.integration.patches import patch_rows
from llamafactory_kimi_audio.doctor.checks import torch_checks
rows = patch_rows()
print({PROBE_MARK!r} + json.dumps(dict(
    finder=started, template=template, applied=list(s.applied_hooks()), failed=s.failed_hooks(),
    registered=s.registered_hooks(), patches={{row["name"]: row["applied"] for row in rows}}, rows=rows,
    torch_checks=[asdict(check) for check in torch_checks()],
)))
"""
PROGRESS_S = 15.0  # a progress line this often while doctor waits for the probe
TIMEOUT_S = 600.0

_results: dict[tuple[str, ...], dict[str, Any]] = {}
_running: dict[tuple[str, ...], tuple[subprocess.Popen, float]] = {}


def _key() -> tuple[str, ...]:
    """What the probe's answer depends on: the interpreter, the opt-out variables, ``PYTHONPATH``."""
    names = (settings.BY_NAME["KIMI_AUDIO_DISABLE"].name, "PYTHONPATH")
    return (sys.executable, *(str(os.environ.get(name)) for name in names))


def start() -> bool:
    """Start the probe in the background, once per process and environment; ``True`` if this call started it."""
    key = _key()
    if key in _results or key in _running:
        return False
    try:
        process = subprocess.Popen(
            [sys.executable, "-c", PROBE], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    except OSError as err:
        _results[key] = {"error": f"{type(err).__name__}: {err}"}
        return False
    _running[key] = (process, time.monotonic())
    return True


def result(timeout: float = TIMEOUT_S, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The probe's JSON, or ``{"error": "..."}`` when the interpreter fails; waits for the run :func:`start` began
    (else starts one). Cached per process and environment."""
    key = _key()
    if key not in _results:
        start()
    if key in _running:
        process, started = _running.pop(key)
        _results[key] = _collect(process, started, timeout, progress or (lambda _line: None))
    return _results[key]


def stop() -> None:
    """Kill a probe still running (doctor failed or was interrupted before it collected the result)."""
    for process, _ in _running.values():
        process.kill()
        process.communicate()
    _running.clear()


def _collect(process: subprocess.Popen, started: float, timeout: float, say: Callable[[str], None]) -> dict[str, Any]:
    """Wait for the probe, saying every ``PROGRESS_S`` how long it has run; its JSON line or an error."""
    while True:
        waited = time.monotonic() - started
        try:
            stdout, stderr = process.communicate(timeout=max(0.1, min(PROGRESS_S, timeout - waited)))
            break
        except subprocess.TimeoutExpired:
            waited = time.monotonic() - started
            if waited >= timeout:
                process.kill()
                process.communicate()
                return {"error": f"the fresh interpreter did not finish in {timeout:.0f} s"}
            say(f"still waiting for the fresh interpreter that imports LLaMA-Factory ({waited:.0f} s so far)")
    for line in reversed(stdout.splitlines()):
        if line.startswith(PROBE_MARK):
            return json.loads(line[len(PROBE_MARK) :])
    lines = [line for line in stderr.splitlines() if line.strip()]
    return {"error": lines[-1] if lines else f"exit status {process.returncode}"}
