"""Shared fixtures. The repository root goes on ``sys.path`` when the package is not installed (e.g. a bare venv)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("llamafactory_kimi_audio") is None:
    sys.path.insert(0, str(REPO_ROOT))

# The tests' subprocesses (llamafactory-cli, kimi-audio-lf, torchrun ranks) often run two at a time
# (lf_runs.two_at_a_time): one torch thread each, since 2 × 2 OpenMP threads on CI's 2 cores make every training step
# about 5× slower. This process keeps a thread per core. A value the caller set is left alone.
_CHILD_THREADS_SET_HERE = "OMP_NUM_THREADS" not in os.environ
if _CHILD_THREADS_SET_HERE:
    os.environ["OMP_NUM_THREADS"] = "1"


def pytest_configure(config) -> None:
    if _CHILD_THREADS_SET_HERE:
        import torch

        torch.set_num_threads(os.cpu_count() or 1)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A tiny random Kimi-Audio checkpoint in the official layout (``TinyCheckpoint``; ``.path`` is the directory)."""
    from llamafactory_kimi_audio.models.tiny import make_tiny_checkpoint

    return make_tiny_checkpoint(str(tmp_path_factory.mktemp("tiny")))


@pytest.fixture(scope="session")
def tiny_speaking_checkpoint(tmp_path_factory):
    """A tiny checkpoint that can speak: as ``tiny_checkpoint`` plus a tiny random ``audio_detokenizer/`` +
    ``vocoder/``."""
    from llamafactory_kimi_audio.models.tiny import make_tiny_checkpoint

    return make_tiny_checkpoint(str(tmp_path_factory.mktemp("tiny_speaking")), detokenizer=True)


@pytest.fixture(scope="module")
def native_model(tiny_checkpoint):
    """``tiny_checkpoint`` as the package's own ``KimiAudioForCausalLM`` (no LLaMA-Factory), eval mode; one per test
    module."""
    from speech_samples import load_native_model

    return load_native_model(tiny_checkpoint.path)


@pytest.fixture(scope="module")
def native_tok(tiny_checkpoint):
    """``tiny_checkpoint``'s ``KimiAudioTokenizer``."""
    from speech_samples import load_native_tokenizer

    return load_native_tokenizer(tiny_checkpoint.path)


@pytest.fixture(scope="module")
def ckpt(tiny_checkpoint) -> str:
    """``tiny_checkpoint``'s directory."""
    return tiny_checkpoint.path


@pytest.fixture(scope="module")
def workdir(request, tmp_path_factory) -> Path:
    """The test module's own work folder (the runs, datasets and outputs its tests share)."""
    return tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])


@pytest.fixture(scope="module")
def dataset(workdir) -> Path:
    """The module's ASR dataset in ``workdir`` (``lf_runs.make_asr_dataset``); edits stay in the module."""
    from lf_runs import make_asr_dataset

    return make_asr_dataset(workdir)
