"""Fixtures shared by the ``kimi-audio-lf evaluate`` tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf


@pytest.fixture
def test_set(tmp_path: Path) -> Path:
    """A converted-style dataset dir: test.json (sharegpt, relative audio) + dataset_info.json."""
    (tmp_path / "ds" / "wavs").mkdir(parents=True)
    rows = []
    for uid, text in (("a", "今天天气很好"), ("b", "我们去公园"), ("c", "Hello world")):
        sf.write(tmp_path / "ds" / "wavs" / f"{uid}.wav", np.zeros(1600, np.float32), 16000)
        messages = [{"role": "user", "content": "<audio>转写"}, {"role": "assistant", "content": text}]
        rows.append({"id": uid, "messages": messages, "audios": [f"wavs/{uid}.wav"]})
    (tmp_path / "ds" / "test.json").write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    info = {
        "test": {
            "file_name": "test.json",
            "formatting": "sharegpt",
            "columns": {"messages": "messages", "audios": "audios"},
        }
    }
    (tmp_path / "ds" / "dataset_info.json").write_text(json.dumps(info), encoding="utf-8")
    return tmp_path / "ds" / "test.json"
