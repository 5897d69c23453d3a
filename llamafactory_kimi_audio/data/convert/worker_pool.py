"""A process pool whose workers never outlive the command that started them.

``ProcessPoolExecutor`` workers block on their task queue; when the parent is killed (SIGKILL, or SIGTERM with the
default action) nothing wakes them, and they stay behind re-parented to PID 1. Here each worker asks Linux to send
it SIGTERM when its parent dies (``prctl(PR_SET_PDEATHSIG)``), or, elsewhere (or with a forkserver in between),
checks from a thread once a second that the process that made the pool still exists. ``terminate_on_sigterm``
turns a SIGTERM of the parent into ``KeyboardInterrupt`` so that the pool is shut down by the code that owns it, as
with ctrl-c.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor

PR_SET_PDEATHSIG = 1  # linux/prctl.h
PARENT_POLL_SECONDS = 1.0


def parent_bound_pool(workers: int) -> ProcessPoolExecutor:
    """A ``ProcessPoolExecutor`` of ``workers`` processes that exit when this process dies."""
    return ProcessPoolExecutor(workers, initializer=_bind_to_parent, initargs=(os.getpid(),))


def _bind_to_parent(owner: int) -> None:
    """Worker initializer: default SIGTERM, no SIGINT (the owner stops the pool), exit when the owner is gone."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a forked worker inherits the owner's Python handler
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # ctrl-c reaches the whole process group; the owner handles it
    # the kernel watches the direct parent; a forkserver in between, or no prctl, needs a watcher thread, as does an
    # owner that died before the request (the worker was re-parented already)
    kernel_watches = os.getppid() == owner and _ask_kernel_to_signal_on_parent_death()
    if (not kernel_watches or os.getppid() != owner) and os.name == "posix":
        threading.Thread(target=_exit_when_gone, args=(owner,), daemon=True).start()


def _ask_kernel_to_signal_on_parent_death() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _exit_when_gone(owner: int) -> None:
    while _alive(owner):
        time.sleep(PARENT_POLL_SECONDS)
    os._exit(1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # POSIX only: signal 0 checks existence (on Windows 0 would be CTRL_C_EVENT)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else (the pid was reused): treat as alive
        return True
    return True


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def terminate_on_sigterm() -> Iterator[None]:
    """Within the block, SIGTERM raises KeyboardInterrupt: in the main thread, and only while SIGTERM has its default
    action (a handler installed by an embedding program is left alone)."""
    in_main = threading.current_thread() is threading.main_thread()
    if not in_main or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
