"""``kimi-audio-lf evaluate --model`` on a test set holding a digitally silent clip with a reference: it is scored
and named in one warning line (exit 0), or, with ``KIMI_AUDIO_SILENT_CLIPS=error``, the run exits 2 naming it.
The real command in a subprocess on the tiny checkpoint, as ``test_evaluate_unreadable.py`` runs it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from lf_runs import two_at_a_time
from test_evaluate_unreadable import evaluate_cli, tone, write_set


@pytest.fixture
def silent_set(tmp_path: Path) -> tuple[Path, Path]:
    good = tone(tmp_path / "good.wav")
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(8000, np.float32), 16000, subtype="PCM_16")
    data = write_set(tmp_path, [("good", "hello world", good), ("quiet", "words on silence", silent.name)])
    return data, silent


@pytest.mark.slow
def test_a_silent_test_clip_with_a_reference_is_named(tiny_checkpoint, silent_set, tmp_path: Path) -> None:
    data, silent = silent_set
    args = ("--model", tiny_checkpoint.path, "--data", data, "--max-new-tokens", 4)
    done, stopped = two_at_a_time(  # independent runs, side by side: warn (the default), error
        lambda out, env: evaluate_cli(*args, "--out", tmp_path / out, extra_env=env),
        ("ev", "ev2"),
        ({}, {"KIMI_AUDIO_SILENT_CLIPS": "error"}),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "ev" / "summary.json").read_text(encoding="utf-8"))["n"] == 2  # scored, not dropped
    named = [line for line in done.stderr.splitlines() if "silent" in line]
    assert named == [
        f"warning: 1 silent clip (peak below -80 dBFS) with a non-empty transcript; scored: {silent} (utterance "
        "quiet); no model can transcribe silence, so they count as errors in CER/WER; fix or replace the audio, or "
        "remove them from the test set (an empty reference is not scored); KIMI_AUDIO_SILENT_CLIPS=error stops on "
        "them, KIMI_AUDIO_SILENT_CLIPS=off hides this"
    ]
    assert stopped.returncode == 2, stopped.stderr[-3000:]
    last = stopped.stderr.strip().splitlines()[-1]
    assert last.startswith(f"kimi-audio-lf evaluate: error: {silent} (utterance quiet): silent clip (peak below")
    assert not (tmp_path / "ev2" / "summary.json").exists()
