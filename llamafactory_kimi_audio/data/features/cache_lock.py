"""Who may change a feature cache's files while others use them: one lock file per encoder identity,
``<root>/<identity>/lock`` (``flock``).

Every process that reads or writes an identity's shards (``precompute``, a training rank, ``cache stats|verify``)
holds a *shared* lock for as long as it may touch them; ``cache gc``, which deletes and rewrites shards, needs the
*exclusive* lock and refuses (or, with ``--wait``, waits) while anyone holds a shared one. A process that finds gc
running says so in one line and waits for it. A cache on a file system without locks, or one the process cannot
write (a read-only shared cache), is used without a lock: nobody can gc it from there either.
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Callable
from typing import Any

from ...errors import EnvironmentProblem
from ...logs import get_logger

logger = get_logger(__name__)

LOCK_NAME = "lock"


class CacheBusy(EnvironmentProblem):
    """``cache gc`` found a precompute or training run using the cache."""


def lock_path(root: str, identity: str) -> str:
    return os.path.join(root, identity, LOCK_NAME)


def _stderr(line: str) -> None:
    logger.info("%s", line)


class CacheLock:
    """One process's hold on ``<root>/<identity>/lock``; released by ``release`` or when the process ends."""

    def __init__(self, root: str, identity: str) -> None:
        self.path = lock_path(root, identity)
        self.fd: int | None = None
        self.pid = -1

    @property
    def held(self) -> bool:
        """Taken by this process (or tried where locks cannot be had: not retried on every lookup)."""
        return self.pid == os.getpid()

    def _open(self, create: bool) -> int | None:
        try:
            if create:
                os.makedirs(os.path.dirname(self.path), exist_ok=True)
            return os.open(self.path, os.O_RDWR | (os.O_CREAT if create else 0), 0o644)
        except OSError:
            try:  # a read-only cache: a shared lock on a read-only descriptor still keeps gc away
                return os.open(self.path, os.O_RDONLY)
            except OSError:
                return None

    def shared(self, say: Callable[[str], None] = _stderr, create: bool = True) -> CacheLock:
        """Hold the shared lock (readers and writers); waits, with one line, while ``cache gc`` runs."""
        if self.held:
            return self
        fd = self._open(create)
        if fd is not None and not _try(fd, fcntl.LOCK_SH):
            folder = os.path.dirname(self.path)
            say(f"feature cache {folder}: waiting for `kimi-audio-lf cache gc` to finish ({self.path})")
            _flock(fd, fcntl.LOCK_SH)
        self.fd, self.pid = fd, os.getpid()
        return self

    def exclusive(self, wait: bool, say: Callable[[str], None] = _stderr) -> CacheLock:
        """Hold the exclusive lock (``cache gc``): CacheBusy while a precompute or training run holds the shared one,
        or with ``wait`` one line and wait for them."""
        fd = self._open(create=True)
        if fd is None:
            say(f"feature cache {os.path.dirname(self.path)}: cannot create {self.path}; gc runs without a lock")
        elif not _try(fd, fcntl.LOCK_EX):
            if not wait:
                os.close(fd)
                raise CacheBusy(
                    f"feature cache {os.path.dirname(self.path)}: in use by a running precompute, training or "
                    f"`cache verify` (they hold {self.path}); nothing removed; run gc when they have finished, or "
                    "pass --wait"
                )
            say(f"feature cache {os.path.dirname(self.path)}: in use; waiting for precompute / training to finish")
            _flock(fd, fcntl.LOCK_EX)
        self.fd, self.pid = fd, os.getpid()
        return self

    def release(self) -> None:
        if self.held and self.fd is not None:
            os.close(self.fd)  # closing drops the flock
        self.fd, self.pid = None, -1

    def __getstate__(self) -> dict[str, Any]:  # a descriptor does not travel to another process
        return {**self.__dict__, "fd": None, "pid": -1}


def _try(fd: int, kind: int) -> bool:
    """True when the lock is now held (or locks are unsupported here); False when another process holds it."""
    try:
        fcntl.flock(fd, kind | fcntl.LOCK_NB)
        return True
    except OSError as err:
        return err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)


def _flock(fd: int, kind: int) -> None:
    try:
        fcntl.flock(fd, kind)
    except OSError:
        pass  # no locks on this file system
