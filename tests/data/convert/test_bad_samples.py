"""Audio that a header cannot vouch for, through the real ``kimi-audio-lf`` command: NaN / inf samples, compressed
files cut short, clips too short to hold speech. ``convert`` skips each row with its reason and keeps every good
row (``--strict`` stops); ``precompute`` reports the clip as failed and caches nothing of it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from cache_samples import write_nan_entry

CLI = str(Path(sys.executable).with_name("kimi-audio-lf"))
TIMEOUT = 600  # generous: a loaded 2-core machine


def run(*args: object) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIMI_AUDIO_")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    return subprocess.run([CLI, *map(str, args)], capture_output=True, text=True, env=env, timeout=TIMEOUT)


def tone(seconds: float = 1.0, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def noise(seconds: float) -> np.ndarray:
    """Noise, so that an Ogg file spans many pages (a cut then lands mid-stream)."""
    return (0.1 * np.random.default_rng(0).standard_normal(int(seconds * 16000))).astype(np.float32)


def with_bad_sample(value: float, at: float = 0.5) -> np.ndarray:
    wave = tone()
    wave[int(at * 16000)] = value
    return wave


def cut(path: Path, fraction: float) -> Path:
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * fraction)])
    return path


def write_clips(folder: Path) -> dict[str, Path]:
    """id -> clip: good ones in every format, then one of each bad kind."""
    folder.mkdir(parents=True, exist_ok=True)
    clips = {
        "good_wav": (tone(), "good.wav", {"subtype": "PCM_16"}),
        "good_float": (tone(), "good_float.wav", {"subtype": "FLOAT"}),
        "good_flac": (tone(), "good.flac", {}),
        "good_ogg": (noise(3.0), "good.ogg", {}),
        "good_mp3": (tone(), "good.mp3", {}),
        "nan": (with_bad_sample(np.nan), "nan.wav", {"subtype": "FLOAT"}),
        "inf": (with_bad_sample(-np.inf, at=0.25), "inf.wav", {"subtype": "DOUBLE"}),
        "cut_flac": (tone(), "cut.flac", {}),
        "cut_mp3": (tone(), "cut.mp3", {}),
        "cut_ogg": (noise(3.0), "cut.ogg", {}),
        "tiny": (tone(0.0006), "tiny.wav", {"subtype": "PCM_16"}),
    }
    paths = {}
    for uid, (wave, name, options) in clips.items():
        sf.write(folder / name, wave, 16000, **options)
        paths[uid] = folder / name
    cut(paths["cut_flac"], 0.5)
    cut(paths["cut_mp3"], 0.5)
    cut(paths["cut_ogg"], 0.75)
    return paths


EXPECTED = {  # id -> (reason, words of its line)
    "nan": ("non_finite_audio", "1 of 16000 samples are not finite (NaN/inf), the first at 0.500 s"),
    "inf": ("non_finite_audio", "1 of 16000 samples are not finite (NaN/inf), the first at 0.250 s"),
    "cut_flac": ("truncated_audio", "truncated or corrupt audio: decoding stopped"),
    "cut_mp3": ("truncated_audio", "the header declares 16000 frames (1.00 s) but only"),
    "cut_ogg": ("truncated_audio", "the Ogg stream ends without its end-of-stream page"),
    "tiny": ("short_audio", "is 0.6 ms long; clips under 0.1 s hold no speech"),
}


@pytest.fixture
def clips(tmp_path: Path) -> dict[str, Path]:
    return write_clips(tmp_path / "clips")


@pytest.fixture
def rows_csv(tmp_path: Path, clips: dict[str, Path]) -> Path:
    lines = ["id,audio,text", *(f"{uid},clips/{path.name},hello {uid}" for uid, path in clips.items())]
    (tmp_path / "rows.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return tmp_path / "rows.csv"


def test_convert_skips_each_bad_clip_with_its_reason_and_keeps_every_good_row(rows_csv: Path, tmp_path: Path, clips):
    proc = run("convert", rows_csv, "--out-dir", tmp_path / "out", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    written = json.loads((tmp_path / "out" / "rows.json").read_text(encoding="utf-8"))
    assert [row["id"] for row in written] == ["good_wav", "good_float", "good_flac", "good_ogg", "good_mp3"]
    report = json.loads((tmp_path / "out" / "rows.report.json").read_text(encoding="utf-8"))
    reasons = {issue["uid"]: issue["reason"] for issue in report["issues"] if issue["severity"] == "error"}
    assert reasons == {uid: reason for uid, (reason, _) in EXPECTED.items()}
    for uid, (_, words) in EXPECTED.items():
        line = next((line for line in proc.stderr.splitlines() if f"clips/{clips[uid].name}" in line), "")
        assert words in line, (uid, proc.stderr)


def test_convert_strict_stops_at_the_nan_clip(rows_csv: Path, tmp_path: Path):
    proc = run("convert", rows_csv, "--out-dir", tmp_path / "out", "--no-progress", "--strict")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kimi-audio-lf convert: error: "), proc.stderr
    assert "rows.csv row 7: audio clips/nan.wav: 1 of 16000 samples are not finite" in lines[0]
    assert not (tmp_path / "out" / "rows.json").exists()


@pytest.mark.slow  # two precompute runs on the tiny checkpoint
def test_precompute_fails_the_nan_clip_and_caches_only_the_good_one(tmp_path: Path, clips, tiny_checkpoint):
    good, nan = str(clips["good_wav"]), str(clips["nan"])
    rows = [{"messages": [{"role": "user", "content": "<audio>"}, {"role": "assistant", "content": "hi"}]}] * 2
    data = tmp_path / "asr.json"
    data.write_text(json.dumps([{**row, "audios": [a]} for row, a in zip(rows, (good, nan))]), encoding="utf-8")
    cache = tmp_path / "cache"
    args = ["precompute", "--model", tiny_checkpoint.path, "--data", data, "--cache", cache, "--device", "cpu"]
    proc = run(*args, "--no-progress")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "1 computed, 0 skipped (already cached), 1 failed" in proc.stdout
    assert f"precompute: skipped {nan}: 1 of 16000 samples are not finite (NaN/inf)" in proc.stderr
    again = run(*args, "--no-progress")  # the good clip is cached, the NaN one was never written
    assert again.returncode == 2 and "0 computed, 1 skipped (already cached), 1 failed" in again.stdout


def test_a_kaldi_segment_under_the_minimum_is_skipped_and_the_others_kept(tmp_path: Path):
    kaldi = tmp_path / "kaldi"
    kaldi.mkdir()
    sf.write(kaldi / "rec.wav", tone(2.0), 16000, subtype="PCM_16")
    (kaldi / "wav.scp").write_text(f"rec1 {kaldi / 'rec.wav'}\n", encoding="utf-8")
    (kaldi / "segments").write_text("utt1 rec1 0.0 0.5\nutt2 rec1 0.6 0.65\nutt3 rec1 1.0 1.9\n", encoding="utf-8")
    (kaldi / "text").write_text("utt1 hello there\nutt2 hi\nutt3 good bye\n", encoding="utf-8")
    proc = run("convert", kaldi, "--out-dir", tmp_path / "out", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert "converted 2/3 rows" in proc.stdout, proc.stdout
    assert "segments line 2: utt2: segment is 0.050 s long; segments under 0.1 s hold no speech" in proc.stderr


@pytest.mark.slow  # one precompute run on the tiny checkpoint
def test_precompute_re_encodes_an_old_nan_entry_and_fails_the_clip(tmp_path: Path, clips, tiny_checkpoint):
    nan = clips["nan"]
    write_nan_entry(tmp_path / "cache", tiny_checkpoint.path, nan)
    rows = [{"messages": [{"role": "user", "content": "<audio>"}, {"role": "assistant", "content": "hi"}]}]
    data = tmp_path / "asr.json"
    data.write_text(json.dumps([{**rows[0], "audios": [str(nan)]}]), encoding="utf-8")
    model = tiny_checkpoint.path
    proc = run("precompute", "--model", model, "--data", data, "--cache", tmp_path / "cache", "--device", "cpu")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"precompute: skipped {nan}: 1 of 16000 samples are not finite (NaN/inf)" in proc.stderr
    assert "0 computed, 0 skipped (already cached), 1 failed" in proc.stdout
