"""Precompute split over ranks: ``--shard K/N`` by hand and ``torchrun --nproc-per-node 2`` (gloo, CPU) each give,
in union, exactly the entries of a one-process run (same keys, same tensors bit for bit); shards are balanced and
deterministic, and a re-run resumes (nothing recomputed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import held_precompute as held  # noqa: E402

from llamafactory_kimi_audio.cli import main
from llamafactory_kimi_audio.data.features.cache_format import clip_key
from llamafactory_kimi_audio.data.features.feature_cache import FeatureCache, encoder_identity
from llamafactory_kimi_audio.data.features.precompute_plan import parse_shard, shard_paths
from llamafactory_kimi_audio.errors import InputError

TORCHRUN = str(Path(sys.executable).with_name("torchrun"))


def _write_corpus(folder: Path, seconds: list[float], seed: int) -> tuple[Path, list[str]]:
    """Noise clips of the given durations and a sharegpt dataset ``asr.json`` naming them."""
    rng = np.random.default_rng(seed)
    paths = []
    for n, length in enumerate(seconds):
        path = folder / f"u{n:03d}.wav"
        sf.write(path, (0.1 * rng.standard_normal(int(16000 * length))).astype(np.float32), 16000)
        paths.append(str(path))
    rows = [
        {"messages": [{"role": "user", "content": "<audio>"}, {"role": "assistant", "content": "x"}], "audios": [p]}
        for p in paths
    ]
    (folder / "asr.json").write_text(json.dumps(rows))
    return folder / "asr.json", paths


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list[str]]:
    return _write_corpus(tmp_path_factory.mktemp("corpus"), [0.4 + 0.3 * n for n in range(7)], seed=0)


def _argv(model: str, data: Path, cache: Path, *extra: str) -> list[str]:
    where = ["--model", model, "--data", str(data), "--cache", str(cache)]
    return ["precompute", *where, "--device", "cpu", "--no-progress", *extra]


def _entries(root: Path, identity: str, paths: list[str]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    cache = FeatureCache(str(root), identity)
    assert len(cache.index) == len(paths)
    return {p: cache.read(cache.find(clip_key(p)), p) for p in paths}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k][0], b[k][0]) and torch.equal(a[k][1], b[k][1]) for k in a)


def test_shards_are_balanced_deterministic_and_cover_everything(corpus) -> None:
    _, paths = corpus
    parts = [shard_paths(list(reversed(paths)), (k, 3))[1] for k in range(3)]
    assert sorted(p for part in parts for p in part) == sorted(paths)
    assert parts == [shard_paths(paths, (k, 3))[1] for k in range(3)]  # independent of the dataset's row order
    sizes = [sum(os.path.getsize(p) for p in part) for part in parts]
    assert max(sizes) - min(sizes) <= max(os.path.getsize(p) for p in paths)
    assert parse_shard("1/4") == (1, 4)
    for bad in ("4/4", "x", "-1/2", "1/0"):
        with pytest.raises(InputError, match="--shard"):
            parse_shard(bad)


def test_shard_flag_union_equals_one_process(corpus, tiny_checkpoint, tmp_path: Path, capsys) -> None:
    data, paths = corpus
    model = tiny_checkpoint.path
    assert main(_argv(model, data, tmp_path / "one")) == 0
    for k in range(2):
        assert main(_argv(model, data, tmp_path / "split", "--shard", f"{k}/2")) == 0
        assert f"shard {k}/2: " in capsys.readouterr().out
    identity = encoder_identity(model)
    assert _same(_entries(tmp_path / "one", identity, paths), _entries(tmp_path / "split", identity, paths))
    assert main(_argv(model, data, tmp_path / "split")) == 0  # resumable: all cached
    assert "0 computed, 7 skipped" in capsys.readouterr().out


def test_torchrun_two_gloo_ranks_equal_one_process(corpus, tiny_checkpoint, tmp_path: Path) -> None:
    data, paths = corpus
    model = tiny_checkpoint.path
    assert main(_argv(model, data, tmp_path / "one")) == 0
    launcher = [TORCHRUN, "--nproc-per-node", "2", "--master-port", "29531", "-m", "llamafactory_kimi_audio.cli"]
    command = [*launcher, *_argv(model, data, tmp_path / "ddp")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    code, out = _run_on_a_terminal(command, env)
    assert code == 0, out[-4000:]
    # the ranks' summaries: whole lines, in rank order, never glued together on the shared terminal
    summaries = [line for line in out.splitlines() if " computed, " in line]
    assert [line.split(":")[1] for line in summaries] == [" shard 0/2", " shard 1/2"], out[-4000:]
    assert all(line.startswith("precompute: shard ") for line in summaries), summaries
    hints = [line for line in out.splitlines() if "use it: export" in line]
    assert hints == [f"  use it: export KIMI_AUDIO_FEATURE_CACHE={tmp_path / 'ddp'}"] * 2, out[-4000:]
    identity = encoder_identity(model)
    assert _same(_entries(tmp_path / "one", identity, paths), _entries(tmp_path / "ddp", identity, paths))
    shards = list((tmp_path / "ddp" / identity / "shards").glob("*.bin"))
    assert len(shards) == 2  # one per rank


def _run_on_a_terminal(command: list[str], env: dict[str, str], timeout: float = 900) -> tuple[int, str]:
    """Exit status and output of ``command`` with stdout and stderr on one pseudo-terminal, as in a user's shell
    (line-buffered: each process's writes reach the terminal as they happen)."""
    import pty
    import select
    import time

    master, slave = pty.openpty()
    proc = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        if select.select([master], [], [], 1.0)[0]:
            try:
                data = os.read(master, 1 << 16)
            except OSError:  # EIO: every process holding the terminal has exited
                break
            if not data:
                break
            chunks.append(data)
    else:
        proc.kill()
    os.close(master)
    return proc.wait(timeout=60), b"".join(chunks).decode(errors="replace").replace("\r\n", "\n")


# ----------------------------------------------------------------------------------- interrupted runs, bad cache dir
@pytest.fixture(scope="module")
def many(tmp_path_factory) -> tuple[Path, list[str]]:
    lengths = np.random.default_rng(1).uniform(0.2, 0.6, 48).tolist()
    return _write_corpus(tmp_path_factory.mktemp("many"), lengths, seed=1)


@pytest.mark.slow
@pytest.mark.parametrize("signal_name", ["SIGKILL", "SIGINT"])
def test_interrupted_precompute_resumes_with_no_bad_entry(signal_name, many, tiny_checkpoint, tmp_path) -> None:
    """The run is held after its entries (a full stderr pipe, ``held_precompute.py``), so the signal always lands
    mid-run; the child takes SIGINT by default even when pytest was started with SIGINT ignored."""
    import signal

    _, paths = many
    cache = tmp_path / "cache"
    argv = _argv(tiny_checkpoint.path, held.held_dataset(tmp_path / "held", paths), cache, "--batch-size", "4")
    proc = held.start(argv)
    held.wait_for_entries(proc, cache, 8)
    os.kill(proc.pid, getattr(signal, signal_name))
    out, err = held.release(proc)
    done = held.indexed(cache)
    assert 8 <= done <= len(paths) and "precompute:" not in out, (done, out, err[-2000:])  # no summary: not finished
    if signal_name == "SIGINT":
        assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err, err[-2000:]
    else:
        assert proc.returncode == -signal.SIGKILL
    assert main(["cache", "verify", "--cache", str(cache)]) == 0  # every indexed entry reads back
    resumed = _argv(tiny_checkpoint.path, many[0], cache, "--batch-size", "4")
    assert main(resumed) == 0
    identity = encoder_identity(tiny_checkpoint.path)
    entries = FeatureCache(str(cache), identity)
    assert len(entries.index) == len(paths) and all(entries.find(clip_key(p)) is not None for p in paths)
    entries.lock.release()
    assert main(["cache", "verify", "--cache", str(cache)]) == 0


def test_unwritable_cache_dir_is_one_line_exit_4(corpus, tiny_checkpoint, tmp_path: Path, capsys) -> None:
    data, _ = corpus
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    argv = _argv(tiny_checkpoint.path, data, blocker / "c")
    assert main(argv) == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot write" in err[0] and "nothing partial was kept" in err[0], err


def test_progress_bar_on_rank_0_only_with_audio_hours(corpus, tiny_checkpoint, tmp_path: Path, capsys) -> None:
    from llamafactory_kimi_audio.data.features.precompute import PrecomputeOptions, precompute

    _, paths = corpus
    for shard in ((1, 2), (0, 2)):
        options = PrecomputeOptions(cache_dir=str(tmp_path), progress=True, shard=shard)
        precompute(tiny_checkpoint.path, paths, options)
        err = capsys.readouterr().err
        if shard[0]:
            assert "precompute" not in err  # only rank 0 draws
        else:
            assert "precompute (rank 0 of 2)" in err and "4/4" in err and " of ~" in err and "audio h" in err
