"""``kimi-audio-lf evaluate --model`` on the tiny checkpoint: transcribing the test set with the real model (the
library reusing one loaded model), and the errors that come before any model work: wrong model or adapter path
(exit 3), no ``--data``, missing audio, a missing baseline.
"""

from __future__ import annotations

import json
from pathlib import Path

from evaluate_samples import cli, one_error_line


def test_missing_baseline_fails_before_the_model_loads(test_set: Path, tmp_path: Path, capsys) -> None:
    """A typo in --baseline must not cost a whole transcription run first (no model dir here: that would be exit 3)."""
    args = ("--model", tmp_path / "no-model", "--data", test_set, "--out", tmp_path / "ev", "--baseline", "eval/nope")
    code, _, err = cli(capsys, *args)
    assert code == 2 and "eval/nope: no summary.json there" in one_error_line(err)
    assert not (tmp_path / "ev" / "summary.json").exists()


def test_wrong_model_path_is_a_model_error_exit_3(test_set: Path, tmp_path: Path, capsys) -> None:
    code, _, err = cli(capsys, "--model", tmp_path / "no-such-model", "--data", test_set, "--out", tmp_path / "ev")
    assert code == 3 and "no-such-model: no such model directory" in one_error_line(err)
    code, _, err = cli(capsys, "--model", test_set.parent, "--data", test_set, "--out", tmp_path / "ev")
    line = one_error_line(err)
    assert code == 3 and "not a Kimi-Audio checkpoint" in line and "MoonshotKimiaForCausalLM" in line


def test_wrong_adapter_path_is_a_model_error(tiny_checkpoint, test_set: Path, tmp_path: Path, capsys) -> None:
    args = ("--model", tiny_checkpoint.path, "--adapter", tmp_path, "--data", test_set, "--out", tmp_path / "ev")
    code, _, err = cli(capsys, *args)
    assert code == 3 and "no adapter_config.json" in one_error_line(err)


def test_model_path_transcribes_with_the_real_model(tiny_checkpoint, test_set: Path, tmp_path: Path, capsys) -> None:
    args = ("--model", tiny_checkpoint.path, "--data", test_set, "--out", tmp_path / "ev", "--max-new-tokens", "4")
    code, out, err = cli(capsys, *args, "--batch-size", "2")
    assert code == 0, err
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text(encoding="utf-8"))
    assert summary["model"] == str(tiny_checkpoint.path) and summary["n"] == 3
    assert summary["generation"] == {"batch_size": 2, "repetition_penalty": 1.0, "max_new_tokens": 4, "decode": "auto"}
    assert summary["dataset"] == str(test_set)
    rows = [json.loads(x) for x in (tmp_path / "ev" / "utterances.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in rows] == ["a", "b", "c"] and all(isinstance(r["hyp"], str) for r in rows)


def test_library_reuses_one_loaded_model(tiny_checkpoint, test_set: Path, tmp_path: Path) -> None:
    """``eval.evaluate`` takes a loaded model: two test sets, one load; same transcripts as the CLI's."""
    from llamafactory_kimi_audio.eval import Generation, evaluate, load_for_inference
    from llamafactory_kimi_audio.eval.inputs import load_test_set

    model, processor = load_for_inference(str(tiny_checkpoint.path), device="cpu")
    generation = Generation(batch_size=3, max_new_tokens=4)
    first = evaluate(str(test_set), model=model, processor=processor, generation=generation, progress=False)
    items = load_test_set(str(test_set))[:2]
    second = evaluate(
        items,
        model=model,
        processor=processor,
        generation=generation,
        progress=False,
        out_dir=str(tmp_path / "ev"),
        plot=False,
    )
    assert [u.hyp for u in second.report.utterances] == [u.hyp for u in first.report.utterances][:2]
    assert first.paths == {}
    assert set(second.paths) == {"utterances.jsonl", "utterances.csv", "summary.json", "report.md"}
    assert first.summary["generation"]["batch_size"] == 3 and second.report.n == 2


def test_model_path_needs_data(tmp_path: Path, capsys) -> None:
    code, _, err = cli(capsys, "--model", "m", "--out", tmp_path / "ev")
    assert code == 2 and one_error_line(err).endswith("--model needs --data TEST.json (the utterances to transcribe)")


def test_model_path_with_missing_audio(test_set: Path, tmp_path: Path, capsys) -> None:
    """--strict: the missing clip ends the run before the model (here a wrong path) is loaded; without --strict it
    is skipped, so the run goes on to the model (and fails there: exit 3)."""
    (test_set.parent / "wavs" / "b.wav").unlink()
    code, _, err = cli(capsys, "--model", "m", "--data", test_set, "--out", tmp_path / "ev", "--strict")
    line = one_error_line(err)
    assert code == 2 and "test utterance b: " in line and "b.wav: audio file not found" in line
    code, _, err = cli(capsys, "--model", "m", "--data", test_set, "--out", tmp_path / "ev")
    assert code == 3 and "m: no such model directory" in one_error_line(err)
