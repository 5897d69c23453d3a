"""``kimi-audio-lf convert`` on bad files and options: one error line naming the file and saying how to fix it, and
exit code 2 (unknown CSV headers and ``--columns``, missing input, unwritable output folder, ``--split`` not summing to
one, ``--strict``, unknown extensions, broken JSON, a ``dataset_info.json`` that is not JSON, no usable row); an
interrupted write leaves no partial file.
"""

from __future__ import annotations

from pathlib import Path

from convert_samples import cli, load, write_csv

from llamafactory_kimi_audio.fileio import textio


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("kimi-audio-lf convert: error: ")
    return lines[0]


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
