"""``llamafactory-cli train`` on the tiny checkpoint never trains a NaN model: a clip with NaN samples that bypassed
``convert`` is refused by name when read, and a step whose loss or gradients are not finite (here: a learning rate
typed as 1e3 instead of 1e-3) stops the run with one line naming the batch's clips, before any checkpoint of it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from lf_runs import make_asr_dataset, run_cli_each, train_config, variant_dataset

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dataset(workdir) -> Path:
    return make_asr_dataset(workdir, n_test=1)


def last_line(output: str) -> str:
    """The run's one line (a feature cache's exit summary may follow it)."""
    assert "Traceback" not in output and "DataLoader worker" not in output, output[-3000:]
    return next(line for line in reversed(output.splitlines()) if line.startswith("llamafactory-cli: "))


def nan_clip_case(ckpt: str, dataset: Path, workdir: Path) -> tuple[dict, dict]:
    """(recipe, env) of a run on ``asr_nan``: its first clip has 10 NaN samples and never went through convert."""
    nan = dataset / "nan.wav"
    wave = (0.1 * np.sin(np.arange(16000) / 9.0)).astype(np.float32)
    wave[4000:4010] = np.nan
    sf.write(nan, wave, 16000, subtype="FLOAT")
    variant_dataset(dataset, "asr_nan", lambda row: row.update(audios=[str(nan)]))
    config = train_config(ckpt, dataset, workdir / "nan", finetuning_type="lora")
    return {**config, "dataset": "asr_nan", "dataloader_num_workers": 1}, {}


def diverging_case(ckpt: str, dataset: Path, workdir: Path) -> tuple[dict, dict]:
    """(recipe, env) of a full fine-tune whose learning rate is a typo for 1e-3."""
    config = train_config(
        ckpt,
        dataset,
        workdir / "diverged",
        finetuning_type="full",
        learning_rate=1.0e3,  # a typo for 1e-3: the weights explode after the first step
        max_steps=4,
        logging_steps=100,  # checked anyway before each save and at the last step
        save_strategy="steps",
        save_steps=1,
        per_device_train_batch_size=2,
        dataloader_num_workers=1,
    )
    return config, {}


def nan_cached_case(ckpt: str, dataset: Path, workdir: Path) -> tuple[dict, dict]:
    """(recipe, env) of a run whose every clip is one cached entry with non-finite Whisper rows (written by a
    precompute from before NaN audio was refused): the collator reads the entry, not the audio."""
    from cache_samples import write_nan_entry

    nan = dataset / "nan_cached.wav"
    wave = (0.1 * np.sin(np.arange(16000) / 9.0)).astype(np.float32)
    wave[100] = np.inf
    sf.write(nan, wave, 16000, subtype="FLOAT")
    write_nan_entry(workdir / "cache", ckpt, nan)
    variant_dataset(dataset, "asr_nan_cached", lambda row: row.update(audios=[str(nan)]))
    records = json.loads((dataset / "asr_train.json").read_text(encoding="utf-8"))
    for record in records:
        record["audios"] = [str(nan)]
    (dataset / "asr_nan_cached.json").write_text(json.dumps(records), encoding="utf-8")
    config = train_config(ckpt, dataset, workdir / "cached", finetuning_type="lora")
    return {**config, "dataset": "asr_nan_cached"}, {"KIMI_AUDIO_FEATURE_CACHE": str(workdir / "cache")}


@pytest.fixture(scope="module")
def runs(tiny_checkpoint, dataset, workdir) -> dict[str, tuple[int, str]]:
    """name -> (exit code, log) of the three ``llamafactory-cli train`` runs: the datasets are written one after
    another (each edits dataset_info.json), then the runs go two at a time."""
    cases = {
        name: case(tiny_checkpoint.path, dataset, workdir)
        for name, case in (("nan", nan_clip_case), ("diverged", diverging_case), ("nan_cached", nan_cached_case))
    }
    configs = {name: config for name, (config, _) in cases.items()}
    return run_cli_each("train", configs, workdir, {name: env for name, (_, env) in cases.items()})


def test_a_nan_clip_that_bypassed_convert_is_refused_by_name(runs, dataset, workdir):
    nan = dataset / "nan.wav"
    rc, output = runs["nan"]
    assert rc == 2, output[-3000:]
    line = last_line(output)
    assert line.startswith(f"llamafactory-cli: {nan}: 10 of 16000 samples are not finite (NaN/inf)"), line
    assert (
        not list((workdir / "nan").glob("checkpoint-*"))
        and not (workdir / "nan" / "adapter_model.safetensors").exists()
    )


def test_a_non_finite_step_stops_the_run_naming_its_clips(runs, dataset, workdir):
    output_dir = workdir / "diverged"
    rc, output = runs["diverged"]
    assert rc == 2, output[-3000:]
    line = last_line(output)
    step = int(line.split("training stopped at step ")[1].split(":")[0])
    assert line.startswith(f"llamafactory-cli: training stopped at step {step}: the "), line
    assert "is nan" in line or "is inf" in line, line
    rows = json.loads((dataset / "asr_train.json").read_text(encoding="utf-8"))
    named = line.split("on the batch of clips ")[1].split(", which would")[0].split(", ")
    audios = {str((dataset / row["audios"][0]).resolve()) for row in rows} | {row["audios"][0] for row in rows}
    assert len(named) == 2 and all(clip in audios for clip in named), line
    # checkpoints only of the finite steps before it; no final model
    assert sorted(p.name for p in output_dir.glob("checkpoint-*")) == [f"checkpoint-{s}" for s in range(1, step)]
    assert not (output_dir / "model.safetensors").exists()


def test_a_cached_entry_with_nan_rows_is_refused_by_name(runs, dataset):
    """An entry that a precompute wrote before NaN audio was refused: training reads it, never trains on it."""
    nan = dataset / "nan_cached.wav"
    rc, output = runs["nan_cached"]
    assert rc == 2, output[-3000:]
    line = last_line(output)
    assert line.startswith(f"llamafactory-cli: {nan}: its feature-cache entry holds non-finite Whisper rows"), line
