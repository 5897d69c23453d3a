"""The scoring library behind ``kimi-audio-lf evaluate`` (no model): CER / WER on fixed strings, the normalisers
(and what ``--help`` says about them), language detection and ``--language`` choosing who gets WER, empty references,
the LLaMA-Factory metrics, and ``evaluate``'s options checked in one place.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from evaluate_samples import jsonl

from llamafactory_kimi_audio.eval.normalize import NORMALIZERS, cjk_ratio, detect_language
from llamafactory_kimi_audio.eval.scoring import ScoringError, score


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
