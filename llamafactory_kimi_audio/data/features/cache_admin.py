"""Inspecting a feature cache for ``kimi-audio-lf cache``: what it holds (``stats``) and whether every entry and
every index reads back (``verify``); compaction is in ``cache_gc.py``.

A directory is a feature cache when it holds at least one *identity folder*: a 16-hex-digit name (the encoder
identity) with a ``shards/`` folder or the cache's lock file.
Nothing else under the root is ever read or removed.

An *orphan* is an entry whose audio file is gone or has changed since it was encoded (its key can never be looked
up again); *dead bytes* are payloads no live index record points to (entries rewritten after damage, payloads cut
off by a crash, orphans after ``gc``). A *torn or missing index* leaves complete payloads in a ``.bin`` with no
record in its ``.idx``: those entries are lost to training until they are encoded again.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from ...constants import SAMPLE_RATE, SAMPLES_PER_TOKEN
from ...errors import InputError
from .cache_format import key_file
from .cache_index_check import index_problems
from .cache_lock import LOCK_NAME, CacheLock
from .cache_store import SHARDS, CacheIndex, shard_dir

FRAMES_PER_HOUR = 3600 * SAMPLE_RATE / SAMPLES_PER_TOKEN
IDENTITY_NAME = re.compile(r"[0-9a-f]{16}")
LAYOUT = (
    "a cache holds <16-hex-digit encoder id>/shards/*.bin|*.idx folders, written by `kimi-audio-lf precompute` "
    "or by training with KIMI_AUDIO_FEATURE_CACHE set"
)


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
    index_problems: list[str] = field(default_factory=list)
    index_files: int = 0
    unusable: set[int] = field(default_factory=set)  # index positions of damaged or orphaned entries

    @property
    def path(self) -> str:
        return os.path.join(self.root, self.identity)

    @property
    def hours(self) -> float:
        return self.frames / FRAMES_PER_HOUR

    @property
    def bytes_per_hour(self) -> float:
        return self.live_bytes / self.hours if self.frames else 0.0

    @property
    def problems(self) -> int:
        return len(self.damaged) + len(self.index_problems)

    def lines(self) -> list[str]:
        lines = [
            f"{self.path}: {self.entries} entries ({self.codes_only} codes-only), "
            f"{self.hours:.2f} audio hours, {size_text(self.file_bytes)} in {self.files} files, "
            f"{size_text(self.bytes_per_hour)} per audio hour, {len(self.orphans)} orphans, "
            f"{size_text(self.file_bytes - self.live_bytes)} dead bytes"
        ]
        lines += [f"  orphan: {audio} (gone or changed since it was encoded)" for audio in self.orphans[:10]]
        if len(self.orphans) > 10:
            lines.append(f"  ... and {len(self.orphans) - 10} more orphans (`kimi-audio-lf cache gc` drops them)")
        return lines + [f"  damaged: {line}" for line in self.damaged]

    def verify_lines(self) -> list[str]:
        """``cache verify``'s answer: how much was checked and whether it is all sound."""
        sound = self.entries - len(self.damaged)
        verdict = "all sound" if not self.problems else f"{_count(self.problems, 'problem')} found"
        lines = [
            f"verify {self.path}: {verdict}: {self.entries} entries checked (every payload read back, checksum "
            f"compared), {sound} sound, {len(self.damaged)} damaged; {self.index_files} index files checked, "
            f"{len(self.index_problems)} torn or missing; {len(self.orphans)} orphans (audio gone or changed)"
        ]
        lines += [f"  damaged: {line}" for line in self.damaged]
        return lines + [f"  index: {line}" for line in self.index_problems]


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def size_text(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if count < 1024 or unit == "TB":
            return f"{count:.1f} {unit}" if unit != "B" else f"{int(count)} B"
        count /= 1024
    return ""


def is_identity_folder(folder: str) -> bool:
    """A folder the cache owns: a 16-hex-digit name holding ``shards/`` or the cache's lock file (a cache whose users
    have not written an entry yet)."""
    if not IDENTITY_NAME.fullmatch(os.path.basename(folder)) or not os.path.isdir(folder):
        return False
    return os.path.isdir(os.path.join(folder, SHARDS)) or os.path.isfile(os.path.join(folder, LOCK_NAME))


def identities(root: str) -> list[str]:
    """The encoder identities that have a cache folder under ``root``."""
    if not os.path.isdir(root):
        return []
    return sorted(name for name in os.listdir(root) if is_identity_folder(os.path.join(root, name)))


def cache_identities(root: str, identity: str | None = None) -> list[str]:
    """The identities to work on; InputError (one line) when ``root`` is not a feature cache."""
    if not os.path.isdir(root):
        raise InputError(f"{root}: no feature cache there; pass --cache DIR or set KIMI_AUDIO_FEATURE_CACHE")
    found = identities(root)
    if not found:
        raise InputError(f"{root}: not a feature cache ({LAYOUT}); nothing was read or removed; pass --cache DIR")
    if identity is not None and identity not in found:
        raise InputError(f"{root}: no entries of this checkpoint's audio encoders (identity {identity}); has {found}")
    return [identity] if identity is not None else found


def _is_orphan(header: dict) -> bool:
    try:
        stat = os.stat(key_file(header["audio"]))
    except OSError:
        return True
    return (stat.st_size, stat.st_mtime_ns) != (header["size"], header["mtime_ns"])


def scan(root: str, identity: str, verify: bool = False, index: CacheIndex | None = None) -> CacheReport:
    """Stats of one identity; ``verify`` reads every payload back, checks its checksum and checks every index file
    against its shard (a torn or missing index). The caller holds the cache's lock."""
    report = CacheReport(root, identity)
    folder = shard_dir(root, identity)
    own = index is None
    index = CacheIndex(folder) if own else index
    names = [n for n in os.listdir(folder) if n.endswith((".bin", ".idx"))] if os.path.isdir(folder) else []
    report.files = len(names)
    report.index_files = sum(n.endswith(".idx") for n in names)
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
            report.unusable.add(at)
            continue
        if _is_orphan(header):
            report.orphans.append(header["audio"])
            report.unusable.add(at)
    if verify:
        report.index_problems = index_problems(folder, index)
    if own:
        index.close()
    return report


def inspect(root: str, identity: str, verify: bool) -> CacheReport:
    """``scan`` under the shared lock (waits, with one line, while ``cache gc`` rewrites the shards)."""
    lock = CacheLock(root, identity).shared()
    try:
        return scan(root, identity, verify=verify)
    finally:
        lock.release()
