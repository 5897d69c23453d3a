"""``kimi-audio-lf evaluate`` on bad input: one error line naming the file (and row or line) and exit code 2 for
predictions that do not match the references, lack a field or a reference, are malformed or missing, a missing test
set or baseline, only empty references; and the CLI's error table (a bug keeps its traceback and exits 1, package
errors map to their exit codes).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from evaluate_samples import cli, generated_predictions, jsonl, one_error_line


def test_mismatched_prediction_and_reference_counts(test_set: Path, tmp_path: Path, capsys) -> None:
    pairs = [("今天天气很好", "x"), ("我们去公园", "y")]
    preds = generated_predictions(tmp_path / "generated_predictions.jsonl", pairs)
    code, _, err = cli(capsys, "--predictions", preds, "--data", test_set, "--out", tmp_path / "ev")
    assert code == 2
    assert one_error_line(err).endswith(
        "generated_predictions.jsonl has 2 predictions but test.json has 3 utterances; rows are matched by position, "
        "so the counts must be equal (was prediction cut short, or is it another test set?)"
    )


def test_missing_ids_in_predictions(test_set: Path, tmp_path: Path, capsys) -> None:
    preds = jsonl(tmp_path / "p.jsonl", [{"id": "a", "hyp": "x"}, {"id": "zz", "hyp": "y"}])
    code, _, err = cli(capsys, "--predictions", preds, "--data", test_set, "--out", tmp_path / "ev")
    assert code == 2
    assert "p.jsonl: 2 of 3 utterances of test.json have no prediction (e.g. b, c)" in one_error_line(err)


def test_predictions_without_hypothesis_field(tmp_path: Path, capsys) -> None:
    preds = jsonl(tmp_path / "p.jsonl", [{"id": "a", "text": "x"}])
    code, _, err = cli(capsys, "--predictions", preds, "--out", tmp_path / "ev")
    assert code == 2
    assert "p.jsonl line 1: no hypothesis field among ['id', 'text']; name it one of: predict, hyp" in err


def test_predictions_without_references_need_data(tmp_path: Path, capsys) -> None:
    preds = jsonl(tmp_path / "p.jsonl", [{"id": "a", "hyp": "x"}])
    code, _, err = cli(capsys, "--predictions", preds, "--out", tmp_path / "ev")
    assert code == 2 and "p.jsonl: 1 rows have no reference (label/ref); pass --data TEST.json" in one_error_line(err)


def test_malformed_prediction_line(tmp_path: Path, capsys) -> None:
    (tmp_path / "p.jsonl").write_text('{"ref": "a", "hyp": "a"}\n{"ref": "b", "hyp": \n', encoding="utf-8")
    code, _, err = cli(capsys, "--predictions", tmp_path / "p.jsonl", "--out", tmp_path / "ev")
    assert code == 2
    assert "p.jsonl line 2: invalid JSON (Expecting value at column 21); fix the line" in one_error_line(err)


def test_missing_predictions_file(tmp_path: Path, capsys) -> None:
    code, _, err = cli(capsys, "--predictions", tmp_path / "nope.jsonl", "--out", tmp_path / "ev")
    assert code == 2 and one_error_line(err).endswith("nope.jsonl: no such predictions file; check --predictions")


def test_missing_test_set_names_the_flag_and_the_datasets_there(test_set: Path, tmp_path: Path, capsys) -> None:
    """README step 4 after a convert whose --split wrote no test set: one line naming --data and the datasets there."""
    missing = test_set.parent / "my_asr_test.json"
    code, _, err = cli(capsys, "--model", tmp_path / "no-model", "--data", missing, "--out", tmp_path / "ev")
    line = one_error_line(err)
    assert code == 2 and "INPUT" not in line
    assert line.endswith(f"{missing}: no such test set file; check --data (its folder holds test.json)")


def test_missing_baseline(tmp_path: Path, capsys) -> None:
    preds = jsonl(tmp_path / "p.jsonl", [{"ref": "a", "hyp": "a"}])
    code, _, err = cli(capsys, "--predictions", preds, "--out", tmp_path / "ev", "--baseline", tmp_path / "none")
    assert code == 2 and "none: no summary.json there; pass the --out dir of an earlier evaluate run" in err


def test_only_empty_references_is_an_input_error(tmp_path: Path, capsys) -> None:
    preds = jsonl(tmp_path / "p.jsonl", [{"id": "u1", "ref": "", "hyp": "x"}])
    code, _, err = cli(capsys, "--predictions", preds, "--out", tmp_path / "ev")
    assert code == 2 and "all 1 references are empty: nothing to score" in one_error_line(err)


BUG_SCRIPT = """
import sys
import llamafactory_kimi_audio.cli.evaluate as command
from llamafactory_kimi_audio.errors import InputError

def run(args):
    raise {error}

command.run = run
from llamafactory_kimi_audio.cli import main
sys.exit(main(["evaluate", "--predictions", "p.jsonl", "--out", "ev"]))
"""


def run_with_error(error: str, tmp_path: Path) -> subprocess.CompletedProcess:
    script = BUG_SCRIPT.format(error=error)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=600)


def test_a_value_error_bug_keeps_its_traceback_and_exits_1(tmp_path: Path) -> None:
    done = run_with_error("ValueError('a bug deep inside')", tmp_path)
    assert done.returncode == 1
    assert "Traceback (most recent call last)" in done.stderr and "ValueError: a bug deep inside" in done.stderr


def test_an_input_error_is_one_line_and_exit_2(tmp_path: Path) -> None:
    done = run_with_error("InputError('x.csv row 3: empty text; fix the row')", tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == "kimi-audio-lf evaluate: error: x.csv row 3: empty text; fix the row"


def test_error_table() -> None:
    from llamafactory_kimi_audio.cli._errors import exit_code_for
    from llamafactory_kimi_audio.errors import EnvironmentProblem, GateFailed, KimiAudioError, ModelError
    from llamafactory_kimi_audio.fileio.audio_errors import AudioError
    from llamafactory_kimi_audio.fileio.textio import DataError

    assert exit_code_for(ValueError("bug")) is None and exit_code_for(RuntimeError("bug")) is None
    assert exit_code_for(KeyError("bug")) is None
    assert [exit_code_for(e("m")) for e in (ModelError, EnvironmentProblem, GateFailed)] == [3, 4, 1]
    assert exit_code_for(DataError("bad row")) == 2 and exit_code_for(AudioError("bad wav")) == 2
    assert exit_code_for(FileNotFoundError(2, "No such file", "x.wav")) == 2
    assert exit_code_for(KimiAudioError("any package error", 4)) == 4 and exit_code_for(KimiAudioError("m")) == 2
