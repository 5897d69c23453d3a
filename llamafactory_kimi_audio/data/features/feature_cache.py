"""The feature cache: per-clip model inputs (GLM-4-Voice codes + Whisper rows, or codes only), filled by
``kimi-audio-lf precompute`` or by training itself (write-through), read at collate time so audio is encoded once.

Layout ``<root>/<identity>/shards/*.bin|*.idx`` (``cache_store.py``, format in ``cache_format.py``): ``identity``
names the audio encoders' weights, so a cache can never serve features of another model; clips are found by path,
size and mtime (one ``stat``, no audio read); every payload is checksummed and a damaged one stops training with one
line naming the clip and the fix (``CacheEntryError``), which ``precompute`` repairs by rewriting it.
"""

from __future__ import annotations

import functools
import hashlib
import os
import time
from typing import Any

from ...fileio.textio import DataError
from ...logs import get_logger
from .cache_format import ClipKey, clip_key
from .cache_lock import CacheLock
from .cache_store import CacheIndex, ShardWriter, shard_dir

logger = get_logger(__name__)

CACHE_ENV = "KIMI_AUDIO_FEATURE_CACHE"
STRICT_ENV = "KIMI_AUDIO_CACHE_STRICT"
MODE_ENV = "KIMI_AUDIO_CACHE_MODE"
REFRESH_SECONDS = 10.0
REPAIR_HINT = "re-run `kimi-audio-lf precompute` on the dataset (it rewrites bad entries)"


class CacheEntryError(DataError):
    """A feature-cache entry that is corrupt or truncated."""


class CacheMissError(DataError):
    """A clip is not in the cache while KIMI_AUDIO_CACHE_STRICT is set."""


def cache_root() -> str | None:
    from ... import settings

    root = str(settings.get(CACHE_ENV) or "")
    return os.path.abspath(os.path.expanduser(root)) if root else None


def cache_mode() -> str:
    """``full`` (codes + Whisper rows) or ``codes`` (codes only; Whisper runs online) for what gets written."""
    from ... import settings

    return str(settings.get(MODE_ENV))


def encoder_identity(model_dir: str) -> str:
    """A short id of the Whisper + GLM-4-Voice weights next to a checkpoint (size + head/tail bytes of each file)."""
    from ...models.constants import WHISPER_SUBDIR, find_semantic_tokenizer

    digest = hashlib.sha256()
    semantic = find_semantic_tokenizer(model_dir) or ""
    for path in (
        os.path.join(model_dir, WHISPER_SUBDIR, "model.safetensors"),
        os.path.join(semantic, "model.safetensors"),
    ):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: needed to identify the audio encoders of {model_dir}")
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(1 << 16)
            f.seek(max(0, size - (1 << 16)))
            tail = f.read()
        digest.update(f"{size}".encode() + head + tail)
    return digest.hexdigest()[:16]


class FeatureCache:
    """One identity's entries: look up by audio path, append new ones (this process's own shards)."""

    def __init__(self, root: str, identity: str) -> None:
        self.root, self.identity = root, identity
        self.folder = shard_dir(root, identity)
        self._index: CacheIndex | None = None
        self.writer = ShardWriter(self.folder)
        self.lock = CacheLock(root, identity)  # shared: `cache gc` never deletes shards under a running reader/writer
        self._refreshed = (os.getpid(), time.monotonic())  # (process, when) of the last re-read on a miss

    @property
    def index(self) -> CacheIndex:
        self.lock.shared(warn_once)  # before the first read of the index, once per process
        if self._index is None:
            self._index = CacheIndex(self.folder)
        return self._index

    def find(self, key: ClipKey) -> int | None:
        return self.index.find(key.digest)

    def refresh(self) -> bool:
        return self.index.refresh()

    def read(self, at: int, audio: str) -> tuple[Any, Any | None]:
        """``(codes int64, rows or None)`` of index position ``at``, or CacheEntryError naming the clip and fix."""
        try:
            _, codes, rows = self.index.read(at)
            return codes, rows
        except (OSError, ValueError) as err:
            where = f"{self.index.shard_path(at)} at byte {int(self.index.records[at]['offset'])}"
            raise CacheEntryError(
                f"{audio}: damaged feature-cache entry in {where} ({str(err).splitlines()[0][:120]}); {REPAIR_HINT}"
            ) from err

    def write(self, key: ClipKey, codes: Any, rows: Any | None) -> None:
        self.lock.shared(warn_once)
        self.writer.write(key, codes, rows)

    def lookup(self, audios: list[str]) -> list[tuple[ClipKey, int | None]]:
        """Key and index position (None: not cached) of each clip. On a miss the index is re-read for entries that
        other processes wrote: at the first miss of a process (a DataLoader worker of a new epoch), then at most
        every ``REFRESH_SECONDS`` (re-sorting a large index on every batch would cost more than it saves)."""
        found = [(key, self.find(key)) for key in (clip_key(a) for a in audios)]
        now = time.monotonic()
        stale = self._refreshed[0] != os.getpid() or now - self._refreshed[1] > REFRESH_SECONDS
        if any(at is None for _, at in found) and stale:
            self._refreshed = (os.getpid(), now)
            if self.refresh():
                found = [(key, self.find(key)) for key, _ in found]
        return found


@functools.lru_cache(maxsize=8)
def _identity(model_dir: str) -> str:
    return encoder_identity(model_dir)


_CACHES: dict[tuple[str, str], FeatureCache] = {}
_warned: set[str] = set()


def process_cache(model_dir: str | None, root: str | None = None) -> FeatureCache | None:
    """This process's cache of the checkpoint at ``model_dir`` under ``root`` ($KIMI_AUDIO_FEATURE_CACHE), or None."""
    root = root or cache_root()
    if root is None or model_dir is None:
        return None
    identity = _identity(model_dir)
    if (root, identity) not in _CACHES:
        _CACHES[(root, identity)] = FeatureCache(root, identity)
    return _CACHES[(root, identity)]


def warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        logger.warning("%s", message)
