"""Digitally silent clips with a non-empty transcript (``fileio/audio_silence.py``): what counts as silent, which
rows give a clip a transcript, and ``kimi-audio-lf precompute`` through the real CLI (slow: a subprocess per run):
the good clips are cached, the summary names the silent one with its row (warn, exit 0) or the run exits 2 with one
line naming it (error). A silent clip with an empty transcript (a no-speech example) is never flagged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from lf_runs import two_at_a_time

from llamafactory_kimi_audio import settings
from llamafactory_kimi_audio.data.features.dataset_audio import collect_audio_paths, data_file, dataset_files
from llamafactory_kimi_audio.fileio.audio import load_audio
from llamafactory_kimi_audio.fileio.audio_silence import SILENT_PEAK, is_silent, silent_clips_mode

ROOT = Path(__file__).resolve().parents[3]
CLI = str(Path(sys.executable).with_name("kimi-audio-lf"))
RATE = 16000


def _tone(seconds: float, peak: float, freq: float = 300.0) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (peak * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _pcm16(path: Path, wave: np.ndarray) -> str:
    sf.write(path, wave, RATE, subtype="PCM_16")
    return str(path)


def _row(text: str, audios: list[str]) -> dict:
    return {
        "messages": [{"role": "user", "content": "<audio>"}, {"role": "assistant", "content": text}],
        "audios": audios,
    }


# ----------------------------------------------------------------------------------------------- what is silent
def test_zeros_and_16_bit_dither_are_silent_quiet_speech_levels_are_not(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    dither = rng.integers(-3, 4, RATE).astype(np.float32) / 32768  # ±3 steps of 16-bit PCM: -80.7 dBFS at most
    zeros = _pcm16(tmp_path / "zeros.wav", np.zeros(RATE, dtype=np.float32))
    assert is_silent(load_audio(zeros)) and is_silent(load_audio(_pcm16(tmp_path / "dither.wav", dither)))
    assert is_silent(np.zeros(0, dtype=np.float32))
    # -70 dBFS (a very quiet recording) and one loud click in silence are not silence
    assert not is_silent(load_audio(_pcm16(tmp_path / "quiet.wav", _tone(1.0, 10 ** (-70 / 20)))))
    click = np.zeros(RATE, dtype=np.float32)
    click[RATE // 2] = 0.5
    assert not is_silent(click)
    assert is_silent(np.full(10, SILENT_PEAK * 0.99)) and not is_silent(np.full(10, SILENT_PEAK))


def test_mode_comes_from_the_setting_and_a_flag_overrides_it(monkeypatch) -> None:
    assert silent_clips_mode() == "warn"
    monkeypatch.setenv("KIMI_AUDIO_SILENT_CLIPS", "error")
    settings.reload()
    try:
        assert silent_clips_mode() == "error" and silent_clips_mode("off") == "off"
        monkeypatch.setenv("KIMI_AUDIO_SILENT_CLIPS", "0")
        settings.reload()
        assert silent_clips_mode() == "off"
    finally:
        monkeypatch.delenv("KIMI_AUDIO_SILENT_CLIPS")
        settings.reload()


# ------------------------------------------------------------------------------- which clips have a transcript
def test_transcribed_clips_are_inputs_with_a_non_empty_answer(tmp_path: Path) -> None:
    def turns(*contents: str) -> list[dict]:
        return [{"role": ("user", "assistant")[i % 2], "content": text} for i, text in enumerate(contents)]

    rows = [
        _row("hello", ["a.wav"]),
        _row("  ", ["b.wav"]),
        _row("", ["c.wav"]),
        {"conversations": [{"from": "human", "value": "<audio>"}, {"from": "gpt", "value": "hi"}], "audios": "d.wav"},
        {"instruction": "<audio>", "output": "alpaca text", "audios": ["e.wav"]},
        {"instruction": "<audio>", "output": "", "audios": ["f.wav"]},
        _row("again", ["c.wav"]),
        {"messages": turns("say words", "words<audio>"), "audios": ["g.wav"]},  # TTS: g is a target
        {"messages": turns("<audio>", "sure<audio>"), "audios": ["h.wav", "i.wav"]},  # spoken reply to h
        {"messages": turns("<audio>", "first", "<audio>", ""), "audios": ["j.wav", "k.wav"]},  # k: no speech
        {"messages": turns("<audio>", "text"), "audios": ["l.wav", "m.wav"]},  # one placeholder, two audios
    ]
    (tmp_path / "mixed.jsonl").write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    found = collect_audio_paths([data_file(str(tmp_path / "mixed.jsonl"))])
    named = {os.path.basename(path): where.split()[-1] for path, where in found.transcribed.items()}
    # b, f, k: no-speech examples; c: none in line 3, but line 7 gives it a transcript; g, i: speech-output targets
    assert named == {"a.wav": "1", "c.wav": "7", "d.wav": "4", "e.wav": "5", "h.wav": "9", "j.wav": "10"}
    assert len(found.paths) == 13 and not found.problems
    assert all(where.startswith("mixed.jsonl line ") for where in found.transcribed.values())


def test_dataset_info_tags_locate_the_answer(tmp_path: Path) -> None:
    rows = [
        {"chat": [{"who": "u", "text": "<audio>"}, {"who": "bot1", "text": "words"}], "clips": ["a.wav"]},
        {"chat": [{"who": "u", "text": "<audio>"}, {"who": "bot1", "text": ""}], "clips": ["b.wav"]},
    ]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    entry = {
        "file_name": "d.json",
        "formatting": "sharegpt",
        "columns": {"messages": "chat", "audios": "clips"},
        "tags": {"role_tag": "who", "content_tag": "text", "user_tag": "u", "assistant_tag": "bot1"},
    }
    (tmp_path / "dataset_info.json").write_text(json.dumps({"d": entry}))
    found = collect_audio_paths(dataset_files(str(tmp_path), ["d"]))
    assert [os.path.basename(p) for p in found.transcribed] == ["a.wav"] and len(found.paths) == 2


# ------------------------------------------------------------------------------------ precompute, the real CLI
@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two speech-like clips, a silent clip with a transcript (row 3) and a silent no-speech example (row 4)."""
    folder = tmp_path_factory.mktemp("silent_data")
    clips = {
        "a.wav": _tone(0.8, 0.4, 220),
        "b.wav": _tone(1.2, 0.3, 440),
        "silent.wav": np.zeros(RATE, dtype=np.float32),
        "nospeech.wav": np.zeros(RATE, dtype=np.float32),
    }
    texts = ["one", "two", "three", ""]
    for name, wave in clips.items():
        _pcm16(folder / name, wave)
    rows = [
        {
            "messages": [{"role": "user", "content": "<audio>"}, {"role": "assistant", "content": text}],
            "audios": [name],
        }
        for name, text in zip(clips, texts)
    ]
    (folder / "asr.jsonl").write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return folder


def test_library_run_caches_good_clips_and_lists_the_silent_one(tmp_path: Path, tiny_checkpoint, dataset) -> None:
    """``precompute()`` in-process (the fast twin of the CLI tests below): warn caches all four clips and the summary
    names the silent clip with a transcript; error leaves it out of the cache and counts it."""
    from llamafactory_kimi_audio.data.features.precompute import PrecomputeOptions, load_audio_encoders, precompute

    found = collect_audio_paths([data_file(str(dataset / "asr.jsonl"))])
    encoders = load_audio_encoders(tiny_checkpoint.path, "cpu")
    results = {}
    for mode in ("warn", "error"):
        options = PrecomputeOptions(cache_dir=str(tmp_path / mode), progress=False, silent_clips=mode)
        results[mode] = precompute(tiny_checkpoint.path, found.paths, options, encoders, transcribed=found.transcribed)
    silent = str(dataset / "silent.wav")
    assert results["warn"].computed == 4 and results["warn"].silent == [(silent, "asr.jsonl line 3")]
    assert f"1 silent clip (peak below -80 dBFS) with a non-empty transcript; cached anyway: {silent}" in (
        results["warn"].summary()
    )
    assert (results["error"].computed, results["error"].failed, results["error"].silent) == (
        3,
        0,
        results["warn"].silent,
    )


def _precompute(model: str, data: Path, cache: Path, *extra: str, **env: str) -> subprocess.CompletedProcess:
    argv = [CLI, "precompute", "--model", model, "--data", str(data), "--cache", str(cache), "--device", "cpu"]
    environ = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **env}
    return subprocess.run([*argv, "--no-progress", *extra], capture_output=True, text=True, timeout=900, env=environ)


def _precompute_each(
    model: str, data: Path, folder: Path, *runs: tuple[str, tuple[str, ...], dict[str, str]]
) -> list[subprocess.CompletedProcess]:
    """``_precompute`` for each (cache name under ``folder``, extra flags, environment): independent caches, so two
    at a time."""
    return two_at_a_time(lambda run: _precompute(model, data, folder / run[0], *run[1], **run[2]), runs)


@pytest.mark.slow
def test_precompute_warns_once_naming_the_silent_clip_and_its_row(tmp_path: Path, tiny_checkpoint, dataset) -> None:
    run, off = _precompute_each(
        tiny_checkpoint.path, dataset / "asr.jsonl", tmp_path, ("cache", (), {}), ("c2", ("--silent-clips", "off"), {})
    )
    assert run.returncode == 0, run.stderr
    assert "4 computed, 0 skipped (already cached), 0 failed" in run.stdout  # every clip cached, none dropped
    warnings = [line for line in run.stdout.splitlines() if "silent" in line]
    silent = dataset / "silent.wav"
    assert len(warnings) == 1 and "nospeech" not in warnings[0], run.stdout
    assert warnings[0].startswith(
        f"precompute: warning: 1 silent clip (peak below -80 dBFS) with a non-empty transcript; cached anyway: "
        f"{silent} (asr.jsonl line 3); the model would learn to write text for silence"
    )
    assert warnings[0].endswith("--silent-clips error stops on them, --silent-clips off hides this")
    assert off.returncode == 0 and "silent" not in off.stdout + off.stderr
    # error mode decodes the cached clips with a transcript again: the clip cached above does not pass
    strict = _precompute(tiny_checkpoint.path, dataset / "asr.jsonl", tmp_path / "cache", "--silent-clips=error")
    assert strict.returncode == 2 and "0 computed, 4 skipped (already cached), 0 failed, 1 silent" in strict.stdout
    assert strict.stderr.strip().splitlines()[-1].startswith(f"kimi-audio-lf precompute: error: {silent} (asr.jsonl")


@pytest.mark.slow
def test_precompute_error_mode_caches_the_others_and_exits_2_naming_the_clip(
    tmp_path: Path, tiny_checkpoint, dataset
) -> None:
    silent = dataset / "silent.wav"
    run, strict = _precompute_each(  # the setting; the flags
        tiny_checkpoint.path,
        dataset / "asr.jsonl",
        tmp_path,
        ("cache", (), {"KIMI_AUDIO_SILENT_CLIPS": "error"}),
        ("c2", ("--silent-clips", "error", "--strict"), {}),
    )
    assert run.returncode == 2, run.stderr
    assert "3 computed, 0 skipped (already cached), 0 failed, 1 silent with a transcript" in run.stdout
    errors = run.stderr.strip().splitlines()
    assert len(errors) == 1, run.stderr
    assert errors[0].startswith(
        f"kimi-audio-lf precompute: error: {silent} (asr.jsonl line 3): silent clip (peak below -80 dBFS) with a "
        "non-empty transcript; the other clips are cached;"
    )
    assert errors[0].endswith("(--silent-clips warn keeps such clips with a warning)")
    # not cached: a re-run meets it again instead of passing; the flag overrides the setting
    again = _precompute(tiny_checkpoint.path, dataset / "asr.jsonl", tmp_path / "cache", "--silent-clips", "error")
    assert again.returncode == 2 and "0 computed, 3 skipped (already cached), 0 failed, 1 silent" in again.stdout
    assert strict.returncode == 2 and str(silent) in strict.stderr.strip().splitlines()[-1]


# --------------------------------------------------------------------------- convert: only the clips it decodes
def test_convert_warns_about_a_silent_clip_it_decodes_and_keeps_the_row(tmp_path: Path) -> None:
    """``convert`` decodes FLAC (its header cannot vouch for the samples), so it sees the silent FLAC and keeps its
    row with a ``silent_audio`` warning; a PCM WAV keeps its header-only check (precompute and training see it)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from convert_cli import convert

    sf.write(tmp_path / "good.flac", _tone(0.5, 0.3), RATE)
    sf.write(tmp_path / "silent.flac", np.zeros(RATE // 2, np.float32), RATE)
    _pcm16(tmp_path / "silent.wav", np.zeros(RATE // 2, dtype=np.float32))
    body = "id,audio,text\ng,good.flac,one\ns,silent.flac,two\nw,silent.wav,three\n"
    (tmp_path / "rows.csv").write_text(body, encoding="utf-8")
    proc = convert(tmp_path / "rows.csv", "--out-dir", tmp_path / "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads((tmp_path / "out" / "rows.json").read_text(encoding="utf-8"))) == 3  # all kept
    assert "warning: 1 × silent_audio (rows.csv row 3)" in proc.stderr
    assert "rows.csv row 3: audio silent.flac is digitally silent (peak below -80 dBFS)" in proc.stderr
    report = json.loads((tmp_path / "out" / "rows.report.json").read_text(encoding="utf-8"))
    assert [(i["uid"], i["severity"]) for i in report["issues"] if i["reason"] == "silent_audio"] == [("s", "warning")]
