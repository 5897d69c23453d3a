"""``kimi-audio-lf convert`` on bad rows among good ones: every bad-row reason skipped with a line naming the file
and row (the good rows still written, exit code 0), ``--drop-long``, duplicate ids, CSV encodings (GBK, UTF-8 BOM),
mojibake and empty transcripts skipped or kept with ``--keep-mojibake``, audio-count mismatches, and the split note.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from convert_samples import ZH, cli, load, wav, write_csv

from llamafactory_kimi_audio.fileio.textio import mojibake_hint


def truncated_wav(path: Path) -> Path:
    """A real 0.5 s 16 kHz PCM-16 WAV (8000 frames) cut after half of its samples, as an interrupted copy leaves it."""
    wav(path)
    with open(path, "r+b") as fh:
        fh.truncate(44 + 2 * 4000)  # the 44-byte canonical header + 4000 of the 8000 frames
    return path


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
