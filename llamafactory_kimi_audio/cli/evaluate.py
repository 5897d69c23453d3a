"""``kimi-audio-lf evaluate``: CER/WER of a model (or of saved predictions) on a test set, with a report.

Argument parsing and printing only; the work is ``eval.evaluate`` (``eval/evaluation.py``). Exit codes: 0 ok ·
1 ``--max-cer`` / ``--max-wer`` exceeded (outputs are still written) · 2 bad input · 3 model problem (e.g. a wrong
``--model`` path).
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from ..errors import EXIT_GATE
from ..eval.clips import skipped_warning
from ..eval.normalize import NORMALIZERS
from ..eval.scoring import ScoreReport
from ..fileio.textio import ensure_writable_dir

if TYPE_CHECKING:
    from ..eval.options import EvaluateOptions, TestSet

HELP = (
    "score ASR output (CER over every utterance, WER over utterances in space-delimited languages) "
    "and write summary.json / report.md"
)
EXAMPLES = """examples:
  kimi-audio-lf evaluate --predictions saves/predict/generated_predictions.jsonl --data data/asr_test.json --out eval/
  kimi-audio-lf evaluate --model models/Kimi-Audio-7B-Instruct --adapter saves/lora --data data/asr_test.json \\
      --out eval/lora --baseline eval/base --max-cer 10%

  kimi-audio-lf evaluate --model saves/tts_merged --data data/tts_test.json --out eval/tts   # spoken answers

A test set whose rows have an assistant <audio> (convert --task tts / spoken-reply) is scored at the code level:
code error rate and exact match of the greedy spoken answers against the target codes, plus the text stream's CER.

Utterances whose reference is empty are not scored; a warning gives their number and summary.json lists them.
Utterances whose audio is missing or cannot be decoded are skipped the same way (summary.json "skipped_unreadable",
report.md, one warning line), unless --strict; a test set none of whose clips can be read is an error (exit 2).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EXAMPLES
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--predictions", help="generated_predictions.jsonl, or a JSONL/CSV with id,ref,hyp")
    source.add_argument("--model", help="Kimi-Audio model directory to transcribe --data with")
    parser.add_argument("--adapter", help="LoRA adapter directory (with --model)")
    parser.add_argument("--data", help="test set: sharegpt JSON (from convert), Kimi JSONL, CSV, ...")
    parser.add_argument("--root", help="folder relative audio paths resolve against (default: the dataset_info dir)")
    parser.add_argument("--out", required=True, help="output folder for utterances.*, summary.json, report.md")
    parser.add_argument(
        "--normalizer",
        default="standard",
        choices=list(NORMALIZERS),
        help="text normalisation of reference and hypothesis before scoring: standard = NFKC (full-width → half "
        "width), lower case, punctuation removed, whitespace collapsed (default); basic = NFKC and whitespace only "
        "(case and punctuation count); none = whitespace only",
    )
    parser.add_argument(
        "--language",
        default="auto",
        choices=["auto", "zh", "en"],
        help="CER always counts characters of every utterance; this picks which utterances also get WER (by words): "
        "auto = those whose reference is not mostly Chinese/Japanese/Korean (default), en = all, zh = none",
    )
    parser.add_argument("--baseline", help="summary.json or --out dir of an earlier run to compare with")
    parser.add_argument("--max-cer", type=parse_rate, help="exit 1 when CER is above this (0.08 or 8%%)")
    parser.add_argument("--max-wer", type=parse_rate, help="exit 1 when WER is above this (0.15 or 15%%)")
    parser.add_argument(
        "--instruction", help="instruction for every utterance (--model; default: the record's own, else by language)"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="utterances per generate call (default: 8)")
    parser.add_argument("--repetition-penalty", type=float, default=1.0, help="default: 1.0 (none)")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="default: 256")
    parser.add_argument(
        "--decode",
        default="auto",
        choices=["auto", "graph", "static", "generate"],
        help="greedy decoder: auto (static KV cache, CUDA-graphed step on CUDA), graph, static, or generate "
        "(transformers' generate, the reference; also used with --repetition-penalty) (default: auto)",
    )
    parser.add_argument("--device", help="e.g. cuda:0 (default: automatic)")
    parser.add_argument("--encoding", default="auto", help="text encoding of CSV inputs (default: auto)")
    parser.add_argument("--no-plot", action="store_true", help="do not write the histogram PNG")
    parser.add_argument(
        "--strict",
        action="store_true",
        help="stop with exit 2 at the first test clip that cannot be read (default: skip it, count it in the report)",
    )


def parse_rate(value: str) -> float:
    """``"0.08"`` or ``"8%"`` → 0.08."""
    try:
        return float(value[:-1]) / 100 if value.endswith("%") else float(value)
    except ValueError:
        message = f"{value!r} is not a rate; use a fraction (0.08) or a percentage (8%)"
        raise argparse.ArgumentTypeError(message) from None


def run(args: argparse.Namespace) -> int:
    from ..eval.evaluation import evaluate
    from ..eval.options import EvaluateOptions
    from ..eval.report import load_baseline

    out_dir = ensure_writable_dir(args.out, "--out")
    options = EvaluateOptions(
        normalizer=args.normalizer,
        language=args.language,
        root=args.root,
        encoding=args.encoding,
        instruction=args.instruction,
        plot=not args.no_plot,
        strict=args.strict,
    )
    if args.baseline:  # read now: a wrong --baseline must not cost a whole transcription run first
        load_baseline(args.baseline)
    data, model_args = _load_model(args, options) if args.model else (args.data, {})
    result = evaluate(
        data, predictions=args.predictions, out_dir=out_dir, baseline=args.baseline, options=options, **model_args
    )
    if result.label_mismatches:
        warn(
            f"{result.label_mismatches} prediction labels differ from the test references; check that the "
            "predictions belong to this test set (the test references are used)"
        )
    if result.unreadable:
        warn(skipped_warning(result.unreadable))
    if result.silent:
        print(silent_warning(result.silent), file=sys.stderr)
    if result.skipped_empty:
        examples = ", ".join(result.skipped_empty[:3])
        warn(
            f"{len(result.skipped_empty)} utterances have an empty reference and were not scored (e.g. {examples}); "
            "fix their transcripts or drop them (summary.json lists them)"
        )
    if result.speech is not None:
        speech = result.speech
        trip = speech.round_trip
        heard = f"round-trip CER {100 * trip.report.cer:.2f}%" if trip and trip.report.cer is not None else None
        print(
            f"speech: code error rate {100 * speech.code_error_rate:.2f}% · "
            f"exact match {100 * speech.exact_match:.1f}% · generated/target codes {speech.length_ratio:.3f} · "
            f"n={speech.n} ({heard or ('ASR round trip: no CER' if trip else 'code level: no detokenizer')})"
        )
    print_summary(result.report, result.summary, result.paths["report.md"])
    failures, notes = result.gate(args.max_cer, args.max_wer)
    for note in notes:
        warn(note)
    for failure in failures:
        print(f"kimi-audio-lf evaluate: {failure}", file=sys.stderr)
    return EXIT_GATE if failures else 0


def _load_model(args: argparse.Namespace, options: EvaluateOptions) -> tuple[TestSet, dict[str, Any]]:
    """Load the model once the test set is read and its clips' headers checked (with --strict a missing or unreadable
    clip fails before the slow load; without it, at least one clip must be readable)."""
    from ..eval.model_dir import check_model_dir
    from ..eval.options import prepare_test_set

    test_set = prepare_test_set(args.data, options, transcribe=True)
    check_model_dir(args.model, args.adapter)  # a wrong path: before torch and transformers are even imported
    from ..eval.transcribe import Generation, load_for_inference

    model, processor = load_for_inference(args.model, args.adapter, args.device)
    generation = Generation(args.batch_size, args.repetition_penalty, args.max_new_tokens, args.decode)
    meta = {"model": args.model, "adapter": args.adapter, "dataset": test_set.dataset}
    return test_set, {"model": model, "processor": processor, "generation": generation, "meta": meta}


def silent_warning(clips: list[tuple[str, str]]) -> str:
    from ..fileio.audio_silence import EVAL_FIX, SETTING_SWITCH, warning_line

    return warning_line(clips, SETTING_SWITCH, "; scored", fix=EVAL_FIX)


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def print_summary(report: ScoreReport, summary: dict, report_path: str) -> None:
    parts = [f"{metric.upper()} {100 * t.rate:.2f}% ({t.n} utts)" for metric, t in report.totals.items() if t.n]
    exact = "–" if report.exact_match is None else f"{100 * report.exact_match:.1f}%"
    print(" · ".join([*parts, f"exact match {exact}", f"n={report.n}"]))
    baseline = summary.get("baseline")
    if baseline:
        labels = {"cer": "CER", "wer": "WER", "exact_match": "exact match"}
        deltas = [f"Δ{labels[k]} {100 * v:+.2f} pt" for k, v in baseline["delta"].items() if v is not None]
        counts = f"{baseline['improved']} improved, {baseline['regressed']} regressed"
        print(f"vs baseline: {' · '.join([*deltas, counts])}")
    print(f"report: {report_path}")
