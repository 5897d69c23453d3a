"""Console progress of the demo's training step, read from the ``trainer_log.jsonl`` that LLaMA-Factory's
``LogCallback`` appends every ``logging_steps`` (step, total, loss, elapsed, remaining time) while the run goes on.

The training subprocess writes everything else to ``demo_out/logs/train.log``; without this the console would stay
silent for the whole step (up to an hour on a loaded 2-core machine).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from typing import Any

TRAINER_LOG = "trainer_log.jsonl"  # LLaMA-Factory's extras.constants.TRAINER_LOG
EVERY_S = 30.0  # at most one progress line this often
POLL_S = 2.0


def last_record(path: str) -> dict[str, Any] | None:
    """The last complete JSON line of ``path`` (the writer may be half-way through the next one), or ``None``."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "current_steps" in record:
            return record
    return None


def progress_line(record: dict[str, Any]) -> str:
    """``train: step 120/600 (20%), loss 2.315, 0:05:10 elapsed, ETA 0:20:40``."""
    step, total = record.get("current_steps"), record.get("total_steps")
    parts = [f"step {step}/{total}" + (f" ({100 * step / total:.0f}%)" if step is not None and total else "")]
    if record.get("loss") is not None:
        parts.append(f"loss {record['loss']:.3f}")
    if record.get("elapsed_time"):
        parts.append(f"{record['elapsed_time']} elapsed")
    if record.get("remaining_time"):
        parts.append(f"ETA {record['remaining_time']}")
    return "train: " + ", ".join(parts)


class TrainingProgress:
    """Called while the training step runs: returns a line to print when there is news, at most every ``every_s``."""

    def __init__(self, output_dir: str, every_s: float = EVERY_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = os.path.join(output_dir, TRAINER_LOG)
        self.every_s, self.clock = every_s, clock
        self.started = self.last_said = clock()
        self.last_step: int | None = None

    def clear_stale_log(self) -> None:
        """A previous demo's log in the same output_dir would be read as this run's progress until the trainer
        deletes it; it is the demo's own file."""
        if os.path.isfile(self.path):
            os.remove(self.path)

    def __call__(self) -> str | None:
        now = self.clock()
        if now - self.last_said < self.every_s:
            return None
        record = last_record(self.path)
        if record is None:
            self.last_said = now
            return f"train: no step logged yet ({now - self.started:.0f} s: loading the model, tokenising the data)"
        if record.get("current_steps") == self.last_step:
            return None
        self.last_step, self.last_said = record.get("current_steps"), now
        return progress_line(record)


def wait_with_progress(
    process: subprocess.Popen, progress: Callable[[], str | None], say: Callable[[str], None]
) -> int:
    """Wait for ``process``; print what ``progress`` reports meanwhile. Returns the exit status."""
    while True:
        try:
            return process.wait(timeout=POLL_S)
        except subprocess.TimeoutExpired:
            line = progress()
            if line:
                say(line)
