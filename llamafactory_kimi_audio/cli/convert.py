"""``kimi-audio-lf convert``: thin wrapper over ``llamafactory_kimi_audio.data.convert.converter``."""

from __future__ import annotations

import argparse
import sys

from ..constants import CHUNK_SECONDS
from ..data.convert.converter import ConvertOptions, ConvertResult, convert, default_name
from ..data.convert.corpora import BY_NAME
from ..data.convert.corpus_convert import CorpusResult
from ..data.convert.names import printable
from ..data.convert.sources import READERS, parse_columns
from ..data.convert.speech_tasks import TASKS, convert_spoken_reply
from ..data.convert.splits import parse_split
from ..data.convert.validate import summarize
from ..fileio.textio import DataError

HELP = "convert ASR data (CSV / JSONL / Kaldi / folders / public corpora) into a LLaMA-Factory dataset"
EXAMPLES = """examples:
  kimi-audio-lf convert train.csv --out-dir data/ --name my_asr --root /data/wavs
  kimi-audio-lf convert data_10k.jsonl --out-dir data/ --split 0.9,0.05,0.05 --seed 0
  kimi-audio-lf convert kaldi/train --out-dir data/ --lang zh --strict
  kimi-audio-lf convert /corpora/WenetSpeech --out-dir data/ --name wenet --subsets M,DEV
  kimi-audio-lf convert /corpora/LibriSpeech --out-dir data/ --name libri --text-case lower
  kimi-audio-lf convert train.csv --out-dir data/ --task tts          # ASR table -> text-to-speech samples
  kimi-audio-lf convert qa.csv --out-dir data/ --task spoken-reply    # question, answer, answer_audio columns
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EXAMPLES
    parser.add_argument("input", metavar="INPUT", help="CSV/TSV/JSON/JSONL file, Kaldi data dir or audio folder")
    parser.add_argument("--out-dir", required=True, help="dataset folder (gets NAME.json and dataset_info.json)")
    parser.add_argument("--name", help="dataset name (default: the input's file name)")
    parser.add_argument("--root", help="folder relative audio paths resolve against (default: the input's folder)")
    parser.add_argument(
        "--format",
        default="auto",
        choices=["auto", *READERS, *BY_NAME],
        help="input format or corpus layout (default: auto = detected)",
    )
    prompt = parser.add_mutually_exclusive_group()
    prompt.add_argument("--instruction", help="user instruction for every row (default: per --lang)")
    prompt.add_argument(
        "--lang",
        default="auto",
        choices=["auto", "zh", "en"],
        help="language of the default instruction; auto = zh when transcripts are mostly CJK",
    )
    parser.add_argument("--split", help="train,dev[,test] fractions summing to 1, e.g. 0.9,0.05,0.05")
    parser.add_argument("--seed", type=int, default=0, help="shuffle seed for --split (default: 0)")
    parser.add_argument("--strict", action="store_true", help="stop with exit code 2 at the first bad row")
    parser.add_argument(
        "--max-duration",
        type=float,
        default=float(CHUNK_SECONDS),
        metavar="SECONDS",
        help=f"warn about clips longer than this (default: {CHUNK_SECONDS}; Kimi-Audio chunks longer audio)",
    )
    parser.add_argument("--drop-long", action="store_true", help="skip clips longer than --max-duration")
    parser.add_argument(
        "--keep-mojibake",
        action="store_true",
        help="keep rows whose transcript looks garbled by a wrong codec (default: skip and report)",
    )
    parser.add_argument(
        "--encoding",
        default="auto",
        help="input text encoding, a Python codec name such as gbk, big5, shift_jis, cp1252 (default: auto = a BOM, "
        "else UTF-8, GB18030, Big5 or Shift-JIS, detected; an ambiguous file is refused, naming this flag)",
    )
    parser.add_argument("--columns", help="CSV/JSON column names, e.g. text=no_point_text,audio=wav_path,id=utt")
    parser.add_argument(
        "--paths",
        default="auto",
        choices=["auto", "relative", "absolute"],
        help="audio paths written: auto (default) = relative to --out-dir when the audio is under it, else absolute; "
        "relative = always relative to --out-dir (LLaMA-Factory joins them to dataset_dir); absolute = always",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--text-case", default="keep", choices=["keep", "lower", "upper"], help="fold transcripts")
    _add_corpus_arguments(parser)


def _add_corpus_arguments(parser: argparse.ArgumentParser) -> None:
    corpus = parser.add_argument_group("public corpora (AISHELL, LibriSpeech, Common Voice, WenetSpeech, ...)")
    corpus.add_argument("--subsets", help="WenetSpeech/GigaSpeech subsets or Common Voice splits, e.g. M,DEV")
    corpus.add_argument(
        "--giga-text",
        default="punct",
        choices=["punct", "strip", "keep"],
        help="GigaSpeech <COMMA>-style tags: punct = , . ? ! (default); strip = drop them; keep = as is",
    )
    corpus.add_argument("--workers", type=int, default=0, help="parallel header probes (default: CPU cores)")
    corpus.add_argument("--chunk-rows", type=int, default=20000, help="rows per shard / resume step (default: 20000)")
    corpus.add_argument("--restart", action="store_true", help="start over instead of resuming an interrupted run")
    parser.add_argument(
        "--task",
        default="asr",
        choices=TASKS,
        help="asr (default); tts: the clip becomes the spoken answer to its transcript; spoken-reply: a table of "
        "question and/or question_audio, answer, answer_audio (see README 'Speech output')",
    )


# flags whose value goes to the ConvertOptions field of the same name
_SAME_NAME = (
    "name root format instruction lang seed strict max_duration drop_long keep_mojibake encoding text_case giga_text "
    "workers chunk_rows restart"
).split()


def run(args: argparse.Namespace) -> int:
    if args.task == "spoken-reply":
        return run_spoken_reply(args)
    same = {name: getattr(args, name) for name in _SAME_NAME}
    options = ConvertOptions(
        **same,
        split=parse_split(args.split),
        columns=parse_columns(args.columns),
        path_style=args.paths,
        progress=not args.no_progress,
        subsets=tuple(s.strip() for s in args.subsets.split(",") if s.strip()) if args.subsets else None,
        task=args.task,
    )
    result = convert(args.input, args.out_dir, options)
    if isinstance(result, CorpusResult):
        return print_corpus_result(result)
    for line in result.notes + summarize(result.issues):
        print(line, file=sys.stderr)
    if not result.rows_written:
        problems = f"{len(result.issues)} problems"
        raise DataError(f"{printable(args.input)}: no usable rows ({problems}); see {result.report_path}")
    print_result(result)
    return 0


def run_spoken_reply(args: argparse.Namespace) -> int:
    name = args.name or default_name(args.input)
    result = convert_spoken_reply(
        args.input, args.out_dir, name, args.root, args.strict, args.max_duration, args.paths, args.encoding
    )
    for line in summarize(result.issues):
        print(line, file=sys.stderr)
    if not result.rows_written:
        problems = f"{len(result.issues)} problems"
        raise DataError(f"{printable(args.input)}: no usable rows ({problems}); see {result.report_path}")
    print(f"converted {result.rows_written}/{result.rows_read} spoken-reply rows: {result.output}")
    print(f"  dataset_info: {result.dataset_info_path}\n  report: {result.report_path}")
    return 0


def print_result(result: ConvertResult) -> None:
    warnings = sum(issue.severity == "warning" for issue in result.issues)
    print(
        f"converted {result.rows_written}/{result.rows_read} rows "
        f"({result.rows_skipped} skipped, {warnings} warnings; format {result.format}, lang {result.lang})"
    )
    for name, path in result.outputs.items():
        print(f"  {name}: {path} ({result.counts[name]} rows)")
    stats = result.durations
    rates = ", ".join(f"{rate} Hz × {n}" for rate, n in stats.sample_rates.items())
    total = f"{stats.total / 3600:.2f} h" if stats.total >= 3600 else f"{stats.total / 60:.1f} min"
    print(f"  audio: {total}, {stats.min:.1f}–{stats.max:.1f} s per clip (median {stats.median:.1f} s); {rates}")
    print(f"  dataset_info: {result.dataset_info_path}")
    print(f"  report: {result.report_path}")


def print_corpus_result(result: CorpusResult) -> int:
    for line in result.notes:
        print(line, file=sys.stderr)
    for reason, count in result.issue_counts.items():
        examples = [issue for issue in result.examples if issue.reason == reason]
        verdict = "warning" if examples and examples[0].severity == "warning" else "skipped"
        print(f"{verdict}: {count} × {reason}", file=sys.stderr)
        for issue in examples:
            print(f"    {issue.one_line()}", file=sys.stderr)
    if not result.rows_written:
        raise DataError(f"{result.name}: no usable rows; see {result.issues_path} and {result.report_path}")
    resumed = f"; resumed after chunk {result.resumed_from}" if result.resumed_from else ""
    counts = f"{result.rows_written}/{result.rows_read} rows"
    print(f"converted {counts} (layout {result.layout}, lang {result.lang}{resumed})")
    for name, report in result.datasets.items():
        skipped = ", ".join(f"{r} {n}" for r, n in report["skipped_by_reason"].items())
        print(
            f"  {name}: {report['rows']} rows, {report['hours']:.2f} h" + (f"; skipped {skipped}" if skipped else "")
        )
    print(f"  files: {result.files_written} shards, {result.bytes_written / 1e6:.1f} MB")
    print(f"  dataset_info: {result.dataset_info_path}")
    print(f"  report: {result.report_path} (every problem: {result.issues_path})")
    return 0
