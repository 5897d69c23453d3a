"""A real ``kimi-audio-lf precompute`` subprocess that is held mid-run at a known state, not for a time.

The dataset lists the given clips plus one *held clip*: a named pipe read as the segment ``fifo#t=0,4``. Shards
batch clips shortest first and a segment counts as its span (4 s, longer than every clip here), so the run encodes
and writes every other clip first, then blocks opening the pipe until the test opens its writing end. Until then the
run cannot finish, whatever the machine's load. ``release`` opens and closes the writing end (the run reads an empty
file, skips that clip) until the process has exited.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPAN = "#t=0,4"


def held_dataset(folder: Path, clips: list[str]) -> tuple[Path, Path]:
    """``(dataset json, pipe)``: the clips, then the held one."""
    folder.mkdir(parents=True, exist_ok=True)
    pipe = folder / "held.wav"
    os.mkfifo(pipe)
    rows = [
        {"messages": [{"role": "user", "content": "<audio>"}, {"role": "assistant", "content": "x"}], "audios": [a]}
        for a in [*clips, f"{pipe}{SPAN}"]
    ]
    data = folder / "held.json"
    data.write_text(json.dumps(rows))
    return data, pipe


def _default_sigint() -> None:
    """The child takes SIGINT as Python does by default, even when the shell that started pytest ignores it
    (``trap '' INT``, ``nohup … &``): an ignored disposition would otherwise be inherited through exec."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(argv: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "llamafactory_kimi_audio.cli", *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_sigint,
    )


def indexed(cache: Path) -> int:
    """Index records written so far under a cache root."""
    return sum(p.stat().st_size for p in cache.rglob("*.idx")) // 64


def wait_for_entries(proc: subprocess.Popen, cache: Path, count: int, timeout: float = 900) -> None:
    """Until ``count`` entries are indexed (the run is then held at the pipe or on its way there)."""
    deadline = time.monotonic() + timeout
    while indexed(cache) < count:
        assert proc.poll() is None, f"precompute exited early ({proc.returncode}): {proc.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, "precompute wrote no entries in time"
        time.sleep(0.05)


def release(proc: subprocess.Popen, pipe: Path) -> tuple[str, str]:
    """Let a held run go on (it reads an empty held clip) until it exits; its (stdout, stderr)."""
    deadline = time.monotonic() + 900
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            os.close(os.open(pipe, os.O_WRONLY | os.O_NONBLOCK))  # ENXIO while the run has no reader open
        except OSError:
            time.sleep(0.05)
    return proc.communicate(timeout=60)


def replace_pipe_with_clip(pipe: Path, seconds: float = 4.0) -> None:
    """The held clip becomes a real recording (so a resumed run completes)."""
    import numpy as np
    import soundfile as sf

    os.remove(pipe)
    wave = 0.1 * np.random.default_rng(7).standard_normal(int(16000 * seconds))
    sf.write(pipe, wave.astype(np.float32), 16000, format="WAV")
