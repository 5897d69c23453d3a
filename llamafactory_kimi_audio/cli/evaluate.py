"""``kimi-audio-lf evaluate``: CER/WER of a model (or of saved predictions) on a test set, with a report.

Exit codes: 0 ok · 1 ``--max-cer`` / ``--max-wer`` exceeded (outputs are still written) · 2 bad input ·
3 model problem.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from ..audio_io import split_media
from ..data.textio import DataError, ensure_writable_dir
from ..eval.inputs import Paired, TestItem, load_predictions, load_test_set, pair
from ..eval.normalize import NORMALIZERS, detect_language
from ..eval.report import build_summary, load_baseline, write_outputs
from ..eval.scoring import ScoreReport, compare, score
from ..models.special_tokens import DEFAULT_INSTRUCTION
from ._errors import EXIT_GATE, EXIT_MODEL, CliError

HELP = "score ASR output (CER for Chinese, WER for English) and write summary.json / report.md"
EXAMPLES = """examples:
  kimi-audio-lf evaluate --predictions saves/predict/generated_predictions.jsonl --data data/asr_test.json --out eval/
  kimi-audio-lf evaluate --model models/Kimi-Audio-7B-Instruct --adapter saves/lora --data data/asr_test.json \\
      --out eval/lora --baseline eval/base --max-cer 10%
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
    parser.add_argument("--normalizer", default="standard", choices=list(NORMALIZERS), help="default: standard")
    parser.add_argument("--language", default="auto", choices=["auto", "zh", "en"],
                        help="zh = CER, en = WER, auto = per utterance from the reference (default)")
    parser.add_argument("--baseline", help="summary.json or --out dir of an earlier run to compare with")
    parser.add_argument("--max-cer", type=parse_rate, help="exit 1 when CER is above this (0.08 or 8%%)")
    parser.add_argument("--max-wer", type=parse_rate, help="exit 1 when WER is above this (0.15 or 15%%)")
    parser.add_argument("--instruction",
                        help="instruction for every utterance (--model; default: the record's own, else by language)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repetition-penalty", type=float, default=1.0)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--device", help="e.g. cuda:0 (default: automatic)")
    parser.add_argument("--encoding", default="auto", help="text encoding of CSV inputs (default: auto)")
    parser.add_argument("--no-plot", action="store_true", help="do not write the histogram PNG")


def parse_rate(value: str) -> float:
    """``"0.08"`` or ``"8%"`` → 0.08."""
    try:
        return float(value[:-1]) / 100 if value.endswith("%") else float(value)
    except ValueError:
        message = f"{value!r} is not a rate; use a fraction (0.08) or a percentage (8%)"
        raise argparse.ArgumentTypeError(message) from None


def _transcribe(items: list[TestItem], args: argparse.Namespace) -> list[str]:
    missing = [item.audio or item.id for item in items if not os.path.isfile(split_media(item.audio)[0])]
    if missing:
        raise DataError(f"{len(missing)} test audio files not found (e.g. {', '.join(missing[:3])}); "
                        "check the paths or pass --root")
    from ..eval.transcribe import transcribe  # heavy (torch, the model); only for --model

    default = args.instruction or DEFAULT_INSTRUCTION[detect_language(i.reference for i in items)]
    instructions = [args.instruction or item.instruction or default for item in items]
    hyps = transcribe([i.audio for i in items], instructions, args.model, adapter_path=args.adapter,
                      batch_size=args.batch_size, repetition_penalty=args.repetition_penalty,
                      max_new_tokens=args.max_new_tokens, device=args.device)
    if len(hyps) != len(items):
        raise CliError(f"the model returned {len(hyps)} transcripts for {len(items)} audios", EXIT_MODEL)
    return list(hyps)


def _inputs(args: argparse.Namespace) -> tuple[Paired, dict[str, Any]]:
    items = load_test_set(args.data, args.root, args.encoding) if args.data else None
    meta: dict[str, Any] = {"dataset": os.path.abspath(args.data) if args.data else None}
    if args.predictions:
        predictions = load_predictions(args.predictions, args.encoding)
        paired = pair(predictions, items, os.path.basename(args.predictions), os.path.basename(args.data or ""))
        return paired, {**meta, "predictions": os.path.abspath(args.predictions)}
    if items is None:
        raise DataError("--model needs --data TEST.json (the utterances to transcribe)")
    hyps = _transcribe(items, args)
    generation = {"batch_size": args.batch_size, "repetition_penalty": args.repetition_penalty,
                  "max_new_tokens": args.max_new_tokens}
    paired = Paired([i.id for i in items], [i.reference for i in items], hyps, [i.audio for i in items])
    return paired, {**meta, "model": args.model, "adapter": args.adapter, "generation": generation}


def run(args: argparse.Namespace) -> int:
    out_dir = ensure_writable_dir(args.out, "--out")
    paired, meta = _inputs(args)
    if paired.label_mismatches:
        print(f"warning: {paired.label_mismatches} prediction labels differ from the test references; check that "
              "the predictions belong to this test set (the test references are used)", file=sys.stderr)
    report = score(paired.ids, paired.refs, paired.hyps, args.normalizer, args.language, paired.audios)
    comparison = None
    if args.baseline:
        base_summary, base_rows, base_name = load_baseline(args.baseline)
        comparison = compare(report, base_summary, base_rows, base_name)
    summary = build_summary(report, meta, comparison)
    paths = write_outputs(out_dir, report, summary, plot=not args.no_plot)
    print_summary(report, summary, paths["report.md"])
    return _gate(report, args)


def print_summary(report: ScoreReport, summary: dict[str, Any], report_path: str) -> None:
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


def _gate(report: ScoreReport, args: argparse.Namespace) -> int:
    code = 0
    for metric, limit in (("cer", args.max_cer), ("wer", args.max_wer)):
        rate = report.totals[metric].rate
        if limit is None:
            continue
        if rate is None:
            print(f"warning: --max-{metric} ignored: no utterance was scored by {metric.upper()}", file=sys.stderr)
        elif rate > limit:
            print(f"kimi-audio-lf evaluate: {metric.upper()} {100 * rate:.2f}% exceeds --max-{metric} "
                  f"{100 * limit:.2f}%", file=sys.stderr)
            code = EXIT_GATE
    return code
