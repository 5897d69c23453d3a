"""``kimi-audio-lf cache stats|verify|gc`` through the real CLI: a directory that is not a feature cache is refused
and left untouched, gc removes only the cache's own files and names them (``--dry-run`` names the same and frees
the same bytes), gc refuses beside a running precompute (or waits, ``--wait``), and a torn or missing index fails
``cache verify`` with a line naming the file and the fix."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import held_precompute as held  # noqa: E402
from cache_samples import IDENTITY, fake_clips  # noqa: E402

from llamafactory_kimi_audio.data.features.cache_format import clip_key  # noqa: E402
from llamafactory_kimi_audio.data.features.feature_cache import FeatureCache  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]
CLI = str(Path(sys.executable).with_name("kimi-audio-lf"))


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=900, env=env)


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes (what a command must leave as it was)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def disk_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _fill(root: Path, paths: list[str]) -> None:
    """Entries for ``paths`` written by this process, which then lets go of the cache (a finished writer)."""
    cache = FeatureCache(str(root), IDENTITY)
    for n, path in enumerate(paths):
        generator = torch.Generator().manual_seed(n)
        codes = torch.randint(0, 16384, (5 + n,), generator=generator)
        cache.write(clip_key(path), codes, torch.randn(5 + n, 8, generator=generator).to(torch.bfloat16))
    cache.writer.close()
    cache.lock.release()


def _common_voice_like(folder: Path) -> None:
    for lang in ("en", "de"):
        (folder / lang / "clips").mkdir(parents=True)
        (folder / lang / "clips" / "common_voice_1.mp3").write_bytes(os.urandom(300))
        (folder / lang / "validated.tsv").write_text("path\tsentence\ncommon_voice_1.mp3\thello\n")


def test_a_directory_that_is_not_a_cache_is_refused_and_untouched(tmp_path: Path) -> None:
    user = tmp_path / "corpora"
    _common_voice_like(user)
    (user / "0123456789abcdef").mkdir()  # an identity-like name that holds no shards is not the cache's
    (user / "0123456789abcdef" / "ab").mkdir()
    (user / "0123456789abcdef" / "ab" / "notes.txt").write_text("mine")
    before = tree(user)
    for action in (["gc"], ["gc", "--dry-run"], ["verify"], ["stats"]):
        done = cli("cache", *action, "--cache", str(user))
        assert done.returncode == 2, (action, done.stdout, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and f"{user}: not a feature cache" in lines[0] and "shards/" in lines[0], lines
        assert done.stdout == ""
    assert tree(user) == before


def test_gc_removes_only_its_own_files_names_them_and_dry_run_matches(tmp_path: Path) -> None:
    paths = fake_clips(tmp_path / "audio", 6)
    root = tmp_path / "cache"
    _fill(root, paths)
    _fill(root, paths[:1])  # a second shard that rewrote an entry: the first payload is dead bytes
    (root / "0123456789abcdef" / "ab").mkdir()  # a file gc does not own, even inside an identity folder
    (root / "0123456789abcdef" / "ab" / "ab12.safetensors").write_bytes(b"someone else's")
    _common_voice_like(root)  # the user's folders next to the cache's own
    (root / IDENTITY / "shards" / "README.txt").write_text("a user's note inside the cache")
    os.remove(paths[5])  # an orphan
    first = max((root / IDENTITY / "shards").glob("*.bin"), key=lambda p: p.stat().st_size)  # 6 entries, 2 unusable
    own = {str(p.relative_to(root)) for p in root.rglob("*") if p.suffix in (".bin", ".idx")}
    user_files = {k: v for k, v in tree(root).items() if k not in own and k != f"{IDENTITY}/lock"}

    before = tree(root)
    dry = cli("cache", "gc", "--dry-run", "--cache", str(root))
    assert dry.returncode == 0, dry.stderr
    assert tree(root) == before  # nothing removed
    would = re.findall(r"gc: would remove (\S+\.bin) and (\S+\.idx)", dry.stdout)
    assert would == [(str(first), str(first.with_suffix(".idx")))], dry.stdout  # the fully live shard is kept
    assert "ab12" not in dry.stdout
    (would_free,) = re.findall(r"gc: would free (\d+) bytes", dry.stdout)

    size = disk_bytes(root)
    done = cli("cache", "gc", "--cache", str(root))
    assert done.returncode == 0, done.stderr
    assert re.findall(r"gc: removed (\S+\.bin) and (\S+\.idx)", done.stdout) == would
    (freed,) = re.findall(r"gc: freed (\d+) bytes", done.stdout)
    assert int(freed) == int(would_free) == size - disk_bytes(root) > 0
    assert all(tree(root).get(k) == v for k, v in user_files.items())  # every user file kept, byte for byte
    assert (root / "0123456789abcdef" / "ab" / "ab12.safetensors").read_bytes() == b"someone else's"

    again = cli("cache", "gc", "--cache", str(root))
    assert "nothing to remove" in again.stdout and "gc: freed 0 bytes" in again.stdout, again.stdout
    stats = cli("cache", "stats", "--cache", str(root))
    assert "5 entries" in stats.stdout and "0 orphans" in stats.stdout and "0 B dead bytes" in stats.stdout


def _wavs(folder: Path, count: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    paths = []
    for n in range(count):
        path = folder / f"u{n:02d}.wav"
        sf.write(path, (0.1 * rng.standard_normal(int(16000 * (0.3 + 0.05 * n)))).astype(np.float32), 16000)
        paths.append(str(path))
    return paths


def _precompute(model: str, data: Path, cache: Path) -> list[str]:
    return ["precompute", "--model", model, "--data", str(data), "--cache", str(cache), "--device", "cpu"]


@pytest.mark.slow
def test_gc_refuses_beside_a_running_precompute_and_counts_match(tiny_checkpoint, tmp_path: Path) -> None:
    clips = _wavs(tmp_path / "audio", 6)
    data = held.held_dataset(tmp_path / "data", clips)
    cache = tmp_path / "cache"
    proc = held.start([*_precompute(tiny_checkpoint.path, data, cache), "--no-progress", "--batch-size", "2"])
    held.wait_for_entries(proc, cache, 2)
    before = tree(cache)
    refused = cli("cache", "gc", "--cache", str(cache))
    assert refused.returncode == 4, (refused.stdout, refused.stderr)
    line = refused.stderr.strip()
    assert "\n" not in line and "in use by a running precompute" in line and "--wait" in line, line
    after = tree(cache)  # the run may still append: every file is still there, starting with what it held
    assert all(k in after and after[k].startswith(v) for k, v in before.items())
    waiting = subprocess.Popen(
        [CLI, "cache", "gc", "--wait", "--cache", str(cache)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    first_line = ""
    while "waiting" not in first_line and waiting.poll() is None:  # gc is then queued behind the precompute
        first_line = waiting.stderr.readline()
    assert "in use; waiting for precompute / training to finish" in first_line, first_line
    out, err = held.release(proc)
    gc_out, gc_err = waiting.communicate(timeout=900)
    assert proc.returncode == 2 and "gone0000.wav" in err  # the missing files fail; every clip is kept
    assert waiting.returncode == 0, gc_err
    summary = re.search(r"precompute: (\d+) computed.*?(\d+) failed", out)
    assert summary and int(summary[1]) == 6 and int(summary[2]) == held.HELD_LINES, out
    stats = cli("cache", "stats", "--cache", str(cache))
    assert re.search(r": 6 entries \(0 codes-only\)", stats.stdout), stats.stdout  # what precompute said it wrote
    verify = cli("cache", "verify", "--cache", str(cache))
    assert verify.returncode == 0 and "all sound: 6 entries checked" in verify.stdout, verify.stdout
    assert "entries checked" not in stats.stdout  # verify's answer is its own
    assert "gc:" in gc_out


@pytest.mark.slow
def test_torn_or_missing_index_fails_verify_until_precompute_repairs(tiny_checkpoint, tmp_path: Path) -> None:
    clips = _wavs(tmp_path / "audio", 6)
    data = held.dataset_json(tmp_path / "data.json", clips)
    cache = tmp_path / "cache"
    argv = [*_precompute(tiny_checkpoint.path, data, cache), "--no-progress"]
    assert cli(*argv).returncode == 0
    (index,) = (cache).rglob("*.idx")
    index.write_bytes(index.read_bytes()[: 64 * 4 + 10])  # two records lost, a third torn
    torn = cli("cache", "verify", "--cache", str(cache))
    assert torn.returncode == 2, torn.stdout
    (line,) = [line for line in torn.stdout.splitlines() if line.startswith("  index: ")]
    assert f"{index}: torn index (2 entries of {index.with_suffix('.bin')} have no index record" in line
    assert "a partial record at its end" in line and "re-run `kimi-audio-lf precompute`" in line
    index.unlink()
    missing = cli("cache", "verify", "--cache", str(cache))
    assert missing.returncode == 2 and f"{index}: missing index (6 entries of" in missing.stdout, missing.stdout

    again = cli(*argv)  # the fix the line gives
    assert again.returncode == 0 and "precompute: 6 computed, 0 skipped" in again.stdout, again.stdout
    verify = cli("cache", "verify", "--cache", str(cache))
    assert verify.returncode == 0 and "all sound: 6 entries checked" in verify.stdout, verify.stdout
    size = disk_bytes(cache)
    gc = cli("cache", "gc", "--cache", str(cache))
    (freed,) = re.findall(r"gc: freed (\d+) bytes", gc.stdout)
    assert f"gc: removed {index.with_suffix('.bin')}" in gc.stdout and int(freed) == size - disk_bytes(cache) > 0
    assert cli("cache", "verify", "--cache", str(cache)).returncode == 0


@pytest.mark.slow
def test_entries_removed_under_a_running_precompute_are_reported(tiny_checkpoint, tmp_path: Path) -> None:
    clips = _wavs(tmp_path / "audio", 4)
    cache = tmp_path / "cache"
    argv = _precompute(tiny_checkpoint.path, held.held_dataset(tmp_path / "data", clips), cache)
    proc = held.start([*argv, "--no-progress", "--batch-size", "2"])
    held.wait_for_entries(proc, cache, 2)
    for index in cache.rglob("*.idx"):
        index.unlink()  # what a careless `rm` (or an old gc) does under a running precompute
    out, _ = held.release(proc)
    assert "precompute: 4 computed" in out, out
    assert "precompute: 4 of those entries are not in the cache's index any more" in out, out
    verify = cli("cache", "verify", "--cache", str(cache))
    assert verify.returncode == 2 and "missing index (4 entries of" in verify.stdout, verify.stdout


@pytest.mark.slow
def test_precompute_waits_for_a_running_gc_with_one_line(tiny_checkpoint, tmp_path: Path) -> None:
    from llamafactory_kimi_audio.data.features.cache_lock import CacheLock
    from llamafactory_kimi_audio.data.features.feature_cache import encoder_identity

    clips = _wavs(tmp_path / "audio", 3)
    cache = tmp_path / "cache"
    gc_lock = CacheLock(str(cache), encoder_identity(tiny_checkpoint.path)).exclusive(wait=False)  # gc "running"
    argv = _precompute(tiny_checkpoint.path, held.dataset_json(tmp_path / "data.json", clips), cache)
    proc = held.start([*argv, "--no-progress"])
    line = ""
    while "waiting" not in line and proc.poll() is None:  # lines before it (warnings) are not the point
        line = proc.stderr.readline()
    assert "waiting for `kimi-audio-lf cache gc` to finish" in line and str(cache) in line, line
    assert held.indexed(cache) == 0
    gc_lock.release()
    out, err = held.release(proc)
    assert proc.returncode == 0 and "precompute: 3 computed" in out, err[-2000:]


def test_a_payload_cut_off_from_its_record_by_a_kill_is_not_a_torn_index(tmp_path: Path) -> None:
    """A writer killed between a payload and its record leaves one unindexed payload at the end of its shard: the
    cache is sound (that clip is encoded again). Two such payloads can only come from a torn index."""
    from llamafactory_kimi_audio.data.features.cache_format import encode_payload

    paths = fake_clips(tmp_path / "audio", 4)
    root = tmp_path / "cache"
    _fill(root, paths[:2])
    (shard,) = (root / IDENTITY / "shards").glob("*.bin")
    for n, path in enumerate(paths[2:]):
        with open(shard, "ab") as f:  # the payload the killed writer got out
            f.write(encode_payload(clip_key(path), torch.arange(4), torch.zeros(4, 8, dtype=torch.bfloat16))[0])
        verify = cli("cache", "verify", "--cache", str(root))
        if n == 0:
            assert verify.returncode == 0 and "all sound: 2 entries checked" in verify.stdout, verify.stdout
        else:
            expected = f"{shard.with_suffix('.idx')}: torn index (2 entries of {shard} have no index record)"
            assert verify.returncode == 2 and expected in verify.stdout, verify.stdout
