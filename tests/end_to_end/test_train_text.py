"""Transcripts at training time, through ``kimi-audio-lf convert`` and the stock ``llamafactory-cli train`` on the
tiny checkpoint: a label that cutoff_len would cut stops the run with one line naming the sample and the fix, and a
transcript holding ``<image>`` (kept by convert) trains like any other."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from lf_runs import run_cli_each, train_config

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 900  # generous: a loaded 2-core machine is several times slower than an idle one
LONG_ANSWER = "word " * 600  # ~600 tokens: more than cutoff_len 256, and far more than 1 s of speech holds


def wav(path: Path, seconds: float = 1.0) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, (0.1 * np.sin(np.arange(int(16000 * seconds)) / 7.0)).astype(np.float32), 16000)
    return path.name


def run(command: list[str], workdir: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KIMI_AUDIO_", "LLAMAFACTORY_KIMI_AUDIO_"))}
    env.update(PYTHONPATH=str(REPO), HF_HOME=str(workdir / "hf_home"), HF_HUB_OFFLINE="1")
    return subprocess.run(
        command, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=TIMEOUT
    )


def converted(workdir: Path, name: str, texts: list[str]) -> subprocess.CompletedProcess[str]:
    source = workdir / "src"
    body = "id,audio,text\n" + "".join(f"u{i},{wav(source / f'u{i}.wav')},{t}\n" for i, t in enumerate(texts))
    (source / f"{name}.csv").write_text(body, encoding="utf-8")
    command = [str(BIN / "kimi-audio-lf"), "convert", str(source / f"{name}.csv"), "--out-dir", str(workdir / "data")]
    proc = run([*command, "--lang", "en", "--no-progress"], workdir)
    assert proc.returncode == 0, proc.stdout
    return proc


def recipe(workdir: Path, ckpt: str, dataset: str) -> dict:
    """One LoRA step on ``dataset`` through test_llamafactory_cli's recipe."""
    directory, output_dir = workdir / "data", workdir / f"out_{dataset}"
    config = train_config(ckpt, directory, output_dir, finetuning_type="lora", lora_target="all", max_steps=1)
    return {**config, "dataset": dataset}  # train_config names the dataset asr_train


@pytest.fixture(scope="module")
def runs(tiny_checkpoint, tmp_path_factory) -> tuple[Path, dict[str, subprocess.CompletedProcess[str]]]:
    """(work dir, name -> convert or train run): both datasets converted into one folder, one after another, then
    the two ``llamafactory-cli train`` runs side by side."""
    workdir = tmp_path_factory.mktemp("train_text")
    done = {
        "convert_long_label": converted(workdir, "long_label", ["short and fine", LONG_ANSWER]),
        "convert_tags": converted(workdir, "tags", ["look at the <image> here", "and a <video> there"]),
    }
    configs = {name: recipe(workdir, tiny_checkpoint.path, name) for name in ("long_label", "tags")}
    for name, (rc, output) in run_cli_each("train", configs, workdir).items():
        done[name] = subprocess.CompletedProcess([name], rc, output)
    return workdir, done


def test_label_cut_by_cutoff_len_stops_with_one_line(runs) -> None:
    _, done = runs
    warning = "long_label.csv row 3: transcript has 2400 characters for 1.00 s of audio"
    assert warning in done["convert_long_label"].stdout
    proc = done["long_label"]
    assert proc.returncode == 2, proc.stdout[-3000:]
    assert "Traceback" not in proc.stdout, proc.stdout[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("llamafactory-cli: sample ['") and "u1.wav" in last, last
    assert "cutoff_len=256 cuts its label" in last and "raise cutoff_len to at least" in last, last


def test_image_tag_in_a_transcript_trains(runs) -> None:
    workdir, done = runs
    proc = done["tags"]
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert (workdir / "out_tags" / "trainer_state.json").exists() or "train_loss" in proc.stdout
