"""Running ``kimi-audio-lf convert`` as a real subprocess, and reading what it wrote (tests/test_convert_*.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
CLI = [sys.executable, "-m", "llamafactory_kimi_audio.cli"]
LINUX = sys.platform.startswith("linux")


def convert(*args: object, cwd: Path, umask: int | None = None) -> subprocess.CompletedProcess[str]:
    """``kimi-audio-lf convert ARGS --no-progress`` run in ``cwd`` (with ``umask`` when given)."""
    command = [*CLI, "convert", *map(str, args), "--no-progress"]
    preexec = (lambda: os.umask(umask)) if umask is not None else None
    return subprocess.run(command, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300, preexec_fn=preexec)


def shard_audios(out: Path) -> dict[str, list[str]]:
    """Dataset folder → the ``audios`` entries of its shards (corpus layouts)."""
    found: dict[str, list[str]] = {}
    for shard in sorted(out.glob("*/part-*.jsonl")):
        for line in shard.read_text(encoding="utf-8").splitlines():
            found.setdefault(shard.parent.name, []).extend(json.loads(line)["audios"])
    return found


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
