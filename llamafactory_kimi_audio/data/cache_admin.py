"""Managing a feature cache: what it holds (``stats``), whether every entry reads back (``verify``) and compaction
(``gc``), for ``kimi-audio-lf cache``.

An *orphan* is an entry whose audio file is gone or has changed since it was encoded (its key can never be looked
up again); *dead bytes* are payloads no live index record points to (entries rewritten after damage, payloads cut
off by a crash, orphans after ``gc``). ``gc`` copies the live entries into fresh shards and deletes the old shards
and the files of the old one-file-per-clip layout; run it while nothing trains or precomputes on that cache.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field

from ..constants import SAMPLE_RATE, SAMPLES_PER_TOKEN
from .cache_format import ClipKey, key_file
from .cache_store import SHARDS, CacheIndex, ShardWriter, shard_dir
from .feature_cache import legacy_entries

FRAMES_PER_HOUR = 3600 * SAMPLE_RATE / SAMPLES_PER_TOKEN


@dataclass
class CacheReport:
    root: str
    identity: str
    entries: int = 0
    codes_only: int = 0
    frames: int = 0
    live_bytes: int = 0
    file_bytes: int = 0
    files: int = 0
    orphans: list[str] = field(default_factory=list)
    damaged: list[str] = field(default_factory=list)
    legacy: int = 0

    @property
    def hours(self) -> float:
        return self.frames / FRAMES_PER_HOUR

    @property
    def bytes_per_hour(self) -> float:
        return self.live_bytes / self.hours if self.frames else 0.0

    def lines(self) -> list[str]:
        lines = [
            f"{os.path.join(self.root, self.identity)}: {self.entries} entries ({self.codes_only} codes-only), "
            f"{self.hours:.2f} audio hours, {_size(self.file_bytes)} in {self.files} files, "
            f"{_size(self.bytes_per_hour)} per audio hour, {len(self.orphans)} orphans, "
            f"{_size(self.file_bytes - self.live_bytes)} dead bytes"
        ]
        if self.legacy:
            lines.append(f"  {self.legacy} files of the old one-file-per-clip layout (not read; `cache gc` deletes)")
        lines += [f"  orphan: {audio} (gone or changed since it was encoded)" for audio in self.orphans[:10]]
        if len(self.orphans) > 10:
            lines.append(f"  ... and {len(self.orphans) - 10} more orphans (`kimi-audio-lf cache gc` drops them)")
        return lines + [f"  damaged: {line}" for line in self.damaged]


def _size(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if count < 1024 or unit == "TB":
            return f"{count:.1f} {unit}" if unit != "B" else f"{int(count)} B"
        count /= 1024
    return ""


def identities(root: str) -> list[str]:
    """The encoder identities that have a folder under ``root``."""
    if not os.path.isdir(root):
        return []
    return sorted(name for name in os.listdir(root) if os.path.isdir(os.path.join(root, name)))


def _is_orphan(header: dict) -> bool:
    try:
        stat = os.stat(key_file(header["audio"]))
    except OSError:
        return True
    return (stat.st_size, stat.st_mtime_ns) != (header["size"], header["mtime_ns"])


def scan(root: str, identity: str, verify: bool = False) -> CacheReport:
    """Stats of one identity; ``verify`` reads every payload back and checks its checksum."""
    report = CacheReport(root, identity, legacy=legacy_entries(root, identity))
    folder = shard_dir(root, identity)
    index = CacheIndex(folder)
    names = os.listdir(folder) if os.path.isdir(folder) else []
    report.files = len(names)
    report.file_bytes = sum(os.path.getsize(os.path.join(folder, n)) for n in names if n.endswith(".bin"))
    for at in index:
        record = index.records[at]
        report.entries += 1
        report.frames += int(record["frames"])
        report.live_bytes += int(record["length"])
        report.codes_only += int(record["rows_dtype"]) == 0
        try:
            header = index.read_header(at) if not verify else index.read(at)[0]
        except (OSError, ValueError) as err:
            report.damaged.append(f"{index.shard_path(at)} at byte {int(record['offset'])}: {err}")
            continue
        if _is_orphan(header):
            report.orphans.append(header["audio"])
    index.close()
    return report


def gc(root: str, identity: str, dry_run: bool = False) -> tuple[CacheReport, int]:
    """Keep the sound, non-orphan entries in fresh shards; delete the rest. Returns (report before, bytes freed)."""
    report = scan(root, identity, verify=True)
    folder = shard_dir(root, identity)
    before = report.file_bytes + _legacy_bytes(root, identity)
    if dry_run:
        kept = report.live_bytes - _orphan_bytes(root, identity)
        return report, before - kept
    index = CacheIndex(folder)
    old = [os.path.join(folder, n) for n in os.listdir(folder)] if os.path.isdir(folder) else []
    writer = ShardWriter(folder)
    for at in index:
        try:
            header, codes, rows = index.read(at)
        except (OSError, ValueError):
            continue  # damaged: dropped, re-encoded by the next precompute or training run
        if not _is_orphan(header):
            writer.write(ClipKey(header["audio"], header["size"], header["mtime_ns"]), codes, rows)
    writer.close()
    index.close()
    for path in old:
        os.remove(path)
    _remove_legacy(root, identity)
    after = sum(os.path.getsize(os.path.join(folder, n)) for n in os.listdir(folder)) if os.path.isdir(folder) else 0
    return report, before - after


def _orphan_bytes(root: str, identity: str) -> int:
    index, total = CacheIndex(shard_dir(root, identity)), 0
    for at in index:
        try:
            if _is_orphan(index.read_header(at)):
                total += int(index.records[at]["length"])
        except (OSError, ValueError):
            total += int(index.records[at]["length"])
    index.close()
    return total


def _legacy_dirs(root: str, identity: str) -> list[str]:
    folder = os.path.join(root, identity)
    if not os.path.isdir(folder):
        return []
    return [os.path.join(folder, n) for n in os.listdir(folder) if len(n) == 2 and n != SHARDS]


def _legacy_bytes(root: str, identity: str) -> int:
    return sum(os.path.getsize(os.path.join(d, n)) for d in _legacy_dirs(root, identity) for n in os.listdir(d))


def _remove_legacy(root: str, identity: str) -> None:
    for folder in _legacy_dirs(root, identity):
        shutil.rmtree(folder, ignore_errors=True)
