"""``kimi-audio-lf convert`` end to end on generated audio, the happy paths: every input format (CSV, Kimi JSONL,
Qwen inline audio tags, flat JSON, Kaldi directories, folders with sidecars) to ShareGPT rows and a
``dataset_info.json`` entry (merged with the entries already there), relative audio paths, the seeded split, the
library call, and stdout / stderr of the real subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from convert_samples import EN, ZH, cli, load, write_csv

from llamafactory_kimi_audio.data.convert.converter import ConvertOptions, convert
from llamafactory_kimi_audio.data.convert.splits import assign_splits, split_counts

REPO = Path(__file__).resolve().parents[3]


def test_csv_to_sharegpt_and_dataset_info(data: Path, tmp_path: Path, capsys) -> None:
    rows = ["id,audio,text", "a,wavs/a.wav,今天 天气 很好", "b,wavs/b.wav,我们去公园。"]
    csv_path = write_csv(data / "rows.csv", rows)
    code, out, err = cli(capsys, csv_path, "--out-dir", tmp_path / "out", "--name", "asr")
    assert code == 0, err
    assert "converted 2/2 rows" in out and err == ""
    raw = (tmp_path / "out" / "asr.json").read_text(encoding="utf-8")
    assert "今天天气很好" in raw  # ensure_ascii=False; spaces between CJK characters dropped
    rows = json.loads(raw)
    assert rows[0] == {
        "id": "a",
        "messages": [{"role": "user", "content": ZH + "<audio>"}, {"role": "assistant", "content": "今天天气很好"}],
        "audios": [str(data / "wavs" / "a.wav")],  # outside --out-dir → absolute
    }
    info = load(tmp_path / "out" / "dataset_info.json")
    assert info["asr"] == {
        "file_name": "asr.json",
        "formatting": "sharegpt",
        "columns": {"messages": "messages", "audios": "audios"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"},
    }
    report = load(tmp_path / "out" / "asr.report.json")
    assert report["rows_written"] == 2 and report["issues"] == [] and report["durations"]["total"] == 1.0


def test_paths_relative_when_audio_is_inside_out_dir(data: Path, capsys) -> None:
    csv_path = write_csv(data / "rows.csv", ["path,transcript", "wavs/a.wav,hello there"])
    code, _, err = cli(capsys, csv_path, "--out-dir", data)
    assert code == 0, err
    row = load(data / "rows.json")[0]
    assert row["audios"] == ["wavs/a.wav"] and row["messages"][0]["content"] == EN + "<audio>"  # lang auto → en


def test_dataset_info_merge_keeps_other_entries(data: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "dataset_info.json").write_text(json.dumps({"alpaca_en": {"file_name": "alpaca.json"}}), encoding="utf-8")
    write_csv(data / "rows.csv", ["id,wav,sentence", "a,wavs/a.wav,你好"])
    assert cli(capsys, data / "rows.csv", "--out-dir", out)[0] == 0
    assert set(load(out / "dataset_info.json")) == {"alpaca_en", "rows"}


def test_kimi_jsonl_official_format(data: Path, tmp_path: Path, capsys) -> None:
    record = {
        "task_type": "understanding",
        "conversation": [
            {"role": "user", "message_type": "text", "content": "请将语音内容转录为文字。"},
            {"role": "user", "message_type": "audio", "content": str(data / "wavs" / "a.wav"), "audio_tokens": [1, 2]},
            {"role": "assistant", "message_type": "text", "content": "标准答案文本"},
        ],
    }
    (data / "data_10k.jsonl").write_text(json.dumps(record, ensure_ascii=False) + "\n", encoding="utf-8")
    code, out, err = cli(capsys, data / "data_10k.jsonl", "--out-dir", tmp_path / "out")
    assert code == 0, err
    assert "format kimi-jsonl" in out
    row = load(tmp_path / "out" / "data_10k.json")[0]
    assert row["messages"][0]["content"] == "请将语音内容转录为文字。<audio>"  # the record's own instruction is kept
    assert row["messages"][1]["content"] == "标准答案文本"


def test_qwen_inline_audio_tags_and_flat_json(data: Path, tmp_path: Path, capsys) -> None:
    conv = {
        "conversations": [
            {"from": "user", "value": "<audio>wavs/a.wav</audio> 请帮我转写"},
            {"from": "assistant", "value": "好的"},
        ]
    }
    (data / "conv.json").write_text(json.dumps([conv], ensure_ascii=False), encoding="utf-8")
    assert cli(capsys, data / "conv.json", "--out-dir", tmp_path / "o1")[0] == 0
    assert load(tmp_path / "o1" / "conv.json")[0]["messages"][0]["content"] == "请帮我转写<audio>"
    flat = [{"audio": "wavs/b.wav", "text": "hello", "prompt": "Transcribe."}, {"audio": "wavs/c.wav", "text": "hi"}]
    (data / "flat.jsonl").write_text("\n".join(json.dumps(x) for x in flat), encoding="utf-8")
    code, out, err = cli(capsys, data / "flat.jsonl", "--out-dir", tmp_path / "o2", "--lang", "en")
    assert code == 0, err
    assert "format flat-json" in out
    rows = load(tmp_path / "o2" / "flat.json")
    assert [r["messages"][0]["content"] for r in rows] == ["Transcribe.<audio>", EN + "<audio>"]


def test_kaldi_dir_and_folder_with_sidecars(data: Path, tmp_path: Path, capsys) -> None:
    kaldi = tmp_path / "kaldi"
    kaldi.mkdir()
    (kaldi / "wav.scp").write_text(f"u1 {data / 'wavs' / 'a.wav'}\nu2 {data / 'wavs' / 'b.wav'}\n", encoding="utf-8")
    (kaldi / "text").write_text("u1 而 对 楼市 成交\nu2 抑制 作用\n", encoding="utf-8")
    assert cli(capsys, kaldi, "--out-dir", tmp_path / "o1")[0] == 0
    assert [r["messages"][1]["content"] for r in load(tmp_path / "o1" / "kaldi.json")] == ["而对楼市成交", "抑制作用"]
    (data / "wavs" / "a.txt").write_text("first\n", encoding="utf-8")
    (data / "wavs" / "b.lab").write_text("second", encoding="utf-8")
    code, _, err = cli(capsys, data / "wavs", "--out-dir", tmp_path / "o2", "--name", "folder")
    assert code == 0
    assert [r["id"] for r in load(tmp_path / "o2" / "folder.json")] == ["a", "b"]
    assert "c.wav: no c.txt or c.lab next to it; add a transcript" in err


def test_csv_without_audio_column_finds_root_id_wav(data: Path, tmp_path: Path, capsys) -> None:
    """Seed 003: a CSV with ``id`` and ``no_point_text``; the audio is ``{audio_dir}/{id}.wav``."""
    write_csv(tmp_path / "split.csv", ["id,no_point_text", "a,我今天在二级市场", "b,估值"])
    code, _, err = cli(capsys, tmp_path / "split.csv", "--out-dir", tmp_path / "o", "--root", data / "wavs")
    assert code == 0, err
    assert load(tmp_path / "o" / "split.json")[1]["audios"] == [str(data / "wavs" / "b.wav")]


def test_split_is_seeded_and_writes_entries(data: Path, tmp_path: Path, capsys) -> None:
    rows = ["id,audio,text"] + [f"u{i},wavs/{'abc'[i % 3]}.wav,text {i}" for i in range(20)]
    write_csv(data / "rows.csv", rows)
    args = [data / "rows.csv", "--out-dir", tmp_path / "o", "--split", "0.8,0.1,0.1", "--seed", "3", "--name", "d"]
    assert cli(capsys, *args)[0] == 0
    first = {s: [r["id"] for r in load(tmp_path / "o" / f"d_{s}.json")] for s in ("train", "dev", "test")}
    assert [len(v) for v in first.values()] == [16, 2, 2]
    assert set(load(tmp_path / "o" / "dataset_info.json")) == {"d_train", "d_dev", "d_test"}
    assert cli(capsys, *args)[0] == 0
    assert first == {s: [r["id"] for r in load(tmp_path / "o" / f"d_{s}.json")] for s in ("train", "dev", "test")}
    assert split_counts(7, (0.9, 0.05, 0.05)) == [6, 1, 0] and sum(split_counts(101, (0.5, 0.25, 0.25))) == 101
    assert assign_splits(10, (0.5, 0.5), 0) == assign_splits(10, (0.5, 0.5), 0)


def test_library_returns_dataclass(data: Path, tmp_path: Path) -> None:
    write_csv(data / "rows.csv", ["id,audio,text", "a,wavs/a.wav,hi", "b,wavs/none.wav,x"])
    result = convert(str(data / "rows.csv"), str(tmp_path / "o"), ConvertOptions(progress=False))
    assert (result.rows_read, result.rows_written, result.rows_skipped) == (2, 1, 1)
    assert [i.reason for i in result.issues] == ["missing_audio"] and result.lang == "en"


def test_subprocess_stdout_stderr_split(data: Path, tmp_path: Path) -> None:
    write_csv(data / "rows.csv", ["id,audio,text", "a,wavs/a.wav,hi", "b,wavs/none.wav,x"])
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "llamafactory_kimi_audio.cli",
            "convert",
            str(data / "rows.csv"),
            "--out-dir",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("converted 1/2 rows") and "missing_audio" not in proc.stdout
    assert "rows.csv row 3: audio file not found: wavs/none.wav" in proc.stderr
