"""``kimi-audio-lf convert`` end to end on generated audio: formats, encodings, every bad-row reason, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from llamafactory_kimi_audio.cli import main
from llamafactory_kimi_audio.data.convert.converter import ConvertOptions, convert
from llamafactory_kimi_audio.data.convert.splits import assign_splits, split_counts
from llamafactory_kimi_audio.fileio import textio
from llamafactory_kimi_audio.fileio.textio import mojibake_hint
from llamafactory_kimi_audio.models.special_tokens import DEFAULT_INSTRUCTION

REPO = Path(__file__).resolve().parents[3]
ZH, EN = DEFAULT_INSTRUCTION["zh"], DEFAULT_INSTRUCTION["en"]


def wav(path: Path, seconds: float = 0.5, sr: int = 16000, channels: int = 1) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = int(seconds * sr)
    data = (0.1 * np.sin(np.arange(frames) / 7.0)).astype(np.float32)
    sf.write(path, np.repeat(data[:, None], channels, axis=1) if channels > 1 else data, sr, subtype="PCM_16")
    return path


def truncated_wav(path: Path) -> Path:
    """A real 0.5 s 16 kHz PCM-16 WAV (8000 frames) cut after half of its samples, as an interrupted copy leaves it."""
    wav(path)
    with open(path, "r+b") as fh:
        fh.truncate(44 + 2 * 4000)  # the 44-byte canonical header + 4000 of the 8000 frames
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


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """tmp/in/wavs/a.wav b.wav c.wav (16 kHz mono, 0.5 s)."""
    for name in "abc":
        wav(tmp_path / "in" / "wavs" / f"{name}.wav")
    return tmp_path / "in"


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("kimi-audio-lf convert: error: ")
    return lines[0]


# --------------------------------------------------------------------------------------------- happy paths


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


# --------------------------------------------------------------------------------------------- bad input: rows


BAD_ROWS = [  # (id, make the audio, text, expected line in stderr, written?)
    (
        "corrupt",
        lambda p: p.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk"),
        "x",
        "rows.csv row 2: cannot read audio corrupt.wav (",
        False,
    ),
    (
        "empty",
        lambda p: sf.write(p, np.zeros(0, np.float32), 16000),
        "x",
        "rows.csv row 2: audio empty.wav is empty (0 samples); replace the file or delete the row",
        False,
    ),
    (
        "tel",
        lambda p: wav(p, sr=8000),
        "x",
        "rows.csv row 2: audio tel.wav is 8000 Hz, not 16000 Hz; kept: audio is resampled to 16 kHz",
        True,
    ),
    (
        "stereo",
        lambda p: wav(p, sr=48000, channels=2),
        "x",
        "rows.csv row 2: audio stereo.wav has 2 channels; kept: channels are averaged to mono",
        True,
    ),
    (
        "long",
        lambda p: wav(p, seconds=31, sr=8000),
        "x",
        "rows.csv row 2: audio long.wav is 31.0 s long (> 30 s); kept: Kimi-Audio encodes audio in 30 s chunks",
        True,
    ),
    ("missing", lambda p: None, "x", "rows.csv row 2: audio file not found: missing.wav (resolved to ", False),
    ("notext", wav, "", "rows.csv row 2: transcript is empty; fill in the transcript or delete the row", False),
    (
        "blank",
        wav,
        "   ",
        "rows.csv row 2: transcript is only whitespace; fill in the transcript or delete the row",
        False,
    ),
    (
        "moji",
        wav,
        "æ•°æ®é›†",
        "rows.csv row 2: transcript 'æ•°æ®é›†' looks like utf-8 text decoded as cp1252 ('æ•', ...; bytes lost); "
        "re-export the file as UTF-8; skipped (pass --keep-mojibake to keep such rows)",
        False,
    ),
    (
        "moji2",
        wav,
        "é\x87\x8dè¦\x81",
        r"rows.csv row 2: transcript 'é\x87\x8dè¦\x81' looks like utf-8 text decoded as cp1252: probably '重要'",
        False,
    ),
    (
        "truncated",
        truncated_wav,
        "x",
        "rows.csv row 2: audio truncated.wav is truncated: its header declares 8000 frames (0.50 s) but the file "
        "holds 4000 (0.25 s); copy the file again from its source or re-export it (or delete its row)",
        False,
    ),
]


@pytest.mark.parametrize(("uid", "make", "text", "expected", "written"), BAD_ROWS, ids=[r[0] for r in BAD_ROWS])
def test_bad_row(tmp_path: Path, capsys, uid, make, text, expected, written) -> None:
    make(tmp_path / f"{uid}.wav")
    write_csv(tmp_path / "rows.csv", ["id,audio,text", f"{uid},{uid}.wav,{text}"])
    code, _, err = cli(capsys, tmp_path / "rows.csv", "--out-dir", tmp_path / "out")
    assert code == (0 if written else 2)
    assert expected in err
    report = load(tmp_path / "out" / "rows.report.json")
    assert len(report["issues"]) >= 1 and report["rows_written"] == int(written)


def test_long_clip_skipped_with_drop_long(tmp_path: Path, capsys) -> None:
    wav(tmp_path / "long.wav", seconds=31, sr=8000)
    wav(tmp_path / "ok.wav")
    write_csv(tmp_path / "rows.csv", ["id,audio,text", "long,long.wav,x", "ok,ok.wav,y"])
    code, _, err = cli(capsys, tmp_path / "rows.csv", "--out-dir", tmp_path / "o", "--drop-long")
    assert code == 0 and "skipped: 1 × long_audio_dropped" in err
    assert "rows.csv row 2: audio long.wav is 31.0 s long (> 30 s); skipped because of --drop-long" in err


def test_duplicate_id_second_occurrence_rejected(data: Path, tmp_path: Path, capsys) -> None:
    write_csv(data / "rows.csv", ["id,audio,text", "a,wavs/a.wav,one", "a,wavs/b.wav,two"])
    code, _, err = cli(capsys, data / "rows.csv", "--out-dir", tmp_path / "o")
    assert code == 0
    assert "rows.csv row 3: id 'a' appears again; ids must be unique; rename one of them" in err
    assert [r["messages"][1]["content"] for r in load(tmp_path / "o" / "rows.json")] == ["one"]


def test_gbk_csv_is_decoded(data: Path, tmp_path: Path, capsys) -> None:
    write_csv(data / "rows.csv", ["编号,音频,文本", "a,wavs/a.wav,数据集准备"], encoding="gbk")
    code, _, err = cli(capsys, data / "rows.csv", "--out-dir", tmp_path / "o")
    assert code == 0 and "rows.csv: decoded as gb18030" in err
    assert load(tmp_path / "o" / "rows.json")[0]["messages"][1]["content"] == "数据集准备"


def test_utf8_bom_csv_header_matches(data: Path, tmp_path: Path, capsys) -> None:
    write_csv(data / "rows.csv", ["id,audio,text", "a,wavs/a.wav,你好"], encoding="utf-8-sig")
    code, _, err = cli(capsys, data / "rows.csv", "--out-dir", tmp_path / "o")
    assert code == 0 and "decoded as utf-8-sig" in err
    assert load(tmp_path / "o" / "rows.json")[0]["id"] == "a"


def test_mojibake_detector_shapes() -> None:
    assert "gb18030 text decoded as latin-1" in mojibake_hint("数据".encode("gbk").decode("latin-1"))
    assert "utf-8 text decoded as gbk" in mojibake_hint("数据".encode().decode("gbk"))
    assert "U+FFFD" in mojibake_hint("数�集")
    assert mojibake_hint("今天天气很好，我们去公园。") is None and mojibake_hint("Zürich Straße, naïve") is None


def test_audio_count_mismatch_in_sharegpt(data: Path, tmp_path: Path, capsys) -> None:
    rows = [
        {
            "messages": [{"role": "user", "content": "<audio><audio>转写"}, {"role": "assistant", "content": "x"}],
            "audios": ["wavs/a.wav"],
        }
    ]
    (data / "sg.json").write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    code, _, err = cli(capsys, data / "sg.json", "--out-dir", tmp_path / "o")
    assert code == 2
    assert 'sg.json line 1: 2 <audio> placeholder(s) but 1 path(s) in "audios"; an ASR row needs exactly one' in err


def test_two_audio_messages_in_kimi_jsonl(data: Path, tmp_path: Path, capsys) -> None:
    audio = {"role": "user", "message_type": "audio", "content": "wavs/a.wav"}
    rec = {"conversation": [audio, audio, {"role": "assistant", "message_type": "text", "content": "x"}]}
    (data / "k.jsonl").write_text(json.dumps(rec) + "\n", encoding="utf-8")
    code, _, err = cli(capsys, data / "k.jsonl", "--out-dir", tmp_path / "o")
    assert code == 2 and "k.jsonl line 1: 2 audio messages in the conversation; an ASR row needs exactly one" in err


def test_malformed_json_line_names_the_line(data: Path, tmp_path: Path, capsys) -> None:
    lines = ['{"audio": "wavs/a.wav", "text": "ok"}', '{"audio": "wavs/b.wav", "text": ', '{"audio": "wavs/c.wav"']
    (data / "flat.jsonl").write_text("\n".join(lines), encoding="utf-8")
    code, _, err = cli(capsys, data / "flat.jsonl", "--out-dir", tmp_path / "o")
    assert code == 0
    assert "flat.jsonl line 2: invalid JSON (Expecting value at column 33); fix the record or delete it" in err
    assert "flat.jsonl line 3: invalid JSON" in err


def test_kaldi_text_id_missing_in_wav_scp(data: Path, tmp_path: Path, capsys) -> None:
    kaldi = tmp_path / "kaldi"
    kaldi.mkdir()
    (kaldi / "wav.scp").write_text(f"u1 {data / 'wavs' / 'a.wav'}\n", encoding="utf-8")
    (kaldi / "text").write_text("u1 hello\nu9 lost\n", encoding="utf-8")
    code, _, err = cli(capsys, kaldi, "--out-dir", tmp_path / "o")
    assert code == 0
    assert "text line 2: utterance 'u9' has no entry in wav.scp; add the utterance to wav.scp or remove it" in err


# --------------------------------------------------------------------------------------------- bad input: files


def test_unknown_csv_header_lists_headers_and_accepted_names(data: Path, tmp_path: Path, capsys) -> None:
    write_csv(data / "rows.csv", ["foo,bar", "a,b"])
    code, _, err = cli(capsys, data / "rows.csv", "--out-dir", tmp_path / "o")
    line = one_error_line(err)
    assert code == 2
    assert "rows.csv: no transcript column among the headers ['foo', 'bar']; name it one of: text, transcript" in line
    assert "文本" in line and "(or pass --columns text=HEADER)" in line


def test_columns_override_fixes_unknown_header(data: Path, tmp_path: Path, capsys) -> None:
    write_csv(data / "rows.csv", ["foo,bar", "wavs/a.wav,hello"])
    assert cli(capsys, data / "rows.csv", "--out-dir", tmp_path / "o", "--columns", "audio=foo,text=bar")[0] == 0


def test_nonexistent_input(tmp_path: Path, capsys) -> None:
    code, _, err = cli(capsys, tmp_path / "nope.csv", "--out-dir", tmp_path / "o")
    assert code == 2
    assert one_error_line(err).endswith("nope.csv: no such file or directory; check the INPUT path")


def test_unwritable_output_dir(data: Path, tmp_path: Path, capsys) -> None:
    write_csv(data / "rows.csv", ["id,audio,text", "a,wavs/a.wav,hi"])
    (tmp_path / "file").write_text("x")
    code, _, err = cli(capsys, data / "rows.csv", "--out-dir", tmp_path / "file" / "out")
    assert code == 2
    assert f"out: {tmp_path / 'file'} is a file, not a folder; choose another --out-dir" in one_error_line(err)


def test_split_must_sum_to_one(data: Path, tmp_path: Path, capsys) -> None:
    write_csv(data / "rows.csv", ["id,audio,text", "a,wavs/a.wav,hi"])
    code, _, err = cli(capsys, data / "rows.csv", "--out-dir", tmp_path / "o", "--split", "0.9,0.05")
    assert code == 2
    expected = "--split 0.9,0.05: fractions sum to 0.95; they must sum to 1, e.g. 0.9,0.05,0.05"
    assert one_error_line(err).endswith(expected)


def test_strict_stops_at_first_bad_row(data: Path, tmp_path: Path, capsys) -> None:
    write_csv(data / "rows.csv", ["id,audio,text", "a,wavs/a.wav,hi", "b,wavs/gone.wav,x", "c,wavs/c.wav,"])
    code, _, err = cli(capsys, data / "rows.csv", "--out-dir", tmp_path / "o", "--strict")
    assert code == 2
    line = one_error_line(err)
    assert "rows.csv row 3: audio file not found: wavs/gone.wav" in line and "pass --root DIR" in line
    assert not (tmp_path / "o" / "rows.json").exists()


def test_interrupted_write_leaves_no_partial_file(data: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    write_csv(data / "rows.csv", ["id,audio,text", "a,wavs/a.wav,hi"])
    out = tmp_path / "o"
    assert cli(capsys, data / "rows.csv", "--out-dir", out)[0] == 0
    before = (out / "rows.json").read_bytes()
    write_csv(data / "rows.csv", ["id,audio,text", "a,wavs/a.wav,changed", "b,wavs/b.wav,new"])

    def dump_then_die(obj, fh, **kwargs):
        fh.write('[{"id": "a", "messages": [')
        raise KeyboardInterrupt

    monkeypatch.setattr(textio.json, "dump", dump_then_die)
    code, _, err = cli(capsys, data / "rows.csv", "--out-dir", out)
    assert code == 130 and "interrupted" in err
    assert (out / "rows.json").read_bytes() == before  # the old file survives intact
    assert sorted(p.name for p in out.iterdir()) == ["dataset_info.json", "rows.json", "rows.report.json"]


def test_unknown_format_extension(tmp_path: Path, capsys) -> None:
    (tmp_path / "x.xlsx").write_bytes(b"PK")
    code, _, err = cli(capsys, tmp_path / "x.xlsx", "--out-dir", tmp_path / "o")
    assert code == 2 and "x.xlsx: cannot tell the format from the extension '.xlsx'; pass --format" in err


def test_broken_json_array_names_the_line(tmp_path: Path, capsys) -> None:
    (tmp_path / "a.json").write_text('[\n {"audio": "a.wav", "text": "x"},\n {"audio": }\n]', encoding="utf-8")
    code, _, err = cli(capsys, tmp_path / "a.json", "--out-dir", tmp_path / "o", "--format", "flat-json")
    assert code == 2 and one_error_line(err).endswith("a.json line 3: invalid JSON (Expecting value); fix the record")


def test_existing_dataset_info_that_is_not_json(data: Path, tmp_path: Path, capsys) -> None:
    write_csv(data / "rows.csv", ["id,audio,text", "a,wavs/a.wav,hi"])
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "dataset_info.json").write_text("{oops", encoding="utf-8")
    code, _, err = cli(capsys, data / "rows.csv", "--out-dir", tmp_path / "o")
    assert code == 2 and "dataset_info.json line 1: invalid JSON (Expecting property name" in one_error_line(err)


def test_no_usable_rows_is_an_error_with_report(data: Path, tmp_path: Path, capsys) -> None:
    write_csv(data / "rows.csv", ["id,audio,text", "a,wavs/none.wav,hi"])
    code, _, err = cli(capsys, data / "rows.csv", "--out-dir", tmp_path / "o")
    assert code == 2 and "rows.csv: no usable rows (1 problems); see " in err
    assert (tmp_path / "o" / "rows.report.json").exists() and not (tmp_path / "o" / "rows.json").exists()


def test_semicolon_csv_and_flat_record_without_text(data: Path, tmp_path: Path, capsys) -> None:
    write_csv(data / "rows.csv", ["id;audio;text", "a;wavs/a.wav;hello, world"])
    assert cli(capsys, data / "rows.csv", "--out-dir", tmp_path / "o1")[0] == 0
    assert load(tmp_path / "o1" / "rows.json")[0]["messages"][1]["content"] == "hello, world"
    lines = ['{"audio": "wavs/a.wav", "text": "ok"}', '{"audio": "wavs/b.wav", "caption": "?"}']
    (data / "flat.jsonl").write_text("\n".join(lines), encoding="utf-8")
    code, _, err = cli(capsys, data / "flat.jsonl", "--out-dir", tmp_path / "o2")
    assert code == 0
    assert "flat.jsonl line 2: no transcript key in ['audio', 'caption']; fix the record or delete it" in err


# ------------------------------------------------------------------------------- garbled and empty transcripts
GARBLED = "数据集准备".encode().decode("cp1252", errors="replace")  # UTF-8 bytes read as CP1252 (U+FFFD for holes)


def mixed_rows(data: Path) -> Path:
    """Rows 2 and 4 garbled, row 5 empty, rows 3 and 6 clean Chinese."""
    rows = ["id,audio,text", f"a,wavs/a.wav,{GARBLED}", "b,wavs/b.wav,今天天气很好", f"c,wavs/c.wav,{GARBLED}x"]
    wav(data / "wavs" / "d.wav")
    wav(data / "wavs" / "e.wav")
    return write_csv(data / "rows.csv", [*rows, "d,wavs/d.wav,", "e,wavs/e.wav,我们去公园"])


def test_mojibake_rows_are_skipped_and_reported_by_row(data: Path, tmp_path: Path, capsys) -> None:
    code, out, err = cli(capsys, mixed_rows(data), "--out-dir", tmp_path / "o")
    assert code == 0 and out.startswith("converted 2/5 rows (3 skipped")
    assert "skipped: 2 × mojibake (rows.csv rows 2, 4)" in err.splitlines()
    assert "skipped: 1 × empty_text (rows.csv row 5)" in err.splitlines()
    assert "; skipped (pass --keep-mojibake to keep such rows)" in err
    report = load(tmp_path / "o" / "rows.report.json")
    assert report["skipped_by_reason"] == {"empty_text": 1, "mojibake": 2}
    assert [i["line"] for i in report["issues"] if i["reason"] == "mojibake"] == [2, 4]
    assert [r["id"] for r in load(tmp_path / "o" / "rows.json")] == ["b", "e"]


def test_keep_mojibake_keeps_them_without_changing_the_language(data: Path, tmp_path: Path, capsys) -> None:
    code, out, err = cli(capsys, mixed_rows(data), "--out-dir", tmp_path / "o", "--keep-mojibake")
    assert code == 0 and out.startswith("converted 4/5 rows (1 skipped, 2 warnings") and "lang zh" in out
    assert "warning: 2 × mojibake_kept (rows.csv rows 2, 4)" in err.splitlines()
    rows = load(tmp_path / "o" / "rows.json")
    assert [r["id"] for r in rows] == ["a", "b", "c", "e"]
    assert {r["messages"][0]["content"] for r in rows} == {ZH + "<audio>"}  # garbled rows do not vote for English


def test_no_split_note_without_split(data: Path, tmp_path: Path, capsys) -> None:
    write_csv(data / "rows.csv", ["id,audio,text", "a,wavs/none.wav,hi"])
    code, _, err = cli(capsys, data / "rows.csv", "--out-dir", tmp_path / "o")
    assert code == 2 and "--split" not in err
    code, _, err = cli(capsys, data / "rows.csv", "--out-dir", tmp_path / "o", "--split", "0.5,0.5")
    assert code == 2 and "--split" not in err  # no rows at all: the cause is the rows, not the split
    write_csv(data / "one.csv", ["id,audio,text", "a,wavs/a.wav,hi"])
    code, _, err = cli(capsys, data / "one.csv", "--out-dir", tmp_path / "o", "--split", "0.5,0.5")
    assert code == 0 and "one_dev: 0 rows, not written (too few rows for --split)" in err
