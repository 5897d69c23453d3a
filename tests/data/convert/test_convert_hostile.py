"""``convert`` through the real CLI in subprocesses, on inputs that used to go wrong: a killed corpus convert
leaves no worker behind, LibriSpeech with an untranscribed first chapter, file names that are not UTF-8, and reader
problems reported under their real dataset (issue 25 items 8, 9 and 12)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import corpus_fixtures as cf  # noqa: E402
from convert_cli import CLI, ENV, LINUX, convert, read_jsonl, shard_audios  # noqa: E402

EXIT_INTERRUPTED = 130


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
    """Poll until ``condition()`` holds; the timeout only turns a hang into a failure."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# ------------------------------------------------------------------------------------ item 12: no orphan workers
def live_processes() -> dict[int, tuple[int, bytes]]:
    """pid → (parent pid, command line) of every process that is not a zombie."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()  # after "(comm)": state, ppid, ...
        except (OSError, IndexError):
            continue
        if fields[0] != "Z":
            found[int(entry.name)] = (int(fields[1]), cmdline)
    return found


def processes_mentioning(marker: str) -> list[int]:
    return [pid for pid, (_, cmdline) in live_processes().items() if marker.encode() in cmdline]


def children_of(parent: int) -> list[int]:
    return [pid for pid, (ppid, _) in live_processes().items() if ppid == parent]


@pytest.mark.skipif(not LINUX, reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killed_corpus_convert_leaves_no_worker(tmp_path: Path, sig: signal.Signals) -> None:
    src, out = cf.librispeech(tmp_path / "src"), tmp_path / "out"
    # the first shard's temp file is a FIFO: convert blocks opening it, with its probe workers started, until killed
    (out / ".c.tmp").mkdir(parents=True)
    os.mkfifo(out / ".c.tmp" / "c_dev-clean.part-00000.jsonl")
    command = [*CLI, "convert", str(src), "--out-dir", str(out), "--name", "c", "--workers", "2", "--chunk-rows", "1"]
    proc = subprocess.Popen([*command, "--no-progress"], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: len(children_of(proc.pid)) >= 1, "the pool workers to start")
        workers = children_of(proc.pid)
        assert set(workers) <= set(processes_mentioning(str(out)))
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
        wait_for(lambda: not processes_mentioning(str(out)), "the pool workers to exit")
    finally:  # whatever failed, leave nothing of this run behind
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in processes_mentioning(str(out)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    if sig == signal.SIGTERM:  # stopped like ctrl-c: one line, the documented exit code
        assert proc.returncode == EXIT_INTERRUPTED and err.decode().strip() == "kimi-audio-lf: interrupted"
    else:
        assert proc.returncode == -signal.SIGKILL
    os.unlink(out / ".c.tmp" / "c_dev-clean.part-00000.jsonl")
    rerun = convert(src, "--out-dir", out, "--name", "c", "--workers", "2", "--chunk-rows", "1", cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert sorted(shard_audios(out)) == ["c_dev-clean", "c_train-clean-100"]
    assert sum(map(len, shard_audios(out).values())) == 4


# ------------------------------------------------------------------------------------ item 8: LibriSpeech
def untranscribed_first_chapter(root: Path) -> Path:
    """The LibriSpeech miniature plus a chapter sorted first in dev-clean (84/121122) that has clips, no trans.txt."""
    base = cf.librispeech(root)
    for utt in ("84-121122-0000", "84-121122-0001"):
        cf.tone(base / "dev-clean" / "84" / "121122" / f"{utt}.flac", 0.8, fmt="FLAC")
    return base


@pytest.mark.parametrize("fmt", ["auto", "librispeech"])
def test_librispeech_with_an_untranscribed_first_chapter(tmp_path: Path, fmt: str) -> None:
    base = untranscribed_first_chapter(tmp_path / "src")
    for split in ("", "dev-clean"):  # the corpus root and one split folder
        out = tmp_path / f"out-{split or 'root'}"
        proc = convert(base / split, "--out-dir", out, "--name", "c", "--format", fmt, "--workers", "1", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert "(layout librispeech" in proc.stdout
        note = "1 chapter without a .trans.txt: their clips were skipped (missing_transcript): dev-clean/84/121122"
        assert note in proc.stderr
        report = json.loads((out / "c.report.json").read_text(encoding="utf-8"))
        assert report["datasets"]["c_dev-clean"]["rows"] == 2  # the transcribed chapter's clips
        assert report["datasets"]["c_dev-clean"]["skipped_by_reason"] == {"missing_transcript": 2}
        issues = read_jsonl(out / "c.issues.jsonl")
        skipped = [(i["reason"], i["uid"], i["subset"]) for i in issues if i["reason"] == "missing_transcript"]
        assert skipped == [("missing_transcript", f"84-121122-000{n}", "dev-clean") for n in (0, 1)]


def test_librispeech_format_still_refuses_another_layout(tmp_path: Path) -> None:
    proc = convert(cf.aishell2(tmp_path / "src"), "--out-dir", "out", "--format", "librispeech", cwd=tmp_path)
    assert proc.returncode == 2 and "not a librispeech corpus; expected LibriSpeech" in proc.stderr


# ------------------------------------------------------------------------ item 12: reader problems, real datasets
def test_reader_problems_are_filed_under_their_dataset(tmp_path: Path) -> None:
    src = cf.aishell1(tmp_path / "src")
    wenet = cf.wenetspeech(tmp_path / "wsrc")
    manifest_path = wenet / "WenetSpeech.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    manifest["audios"].append({"aid": "no_path", "segments": []})  # belongs to no subset
    manifest_path.write_text(json.dumps(manifest, ensure_ascii=False), encoding="utf-8")
    for corpus, name in ((src, "a"), (wenet, "w")):
        proc = convert(corpus, "--out-dir", "out", "--name", name, "--workers", "1", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
    aishell = json.loads((tmp_path / "out" / "a.report.json").read_text(encoding="utf-8"))
    assert aishell["datasets"]["a_train"]["skipped_by_reason"] == {"missing_transcript": 1}
    wenet_report = json.loads((tmp_path / "out" / "w.report.json").read_text(encoding="utf-8"))
    assert wenet_report["outside_datasets"] == {"skipped_by_reason": {"malformed_record": 1}}
    for report in (aishell, wenet_report):
        assert not [name for name in [*report["datasets"], *report["no_rows"]] if "?" in name]
    assert not [path.name for path in (tmp_path / "out").iterdir() if "?" in path.name or path.name.endswith("_")]


# ---------------------------------------------------------------------------- item 9: file names that are not UTF-8
@pytest.mark.skipif(not LINUX, reason="needs a file system that stores file names as bytes")
def test_non_utf8_file_name_is_skipped_with_its_reason(tmp_path: Path) -> None:
    clips = tmp_path / "clips"
    cf.tone(clips / "good.wav", 0.5)
    (clips / "good.txt").write_text("good clip\n", encoding="utf-8")
    bad = os.path.join(os.fsencode(clips), b"caf\xe9.wav")  # Latin-1 "café": not UTF-8
    with open(bad, "wb") as fh:
        fh.write((clips / "good.wav").read_bytes())
    with open(bad[: -len(b".wav")] + b".txt", "wb") as fh:
        fh.write(b"bad name\n")
    proc = convert("clips", "--out-dir", "out", "--name", "n", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("converted 1/2 rows (1 skipped") and "Traceback" not in proc.stderr
    assert "skipped: 1 × undecodable_name" in proc.stderr and "caf\\xe9.wav" in proc.stderr
    rows = json.loads((tmp_path / "out" / "n.json").read_text(encoding="utf-8"))
    assert [row["audios"] for row in rows] == [[str(clips / "good.wav")]]
    report = json.loads((tmp_path / "out" / "n.report.json").read_text(encoding="utf-8"))
    assert report["skipped_by_reason"] == {"undecodable_name": 1}
    assert report["issues"][0]["file"] == "caf\\xe9.wav" and "not valid UTF-8" in report["issues"][0]["message"]


@pytest.mark.skipif(not LINUX, reason="needs a file system that stores file names as bytes")
def test_non_utf8_folder_name_in_a_corpus_is_skipped_with_its_reason(tmp_path: Path) -> None:
    src = cf.aishell1(tmp_path / "src")
    base = src / "data_aishell"
    speaker = os.path.join(os.fsencode(base), b"wav", b"train", b"S0002\xff")  # a GBK-named folder, say
    os.mkdir(speaker)
    with open(os.path.join(speaker, b"BAC009S0002W0125.wav"), "wb") as fh:
        fh.write(cf.audio_bytes(0.5, "WAV"))
    transcript = base / "transcript" / "aishell_transcript_v0.8.txt"
    transcript.write_text(transcript.read_text(encoding="utf-8") + "BAC009S0002W0125 好\n", encoding="utf-8")
    proc = convert(src, "--out-dir", "out", "--name", "c", "--workers", "2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "skipped: 1 × undecodable_name" in proc.stderr and "Traceback" not in proc.stderr
    issues = read_jsonl(tmp_path / "out" / "c.issues.jsonl")
    found = [(i["reason"], i["uid"], i["subset"]) for i in issues]
    assert found == [
        ("missing_transcript", "BAC009S0002W0124", "train"),
        ("undecodable_name", "BAC009S0002W0125", "train"),
    ]
    assert "S0002\\xff/BAC009S0002W0125.wav" in issues[1]["file"]
    report = json.loads((tmp_path / "out" / "c.report.json").read_text(encoding="utf-8"))
    assert report["datasets"]["c_train"]["rows"] == 2
    assert report["datasets"]["c_train"]["skipped_by_reason"] == {"missing_transcript": 1, "undecodable_name": 1}


@pytest.mark.skipif(not LINUX, reason="needs a file system that stores file names as bytes")
def test_folder_under_a_non_utf8_directory_is_one_line_and_a_report(tmp_path: Path) -> None:
    clips = os.path.join(os.fsencode(tmp_path), b"d\xe9p", b"clips")  # every path below is undecodable
    os.makedirs(clips)
    with open(os.path.join(clips, b"a.wav"), "wb") as fh:
        fh.write(cf.audio_bytes(0.5, "WAV"))
    with open(os.path.join(clips, b"a.txt"), "wb") as fh:
        fh.write(b"hello\n")
    proc = convert(os.fsdecode(clips), "--out-dir", "out", "--name", "n", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("kimi-audio-lf convert: error: ") and "d\\xe9p/clips: no usable rows" in last
    report = json.loads((tmp_path / "out" / "n.report.json").read_text(encoding="utf-8"))
    assert report["skipped_by_reason"] == {"undecodable_name": 1} and report["input"].endswith("d\\xe9p/clips")
    assert "a folder name in" in report["issues"][0]["message"]
