"""Content-addressed cache of per-audio model inputs (semantic codes + Whisper rows), filled by
``kimi-audio-lf precompute`` and read by the plugin at collate time, so training never re-encodes audio.

Key = sha256(audio file bytes) + the identity of the audio encoders (their weight files), so a cache can never
serve features of another model. Entries are ``<root>/<identity>/<key[:2]>/<key>.safetensors`` holding ``codes``
(int64, no Kimi offset) and ``rows`` (Whisper rows, [T, 4·d_model]), written atomically.

An entry that cannot be read back (a disk error, a copy cut short) stops training with one line naming the entry
and its audio (``CacheEntryError``); ``precompute`` checks existing entries the same way and rewrites bad ones.
"""

from __future__ import annotations

import functools
import hashlib
import os
from typing import Any

from .textio import DataError

CACHE_ENV = "KIMI_AUDIO_FEATURE_CACHE"
REPAIR_HINT = "re-run `kimi-audio-lf precompute` on the dataset (it rewrites bad entries) or delete the file"


class CacheEntryError(DataError):
    """A feature-cache entry that is corrupt, truncated or not of this package's layout."""


def cache_root() -> str | None:
    from .. import settings

    root = str(settings.get(CACHE_ENV) or "")
    return os.path.abspath(os.path.expanduser(root)) if root else None


def file_digest(path: str, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def encoder_identity(model_dir: str) -> str:
    """A short id of the Whisper + GLM-4-Voice weights next to a checkpoint (size + head/tail bytes of each file)."""
    from ..models.configuration_kimi_audio import WHISPER_SUBDIR, find_semantic_tokenizer

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


@functools.lru_cache(maxsize=8)
def _identity(model_dir: str) -> str:
    return encoder_identity(model_dir)


def entry_path(root: str, identity: str, audio_path: str) -> str:
    key = file_digest(audio_path)
    return os.path.join(root, identity, key[:2], f"{key}.safetensors")


def write_entry(path: str, codes: Any, rows: Any) -> None:
    from safetensors.torch import save_file

    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        save_file({"codes": codes.detach().cpu().long().contiguous(), "rows": rows.detach().cpu().contiguous()}, tmp)
        os.replace(tmp, path)
    except BaseException:  # interrupted or failed: leave no partial file behind
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def entry_problem(path: str) -> str | None:
    """Why the entry at ``path`` cannot be used (reads only its header), or None when it is sound."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as entry:
            keys = set(entry.keys())
            if keys != {"codes", "rows"}:
                return f"it holds {sorted(keys)} instead of codes and rows"
            codes, rows = entry.get_slice("codes").get_shape(), entry.get_slice("rows").get_shape()
    except Exception as err:  # safetensors raises its own SafetensorError (truncated / garbled header), or OSError
        return str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
    if len(codes) != 1 or len(rows) != 2 or codes[0] != rows[0] or codes[0] == 0:
        return f"codes {list(codes)} and rows {list(rows)} do not describe one clip"
    return None


def read_entry(path: str, audio: str) -> dict[str, Any]:
    """The tensors of one entry, or CacheEntryError naming the entry, its audio and the fix."""
    from safetensors.torch import load_file

    problem = entry_problem(path)
    if problem is None:
        try:
            return load_file(path)
        except Exception as err:  # the data region can still be short of what the header promised
            problem = str(err).strip().splitlines()[0][:160] or type(err).__name__
    raise CacheEntryError(f"{path}: unreadable feature-cache entry of {audio} ({problem}); {REPAIR_HINT}")


def lookup_cached_inputs(audios: list[Any], processor: Any) -> dict[str, Any] | None:
    """Cached ``audio_codes`` + ``whisper_features`` for a batch, or None unless every audio is cached."""
    root, model_dir = cache_root(), getattr(processor, "name_or_path", None)
    if root is None or model_dir is None or not all(isinstance(a, str) for a in audios):
        return None
    identity = _identity(model_dir)
    paths = [entry_path(root, identity, audio) for audio in audios]
    if not all(os.path.isfile(p) for p in paths):
        return None
    import torch

    entries = [read_entry(path, audio) for path, audio in zip(paths, audios)]
    return {
        "audio_codes": torch.cat([e["codes"] for e in entries]),
        "whisper_features": torch.cat([e["rows"] for e in entries]),
    }
