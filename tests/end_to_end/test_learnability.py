"""Audio really flows template → plugin → collator → model: a tiny random Kimi-Audio trained by the stock
``llamafactory-cli train`` (the demo pipeline) learns to transcribe held-out word sequences, and the same run with
every audio replaced by silence does not (a model that ignored its audio would still lower the training loss).

The README demo (2 threads, alone; espeak-ng 1.51, 600 utterances, 600 steps, 40 test utterances): held-out CER
100 % → 52.6 %; tone fallback 18.4 %; silence control ~77 %. This test runs the two demos side by side with one
thread each (2 × 2 threads on 2 cores made each step about 5× slower), 30 test utterances: 100 % → 45.3 %, silence
control 80.3 % (espeak-ng 1.51; tone fallback 22.8 % and 78.2 %), about 2.5 minutes on 2 cores.
"""

from __future__ import annotations

import json

import pytest
from lf_runs import two_at_a_time

from llamafactory_kimi_audio.demo import run_demo

SETTINGS = {"n_train": 600, "n_test": 30, "max_steps": 600, "backend": "auto", "lang": "en", "threads": 1}


@pytest.mark.slow
def test_held_out_cer_falls_only_when_audio_is_heard(tmp_path) -> None:
    # The two demos run side by side: each step is a subprocess pinned to one thread (the figure depends on the seed
    # and the thread count, not on the load), so the two runs share the 2 cores without oversubscribing them.
    heard, silent = two_at_a_time(
        lambda silence: run_demo(str(tmp_path / ("silence" if silence else "audio")), silence=silence, **SETTINGS),
        (False, True),
    )
    # CER as a fraction (1.0 = 100 %); the untrained model is far off.
    assert heard.cer_before >= 0.9, heard
    assert heard.cer_after <= 0.6 * heard.cer_before, heard
    # Without audio the model can only learn the prior over word sequences.
    assert silent.cer_after >= 1.4 * heard.cer_after and silent.cer_after >= 0.6, (silent, heard)


# ------------------------------------------------------------------------------ the demo's pieces (fast)


def test_missing_espeak_is_said_on_the_console(tmp_path, monkeypatch, capsys) -> None:
    from llamafactory_kimi_audio.demo import resolve_backend
    from llamafactory_kimi_audio.errors import EnvironmentProblem

    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH without espeak-ng
    assert resolve_backend("auto") == ("tones", "tone-word fallback (no espeak-ng)")
    assert (
        "[demo] warning: espeak-ng not found: the demo uses the synthetic tone-word fallback"
        in capsys.readouterr().err
    )
    with pytest.raises(EnvironmentProblem) as info:
        resolve_backend("espeak")
    assert info.value.exit_code == 4 and "apt-get install espeak-ng" in str(info.value)


def test_backend_with_espeak_names_its_version(monkeypatch) -> None:
    import shutil

    from llamafactory_kimi_audio.demo import resolve_backend

    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed")
    backend, audio = resolve_backend("auto")
    assert backend == "espeak" and audio.startswith("espeak-ng ") and "unknown" not in audio


def test_failed_step_passes_its_exit_code_and_log_tail(tmp_path) -> None:
    import sys

    from llamafactory_kimi_audio.demo import DemoStepFailed, run_step

    command = [sys.executable, "-c", "import sys; print('the last words'); sys.exit(3)"]
    with pytest.raises(DemoStepFailed) as info:
        run_step("broken", command, str(tmp_path))
    assert info.value.exit_code == 3 and "the last words" in str(info.value) and "broken.log" in str(info.value)


def _trainer_log_line(step: int, loss: float, elapsed: str, remaining: str) -> str:
    """One line as LLaMA-Factory's LogCallback appends it to trainer_log.jsonl."""
    record = {"current_steps": step, "total_steps": 600, "loss": loss, "lr": 1e-3, "epoch": 0.5,
              "percentage": round(step / 6, 2), "elapsed_time": elapsed, "remaining_time": remaining}  # fmt: skip
    return json.dumps(record) + "\n"


def test_training_progress_reads_the_trainer_log_at_most_every_30_s(tmp_path) -> None:
    from llamafactory_kimi_audio.demo_progress import TRAINER_LOG, TrainingProgress

    now = [0.0]
    progress = TrainingProgress(str(tmp_path), every_s=30, clock=lambda: now[0])
    log = tmp_path / TRAINER_LOG
    now[0] = 10
    assert progress() is None  # too early
    now[0] = 31
    assert progress().startswith("train: no step logged yet (31 s")
    log.write_text(_trainer_log_line(20, 2.9, "0:00:30", "0:14:30") + _trainer_log_line(40, 2.5, "0:01:00", "0:14:00"))
    now[0] = 40
    assert progress() is None  # a line at most every 30 s
    with log.open("a") as f:
        f.write('{"current_steps": 60, "total_st')  # the trainer is half-way through its next line
    now[0] = 62
    assert progress() == "train: step 40/600 (7%), loss 2.500, 0:01:00 elapsed, ETA 0:14:00"
    now[0] = 95
    assert progress() is None  # no news: no line
    log.write_text(_trainer_log_line(60, 2.1, "0:01:30", "0:13:30"))
    assert progress() == "train: step 60/600 (10%), loss 2.100, 0:01:30 elapsed, ETA 0:13:30"
    progress.clear_stale_log()
    assert not log.exists()


def test_a_step_shows_its_progress_on_the_console_while_it_runs(tmp_path, capsys) -> None:
    """A real subprocess writes a trainer log line, then waits until the console has shown it (a state, not a
    time): run_step asks the progress reader while the step runs."""
    import sys

    from llamafactory_kimi_audio.demo import run_step
    from llamafactory_kimi_audio.demo_progress import TRAINER_LOG, TrainingProgress

    shown = tmp_path / "shown"
    child = (
        "import os, sys, time\n"
        f"open({str(tmp_path / TRAINER_LOG)!r}, 'w').write(sys.argv[1])\n"
        f"while not os.path.exists({str(shown)!r}): time.sleep(0.1)\n"
    )
    reader = TrainingProgress(str(tmp_path), every_s=0)

    def progress() -> str | None:
        line = reader()
        if line and "step" in line:
            shown.touch()
        return line

    line = _trainer_log_line(20, 2.9, "0:00:30", "0:14:30")
    run_step("train", [sys.executable, "-c", child, line], str(tmp_path), progress=progress)
    assert "[demo] train: step 20/600 (3%), loss 2.900, 0:00:30 elapsed, ETA 0:14:30" in capsys.readouterr().err


def test_make_tiny_refuses_an_existing_directory(tmp_path, capsys) -> None:
    from llamafactory_kimi_audio.cli import main

    target = tmp_path / "model"
    target.mkdir()
    (target / "keep.txt").write_text("a real checkpoint, maybe")
    assert main(["make-tiny", str(target)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("already exists and is not empty; choose another path or pass --force")
    assert err.startswith(f"kimi-audio-lf make-tiny: error: {target}:") and len(err.splitlines()) == 1
    assert (target / "keep.txt").exists()
    assert main(["make-tiny", str(target), "--force"]) == 0
    assert not (target / "keep.txt").exists() and (target / "config.json").is_file()
