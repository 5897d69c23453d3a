"""``kimi-audio-lf convert --task tts | spoken-reply`` through the real CLI (subprocess)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import soundfile as sf


def write_wav(path, seconds: float = 1.0) -> str:
    rng = np.random.default_rng(len(str(path)))
    sf.write(path, (0.2 * rng.standard_normal(int(16000 * seconds))).astype(np.float32), 16000)
    return str(path)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "llamafactory_kimi_audio.cli", "convert", "--no-progress", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=os.environ.copy())


def test_tts_task_turns_asr_rows_into_spoken_answers(tmp_path):
    for name in ("a", "b"):
        write_wav(tmp_path / f"{name}.wav")
    table = tmp_path / "asr.csv"
    table.write_text("audio,text\na.wav,hello there\nb.wav,good  morning\n", encoding="utf-8")
    out = tmp_path / "out"
    done = run_cli(str(table), "--out-dir", str(out), "--task", "tts", "--lang", "en")
    assert done.returncode == 0, done.stderr
    rows = json.loads((out / "asr.json").read_text(encoding="utf-8"))
    assert rows[1]["messages"] == [
        {"role": "user", "content": "Read the following text aloud: good morning"},
        {"role": "assistant", "content": "good morning<audio>"},
    ]
    assert [os.path.basename(row["audios"][0]) for row in rows] == ["a.wav", "b.wav"]
    info = json.loads((out / "dataset_info.json").read_text(encoding="utf-8"))
    assert info["asr"]["columns"] == {"messages": "messages", "audios": "audios"}


def test_spoken_reply_task_reads_question_audio_or_text(tmp_path):
    for name in ("q1", "a1", "a2", "a3"):
        write_wav(tmp_path / f"{name}.wav")
    table = tmp_path / "qa.csv"
    with open(table, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "question", "question_audio", "answer", "answer_audio"])
        writer.writerow(["r1", "", "q1.wav", "It is sunny.", "a1.wav"])
        writer.writerow(["r2", "What time is it?", "", "Noon.", "a2.wav"])
        writer.writerow(["r3", "Hi", "", "Hello.", "missing.wav"])
    out = tmp_path / "out"
    done = run_cli(str(table), "--out-dir", str(out), "--task", "spoken-reply", "--name", "qa")
    assert done.returncode == 0, done.stderr
    assert "missing.wav" in done.stderr  # the bad row is reported by name, not dropped silently
    rows = json.loads((out / "qa.json").read_text(encoding="utf-8"))
    assert [row["id"] for row in rows] == ["r1", "r2"]
    assert rows[0]["messages"][0]["content"] == "<audio>"
    assert rows[0]["messages"][1]["content"] == "It is sunny.<audio>"
    assert [os.path.basename(a) for a in rows[0]["audios"]] == ["q1.wav", "a1.wav"]
    assert rows[1]["messages"][0]["content"] == "What time is it?" and len(rows[1]["audios"]) == 1
    report = json.loads((out / "qa.report.json").read_text(encoding="utf-8"))
    assert report["rows_read"] == 3 and report["rows_written"] == 2
    strict = run_cli(str(table), "--out-dir", str(out), "--task", "spoken-reply", "--strict")
    assert strict.returncode == 2 and "missing.wav" in strict.stderr
