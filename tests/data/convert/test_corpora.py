"""Public corpus layouts: each miniature corpus (tests/corpus_fixtures.py) converts to exactly the expected rows,
with the expected problems reported; detection, --format, --subsets, --strict, resume and the CLI."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import corpus_fixtures as cf  # noqa: E402

from llamafactory_kimi_audio.cli import main  # noqa: E402
from llamafactory_kimi_audio.data.convert.converter import ConvertOptions, convert  # noqa: E402
from llamafactory_kimi_audio.fileio.textio import DataError  # noqa: E402


def run(src: Path, out: Path, **kw):
    return convert(str(src), str(out), ConvertOptions(name=kw.pop("name", "c"), progress=False, workers=1, **kw))


def rows(out: Path, dataset: str) -> list[tuple[str, str, str]]:
    """(id, transcript, audio entry relative to the corpus root) of every row of a sharded dataset."""
    found = []
    for shard in sorted((out / dataset).iterdir()):
        for line in shard.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            found.append((row["id"], row["messages"][1]["content"], row["audios"][0]))
    return found


def tail(audio: str, parts: int = 1) -> str:
    return "/".join(audio.split("/")[-parts:])


def issues(out: Path, name: str = "c") -> list[tuple[str, str | None]]:
    lines = (out / f"{name}.issues.jsonl").read_text(encoding="utf-8").splitlines()
    return [(raw["reason"], raw["uid"]) for raw in map(json.loads, lines)]


def test_aishell1(tmp_path: Path) -> None:
    result = run(cf.aishell1(tmp_path / "src"), tmp_path / "out")
    assert result.layout == "aishell1" and result.lang == "zh"
    got = {ds: [(uid, text, tail(a)) for uid, text, a in rows(tmp_path / "out", ds)] for ds in result.datasets}
    assert got == {
        "c_dev": [("BAC009S0724W0121", "甚至出现交易几乎停滞的情况", "BAC009S0724W0121.wav")],
        "c_test": [("BAC009S0764W0121", "kt线的走势", "BAC009S0764W0121.wav")],
        "c_train": [
            ("BAC009S0002W0122", "而对楼市成交抑制作用最大的限购", "BAC009S0002W0122.wav"),
            ("BAC009S0002W0123", "也成为地方政府的眼中钉", "BAC009S0002W0123.wav"),
        ],
    }
    assert issues(tmp_path / "out") == [("missing_transcript", "BAC009S0002W0124")]
    assert result.notes == ["1 transcript lines without audio (normal when not every split is extracted)"]


def test_aishell1_packed_speakers_name_the_extraction(tmp_path: Path) -> None:
    wav = tmp_path / "data_aishell" / "wav"
    wav.mkdir(parents=True)
    (wav / "S0002.tar.gz").write_bytes(b"")
    (tmp_path / "data_aishell" / "transcript").mkdir()
    (tmp_path / "data_aishell" / "transcript" / "aishell_transcript_v0.8.txt").write_text("A b\n")
    with pytest.raises(DataError, match=r"extract the speaker tarballs first: .*tar -xzf"):
        run(tmp_path / "data_aishell", tmp_path / "out")


def test_aishell2(tmp_path: Path) -> None:
    result = run(cf.aishell2(tmp_path / "src"), tmp_path / "out")
    assert result.layout == "aishell2"
    got = {ds: [(uid, text) for uid, text, _ in rows(tmp_path / "out", ds)] for ds in result.datasets}
    assert got == {
        "c_iOS_data": [("IC0001W0001", "厨房用具"), ("IC0001W0002", "电蒸锅")],
        "c_iOS_dev": [("IT0011W0001", "帮我放一首歌Let's")],
    }


def test_librispeech(tmp_path: Path) -> None:
    result = run(cf.librispeech(tmp_path / "src"), tmp_path / "out", text_case="lower")
    assert result.layout == "librispeech" and result.lang == "en"
    got = {ds: [(uid, text, tail(a, 3)) for uid, text, a in rows(tmp_path / "out", ds)] for ds in result.datasets}
    assert got["c_train-clean-100"] == [
        ("19-198-0001", "northanger abbey", "19/198/19-198-0001.flac"),
        ("19-198-0002", "catherine's father was a clergyman", "19/198/19-198-0002.flac"),
    ]
    assert [uid for uid, _, _ in got["c_dev-clean"]] == ["84-121123-0000", "84-121123-0001"]
    assert issues(tmp_path / "out") == [("missing_audio", "19-198-0003")]


@pytest.mark.parametrize("old_header", [False, True])
def test_commonvoice_quotes_verbatim(tmp_path: Path, old_header: bool) -> None:
    result = run(cf.commonvoice(tmp_path / "src", old_header), tmp_path / "out")
    assert result.layout == "commonvoice" and result.lang == "zh"
    got = {ds: [(uid, text) for uid, text, _ in rows(tmp_path / "out", ds)] for ds in result.datasets}
    assert got == {
        "c_train": [("common_voice_zh-CN_100001", '"你好，"他说。'), ("common_voice_zh-CN_100002", '他说"不')],
        "c_dev": [("common_voice_zh-CN_100003", "今天天气很好。")],
    }
    assert "zh-CN/test.tsv has no rows" in result.notes


def test_commonvoice_validated_view(tmp_path: Path) -> None:
    result = run(cf.commonvoice(tmp_path / "src"), tmp_path / "out", subsets=("validated",))
    assert list(result.datasets) == ["c_validated"] and result.datasets["c_validated"]["rows"] == 3


def test_wenetspeech(tmp_path: Path) -> None:
    result = run(cf.wenetspeech(tmp_path / "src"), tmp_path / "out")
    out = tmp_path / "out"
    assert result.layout == "wenetspeech" and result.lang == "zh"
    assert [(uid, tail(a)) for uid, _, a in rows(out, "c_L")] == [
        ("Y0000000000_--5llN02F84_S00000", "Y0000000000_--5llN02F84.opus#t=1.0,4.5"),
        ("Y0000000000_--5llN02F84_S00001", "Y0000000000_--5llN02F84.opus#t=4.0,6.0"),
        ("X0000000000_100638174_S00000", "X0000000000_100638174.opus#t=0.5,4.0"),
    ]
    assert [(uid, text) for uid, text, _ in rows(out, "c_DEV")] == [("DEV0000000001_S00000", "开发集")]
    assert sorted(issues(out)) == sorted(
        [
            ("overlapping_segments", "Y0000000000_--5llN02F84_S00001"),
            ("reversed_span", "Y0000000000_--5llN02F84_S00002"),
            ("empty_span", "Y0000000000_--5llN02F84_S00004"),
            ("segment_end_clamped", "X0000000000_100638174_S00000"),
            ("segment_past_end", "X0000000000_100638174_S00001"),
            ("missing_audio", "TEST_NET_Y0000000001_S00000"),
        ]
    )
    assert result.notes == ["1 segments are not in the selected subsets (L,DEV,TEST_NET,TEST_MEETING)"]
    report = json.loads((out / "c.report.json").read_text())
    assert report["datasets"]["c_L"]["rows"] == 3
    assert report["datasets"]["c_L"]["hours"] == round((3.5 + 2.0 + 3.5) / 3600, 4)
    assert report["no_rows"]["c_TEST_NET"]["skipped_by_reason"] == {"missing_audio": 1}


@pytest.mark.parametrize(("subsets", "expected"), [(("W",), ["c_W"]), (("S",), ["c_S"])])
def test_wenetspeech_subsets_and_braces(tmp_path: Path, subsets: tuple[str, ...], expected: list[str]) -> None:
    plain = run(cf.wenetspeech(tmp_path / "a"), tmp_path / "o1", subsets=subsets)
    braced = run(cf.wenetspeech(tmp_path / "b", braces=True), tmp_path / "o2", subsets=subsets)
    assert list(plain.datasets) == list(braced.datasets) == expected
    assert [r[:2] for r in rows(tmp_path / "o1", expected[0])] == [r[:2] for r in rows(tmp_path / "o2", expected[0])]
    assert len(rows(tmp_path / "o1", expected[0])) == 1


def test_gigaspeech_text_options(tmp_path: Path) -> None:
    src = cf.gigaspeech(tmp_path / "src")
    result = run(src, tmp_path / "out")
    assert result.layout == "gigaspeech" and result.lang == "en"
    assert [t for _, t, _ in rows(tmp_path / "out", "c_XL")] == [
        "FOUR O'CLOCK TOMORROW AFTERNOON, SAID WILLIAMS.",
        "WHAT DID YOU SAY?",
    ]
    assert [t for _, t, _ in rows(tmp_path / "out", "c_DEV")] == ["HELLO THERE!"]
    assert issues(tmp_path / "out") == [("garbage_utterance", "YOU0000000001_S0000000")]
    run(src, tmp_path / "lower", text_case="lower", giga_text="strip")
    assert rows(tmp_path / "lower", "c_XL")[0][1] == "four o'clock tomorrow afternoon said williams"


def test_kaldi_segments(tmp_path: Path) -> None:
    result = run(cf.kaldi_segments(tmp_path / "src"), tmp_path / "out")
    assert result.layout == "kaldi-segments"
    assert [(uid, tail(a)) for uid, _, a in rows(tmp_path / "out", "c_train")] == [
        ("spkA-rec1-0001", "rec1.wav#t=0.5,3.2"),
        ("spkA-rec1-0002", "rec1.wav#t=3.0,6.0"),
        ("spkB-rec2-0001", "rec2.flac#t=1.0,5.0"),
        ("spkB-rec2-0002", "rec2.flac#t=4.0,5.0"),
    ]
    assert sorted(issues(tmp_path / "out")) == sorted(
        [
            ("overlapping_segments", "spkA-rec1-0002"),
            ("segment_end_clamped", "spkB-rec2-0002"),
            ("overlapping_segments", "spkB-rec2-0002"),  # [4, 5] lies inside [1, EOF=5]
            ("reversed_span", "spkB-rec2-0003"),
            ("kaldi_pipe", "spkC-rec3-0001"),
            ("kaldi_unmatched", "spkD-rec9-0001"),
            ("kaldi_unmatched", "spkE-orphan-0001"),
        ]
    )
    assert any("resolved against" in note and note.endswith("recipe") for note in result.notes)


def test_kaldi_pipe_is_never_executed(tmp_path: Path) -> None:
    data = cf.kaldi_segments(tmp_path / "src")
    marker = tmp_path / "executed"
    (data / "wav.scp").write_text(f"rec1 touch {marker} |\n")
    (data / "segments").write_text("u1 rec1 0 1\n")
    (data / "text").write_text("u1 HELLO\n")
    with pytest.raises(DataError, match="pipe command .*NOT executed"):
        run(data, tmp_path / "out", strict=True)
    assert not marker.exists()


def test_hf_datasets(tmp_path: Path) -> None:
    paths = cf.hf_datasets(tmp_path / "src")
    out = tmp_path / "out"
    single = run(paths["hf_single"], out, name="one")
    assert single.layout == "hf-disk"
    got = rows(out, "one_train")
    assert [(uid, text) for uid, text, _ in got] == [("a", "hello"), ("b", "world")]
    assert [Path(a).suffix for _, _, a in got] == [".wav", ".flac"]
    assert (out / got[1][2]).read_bytes() == cf.audio_bytes(0.5, "FLAC")  # embedded bytes written out unchanged
    dd = run(paths["hf_dd"], out, name="dd")
    assert {ds: report["rows"] for ds, report in dd.datasets.items()} == {"dd_test": 1, "dd_train": 2}
    pq = run(paths["hf_parquet"], out, name="pq")
    assert pq.layout == "parquet" and [r[:2] for r in rows(out, "pq_train")] == [("a", "hello"), ("b", "world")]
    with pytest.raises(DataError, match=r"train.parquet: no audio column among \['sentence', 'id'\]"):
        run(paths["no_audio"], out, name="bad")


def test_unknown_layout_lists_what_was_looked_for(tmp_path: Path) -> None:
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.md").write_text("x")
    with pytest.raises(DataError) as err:
        run(tmp_path / "empty", tmp_path / "out")
    message = str(err.value)
    assert "unknown corpus layout" in message and "\n" not in message
    for looked in ("WenetSpeech.json", "aishell_transcript", "trans.txt", "train.tsv", "segments", "state.json"):
        assert looked in message


def test_format_names_the_expected_layout(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a librispeech corpus; expected LibriSpeech"):
        run(cf.aishell2(tmp_path / "src"), tmp_path / "out", format="librispeech")


def test_resume_after_interruption(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from llamafactory_kimi_audio.data.convert import corpus_convert

    src, out = cf.wenetspeech(tmp_path / "src"), tmp_path / "out"
    full = run(src, tmp_path / "full", chunk_rows=2)
    original, calls = corpus_convert._Run.one_chunk, []

    def interrupted(self, index, chunk, probes):
        calls.append(index)
        if index == 2:
            raise KeyboardInterrupt
        return original(self, index, chunk, probes)

    monkeypatch.setattr(corpus_convert._Run, "one_chunk", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(src, out, chunk_rows=2)
    monkeypatch.setattr(corpus_convert._Run, "one_chunk", original)
    resumed = run(src, out, chunk_rows=2)
    assert resumed.resumed_from == 2
    for ds in full.datasets:
        assert rows(out, ds) == [(u, t, a) for u, t, a in rows(tmp_path / "full", ds)]
    assert sorted(issues(out)) == sorted(issues(tmp_path / "full"))
    assert resumed.datasets == full.datasets
    assert not any(name.startswith(".") for name in os.listdir(out))  # no temp folder left


def test_cli_reports_per_subset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = cf.wenetspeech(tmp_path / "src")
    code = main(
        ["convert", str(src), "--out-dir", str(tmp_path / "out"), "--name", "w", "--no-progress", "--workers", "2"]
    )
    out, err = capsys.readouterr()
    assert code == 0
    assert "w_L: 3 rows, 0.00 h" in out and "w_DEV: 1 rows" in out
    assert "skipped: 1 × segment_past_end" in err and "ends past the end of the file" in err
    info = json.loads((tmp_path / "out" / "dataset_info.json").read_text())
    assert info["w_L"]["file_name"] == "w_L" and set(info) == {"w_L", "w_DEV"}
    code = main(
        ["convert", str(src), "--out-dir", str(tmp_path / "o2"), "--strict", "--no-progress", "--workers", "1"]
    )
    assert code == 2
    assert "reversed span" in capsys.readouterr().err


def test_non_utf8_transcript_names_the_file_and_the_fix(tmp_path: Path) -> None:
    src = cf.aishell1(tmp_path / "src")
    transcript = src / "data_aishell" / "transcript" / "aishell_transcript_v0.8.txt"
    transcript.write_bytes(transcript.read_text(encoding="utf-8").encode("gbk"))
    with pytest.raises(DataError, match=r"aishell_transcript_v0.8.txt: 2 of the first 2 lines are not valid utf-8 "):
        run(src, tmp_path / "out")
    result = run(src, tmp_path / "out2", encoding="gbk")
    assert result.datasets["c_train"]["rows"] == 2
