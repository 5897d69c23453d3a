"""Stand-ins for the feature-cache tests that need no model: clip files with unique bytes (the store keys files by
their bytes and never decodes them), deterministic features per clip, and the training log's cache summary."""

from __future__ import annotations

import os
import re
from pathlib import Path

import soundfile as sf
import torch

IDENTITY = "0123456789abcdef"  # an encoder id: the cache's folder name
DIM = 20
END_LINE = re.compile(r"feature cache, rank 0, end: (\d+) hits, (\d+) misses, (\d+) writes")


def fake_clips(folder: Path, count: int, prefix: str = "clip") -> list[str]:
    """``count`` files of distinct random bytes under ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n in range(count):
        path = folder / f"{prefix}{n:03d}.wav"
        path.write_bytes(os.urandom(100 + n))  # the store never reads audio: any bytes give a key
        paths.append(str(path))
    return paths


def fake_features(path: str, dtype: torch.dtype = torch.bfloat16) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic per-path codes (full int16-safe range) and rows."""
    seed = sum(path.encode()) + os.path.getsize(path)
    generator = torch.Generator().manual_seed(seed)
    frames = 3 + seed % 17
    codes = torch.randint(0, 16384, (frames,), generator=generator)
    rows = (torch.randn(frames, DIM, generator=generator) * 100).to(dtype)
    return codes, rows


def cache_counts(output: str) -> tuple[int, int, int]:
    """(hits, misses, writes) of the one feature-cache summary a training run logs on rank 0."""
    lines = END_LINE.findall(output)
    assert len(lines) == 1, output[-4000:]
    assert len(re.findall(r"feature cache, rank 0, start", output)) == 1
    return tuple(int(n) for n in lines[0])


def write_nan_entry(root: Path, model_dir: str, audio: Path) -> None:
    """A feature-cache entry with NaN Whisper rows for ``audio``, as a precompute before this check wrote them."""
    from llamafactory_kimi_audio.data.features.cache_format import clip_key
    from llamafactory_kimi_audio.data.features.feature_cache import FeatureCache, encoder_identity
    from llamafactory_kimi_audio.models.processing_kimi_audio import num_audio_tokens

    frames = num_audio_tokens(sf.info(str(audio)).frames)
    store = FeatureCache(str(root), encoder_identity(model_dir))
    store.write(clip_key(str(audio)), torch.zeros(frames, dtype=torch.int64), torch.full((frames, 8), float("nan")))
    store.writer.close()
