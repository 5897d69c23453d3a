"""Inputs and the in-process command for the ``kimi-audio-lf evaluate`` tests (``tests/eval/``): ``main(["evaluate",
...])`` with its captured output, prediction files in LLaMA-Factory's and the generic JSONL shapes, and the one error
line a bad input gives."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llamafactory_kimi_audio.cli import main


def cli(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    code = main(["evaluate", *map(str, args), "--no-plot"])
    out, err = capsys.readouterr()
    return code, out, err


def jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def generated_predictions(path: Path, pairs: list[tuple[str, str]]) -> Path:
    """LLaMA-Factory's ``generated_predictions.jsonl`` shape: prompt / predict / label."""
    return jsonl(path, [{"prompt": "<audio>转写", "predict": hyp, "label": ref} for ref, hyp in pairs])


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("kimi-audio-lf evaluate: error: ")
    return lines[0]
