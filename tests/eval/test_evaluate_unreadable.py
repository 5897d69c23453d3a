"""``kimi-audio-lf evaluate`` with unreadable clips (skipped and reported, or ``--strict``) and spreadsheet-safe CSV.

Every run is the real command in a subprocess on the tiny checkpoint (``conftest.tiny_checkpoint``).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

BIN = Path(sys.executable).parent
TIMEOUT = 600  # generous: a loaded 2-core machine is several times slower than an idle one


def evaluate_cli(*args: object, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The real command, with this process's environment plus ``extra_env``."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.update(extra_env or {})
    command = [str(BIN / "kimi-audio-lf"), "evaluate", *map(str, args), "--no-plot"]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=TIMEOUT)


def write_set(directory: Path, rows: list[tuple[str, str, str]]) -> Path:
    """A sharegpt test set of ``(id, transcript, audio path relative to directory)`` rows."""
    records = [
        {
            "id": uid,
            "messages": [{"role": "user", "content": "<audio>transcribe"}, {"role": "assistant", "content": text}],
            "audios": [audio],
        }
        for uid, text, audio in rows
    ]
    path = directory / "test.json"
    path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    return path


def tone(path: Path, seconds: float = 0.5) -> str:
    samples = int(16000 * seconds)
    sf.write(path, (0.1 * np.sin(np.arange(samples) * 0.05)).astype(np.float32), 16000)
    return path.name


def truncated_flac(path: Path) -> str:
    """A FLAC whose header is intact but whose frames are cut off: only decoding finds it."""
    sf.write(path, (np.random.default_rng(0).standard_normal(16000) * 0.1).astype(np.float32), 16000)
    path.write_bytes(path.read_bytes()[:200])
    return path.name


@pytest.fixture
def broken_set(tmp_path: Path) -> Path:
    """Three utterances: a good clip, a missing file, a truncated FLAC."""
    good = tone(tmp_path / "good.wav")
    cut = truncated_flac(tmp_path / "cut.flac")
    return write_set(
        tmp_path, [("good", "hello world", good), ("gone", "missing clip", "gone.wav"), ("cut", "cut", cut)]
    )


@pytest.mark.slow
def test_unreadable_clips_are_skipped_counted_and_named(tiny_checkpoint, broken_set: Path, tmp_path: Path) -> None:
    """A missing file (found before the model loads) and a truncated FLAC (found when decoded) are skipped; the good
    clip is scored; summary.json, report.md and one warning line give the count and each reason."""
    out = tmp_path / "ev"
    done = evaluate_cli("--model", tiny_checkpoint.path, "--data", broken_set, "--out", out, "--max-new-tokens", 4)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["n"] == 1 and summary["n_unreadable"] == 2
    reasons = {row["id"]: row for row in summary["skipped_unreadable"]}
    assert set(reasons) == {"gone", "cut"}
    assert reasons["gone"]["audio"] == str(tmp_path / "gone.wav") and "not found" in reasons["gone"]["reason"]
    assert str(tmp_path / "cut.flac") in reasons["cut"]["reason"] and "re-encode" in reasons["cut"]["reason"]
    rows = [json.loads(line) for line in (out / "utterances.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [row["id"] for row in rows] == ["good"]
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "2 skipped (audio unreadable" in report and "## 2 utterances not scored: audio unreadable" in report
    assert "| gone |" in report and "| cut |" in report
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and "2 test utterances skipped" in warnings[0] and "--strict" in warnings[0]
    assert "Traceback" not in done.stderr


def test_strict_stops_before_the_model_loads(broken_set: Path, tmp_path: Path) -> None:
    """--strict: exit 2 with one line naming the first unreadable clip; the model (a wrong path here) is never
    loaded, so the header check comes first."""
    done = evaluate_cli("--model", tmp_path / "no-model", "--data", broken_set, "--out", tmp_path / "ev", "--strict")
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("kimi-audio-lf evaluate: error: test utterance gone: ")
    assert str(tmp_path / "gone.wav") in line and "--strict stops" in line
    assert not (tmp_path / "ev" / "summary.json").exists()


@pytest.mark.slow
def test_strict_stops_at_a_clip_that_does_not_decode(tiny_checkpoint, tmp_path: Path) -> None:
    data = write_set(
        tmp_path,
        [("good", "hello", tone(tmp_path / "good.wav")), ("cut", "cut", truncated_flac(tmp_path / "cut.flac"))],
    )
    done = evaluate_cli("--model", tiny_checkpoint.path, "--data", data, "--out", tmp_path / "ev", "--strict")
    assert done.returncode == 2, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("kimi-audio-lf evaluate: error: test utterance cut: " + str(tmp_path / "cut.flac")), last
    assert "Traceback" not in done.stderr and not (tmp_path / "ev" / "summary.json").exists()


def test_a_set_with_no_readable_clip_is_an_error(tmp_path: Path) -> None:
    """Nothing scored is not a success: exit 2 before the model loads, not an empty report with exit 0."""
    data = write_set(tmp_path, [("a", "one", "a.wav"), ("b", "two", "b.wav")])
    done = evaluate_cli("--model", tmp_path / "no-model", "--data", data, "--out", tmp_path / "ev")
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert "none of the 2 test clips can be read, nothing to score" in line and str(tmp_path / "a.wav") in line


def test_csv_cells_that_a_spreadsheet_would_run_are_escaped(tmp_path: Path) -> None:
    """utterances.csv: a reference or hypothesis starting with = + - @ tab or CR gets a leading quote (OWASP);
    utterances.jsonl keeps the text as it is; ordinary cells are untouched."""
    texts = ['=HYPERLINK("http://evil.example","click")', "+1 555", "-2 degrees", "@SUM(A1)", "\tTAB", "\rCR"]
    rows = [{"id": str(n), "ref": text, "hyp": text if n % 2 else "plain words"} for n, text in enumerate(texts)]
    rows.append({"id": "=1+1", "ref": "fine", "hyp": "fine"})
    predictions = tmp_path / "pred.jsonl"
    predictions.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    done = evaluate_cli("--predictions", predictions, "--out", tmp_path / "ev")
    assert done.returncode == 0, done.stderr
    with open(tmp_path / "ev" / "utterances.csv", encoding="utf-8-sig", newline="") as handle:
        cells = {row["id"]: row for row in csv.DictReader(handle)}
    for n, text in enumerate(texts):
        assert cells[str(n)]["ref"] == "'" + text
        assert cells[str(n)]["hyp"] == ("'" + text if n % 2 else "plain words")
    assert "'=1+1" in cells and cells["'=1+1"]["ref"] == "fine"
    for row in cells.values():
        for value in row.values():
            assert not value.startswith(("=", "+", "-", "@", "\t", "\r")), row
    jsonl = (tmp_path / "ev" / "utterances.jsonl").read_text(encoding="utf-8")
    assert [json.loads(line)["ref"] for line in jsonl.splitlines()][: len(texts)] == texts
    again = evaluate_cli("--predictions", tmp_path / "ev" / "utterances.csv", "--out", tmp_path / "again")
    assert again.returncode == 0, again.stderr  # the CSV read back as predictions: the texts, unescaped
    assert (tmp_path / "again" / "utterances.jsonl").read_text(encoding="utf-8") == jsonl


@pytest.mark.slow
def test_speech_output_set_skips_unreadable_targets(tiny_checkpoint, tmp_path: Path) -> None:
    """A speech-output test set (assistant <audio>): a missing and a truncated target are skipped and counted; the
    readable row is spoken and scored."""
    targets = {"ok": tone(tmp_path / "ok.wav"), "gone": "gone.wav", "cut": truncated_flac(tmp_path / "cut.flac")}
    rows = [
        {
            "id": uid,
            "messages": [{"role": "user", "content": "say hi"}, {"role": "assistant", "content": "hi<audio>"}],
            "audios": [audio],
        }
        for uid, audio in targets.items()
    ]
    data = tmp_path / "tts.json"
    data.write_text(json.dumps(rows), encoding="utf-8")
    out = tmp_path / "ev"
    done = evaluate_cli("--model", tiny_checkpoint.path, "--data", data, "--out", out, "--device", "cpu")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["speech"]["n"] == 1 and summary["speech"]["n_unreadable"] == summary["n_unreadable"] == 2
    assert [row["id"] for row in summary["skipped_unreadable"]] == ["gone", "cut"]
    assert "2 test utterances skipped" in done.stderr
    lines = (out / "speech_utterances.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["ok"]


def test_speech_output_set_strict_names_the_missing_target(tmp_path: Path) -> None:
    """--strict on a speech-output set: exit 2 naming the row and its missing target, before the model loads."""
    row = {"messages": [{"role": "user", "content": "say hi"}, {"role": "assistant", "content": "hi<audio>"}]}
    rows = [{**row, "id": "ok", "audios": [tone(tmp_path / "ok.wav")]}, {**row, "id": "gone", "audios": ["gone.wav"]}]
    data = tmp_path / "tts.json"
    data.write_text(json.dumps(rows), encoding="utf-8")
    done = evaluate_cli("--model", tmp_path / "no-model", "--data", data, "--out", tmp_path / "ev", "--strict")
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert "test utterance gone: " in line and str(tmp_path / "gone.wav") in line and "--strict" in line
