"""Fixtures shared by the ``kimi-audio-lf convert`` tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from convert_samples import wav


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """tmp/in/wavs/a.wav b.wav c.wav (16 kHz mono, 0.5 s)."""
    for name in "abc":
        wav(tmp_path / "in" / "wavs" / f"{name}.wav")
    return tmp_path / "in"
