"""The feature cache through the stock ``llamafactory-cli train`` (CPU, tiny checkpoint, DataLoader workers as in the
recipes): write-through (epoch 1 stores what the model encodes, epoch 2 only reads, entries equal ``precompute``'s
bit for bit), one start and one end line per rank, ``KIMI_AUDIO_CACHE_STRICT`` naming the first uncached clip, and
``streaming: true``."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest
import torch
from cache_samples import END_LINE, cache_counts
from lf_runs import COMMON, check_ok, run_cli, run_cli_each, train_config

from llamafactory_kimi_audio.data.features.cache_format import clip_key
from llamafactory_kimi_audio.data.features.feature_cache import FeatureCache, encoder_identity
from llamafactory_kimi_audio.data.features.precompute import PrecomputeOptions, precompute

pytestmark = pytest.mark.slow


def _audios(dataset: Path) -> list[str]:
    from llamafactory_kimi_audio.data.features.dataset_audio import collect_audio_paths, dataset_files

    return collect_audio_paths(dataset_files(str(dataset), ["asr_train"])).paths


@pytest.fixture(scope="module")
def write_through(ckpt, dataset, workdir) -> tuple[Path, str]:
    cache = workdir / "cache"
    config = train_config(
        ckpt, dataset, workdir / "wt", finetuning_type="lora", lora_target="all", max_steps=8, dataloader_num_workers=2
    )  # 8 clips, batch 2: two epochs
    rc, output = run_cli("train", config, workdir, "write_through", env={"KIMI_AUDIO_FEATURE_CACHE": str(cache)})
    check_ok(rc, output)
    return cache, output


def test_epoch_two_never_re_encodes(write_through, dataset) -> None:
    _, output = write_through
    assert cache_counts(output) == (8, 8, 8)  # epoch 1: 8 misses stored; epoch 2: 8 hits


def test_written_entries_equal_precompute(write_through, ckpt, dataset, workdir) -> None:
    cache, _ = write_through
    audios = _audios(dataset)
    reference = precompute(ckpt, audios, PrecomputeOptions(cache_dir=str(workdir / "pre"), progress=False))
    assert reference.computed == len(audios) == 8
    written = FeatureCache(str(cache), encoder_identity(ckpt))
    expected = FeatureCache(str(workdir / "pre"), reference.identity)
    for audio in audios:
        got = written.read(written.find(clip_key(audio)), audio)
        want = expected.read(expected.find(clip_key(audio)), audio)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@pytest.fixture(scope="module")
def cache_reads(write_through, ckpt, dataset, workdir) -> dict[str, tuple[int, str]]:
    """name -> (exit code, log) of the runs that read the write-through cache (``strict_miss``: an empty one), each
    its own ``llamafactory-cli train``, two at a time."""
    cache, _ = write_through
    lora = {"finetuning_type": "lora", "lora_target": "all"}
    configs = {
        "strict_ok": train_config(ckpt, dataset, workdir / "strict", max_steps=2, **lora),
        "strict_miss": train_config(ckpt, dataset, workdir / "strict_miss", max_steps=2, **lora),
        "streaming": train_config(
            ckpt,
            dataset,
            workdir / "stream",
            max_steps=3,
            streaming=True,
            dataloader_num_workers=2,  # LLaMA-Factory shards local files into this many parts (0 parts: no data)
            **lora,
        ),
        "predict_cached": {
            **COMMON,
            "model_name_or_path": ckpt,
            "adapter_name_or_path": str(workdir / "wt"),
            "finetuning_type": "lora",
            "do_predict": True,
            "predict_with_generate": True,
            "eval_dataset": "asr_train",  # cached by the write-through run
            "dataset_dir": str(dataset),
            "output_dir": str(workdir / "predict"),
            "per_device_eval_batch_size": 2,
            "max_new_tokens": 4,
        },
    }
    strict = {"KIMI_AUDIO_CACHE_STRICT": "1"}  # strict: every clip from the cache
    envs = {
        "strict_ok": {"KIMI_AUDIO_FEATURE_CACHE": str(cache), **strict},
        "strict_miss": {"KIMI_AUDIO_FEATURE_CACHE": str(workdir / "empty_cache"), **strict},
        "streaming": {"KIMI_AUDIO_FEATURE_CACHE": str(cache)},
        "predict_cached": {"KIMI_AUDIO_FEATURE_CACHE": str(cache), **strict},
    }
    return run_cli_each("train", configs, workdir, envs)


def test_strict_names_the_first_uncached_clip(cache_reads) -> None:
    rc, output = cache_reads["strict_ok"]
    check_ok(rc, output)
    assert cache_counts(output) == (4, 0, 0)
    rc, output = cache_reads["strict_miss"]
    assert rc == 2, output[-3000:]
    errors = re.findall(r"llamafactory-cli: (.*)", output)  # the one-line error (after a progress bar's \r)
    assert len(errors) == 1 and "not in the feature cache" in errors[0], output[-3000:]
    assert "KIMI_AUDIO_CACHE_STRICT=1" in errors[0] and ".wav: " in errors[0] and "Traceback" not in output
    assert END_LINE.search(output.strip().splitlines()[-1])  # the rank's end line comes at exit


def test_streaming_dataset_reads_the_cache(cache_reads) -> None:
    rc, output = cache_reads["streaming"]
    check_ok(rc, output)
    hits, misses, writes = cache_counts(output)
    assert hits == 6 and misses == writes == 0


def test_predict_with_generate_reads_the_cache(cache_reads, workdir) -> None:
    check_ok(*cache_reads["predict_cached"])
    assert (workdir / "predict" / "generated_predictions.jsonl").read_text().count("\n") == 8


def test_two_ddp_ranks_write_through_one_cache(ckpt, dataset, workdir) -> None:
    from lf_runs import free_port

    cache = workdir / "ddp_cache"
    config = train_config(
        ckpt,
        dataset,
        workdir / "ddp",
        finetuning_type="lora",
        lora_target="all",
        max_steps=4,
        dataloader_num_workers=1,
        ddp_backend="gloo",
        ddp_timeout=600,
    )
    env = {
        "KIMI_AUDIO_FEATURE_CACHE": str(cache),
        "FORCE_TORCHRUN": "1",
        "NPROC_PER_NODE": "2",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",  # torchrun
    }
    rc, output = run_cli("train", config, workdir, "ddp_write_through", env=env)
    check_ok(rc, output)  # 8 clips, 2 ranks x batch 2: 2 steps per epoch, 2 epochs
    ends = re.findall(r"feature cache, rank (\d), end: (\d+) hits, (\d+) misses, (\d+) writes", output)
    assert sorted(rank for rank, *_ in ends) == ["0", "1"], output[-4000:]
    assert [sum(int(end[i]) for end in ends) for i in (1, 2, 3)] == [8, 8, 8]
    written = FeatureCache(str(cache), encoder_identity(ckpt))
    assert len(written.index) == 8 and len(list(Path(written.folder).glob("*.bin"))) == 2  # one shard per rank
    assert all(written.read(at, "clip")[1] is not None for at in written.index)
