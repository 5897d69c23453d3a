"""Append-only shards + index files of one encoder identity: ``<root>/<identity>/shards/<writer>.bin|.idx``.

Every writing process (a precompute rank, a training rank) appends to shards of its own, named after the host, the
process id and a random tag, so concurrent writers never share a file and need no lock (also across nodes on a
shared file system). A payload is appended first, then its 64-byte index record; a process killed in between leaves
bytes that no record points to, and a torn record fails its own checksum. Readers merge every ``.idx`` file: for a
key seen more than once (an entry rewritten after damage) the newest record wins. Files grow to ``max_bytes`` and
then a new shard starts, so the file count stays ``2 × writers × (bytes / max_bytes)``.
"""

from __future__ import annotations

import errno
import os
import secrets
import socket
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from ...errors import EnvironmentProblem
from .cache_format import RECORD, ClipKey, decode_payload, encode_payload, make_record, parse_records, payload_header

SHARDS = "shards"
MAX_SHARD_BYTES = 4 << 30


class CacheWriteError(EnvironmentProblem):
    """The cache directory cannot take a write (read-only, full disk); the message is one line with the fix."""


def shard_dir(root: str, identity: str) -> str:
    return os.path.join(root, identity, SHARDS)


def index_files(folder: str) -> list[str]:
    if not os.path.isdir(folder):
        return []
    return sorted(os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(".idx"))


class ShardWriter:
    """Appends payloads to shards owned by this process (a forked child opens its own)."""

    def __init__(self, folder: str, max_bytes: int = MAX_SHARD_BYTES, sync: bool = False) -> None:
        self.folder, self.max_bytes, self.sync = folder, max_bytes, sync
        self._files: tuple[int, int, str] | None = None  # (data fd, index fd, shard path) of this process
        self._pid = -1
        self.written = 0
        self.created: list[str] = []  # the shard paths (without .bin/.idx) this writer started

    def write(self, key: ClipKey, codes: Any, rows: Any | None) -> None:
        payload, frames, dim, dtype_code = encode_payload(key, codes, rows)
        data_fd, index_fd, path = self._open(len(payload))
        offset = os.lseek(data_fd, 0, os.SEEK_END)
        try:
            _write_all(data_fd, payload)
            if self.sync:
                os.fsync(data_fd)
            _write_all(index_fd, make_record(key, offset, payload, frames, dim, dtype_code, time.time_ns()))
        except OSError as err:
            _undo(data_fd, offset)
            self.close()
            raise CacheWriteError(_write_problem(self.folder, err)) from err
        self.written += 1

    def _open(self, incoming: int) -> tuple[int, int, str]:
        if self._files is not None and self._pid == os.getpid():
            data_fd, _, _ = self._files
            if os.lseek(data_fd, 0, os.SEEK_END) + incoming <= self.max_bytes:
                return self._files
            self.close()
        self._files, self._pid = None, os.getpid()  # a forked child never appends to its parent's shard
        name = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
        path = os.path.join(self.folder, name)
        try:
            os.makedirs(self.folder, exist_ok=True)
            data_fd = os.open(f"{path}.bin", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
            index_fd = os.open(f"{path}.idx", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        except OSError as err:
            raise CacheWriteError(_write_problem(self.folder, err)) from err
        self._files = (data_fd, index_fd, path)
        self.created.append(path)
        return self._files

    def close(self) -> None:
        if self._files is not None and self._pid == os.getpid():
            for fd in self._files[:2]:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._files = None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _undo(fd: int, offset: int) -> None:
    try:  # best effort: the bytes have no index record, so they are never served anyway
        os.ftruncate(fd, offset)
    except OSError:
        pass


def _write_problem(folder: str, err: OSError) -> str:
    if err.errno == errno.ENOSPC or err.errno == errno.EDQUOT:
        why = "the disk is full; free space or point KIMI_AUDIO_FEATURE_CACHE / --cache at a larger disk"
    elif err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        why = "it is not writable; fix its permissions or point KIMI_AUDIO_FEATURE_CACHE / --cache elsewhere"
    else:
        why = f"{err.strerror or type(err).__name__}; check the disk"
    return f"feature cache {folder}: cannot write ({why}); nothing partial was kept"


class CacheIndex:
    """Every sound index record of one identity, newest per key, sorted for binary search; refreshed on demand."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.records = np.zeros(0, dtype=RECORD)
        self.shards = np.zeros(0, dtype=np.int32)  # per record: position of its shard in self.names
        self.names: list[str] = []
        self._seen: dict[str, int] = {}  # index file → bytes already read
        self._fds: dict[int, int] = {}
        self.refresh()

    def refresh(self) -> bool:
        """Read what the index files gained since the last call; True when anything new arrived."""
        new, shard_ids = [], []
        for path in index_files(self.folder):
            start = self._seen.get(path, 0)
            try:
                with open(path, "rb") as f:
                    f.seek(start)
                    raw = f.read()
            except OSError:
                continue
            whole = len(raw) // RECORD.itemsize * RECORD.itemsize
            self._seen[path] = start + whole
            records = parse_records(raw[:whole])
            if len(records):
                if path not in self.names:
                    self.names.append(path)
                new.append(records)
                shard_ids.append(np.full(len(records), self.names.index(path), dtype=np.int32))
        if not new:
            return False
        self._merge(np.concatenate([self.records, *new]), np.concatenate([self.shards, *shard_ids]))
        return True

    def _merge(self, records: np.ndarray, shards: np.ndarray) -> None:
        order = np.lexsort((records["written_ns"], records["key"]))
        records, shards = records[order], shards[order]
        last = np.ones(len(records), dtype=bool)
        last[:-1] = records["key"][1:] != records["key"][:-1]  # newest record of each key
        self.records, self.shards = records[last], shards[last]

    def find(self, digest: bytes) -> int | None:
        digest = digest.rstrip(b"\0")  # numpy's S16 drops trailing NUL bytes of the keys it holds
        at = int(np.searchsorted(self.records["key"], digest))
        return at if at < len(self.records) and self.records["key"][at] == digest else None

    def __len__(self) -> int:
        return len(self.records)

    def shard_path(self, at: int) -> str:
        return self.names[int(self.shards[at])][: -len(".idx")] + ".bin"

    def read(self, at: int) -> tuple[dict[str, Any], Any, Any | None]:
        """``(header, codes, rows)`` of record ``at``; ValueError (checksum, short read) or OSError when damaged."""
        record = self.records[at]
        return decode_payload(self._pread(at, int(record["length"])), record)

    def read_header(self, at: int) -> dict[str, Any]:
        """The JSON header of record ``at`` (its audio, size, mtime), without reading the tensors."""
        return payload_header(self._pread(at, min(int(self.records[at]["length"]), 4096)))[0]

    def _pread(self, at: int, length: int) -> bytes:
        shard = int(self.shards[at])
        if shard not in self._fds:
            self._fds[shard] = os.open(self.shard_path(at), os.O_RDONLY)
        return os.pread(self._fds[shard], length, int(self.records[at]["offset"]))

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __iter__(self) -> Iterator[int]:
        return iter(range(len(self.records)))

    def __getstate__(self) -> dict[str, Any]:  # file descriptors do not travel to other processes
        return {**self.__dict__, "_fds": {}}
