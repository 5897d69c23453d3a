"""``kimi-audio-lf evaluate`` on saved predictions (no model): scoring, normalisers, reports, baselines, gates."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from llamafactory_kimi_audio.cli import main
from llamafactory_kimi_audio.eval.normalize import NORMALIZERS, cjk_ratio, detect_language
from llamafactory_kimi_audio.eval.scoring import ScoringError, score


def cli(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    code = main(["evaluate", *map(str, args), "--no-plot"])
    out, err = capsys.readouterr()
    return code, out, err


def jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def generated_predictions(path: Path, pairs: list[tuple[str, str]]) -> Path:
    """LLaMA-Factory's ``generated_predictions.jsonl`` shape: prompt / predict / label."""
    return jsonl(path, [{"prompt": "<audio>转写", "predict": hyp, "label": ref} for ref, hyp in pairs])


@pytest.fixture
def test_set(tmp_path: Path) -> Path:
    """A converted-style dataset dir: test.json (sharegpt, relative audio) + dataset_info.json."""
    (tmp_path / "ds" / "wavs").mkdir(parents=True)
    rows = []
    for uid, text in (("a", "今天天气很好"), ("b", "我们去公园"), ("c", "Hello world")):
        sf.write(tmp_path / "ds" / "wavs" / f"{uid}.wav", np.zeros(1600, np.float32), 16000)
        messages = [{"role": "user", "content": "<audio>转写"}, {"role": "assistant", "content": text}]
        rows.append({"id": uid, "messages": messages, "audios": [f"wavs/{uid}.wav"]})
    (tmp_path / "ds" / "test.json").write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    info = {
        "test": {
            "file_name": "test.json",
            "formatting": "sharegpt",
            "columns": {"messages": "messages", "audios": "audios"},
        }
    }
    (tmp_path / "ds" / "dataset_info.json").write_text(json.dumps(info), encoding="utf-8")
    return tmp_path / "ds" / "test.json"


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("kimi-audio-lf evaluate: error: ")
    return lines[0]


# --------------------------------------------------------------------------------------------- library


def test_cer_counts_on_fixed_strings() -> None:
    report = score(["1"], ["今天天气很好"], ["今天天汽很好啊"])
    utt = report.utterances[0]
    assert (utt.metric, utt.substitutions, utt.deletions, utt.insertions, utt.hits) == ("cer", 1, 0, 1, 5)
    assert report.cer == pytest.approx(2 / 6) and report.wer is None and report.exact_match == 0


def test_wer_with_standard_normaliser() -> None:
    report = score(["1", "2"], ["Hello, World!", "don't stop"], ["hello world", "do not stop now"])
    assert [u.metric for u in report.utterances] == ["wer", "wer"]
    assert report.utterances[0].exact and report.totals["wer"].ref_len == 4
    assert report.wer == pytest.approx((1 + 1 + 1) / 4)  # dont→do (S), +not, +now (I)


def test_normalisers_fold_width_case_and_cjk_punctuation() -> None:
    standard = NORMALIZERS["standard"]
    assert standard("ＡＢＣ１２３，Ｈｅｌｌｏ！") == "abc123 hello"
    assert standard("“你好”，世界。《测试》…") == "你好 世界 测试"
    assert NORMALIZERS["basic"]("Ｈｅｌｌｏ！") == "Hello!" and NORMALIZERS["none"]("  a \u3000 b ") == "a b"
    report = score(["1"], ["你好，世界。"], ["你 好 世 界"])  # spaces do not count for CER
    assert report.utterances[0].exact and report.cer == 0


def test_language_auto_per_utterance() -> None:
    assert detect_language("我们讨论machine learning和deep learning") == "zh"
    assert detect_language("I visited 北京 last summer with my family") == "en"
    assert cjk_ratio("") == 0.0
    report = score(["1", "2"], ["我们去公园", "go to the park"], ["我们去公园", "go to park"])
    assert (report.totals["cer"].n, report.totals["wer"].n) == (2, 1)  # English rows also count characters
    assert score(["1"], ["abc"], ["abd"], language="zh").utterances[0].metric == "cer"


def test_empty_references_are_not_scored_but_listed() -> None:
    report = score(["1", "2", "3"], ["", " ... ", "你好"], ["", "多余", ""])
    assert [u.id for u in report.utterances] == ["3"] and report.skipped_empty == ["1", "2"]
    assert report.cer == 1.0 and report.n == 1  # only the utterance with a reference counts


def test_llamafactory_metrics_report_the_evaluator_figures() -> None:
    """``predict_cer`` / ``predict_wer`` in LLaMA-Factory runs are the numbers ``kimi-audio-lf evaluate`` prints."""
    from llamafactory_kimi_audio.integration.metrics import corpus_error_rates

    refs, hyps = ["今天天气很好", "hello world again", "你好"], ["今天天汽很好", "hello word again", "你好"]
    rates = corpus_error_rates(refs, hyps)
    assert rates == {"cer": round(100 * 2 / 23, 4), "wer": round(100 / 3, 4), "exact_match": round(100 / 3, 4)}
    report = score(["a", "b", "c"], refs, hyps)
    assert (rates["cer"], rates["wer"]) == (round(100 * report.cer, 4), round(100 * report.wer, 4))
    zh_only = corpus_error_rates(["今天天气很好"], ["今天天汽很好"])
    assert zh_only == {"cer": round(100 / 6, 4), "exact_match": 0.0}  # no WER for unsegmented Chinese
    assert corpus_error_rates([], []) == {}


def test_score_rejects_mismatched_lengths() -> None:
    with pytest.raises(ScoringError, match="2 hypotheses for 3 references"):
        score(["1", "2", "3"], ["a", "b", "c"], ["a", "b"])


# --------------------------------------------------------------------------------------------- CLI


def test_generated_predictions_without_test_set(tmp_path: Path, capsys) -> None:
    preds = generated_predictions(
        tmp_path / "generated_predictions.jsonl", [("今天天气很好", "今天天气很好。"), ("我们去公园", "我们去公园玩")]
    )
    code, out, err = cli(capsys, "--predictions", preds, "--out", tmp_path / "ev")
    assert code == 0, err
    assert out.splitlines()[0] == "CER 9.09% (2 utts) · exact match 50.0% · n=2"
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text(encoding="utf-8"))
    assert {"model", "normalizer", "dataset_hash", "counts", "cer", "wer", "exact_match", "n"} <= set(summary)
    assert summary["normalizer"] == {
        "name": "standard",
        "steps": ["nfkc", "lowercase", "remove_punctuation", "collapse_whitespace"],
    }
    assert summary["counts"]["cer"]["insertions"] == 1 and summary["n"] == 2
    rows = [json.loads(x) for x in (tmp_path / "ev" / "utterances.jsonl").read_text(encoding="utf-8").splitlines()]
    assert rows[1]["id"] == "1" and rows[1]["insertions"] == 1
    csv_text = (tmp_path / "ev" / "utterances.csv").read_text(encoding="utf-8-sig")
    assert csv_text.startswith("id,metric,error_rate") and "我们去公园玩" in csv_text


def test_report_md_has_table_histogram_and_worst(test_set: Path, tmp_path: Path, capsys) -> None:
    preds = jsonl(
        tmp_path / "p.jsonl",
        [{"id": "a", "hyp": "今天天气"}, {"id": "b", "hyp": "我们去公园"}, {"id": "c", "hyp": "hello word"}],
    )
    code, _, err = cli(capsys, "--predictions", preds, "--data", test_set, "--out", tmp_path / "ev")
    assert code == 0, err
    md = (tmp_path / "ev" / "report.md").read_text(encoding="utf-8")
    assert "| CER | 14.29% | 0 | 3 | 0 | 18 | 21 |" in md and "| WER | 50.00% | 1 | 0 | 0 | 1 | 2 |" in md
    assert "| 0 (exact) | 1 | 33.3% |" in md
    assert "| a | CER | 33.33% | 今天天气很好 | 今天天气 |" in md and "| b |" not in md.split("worst utterances")[1]


def test_histogram_png_when_matplotlib_is_installed(tmp_path: Path, capsys) -> None:
    pytest.importorskip("matplotlib")
    preds = jsonl(tmp_path / "p.jsonl", [{"ref": "a b", "hyp": "a c"}])
    assert main(["evaluate", "--predictions", str(tmp_path / "p.jsonl"), "--out", str(tmp_path / "ev")]) == 0
    assert (tmp_path / "ev" / "error_rate_hist.png").read_bytes().startswith(b"\x89PNG")
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text(encoding="utf-8"))
    assert summary["predictions"] == str(preds) and summary["n"] == 1  # the histogram is of this file's one pair
    assert "![error-rate histogram](error_rate_hist.png)" in (tmp_path / "ev" / "report.md").read_text()


def test_outputs_are_deterministic(tmp_path: Path, capsys) -> None:
    preds = jsonl(tmp_path / "p.jsonl", [{"id": "x", "ref": "你好", "hyp": "你号"}])
    for out in ("e1", "e2"):
        assert cli(capsys, "--predictions", preds, "--out", tmp_path / out)[0] == 0
    for name in ("summary.json", "utterances.jsonl", "utterances.csv", "report.md"):
        assert (tmp_path / "e1" / name).read_bytes() == (tmp_path / "e2" / name).read_bytes()


def test_max_cer_gate_exit_1_and_outputs_written(tmp_path: Path, capsys) -> None:
    preds = generated_predictions(tmp_path / "g.jsonl", [("今天天气很好", "今天天气很")])
    code, _, err = cli(capsys, "--predictions", preds, "--out", tmp_path / "ev", "--max-cer", "10%")
    assert code == 1
    assert err.strip() == "kimi-audio-lf evaluate: CER 16.67% exceeds --max-cer 10.00%"
    assert (tmp_path / "ev" / "summary.json").exists()
    assert cli(capsys, "--predictions", preds, "--out", tmp_path / "ev", "--max-cer", "0.2")[0] == 0


def test_max_wer_gate(tmp_path: Path, capsys) -> None:
    preds = jsonl(tmp_path / "p.jsonl", [{"ref": "the cat sat", "hyp": "the cat"}])
    code, _, err = cli(capsys, "--predictions", preds, "--out", tmp_path / "ev", "--max-wer", "0.2", "--max-cer", "0")
    assert code == 1 and "WER 33.33% exceeds --max-wer 20.00%" in err
    assert "CER 33.33% exceeds --max-cer 0.00%" in err  # CER counts characters of English rows too


def test_bad_rate_value_is_a_usage_error(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--predictions", "p.jsonl", "--out", str(tmp_path), "--max-cer", "ten"])
    assert exc.value.code == 2 and "'ten' is not a rate" in capsys.readouterr().err


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


def test_positional_predictions_with_test_set_and_label_check(test_set: Path, tmp_path: Path, capsys) -> None:
    pairs = [("今天天气很好", "今天天气很好"), ("别的句子", "我们去公园"), ("Hello world", "hello world")]
    preds = generated_predictions(tmp_path / "g.jsonl", pairs)
    code, out, err = cli(capsys, "--predictions", preds, "--data", test_set, "--out", tmp_path / "ev")
    assert code == 0 and "exact match 100.0%" in out
    assert "warning: 1 prediction labels differ from the test references" in err


def test_predictions_csv_in_gbk(tmp_path: Path, capsys) -> None:
    (tmp_path / "p.csv").write_bytes("id,ref,hyp\nu1,数据集,数据\nu2,你好,你好\n".encode("gbk"))
    code, out, _ = cli(capsys, "--predictions", tmp_path / "p.csv", "--out", tmp_path / "ev")
    assert code == 0 and out.startswith("CER 20.00% (2 utts)")


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


def test_baseline_comparison(tmp_path: Path, capsys) -> None:
    before = jsonl(
        tmp_path / "before.jsonl",
        [
            {"id": "1", "ref": "今天天气很好", "hyp": "今天天汽"},
            {"id": "2", "ref": "我们去公园", "hyp": "我们去公园"},
            {"id": "3", "ref": "你好世界", "hyp": "你好"},
        ],
    )
    after = jsonl(
        tmp_path / "after.jsonl",
        [
            {"id": "1", "ref": "今天天气很好", "hyp": "今天天气很好"},
            {"id": "2", "ref": "我们去公园", "hyp": "我们去"},
            {"id": "3", "ref": "你好世界", "hyp": "你好"},
        ],
    )
    assert cli(capsys, "--predictions", before, "--out", tmp_path / "base")[0] == 0
    code, out, _ = cli(capsys, "--predictions", after, "--out", tmp_path / "new", "--baseline", tmp_path / "base")
    assert code == 0
    assert "vs baseline: ΔCER -6.67 pt · Δexact match +0.00 pt · 1 improved, 1 regressed" in out
    baseline = json.loads((tmp_path / "new" / "summary.json").read_text())["baseline"]
    assert (baseline["improved"], baseline["regressed"], baseline["unchanged"]) == (1, 1, 1)
    assert baseline["delta"]["cer"] == pytest.approx(4 / 15 - 5 / 15)
    md = (tmp_path / "new" / "report.md").read_text(encoding="utf-8")
    assert "## Compared with" in md and "| cer | 33.33% | 26.67% | -6.67 pt |" in md


def test_missing_baseline(tmp_path: Path, capsys) -> None:
    preds = jsonl(tmp_path / "p.jsonl", [{"ref": "a", "hyp": "a"}])
    code, _, err = cli(capsys, "--predictions", preds, "--out", tmp_path / "ev", "--baseline", tmp_path / "none")
    assert code == 2 and "none: no summary.json there; pass the --out dir of an earlier evaluate run" in err


def test_missing_baseline_fails_before_the_model_loads(test_set: Path, tmp_path: Path, capsys) -> None:
    """A typo in --baseline must not cost a whole transcription run first (no model dir here: that would be exit 3)."""
    args = ("--model", tmp_path / "no-model", "--data", test_set, "--out", tmp_path / "ev", "--baseline", "eval/nope")
    code, _, err = cli(capsys, *args)
    assert code == 2 and "eval/nope: no summary.json there" in one_error_line(err)
    assert not (tmp_path / "ev" / "summary.json").exists()


def test_kimi_jsonl_test_set(tmp_path: Path, capsys) -> None:
    sf.write(tmp_path / "a.wav", np.zeros(1600, np.float32), 16000)
    record = {
        "id": "k1",
        "task_type": "understanding",
        "conversation": [
            {"role": "user", "message_type": "text", "content": "请将语音内容转录为文字。"},
            {"role": "user", "message_type": "audio", "content": "a.wav"},
            {"role": "assistant", "message_type": "text", "content": "标准答案"},
        ],
    }
    data = jsonl(tmp_path / "test.jsonl", [record])
    preds = jsonl(tmp_path / "p.jsonl", [{"id": "k1", "hyp": "标准答案"}])
    code, out, _ = cli(capsys, "--predictions", preds, "--data", data, "--out", tmp_path / "ev")
    assert code == 0 and "exact match 100.0%" in out


def test_empty_reference_warns_with_the_count_and_is_listed(tmp_path: Path, capsys) -> None:
    rows = [{"id": "u1", "ref": "", "hyp": "noise"}, {"id": "u2", "ref": "a b", "hyp": "a b"}]
    preds = jsonl(tmp_path / "p.jsonl", rows)
    code, out, err = cli(capsys, "--predictions", preds, "--out", tmp_path / "ev")
    assert code == 0, err
    assert "warning: 1 utterances have an empty reference and were not scored (e.g. u1)" in err
    assert "n=1" in out
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text(encoding="utf-8"))
    assert summary["skipped_empty_reference"] == ["u1"] and summary["n"] == 1 and summary["wer"] == 0
    assert "1 not scored (empty reference: u1)" in (tmp_path / "ev" / "report.md").read_text(encoding="utf-8")


def test_only_empty_references_is_an_input_error(tmp_path: Path, capsys) -> None:
    preds = jsonl(tmp_path / "p.jsonl", [{"id": "u1", "ref": "", "hyp": "x"}])
    code, _, err = cli(capsys, "--predictions", preds, "--out", tmp_path / "ev")
    assert code == 2 and "all 1 references are empty: nothing to score" in one_error_line(err)


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


# --------------------------------------------------------------------------------------------- CLI error table

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


def test_language_flag_picks_which_utterances_get_wer_while_cer_covers_all() -> None:
    """What ``evaluate --help`` says: CER counts every utterance; --language decides who also gets WER."""
    refs, hyps = ["我们去公园", "go to the park"], ["我们去公园", "go to park"]
    for language, n_wer in (("auto", 1), ("en", 2), ("zh", 0)):
        report = score(["1", "2"], refs, hyps, language=language)
        assert (report.totals["cer"].n, report.totals["wer"].n) == (2, n_wer), language


def test_help_says_what_each_normalizer_does_and_covers_speech_output() -> None:
    """``evaluate --help`` explains every --normalizer choice as it behaves; the top-level help names speech output."""
    from llamafactory_kimi_audio.cli import build_parser
    from llamafactory_kimi_audio.eval.normalize import NORMALIZERS

    parser = build_parser()
    assert "speech output" in parser.description
    evaluate = parser._subparsers._group_actions[0].choices["evaluate"]
    (action,) = [a for a in evaluate._actions if "--normalizer" in a.option_strings]
    assert all(f"{name} = " in action.help for name in action.choices) and set(action.choices) == set(NORMALIZERS)
    text = "ＡＢ,  Don't"
    assert NORMALIZERS["standard"](text) == "ab dont"  # NFKC, lower case, punctuation removed
    assert NORMALIZERS["basic"](text) == "AB, Don't"  # NFKC + whitespace: case and punctuation count
    assert NORMALIZERS["none"](text) == "ＡＢ, Don't"  # whitespace only


def test_library_options_are_checked_in_one_place(tmp_path: Path) -> None:
    """``evaluate``'s keywords are ``EvaluateOptions`` fields: unknown names and bad values fail before any work."""
    from llamafactory_kimi_audio.errors import InputError
    from llamafactory_kimi_audio.eval import EvaluateOptions, evaluate

    preds = jsonl(tmp_path / "p.jsonl", [{"ref": "a b", "hyp": "a c"}])
    with pytest.raises(TypeError, match="unexpected options: normaliser"):
        evaluate(predictions=str(preds), normaliser="basic")
    with pytest.raises(InputError, match="normalizer 'nfkc': choose one of"):
        evaluate(predictions=str(preds), normalizer="nfkc")
    with pytest.raises(InputError, match="language 'fr'"):
        EvaluateOptions(language="fr")
    result = evaluate(predictions=str(preds), options=EvaluateOptions(normalizer="none"), plot=False)
    assert result.report.n == 1 and result.report.totals["wer"].rate == 0.5
