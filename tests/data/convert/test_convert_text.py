"""``kimi-audio-lf convert`` (a real subprocess) on hostile text: legacy encodings, bad bytes, open quotes, bad segment
times, placeholders and invisible / control characters in transcripts, transcripts far longer than their audio."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[3]
CLI = str(Path(sys.executable).with_name("kimi-audio-lf"))
TIMEOUT = 600  # generous: the machine may be loaded

ZH = ["今天天气很好我们去公园散步吧", "这是一个测试句子包括常用的汉字", "数据集准备完毕", "而对楼市成交抑制作用的限购"]
TW = ["今天天氣很好我們去公園散步吧", "這是一個測試句子包括常用的漢字", "資料集準備完畢", "而對樓市成交抑制作用的限購"]
JA = ["今日はいい天気ですね", "公園に散歩に行きましょう", "これはテスト用の文章です", "音声認識のデータを準備しました"]


def wav(path: Path, seconds: float = 0.5, sr: int = 16000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, (0.1 * np.sin(np.arange(int(seconds * sr)) / 7.0)).astype(np.float32), sr, subtype="PCM_16")
    return path


def convert(*args: object) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [CLI, "convert", *map(str, args), "--no-progress"]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=TIMEOUT)


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kimi-audio-lf convert: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def rows(out: Path, name: str) -> list[dict]:
    return json.loads((out / f"{name}.json").read_text(encoding="utf-8"))


def report(out: Path, name: str) -> dict:
    return json.loads((out / f"{name}.report.json").read_text(encoding="utf-8"))


def table(path: Path, texts: list[str], encoding: str, audio: str = "a.wav") -> Path:
    wav(path.parent / audio)
    body = "id,audio,text\n" + "".join(f"u{i},{audio},{text}\n" for i, text in enumerate(texts))
    path.write_bytes(body.encode(encoding))
    return path


def transcripts(out: Path, name: str) -> list[str]:
    return [row["messages"][1]["content"] for row in rows(out, name)]


# ------------------------------------------------------------------------------------------------------ encodings
@pytest.mark.parametrize(
    ("texts", "encoding", "codec"),
    [(ZH, "gb18030", "gb18030"), (TW, "big5", "cp950"), (JA, "shift_jis", "cp932"), (ZH, "utf-16", "utf-16")],
    ids=["gbk", "big5", "shift_jis", "utf16_bom"],
)
def test_legacy_encodings_are_detected(tmp_path: Path, texts, encoding, codec) -> None:
    proc = convert(table(tmp_path / "t.csv", texts, encoding), "--out-dir", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert transcripts(tmp_path / "out", "t") == texts
    assert f"t.csv: decoded as {codec}" in proc.stderr
    assert report(tmp_path / "out", "t")["encoding"] == codec


def test_short_gbk_table_is_not_read_as_big5(tmp_path: Path) -> None:
    """GBK "你好" is also valid Big5 ("斕疑"): the frequent-character hint picks GBK."""
    proc = convert(table(tmp_path / "t.csv", ["你好", "数据集"], "gbk"), "--out-dir", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert transcripts(tmp_path / "out", "t") == ["你好", "数据集"]


def test_unknown_legacy_encoding_is_refused_naming_the_flag(tmp_path: Path) -> None:
    path = table(tmp_path / "t.csv", ["café crème", "naïve façade", "über straße"], "cp1252")
    line = one_line_error(convert(path, "--out-dir", tmp_path / "out"))
    assert "t.csv" in line and "--encoding" in line
    assert not (tmp_path / "out" / "t.json").exists()
    proc = convert(path, "--out-dir", tmp_path / "out", "--encoding", "cp1252")
    assert proc.returncode == 0, proc.stderr
    assert transcripts(tmp_path / "out", "t") == ["café crème", "naïve façade", "über straße"]


def test_wrong_explicit_encoding_is_refused(tmp_path: Path) -> None:
    path = table(tmp_path / "t.csv", ZH, "utf-8")
    line = one_line_error(convert(path, "--out-dir", tmp_path / "out", "--encoding", "shift_jis"))
    assert "lines are not valid" in line and "--encoding" in line
    sjis = table(tmp_path / "j.csv", JA, "shift_jis")  # valid GBK bytes too, but garbage as GBK
    line = one_line_error(convert(sjis, "--out-dir", tmp_path / "out", "--encoding", "gbk"))
    assert "--encoding gbk reads it as" in line and "pass --encoding shift_jis or leave it at auto" in line
    assert not (tmp_path / "out" / "j.json").exists()


def test_one_bad_byte_in_10000_rows_skips_that_row_only(tmp_path: Path) -> None:
    wav(tmp_path / "a.wav")
    lines = ["id,audio,text"] + [f"u{i},a.wav,第{i}句话" for i in range(10000)]
    raw = ("\n".join(lines) + "\n").encode().replace("u4321,a.wav,第4321句".encode(), b"u4321,a.wav,\xff")
    (tmp_path / "big.csv").write_bytes(raw)
    proc = convert(tmp_path / "big.csv", "--out-dir", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert "big.csv row 4323: byte 0xff at column 13 is not valid UTF-8" in proc.stderr
    written = rows(tmp_path / "out", "big")
    assert len(written) == 9999 and "u4321" not in {row["id"] for row in written}
    skipped = [i for i in report(tmp_path / "out", "big")["issues"] if i["severity"] == "error"]
    assert [(i["reason"], i["line"]) for i in skipped] == [("undecodable_text", 4323)]


def test_bad_byte_in_jsonl_and_kaldi_text_skips_the_line(tmp_path: Path) -> None:
    wav(tmp_path / "a.wav")
    wav(tmp_path / "b.wav")
    good = json.dumps({"audio": "a.wav", "text": "好的"}, ensure_ascii=False).encode()
    (tmp_path / "f.jsonl").write_bytes(good + b'\n{"audio": "b.wav", "text": "\xfe"}\n')
    proc = convert(tmp_path / "f.jsonl", "--out-dir", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert "f.jsonl line 2: byte 0xfe" in proc.stderr and transcripts(tmp_path / "out", "f") == ["好的"]

    kaldi = tmp_path / "kaldi"
    kaldi.mkdir()
    (kaldi / "wav.scp").write_text(f"u1 {tmp_path / 'a.wav'}\nu2 {tmp_path / 'b.wav'}\n", encoding="utf-8")
    (kaldi / "text").write_bytes("u1 你好\n".encode() + b"u2 \xff\xfe\n")
    proc = convert(kaldi, "--out-dir", tmp_path / "out", "--name", "k")
    assert proc.returncode == 0, proc.stderr
    assert "text line 2: byte 0xff" in proc.stderr and transcripts(tmp_path / "out", "k") == ["你好"]


# ------------------------------------------------------------------------------------------------- open quotes
def test_unterminated_quote_in_10000_rows_skips_the_row_it_opens_on(tmp_path: Path) -> None:
    wav(tmp_path / "a.wav")
    lines = ["id,audio,text"] + [f"u{i},a.wav,sentence {i}" for i in range(10000)]
    lines[101] = 'u100,a.wav,"he said hello'  # file line 102: the quote never closes
    (tmp_path / "q.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    proc = convert(tmp_path / "q.csv", "--out-dir", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "field larger" not in proc.stderr
    assert "q.csv row 102: " in proc.stderr and "opens a quote on line 102" in proc.stderr
    written = {row["id"]: row["messages"][1]["content"] for row in rows(tmp_path / "out", "q")}
    assert len(written) == 9999 and "u100" not in written and written["u101"] == "sentence 101"


def test_quote_open_to_the_end_and_real_multiline_cells(tmp_path: Path) -> None:
    wav(tmp_path / "a.wav")
    body = 'id,audio,text\nu1,a.wav,"line one\nline two"\nu2,a.wav,fine\nu3,a.wav,"never closed\n'
    (tmp_path / "m.csv").write_text(body, encoding="utf-8")
    proc = convert(tmp_path / "m.csv", "--out-dir", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert transcripts(tmp_path / "out", "m") == ["line one line two", "fine"]
    assert "m.csv row 4: line 5: opens a quote on line 5 that never closes" in proc.stderr


# ----------------------------------------------------------------------------------------------- Kaldi segments
def test_nonfinite_and_negative_segment_times_skip_their_line(tmp_path: Path) -> None:
    data = tmp_path / "kaldi"
    wav(data / "rec1.wav", seconds=4.0)
    (data / "wav.scp").write_text("rec1 rec1.wav\n", encoding="utf-8")
    times = ["0.0 1.0", "nan 2.0", "1.0 inf", "-inf 1.0", "-0.5 1.0", "3.0 2.0", "2.0 3.0"]
    (data / "segments").write_text("".join(f"s{i} rec1 {t}\n" for i, t in enumerate(times)), encoding="utf-8")
    (data / "text").write_text("".join(f"s{i} WORD {i}\n" for i in range(len(times))), encoding="utf-8")
    proc = convert(data, "--out-dir", tmp_path / "out", "--name", "seg")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    found = report(tmp_path / "out", "seg")
    lines = (tmp_path / "out" / "seg.issues.jsonl").read_text(encoding="utf-8").splitlines()
    issues = {(i["reason"], i["line"]) for i in map(json.loads, lines)}
    assert {("nonfinite_span", 2), ("nonfinite_span", 3), ("nonfinite_span", 4)} <= issues
    assert {("negative_span", 5), ("reversed_span", 6)} <= issues
    assert "segments line 2: utterance s1: begin/end nan 2.0 are not finite" in proc.stderr
    assert found["rows_written"] == 2


# -------------------------------------------------------------------------------------------------- transcripts
def test_placeholders_control_and_invisible_characters(tmp_path: Path) -> None:
    texts = {
        "audio_tag": "hello <audio> world",
        "special": "hello <|im_media_end|>",
        "image_tag": "look at <image> this",
        "zero_width": "\u200b\u200b\u200b",
        "nul": "hel\x00lo",
        "zw_inside": "hel\u200blo wor\ufeffld",
        "plain": "plain words",
    }
    wav(tmp_path / "a.wav")
    lines = [json.dumps({"id": k, "audio": "a.wav", "text": v}, ensure_ascii=False) for k, v in texts.items()]
    (tmp_path / "t.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    proc = convert(tmp_path / "t.jsonl", "--out-dir", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    written = {row["id"]: row["messages"][1]["content"] for row in rows(tmp_path / "out", "t")}
    assert written == {"image_tag": "look at <image> this", "zw_inside": "hello world", "plain": "plain words"}
    reasons = {i["uid"]: i["reason"] for i in report(tmp_path / "out", "t")["issues"] if i["severity"] == "error"}
    assert reasons == {
        "audio_tag": "placeholder_in_text",
        "special": "placeholder_in_text",
        "zero_width": "empty_text",
        "nul": "control_characters",
    }
    assert "t.jsonl line 1: transcript 'hello <audio> world' contains <audio>" in proc.stderr
    assert "t.jsonl line 5: transcript has control character U+0000 at position 4" in proc.stderr
    assert "t.jsonl line 4: transcript has no visible character (only U+200B)" in proc.stderr


def test_transcript_far_longer_than_its_audio_is_warned_about(tmp_path: Path) -> None:
    wav(tmp_path / "a.wav", seconds=2.0)
    wav(tmp_path / "b.wav", seconds=2.0)
    long_text = "很长的转写" * 8000  # 40,000 characters for 2 s of audio
    body = f"id,audio,text\nlong,a.wav,{long_text}\nok,b.wav,这句话的长度正常\n"
    (tmp_path / "l.csv").write_text(body, encoding="utf-8")
    proc = convert(tmp_path / "l.csv", "--out-dir", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert "l.csv row 2: transcript has 40000 characters for 2.00 s of audio (20000/s)" in proc.stderr
    warned = [i for i in report(tmp_path / "out", "l")["issues"] if i["reason"] == "long_transcript"]
    assert [(i["uid"], i["severity"]) for i in warned] == [("long", "warning")]


def test_spoken_reply_table_with_an_open_quote_keeps_the_other_rows(tmp_path: Path) -> None:
    wav(tmp_path / "q.wav")
    wav(tmp_path / "a.wav")
    wav(tmp_path / "b.wav")
    body = 'question,answer,answer_audio\nhi,"hello there,a.wav\nhow are you,fine thanks,b.wav\n'
    (tmp_path / "sr.csv").write_text(body, encoding="utf-8")
    proc = convert(tmp_path / "sr.csv", "--out-dir", tmp_path / "out", "--task", "spoken-reply")
    assert proc.returncode == 0, proc.stderr
    assert "sr.csv row 2: opens a quote on line 2" in proc.stderr
    assert [row["messages"][1]["content"] for row in rows(tmp_path / "out", "sr")] == ["fine thanks<audio>"]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("id,text\n1,café crème\n2,naïve Müller\n".encode(), "utf-8"),  # two-byte UTF-8 is also valid GBK
        ("id,text\n1,привет мир\n".encode(), "utf-8"),
        ("id,text\n1,你好\n".encode("utf-16-le"), "utf-16-le"),  # UTF-16 saved without a BOM
        ("id,text\n1,你好\n2,谢谢\n".encode("gbk"), "gb18030"),  # also valid Big5 and ("谢谢") UTF-8
        ("id,text\n1,안녕하세요 반갑습니다\n".encode("cp949"), "refused"),  # Korean: not a candidate
    ],
    ids=["latin_utf8", "cyrillic_utf8", "utf16_no_bom", "short_gbk", "korean"],
)
def test_detection_edge_cases(raw: bytes, expected: str) -> None:
    from llamafactory_kimi_audio.fileio.text_encodings import EncodingError, decode_bytes

    if expected == "refused":
        with pytest.raises(EncodingError, match="--encoding"):
            decode_bytes(raw, "t.csv")
    else:
        assert decode_bytes(raw, "t.csv").codec == expected


def test_old_mac_line_endings_and_a_bad_byte(tmp_path: Path) -> None:
    wav(tmp_path / "a.wav")
    (tmp_path / "mac.csv").write_bytes(b"id,audio,text\r1,a.wav,first\r2,a.wav,\xff\r3,a.wav,third\r")
    proc = convert(tmp_path / "mac.csv", "--out-dir", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert transcripts(tmp_path / "out", "mac") == ["first", "third"]
    assert "mac.csv row 3: byte 0xff at column 9 is not valid UTF-8" in proc.stderr


@pytest.mark.parametrize("encoding", ["utf-8-sig", "gbk"])
def test_excel_export_with_a_repeated_header_names_that_line(tmp_path: Path, encoding: str) -> None:
    """Two Excel exports pasted together: CRLF, a blank last line, the header again in the middle, a quoted comma."""
    wav(tmp_path / "clips" / "a.wav")
    lines = ["id,audio,text", "u1,clips/a.wav,今天天气很好", "id,audio,text", 'u2,clips/a.wav,"好的,谢谢"']
    (tmp_path / "x.csv").write_bytes(("\r\n".join(lines) + "\r\n\r\n").encode(encoding))
    proc = convert(tmp_path / "x.csv", "--out-dir", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert transcripts(tmp_path / "out", "x") == ["今天天气很好", "好的,谢谢"]
    assert "x.csv row 3: repeats the header row" in proc.stderr, proc.stderr
    assert "audio file not found" not in proc.stderr
    assert report(tmp_path / "out", "x")["skipped_by_reason"] == {"repeated_header": 1}


def test_row_with_more_cells_than_the_header_is_not_cut_silently(tmp_path: Path) -> None:
    """An unquoted comma in a hand-edited transcript: the text after it must not vanish from the written row."""
    wav(tmp_path / "a.wav")
    body = "id,audio,text\nu1,a.wav,七六六十,好的,谢谢\nu2,a.wav,今天天气很好\nu3,a.wav,数据集准备完毕,,\n"
    (tmp_path / "c.csv").write_text(body, encoding="utf-8")
    proc = convert(tmp_path / "c.csv", "--out-dir", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert transcripts(tmp_path / "out", "c") == ["今天天气很好", "数据集准备完毕"]  # empty extra cells: harmless
    assert "c.csv row 2: has 5 cells but the header has 3 (after the last column: '好的', '谢谢')" in proc.stderr
    assert report(tmp_path / "out", "c")["skipped_by_reason"] == {"extra_cells": 1}
