"""The feature cache's storage layer (no model): round trips bit for bit in every stored dtype, keys that follow
the audio file, a bounded file count, concurrent writers in several processes, a writer killed with SIGKILL, a
full or unwritable disk, and ``kimi-audio-lf cache stats|verify|gc``."""

from __future__ import annotations

import errno
import multiprocessing
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cache_samples import IDENTITY, fake_clips, fake_features

from llamafactory_kimi_audio.cli import main
from llamafactory_kimi_audio.data.features import cache_store
from llamafactory_kimi_audio.data.features.cache_format import clip_key
from llamafactory_kimi_audio.data.features.cache_store import CacheWriteError
from llamafactory_kimi_audio.data.features.feature_cache import CacheEntryError, FeatureCache


def _read(cache: FeatureCache, path: str):
    at = cache.find(clip_key(path))
    return None if at is None else cache.read(at, path)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, None])
def test_round_trip_bit_for_bit(tmp_path: Path, dtype) -> None:
    paths = fake_clips(tmp_path / "audio", 5)
    cache = FeatureCache(str(tmp_path / "cache"), IDENTITY)
    for path in paths:
        codes, rows = fake_features(path, dtype or torch.float32)
        cache.write(clip_key(path), codes, rows if dtype else None)
    fresh = FeatureCache(str(tmp_path / "cache"), IDENTITY)
    for path in paths:
        codes, rows = fake_features(path, dtype or torch.float32)
        got_codes, got_rows = _read(fresh, path)
        assert got_codes.dtype == torch.int64 and torch.equal(got_codes, codes)
        if dtype is None:
            assert got_rows is None
        else:
            assert got_rows.dtype == dtype and torch.equal(got_rows.view(torch.uint8), rows.view(torch.uint8))


def test_file_count_is_bounded(tmp_path: Path) -> None:
    paths = fake_clips(tmp_path / "audio", 60)
    cache = FeatureCache(str(tmp_path / "cache"), IDENTITY)
    for path in paths:
        cache.write(clip_key(path), *fake_features(path))
    assert sorted(p.suffix for p in Path(cache.folder).iterdir()) == [".bin", ".idx"]
    cache.writer.close()
    small = FeatureCache(str(tmp_path / "small"), IDENTITY)
    small.writer.max_bytes = 2000  # a new shard when the next payload would pass 2 kB
    for path in paths:
        small.write(clip_key(path), *fake_features(path))
    files = list(Path(small.folder).iterdir())
    assert 2 < len(files) < 60 and all(p.stat().st_size <= 2000 for p in files if p.suffix == ".bin")
    assert len(FeatureCache(str(tmp_path / "small"), IDENTITY).index) == 60


def test_changed_audio_never_gets_stale_features(tmp_path: Path) -> None:
    (path,) = fake_clips(tmp_path / "audio", 1)
    cache = FeatureCache(str(tmp_path / "cache"), IDENTITY)
    cache.write(clip_key(path), *fake_features(path))
    assert _read(cache, path) is not None
    Path(path).write_bytes(os.urandom(500))  # re-recorded: new size and mtime
    assert cache.find(clip_key(path)) is None
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))  # same size, touched
    assert cache.find(clip_key(path)) is None


def _writer_process(root: str, paths: list[str]) -> None:
    cache = FeatureCache(root, IDENTITY)
    for path in paths:
        cache.write(clip_key(path), *fake_features(path))


def test_concurrent_writers_in_several_processes(tmp_path: Path) -> None:
    paths = fake_clips(tmp_path / "audio", 40)
    root = str(tmp_path / "cache")
    context = multiprocessing.get_context("spawn")
    # four processes, overlapping halves (ranks that both miss a clip write it twice): nothing may break
    workers = [context.Process(target=_writer_process, args=(root, paths[n * 10 : n * 10 + 20])) for n in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=600)
        assert worker.exitcode == 0
    cache = FeatureCache(root, IDENTITY)
    assert len(cache.index) == 40 and len(list(Path(cache.folder).glob("*.bin"))) == 4
    for path in paths:
        codes, rows = _read(cache, path)
        assert torch.equal(codes, fake_features(path)[0]) and torch.equal(rows, fake_features(path)[1])


KILLED_WRITER = """
import sys, time, torch
sys.path.insert(0, sys.argv[3])
from tests.cache_samples import fake_features, IDENTITY
from llamafactory_kimi_audio.data.features.cache_format import clip_key
from llamafactory_kimi_audio.data.features.feature_cache import FeatureCache
cache = FeatureCache(sys.argv[1], IDENTITY)
for path in sys.argv[2].split(","):
    cache.write(clip_key(path), *fake_features(path))
    print("written", flush=True)
    time.sleep(0.05)
"""


def test_writer_killed_with_sigkill_leaves_no_bad_entry(tmp_path: Path) -> None:
    paths = fake_clips(tmp_path / "audio", 200)
    root = str(tmp_path / "cache")
    repo = str(Path(__file__).resolve().parents[3])
    args = [sys.executable, "-c", KILLED_WRITER, root, ",".join(paths), repo]
    child = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, cwd=repo)
    for _ in range(5):
        assert child.stdout.readline().strip() == "written"
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=600)
    cache = FeatureCache(root, IDENTITY)
    written = [path for path in paths if cache.find(clip_key(path)) is not None]
    assert 5 <= len(written) < len(paths)
    for path in written:  # every indexed entry reads back whole
        assert torch.equal(_read(cache, path)[0], fake_features(path)[0])
    for path in paths:  # the re-run completes the set
        if cache.find(clip_key(path)) is None:
            cache.write(clip_key(path), *fake_features(path))
    again = FeatureCache(root, IDENTITY)
    assert len(again.index) == len(paths) and all(_read(again, p) is not None for p in paths)


def test_full_disk_is_one_line_and_leaves_nothing_valid(tmp_path: Path, monkeypatch) -> None:
    paths = fake_clips(tmp_path / "audio", 3)
    cache = FeatureCache(str(tmp_path / "cache"), IDENTITY)
    cache.write(clip_key(paths[0]), *fake_features(paths[0]))
    real_write = os.write

    def full(fd, data):
        real_write(fd, bytes(data)[: len(data) // 3])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache_store.os, "write", full)
    with pytest.raises(CacheWriteError) as info:
        cache.write(clip_key(paths[1]), *fake_features(paths[1]))
    monkeypatch.setattr(cache_store.os, "write", real_write)
    message = str(info.value)
    assert "\n" not in message and "the disk is full" in message and cache.folder in message
    fresh = FeatureCache(str(tmp_path / "cache"), IDENTITY)
    assert _read(fresh, paths[0]) is not None and fresh.find(clip_key(paths[1])) is None
    cache.write(clip_key(paths[2]), *fake_features(paths[2]))  # the next write starts a new shard and works
    assert _read(FeatureCache(str(tmp_path / "cache"), IDENTITY), paths[2]) is not None


def test_unwritable_cache_dir_is_one_line(tmp_path: Path) -> None:
    (path,) = fake_clips(tmp_path / "audio", 1)
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the cache folder should be")
    with pytest.raises(CacheWriteError) as info:
        FeatureCache(str(blocker), IDENTITY).write(clip_key(path), *fake_features(path))
    assert "\n" not in str(info.value) and "cannot write" in str(info.value) and str(blocker) in str(info.value)


def test_damaged_payload_is_named_and_damaged_index_record_ignored(tmp_path: Path) -> None:
    paths = fake_clips(tmp_path / "audio", 3)
    cache = FeatureCache(str(tmp_path / "cache"), IDENTITY)
    for path in paths:
        cache.write(clip_key(path), *fake_features(path))
    shard = next(Path(cache.folder).glob("*.bin"))
    index = next(Path(cache.folder).glob("*.idx"))
    with open(shard, "r+b") as fh:  # a flipped byte in the first payload's tensors
        fh.seek(200)
        byte = fh.read(1)
        fh.seek(200)
        fh.write(bytes([byte[0] ^ 0xFF]))
    with open(index, "r+b") as fh:  # the third record garbled
        fh.seek(2 * 64 + 20)
        fh.write(b"\x00\x01")
    fresh = FeatureCache(str(tmp_path / "cache"), IDENTITY)
    with pytest.raises(CacheEntryError, match=rf"^{paths[0]}: damaged feature-cache entry in {shard} at byte 0 "):
        _read(fresh, paths[0])
    assert _read(fresh, paths[1]) is not None and fresh.find(clip_key(paths[2])) is None


def test_cache_cli_stats_verify_gc(tmp_path: Path, capsys) -> None:
    paths = fake_clips(tmp_path / "audio", 6)
    root = tmp_path / "cache"
    cache = FeatureCache(str(root), IDENTITY)
    for path in paths:
        cache.write(clip_key(path), *fake_features(path))
    cache.write(clip_key(paths[0]), *fake_features(paths[0]))  # rewritten once: the first payload is dead bytes
    cache.writer.close()
    cache.lock.release()  # the writer is done: gc may take the cache
    stray = root / IDENTITY / "ab" / "ab12.safetensors"  # not the cache's own file: never read, never removed
    stray.parent.mkdir()
    stray.write_bytes(b"someone else's")
    os.remove(paths[5])  # an orphan
    assert main(["cache", "stats", "--cache", str(root)]) == 0
    out = capsys.readouterr().out
    assert "6 entries (0 codes-only)" in out and "1 orphans" in out and f"orphan: {paths[5]}" in out
    assert "per audio hour" in out and "ab12" not in out
    assert main(["cache", "verify", "--cache", str(root)]) == 0
    assert main(["cache", "gc", "--cache", str(root)]) == 0
    assert "gc: freed" in capsys.readouterr().out and stray.read_bytes() == b"someone else's"
    fresh = FeatureCache(str(root), IDENTITY)
    assert len(fresh.index) == 5 and all(torch.equal(_read(fresh, p)[1], fake_features(p)[1]) for p in paths[:5])
    shard = next(Path(fresh.folder).glob("*.bin"))
    with open(shard, "r+b") as fh:
        fh.seek(os.path.getsize(shard) - 3)
        tail = fh.read(3)
        fh.seek(os.path.getsize(shard) - 3)
        fh.write(bytes(b ^ 0xFF for b in tail))
    assert main(["cache", "verify", "--cache", str(root)]) == 2
    out = capsys.readouterr().out
    assert "damaged:" in out and "re-run `kimi-audio-lf precompute`" in out
