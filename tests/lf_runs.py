"""The stock ``llamafactory-cli`` as the end-to-end tests run it: a recipe written to disk, a fresh interpreter, the
exit code and the whole log; and the tiny synthetic ASR dataset those runs train on (through the converter)."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
CLI = str(Path(sys.executable).with_name("llamafactory-cli"))
TIMEOUT = 900  # generous: a loaded 2-core machine is several times slower than an idle one
COMMON = {
    "trust_remote_code": True,
    "stage": "sft",
    "template": "kimi_audio",
    "cutoff_len": 256,
    "overwrite_cache": True,
    "preprocessing_num_workers": 1,
    "report_to": "none",
    "use_cpu": True,
    "overwrite_output_dir": True,
}


def run_cli(command: str, config: dict, workdir: Path, name: str, env: dict | None = None) -> tuple[int, str]:
    """``llamafactory-cli COMMAND NAME.yaml`` in ``workdir`` → (exit code, stdout + stderr); the log stays on disk."""
    config_path = workdir / f"{name}.yaml"
    config_path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    return _run(command, [str(config_path)], workdir, name, env)


def two_at_a_time(function: Callable[..., T], *iterables: Iterable[Any]) -> list[T]:
    """``list(map(function, *iterables))``, two calls at a time. For independent subprocess runs: most of a short run
    is a fresh interpreter importing LLaMA-Factory / transformers on one core, so two side by side on a 2-core machine
    take little more than one. The calls must not depend on each other."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(function, *iterables))


def run_cli_each(
    command: str, configs: dict[str, dict], workdir: Path, envs: dict[str, dict] | None = None
) -> dict[str, tuple[int, str]]:
    """``run_cli`` for each ``name -> config`` (with ``envs[name]`` if given), two at a time (``two_at_a_time``)."""
    envs = envs or {}
    names = list(configs)
    runs = two_at_a_time(lambda n: run_cli(command, configs[n], workdir, n, envs.get(n)), names)
    return dict(zip(names, runs))


def run_cli_flags(
    command: str, flags: list[str], workdir: Path, name: str, env: dict | None = None
) -> tuple[int, str]:
    """``llamafactory-cli COMMAND --key value ...`` (the recipe as command-line flags, no file) → (exit code, log)."""
    return _run(command, flags, workdir, name, env)


def as_flags(config: dict) -> list[str]:
    """A recipe dict as HfArgumentParser flags: ``{"do_train": True, "dataset": "d"}`` → ``--do_train true ...``."""
    flags: list[str] = []
    for key, value in config.items():
        flags += [f"--{key}", str(value).lower() if isinstance(value, bool) else str(value)]
    return flags


def _run(command: str, arguments: list[str], workdir: Path, name: str, env: dict | None) -> tuple[int, str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("KIMI_AUDIO_", "LLAMAFACTORY_KIMI_AUDIO_"))}
    full_env.update(
        HF_HOME=str(workdir / "hf_home"),
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        **(env or {}),
    )
    proc = subprocess.run(
        [CLI, command, *arguments],
        cwd=workdir,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=TIMEOUT,
    )
    (workdir / f"{name}.log").write_text(proc.stdout)
    return proc.returncode, proc.stdout


def check_ok(rc: int, output: str) -> None:
    assert rc == 0, output[-6000:]


def logged_losses(output_dir: Path) -> list[float]:
    state = json.loads((output_dir / "trainer_state.json").read_text())
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert losses, "trainer_state.json has no loss entries"
    assert all(math.isfinite(loss) for loss in losses), losses
    return losses


def make_asr_dataset(workdir: Path, n_train: int = 8, n_test: int = 4) -> Path:
    """``n_train`` + ``n_test`` synthetic utterances (tone words: no external binary) through the converter, as
    datasets ``asr_train`` / ``asr_test`` in ``workdir/data``."""
    from llamafactory_kimi_audio.data.convert.converter import ConvertOptions, convert
    from llamafactory_kimi_audio.data.synth.corpus import synthesize_corpus

    corpus = synthesize_corpus(str(workdir / "corpus"), n_train=n_train, n_test=n_test, backend="tones")
    data_dir = workdir / "data"
    for csv_path, name, rows in ((corpus.train_csv, "asr_train", n_train), (corpus.test_csv, "asr_test", n_test)):
        result = convert(csv_path, str(data_dir), ConvertOptions(name=name, lang="en", progress=False))
        assert result.rows_written == rows
    return data_dir


def train_config(ckpt: str, dataset: Path, output_dir: Path, **overrides) -> dict:
    return {
        **COMMON,
        "model_name_or_path": ckpt,
        "do_train": True,
        "dataset": "asr_train",
        "dataset_dir": str(dataset),
        "output_dir": str(output_dir),
        "per_device_train_batch_size": 2,
        "learning_rate": 1.0e-3,
        "max_steps": 3,
        "logging_steps": 1,
        "save_strategy": "no",
        **overrides,
    }


def variant_dataset(dataset: Path, name: str, change_first) -> None:
    """``asr_train`` with ``change_first(records[0])`` applied, registered as dataset ``name``."""
    records = json.loads((dataset / "asr_train.json").read_text(encoding="utf-8"))
    change_first(records[0])
    (dataset / f"{name}.json").write_text(json.dumps(records), encoding="utf-8")
    info = json.loads((dataset / "dataset_info.json").read_text(encoding="utf-8"))
    info[name] = {**info["asr_train"], "file_name": f"{name}.json"}
    (dataset / "dataset_info.json").write_text(json.dumps(info), encoding="utf-8")


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (torchrun's rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
