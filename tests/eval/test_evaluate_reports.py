"""``kimi-audio-lf evaluate`` on saved predictions (no model), the runs that succeed or gate: LLaMA-Factory's
``generated_predictions.jsonl`` with or without a test set, positional and GBK CSV predictions, Kimi JSONL test sets,
``report.md`` (table, histogram, worst utterances) and the PNG histogram, deterministic outputs, the ``--max-cer`` /
``--max-wer`` gates (exit 1), baseline comparison, and empty references warned about and listed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from evaluate_samples import cli, generated_predictions, jsonl

from llamafactory_kimi_audio.cli import main


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
