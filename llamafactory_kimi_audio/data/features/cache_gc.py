"""``kimi-audio-lf cache gc``: free what no live entry needs, touching only the cache's own files.

Under the identity's exclusive lock (``cache_lock.py``: gc refuses, or waits with ``--wait``, while a precompute,
a training run or a verify holds the shared one), gc

* keeps every shard whose bytes are all live entries as it is;
* copies the sound, non-orphan entries of every other shard into a fresh shard, then deletes that shard's
  ``.bin`` / ``.idx`` (new shards are complete before anything is deleted: a crash leaves duplicates, never a loss).

Nothing else is touched: not other files in ``shards/``, not folders that are not identity folders. Every removed
path is named; ``--dry-run`` names the same paths and the same byte count, and removes nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from .cache_admin import CacheReport, scan, size_text
from .cache_format import RECORD, ClipKey
from .cache_lock import CacheLock
from .cache_store import CacheIndex, ShardWriter, shard_dir


@dataclass
class ShardPlan:
    stem: str  # shard path without .bin / .idx
    files: list[tuple[str, int]]  # (path, bytes) of its .bin and .idx
    live: list[int] = field(default_factory=list)  # index positions of the entries to keep
    live_bytes: int = 0

    @property
    def wholly_live(self) -> bool:
        sizes = {path[-4:]: size for path, size in self.files}
        return sizes.get(".bin", 0) == self.live_bytes and sizes.get(".idx", 0) == len(self.live) * RECORD.itemsize


@dataclass
class GcPlan:
    report: CacheReport
    rewrite: list[ShardPlan] = field(default_factory=list)

    @property
    def removed_bytes(self) -> int:
        return sum(size for shard in self.rewrite for _, size in shard.files)

    @property
    def kept_bytes(self) -> int:
        """What the copies of the rewritten shards' live entries take (payloads as they are + one record each)."""
        return sum(shard.live_bytes + len(shard.live) * RECORD.itemsize for shard in self.rewrite)

    def removal_lines(self, dry_run: bool) -> list[str]:
        verb = "would remove" if dry_run else "removed"
        lines = []
        for shard in self.rewrite:
            names = " and ".join(path for path, _ in shard.files)
            size = size_text(sum(size for _, size in shard.files))
            lines.append(f"  gc: {verb} {names} ({size}; its {len(shard.live)} live entries copied to a new shard)")
        return lines


def plan(root: str, identity: str, index: CacheIndex) -> GcPlan:
    """What gc removes: the shards that hold anything but live entries."""
    report = scan(root, identity, verify=True, index=index)
    folder = shard_dir(root, identity)
    stems: dict[str, ShardPlan] = {}
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if name.endswith((".bin", ".idx")):
            path = os.path.join(folder, name)
            stems.setdefault(path[:-4], ShardPlan(path[:-4], [])).files.append((path, os.path.getsize(path)))
    for at in index:
        if at not in report.unusable:
            shard = stems.get(index.shard_path(at)[:-4])
            if shard is not None:
                shard.live.append(at)
                shard.live_bytes += int(index.records[at]["length"])
    return GcPlan(report, [shard for shard in stems.values() if not shard.wholly_live])


def gc(root: str, identity: str, dry_run: bool = False, wait: bool = False) -> tuple[GcPlan, int]:
    """Compact one identity under its exclusive lock; returns (the plan, bytes freed). CacheBusy when in use."""
    lock = CacheLock(root, identity).exclusive(wait)
    index = CacheIndex(shard_dir(root, identity))
    try:
        todo = plan(root, identity, index)
        if dry_run:
            return todo, todo.removed_bytes - todo.kept_bytes
        written = _copy_live(todo, index, shard_dir(root, identity))
        index.close()
        _remove(todo)
        return todo, todo.removed_bytes - written
    finally:
        index.close()
        lock.release()


def _copy_live(todo: GcPlan, index: CacheIndex, folder: str) -> int:
    """Copy the live entries of the shards to rewrite into fresh shards; the bytes those take."""
    writer = ShardWriter(folder)
    try:
        for shard in todo.rewrite:
            for at in shard.live:
                header, codes, rows = index.read(at)
                writer.write(ClipKey(header["audio"], header["size"], header["mtime_ns"]), codes, rows)
    finally:
        writer.close()
    return sum(os.path.getsize(f"{stem}{ext}") for stem in writer.created for ext in (".bin", ".idx"))


def _remove(todo: GcPlan) -> None:
    for shard in todo.rewrite:
        for path, _ in shard.files:
            os.remove(path)
