"""Inputs and the in-process command for the ``kimi-audio-lf convert`` tests (``tests/data/convert/``): generated
WAV files and CSVs, ``main(["convert", ...])`` with its captured output, and the JSON it writes. The subprocess runs
are in ``convert_cli``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from llamafactory_kimi_audio.cli import main
from llamafactory_kimi_audio.models.special_tokens import DEFAULT_INSTRUCTION

ZH, EN = DEFAULT_INSTRUCTION["zh"], DEFAULT_INSTRUCTION["en"]


def wav(path: Path, seconds: float = 0.5, sr: int = 16000, channels: int = 1) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = int(seconds * sr)
    data = (0.1 * np.sin(np.arange(frames) / 7.0)).astype(np.float32)
    sf.write(path, np.repeat(data[:, None], channels, axis=1) if channels > 1 else data, sr, subtype="PCM_16")
    return path


def write_csv(path: Path, rows: list[str], encoding: str = "utf-8") -> Path:
    path.write_bytes(("\n".join(rows) + "\n").encode(encoding))
    return path


def cli(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    code = main(["convert", *map(str, args), "--no-progress"])
    out, err = capsys.readouterr()
    return code, out, err


def load(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))
