"""``convert`` run again into the same ``--out-dir`` (a real CLI subprocess): what the earlier run of the same
``--name`` wrote and this run does not write again must not stay behind as a dataset that looks current; an
``--out-dir`` that is a file is named as such."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from convert_cli import convert  # noqa: E402


def table(folder: Path, n: int = 8) -> Path:
    (folder / "clips").mkdir(parents=True)
    lines = ["id,audio,text"]
    for i in range(n):
        sf.write(folder / "clips" / f"u{i}.wav", 0.1 * np.sin(np.arange(8000 + 160 * i) / 7.0), 16000)
        lines.append(f"u{i},clips/u{i}.wav,第{i}句话")
    (folder / "rows.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder / "rows.csv"


def test_a_split_not_written_again_is_removed_with_its_dataset_info_entry(tmp_path: Path) -> None:
    rows = table(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "mine.json").write_text("[]", encoding="utf-8")  # the user's own file: never touched
    first = convert(rows, "--out-dir", "data", "--name", "my_asr", "--split", "0.5,0.25,0.25", cwd=tmp_path)
    assert first.returncode == 0 and (tmp_path / "data" / "my_asr_test.json").is_file(), first.stderr
    second = convert(rows, "--out-dir", "data", "--name", "my_asr", "--split", "0.75,0.25", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    # the old test set held rows that are now in my_asr_train: evaluating on it would score training data
    assert not (tmp_path / "data" / "my_asr_test.json").exists()
    info = json.loads((tmp_path / "data" / "dataset_info.json").read_text(encoding="utf-8"))
    assert sorted(info) == ["my_asr_dev", "my_asr_train"]
    assert "my_asr_test: removed my_asr_test.json, written by the earlier convert of my_asr" in second.stderr
    assert (tmp_path / "data" / "mine.json").read_text(encoding="utf-8") == "[]"
    third = convert(rows, "--out-dir", "data", "--name", "my_asr", cwd=tmp_path)  # no --split: one my_asr.json
    assert third.returncode == 0, third.stderr
    names = sorted(p.name for p in (tmp_path / "data").iterdir())
    assert names == ["dataset_info.json", "mine.json", "my_asr.json", "my_asr.report.json"]


def test_out_dir_that_is_a_file_is_named_as_one(tmp_path: Path) -> None:
    rows = table(tmp_path)
    fix = "is a file, not a folder; choose another --out-dir (a folder, created if missing)"
    shown = {"rows.csv": f"{rows} {fix}", "rows.csv/data": f"{rows / 'data'}: {rows} {fix}"}
    for out_dir, line in shown.items():  # the input itself given as --out-dir; a folder under a file
        proc = convert(rows, "--out-dir", out_dir, cwd=tmp_path)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert proc.stderr.strip().splitlines() == [f"kimi-audio-lf convert: error: {line}"]
