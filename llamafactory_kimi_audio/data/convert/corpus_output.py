"""Sharded output of a corpus conversion, and the state that makes it resumable.

Each dataset is a folder ``NAME_<subset>/`` of ``part-NNNNN.jsonl`` shards (one per input chunk that had rows of
that subset), listed in ``dataset_info.json`` by folder name: LLaMA-Factory loads every file of the folder, so a
shard is written next to the folders (``.NAME.tmp/``) and renamed in whole. ``NAME.convert-state.json`` records
after each chunk what is done (chunks, the size of ``NAME.issues.jsonl``, the running totals), so a run that is
interrupted resumes after its last finished chunk.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from ...fileio.textio import write_json
from .validate import ERROR, WARNING, Issue

UNASSIGNED = ""  # the state's bucket for problems that belong to no output subset (never a dataset name)


@dataclass
class SubsetStats:
    rows: int = 0
    seconds: float = 0.0
    min: float = float("inf")
    max: float = 0.0
    skipped: dict[str, int] = field(default_factory=dict)
    warnings: dict[str, int] = field(default_factory=dict)
    sample_rates: dict[str, int] = field(default_factory=dict)

    def add_row(self, seconds: float, sample_rate: int) -> None:
        self.rows += 1
        self.seconds += seconds
        self.min, self.max = min(self.min, seconds), max(self.max, seconds)
        self.sample_rates[str(sample_rate)] = self.sample_rates.get(str(sample_rate), 0) + 1

    def add_issue(self, issue: Issue) -> None:
        table = self.warnings if issue.severity == WARNING else self.skipped
        table[issue.reason] = table.get(issue.reason, 0) + 1

    def summary(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "hours": round(self.seconds / 3600, 4),
            "seconds_min": round(self.min, 3) if self.rows else 0.0,
            "seconds_max": round(self.max, 3),
            "skipped": sum(self.skipped.values()),
            "skipped_by_reason": dict(sorted(self.skipped.items())),
            "warnings_by_reason": dict(sorted(self.warnings.items())),
            "sample_rates": dict(sorted(self.sample_rates.items())),
        }


@dataclass
class ConvertState:
    fingerprint: str
    chunks_done: int = 0
    items_done: int = 0
    issues_bytes: int = 0
    lang: str | None = None
    complete: bool = False
    subsets: dict[str, SubsetStats] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, path: str) -> ConvertState | None:
        try:
            with open(path, encoding="utf-8") as fh:
                raw = json.load(fh)
            raw["subsets"] = {k: SubsetStats(**v) for k, v in raw.get("subsets", {}).items()}
            return cls(**raw)
        except (OSError, ValueError, TypeError):
            return None

    def save(self, path: str) -> None:
        write_json(path, asdict(self), indent=None)

    def stats(self, subset: str) -> SubsetStats:
        return self.subsets.setdefault(subset, SubsetStats())

    def counts(self, severity: str) -> Counter:
        total: Counter = Counter()
        for stats in self.subsets.values():
            total.update(stats.warnings if severity == WARNING else stats.skipped)
        return total


class ShardWriter:
    """Writes ``out_dir/<dataset>/part-<chunk>.jsonl`` atomically; the temp files live outside the dataset folders."""

    def __init__(self, out_dir: str, name: str) -> None:
        self.out_dir = out_dir
        self.tmp_dir = os.path.join(out_dir, f".{name}.tmp")

    def write(self, dataset: str, chunk: int, rows: list[dict[str, Any]]) -> tuple[int, str]:
        """Write one shard; returns its size in bytes and its path."""
        os.makedirs(self.tmp_dir, exist_ok=True)
        folder = os.path.join(self.out_dir, dataset)
        os.makedirs(folder, exist_ok=True)
        final = os.path.join(folder, f"part-{chunk:05d}.jsonl")
        tmp = os.path.join(self.tmp_dir, f"{dataset}.part-{chunk:05d}.jsonl")
        with open(tmp, "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        return os.path.getsize(final), final

    def clear(self, datasets: list[str]) -> None:
        """A fresh run: drop the shards an earlier run of the same name left (they would be loaded as data)."""
        for dataset in datasets:
            for path in glob.glob(os.path.join(self.out_dir, dataset, "part-*.jsonl")):
                os.unlink(path)

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            os.rmdir(self.tmp_dir)


def append_issues(path: str, issues: list[Issue], keep_bytes: int) -> int:
    """Append ``issues`` (JSON Lines) after the first ``keep_bytes`` of the file; returns the new size."""
    mode = "r+" if os.path.exists(path) else "w"
    with open(path, mode, encoding="utf-8") as fh:
        fh.seek(keep_bytes)
        fh.truncate()
        for issue in issues:
            fh.write(json.dumps(issue.to_dict(), ensure_ascii=False) + "\n")
        return fh.tell()


def first_issues(path: str, limit: int) -> list[Issue]:
    """The first ``limit`` issues of each reason (for the console summary), read back from the issues file."""
    seen: Counter = Counter()
    found: list[Issue] = []
    with contextlib.suppress(OSError), open(path, encoding="utf-8") as fh:
        for line in fh:
            raw = json.loads(line)
            raw.pop("severity", None)
            raw.pop("subset", None)
            if seen[raw["reason"]] < limit:
                seen[raw["reason"]] += 1
                found.append(Issue(**raw))
    return found


__all__ = ["ERROR", "UNASSIGNED", "ConvertState", "ShardWriter", "SubsetStats", "append_issues", "first_issues"]
