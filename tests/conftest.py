"""Shared fixtures. The repository root goes on ``sys.path`` when the package is not installed (e.g. a bare venv)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("llamafactory_kimi_audio") is None:
    sys.path.insert(0, str(REPO_ROOT))


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
