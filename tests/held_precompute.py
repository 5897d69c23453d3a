"""A real ``kimi-audio-lf precompute`` subprocess that is held mid-run at a known state, not for a time.

The dataset lists the given clips, then many segments ``gone####.wav#t=0,4`` of files that do not exist. Shards
batch clips shortest first and a segment counts as its span (4 s, longer than every clip here), so the run encodes
the real clips first, then reports one "skipped … not found" line per missing segment on stderr. Nobody reads that
pipe until ``release``: once it is full (``HELD_LINES`` lines are far more than a pipe holds) the run blocks in the
write, after its entries are written and before it can finish, whatever the machine's load.
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
HELD_LINES = 3000  # ~200 bytes each: several times a pipe's 64 KiB


def dataset_json(path: Path, clips: list[str]) -> Path:
    """A sharegpt ASR dataset file with one row per clip."""
    rows = [
        {"messages": [{"role": "user", "content": "<audio>"}, {"role": "assistant", "content": "x"}], "audios": [a]}
        for a in clips
    ]
    path.write_text(json.dumps(rows))
    return path


def held_dataset(folder: Path, clips: list[str]) -> Path:
    """The clips, then the segments of missing files that hold the run."""
    folder.mkdir(parents=True, exist_ok=True)
    gone = [f"{folder / f'gone{n:04d}.wav'}#t=0,4" for n in range(HELD_LINES)]
    return dataset_json(folder / "held.json", [*clips, *gone])


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
    """Until ``count`` entries are indexed (the run is then held, or on its way to the held part)."""
    deadline = time.monotonic() + timeout
    while indexed(cache) < count:
        assert proc.poll() is None, f"precompute exited early ({proc.returncode}): {proc.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, "precompute wrote no entries in time"
        time.sleep(0.05)


def release(proc: subprocess.Popen) -> tuple[str, str]:
    """Read the held run's output, so that it goes on to its end; its (stdout, stderr)."""
    return proc.communicate(timeout=900)
