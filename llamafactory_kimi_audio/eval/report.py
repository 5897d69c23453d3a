"""Evaluation outputs: ``utterances.jsonl`` / ``.csv``, ``summary.json`` and a ``report.md`` a person can read.

All files are written atomically and deterministically (stable ordering, no timestamps), so two runs on the same
inputs produce identical files. The CSV carries a UTF-8 BOM so Excel shows Chinese text correctly, and a text cell
that a spreadsheet would run as a formula (``=HYPERLINK(...)`` in a transcript) starts with a ``'`` there (OWASP's
CSV-injection rule); ``utterances.jsonl`` keeps every text as it is.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections.abc import Sequence
from typing import Any

from .. import __version__
from ..fileio.textio import DataError, atomic_open, write_json, write_lines
from .clips import Unreadable
from .scoring import Comparison, ScoreReport, UtteranceScore

CSV_FIELDS = (
    "id",
    "metric",
    "error_rate",
    "errors",
    "ref_len",
    "hits",
    "substitutions",
    "deletions",
    "insertions",
    "exact",
    "ref",
    "hyp",
    "ref_norm",
    "hyp_norm",
    "audio",
)
# (label, upper bound inclusive); the first bin is exact matches only.
HISTOGRAM_BINS = (
    ("0 (exact)", 0.0),
    ("0–5%", 0.05),
    ("5–10%", 0.10),
    ("10–20%", 0.20),
    ("20–30%", 0.30),
    ("30–50%", 0.50),
    ("50–100%", 1.0),
    ("> 100%", float("inf")),
)
WORST_N = 10
UNREADABLE_LISTED = 50  # report.md lists this many unreadable clips; summary.json lists them all
PLOT_NAME = "error_rate_hist.png"
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")  # what a spreadsheet may run as a formula (OWASP)


def dataset_hash(ids: Sequence[str], refs: Sequence[str]) -> str:
    """Content hash of the (id, reference) pairs in order: equal hashes mean the same test set."""
    digest = hashlib.sha256()
    for uid, ref in zip(ids, refs):
        digest.update(json.dumps([uid, ref], ensure_ascii=False).encode("utf-8") + b"\n")
    return "sha256:" + digest.hexdigest()[:16]


def build_summary(
    report: ScoreReport,
    meta: dict[str, Any],
    comparison: Comparison | None = None,
    unreadable: Sequence[Unreadable] = (),
) -> dict[str, Any]:
    """The ``summary.json`` payload; ``meta`` adds model / dataset / generation fields."""
    ids = [u.id for u in report.utterances]
    summary = {
        "model": meta.get("model"),
        "adapter": meta.get("adapter"),
        "predictions": meta.get("predictions"),
        "dataset": meta.get("dataset"),
        "dataset_hash": dataset_hash(ids, [u.ref for u in report.utterances]),
        "normalizer": report.normalizer.describe(),
        "language": report.language,
        "n": report.n,
        "n_cer": report.totals["cer"].n,
        "n_wer": report.totals["wer"].n,
        "cer": report.cer,
        "wer": report.wer,
        "exact_match": report.exact_match,
        "counts": {metric: totals.to_dict() for metric, totals in report.totals.items()},
        "skipped_empty_reference": list(report.skipped_empty),
        "n_unreadable": len(unreadable),
        "skipped_unreadable": [u.to_dict() for u in unreadable],
        "generation": meta.get("generation"),
        "version": __version__,
    }
    if comparison is not None:
        summary["baseline"] = comparison.to_dict()
    return summary


def histogram(rates: Sequence[float]) -> list[tuple[str, int]]:
    counts = dict.fromkeys((label for label, _ in HISTOGRAM_BINS), 0)
    for rate in rates:
        label = next(label for label, high in HISTOGRAM_BINS if rate <= high)
        counts[label] += 1
    return list(counts.items())


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}%"


def _cell(text: str, limit: int = 120) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def worst(utterances: Sequence[UtteranceScore], n: int = WORST_N) -> list[UtteranceScore]:
    """The ``n`` utterances with the highest error rate (ties: more errors first, then id); exact ones excluded."""
    return sorted((u for u in utterances if u.errors), key=lambda u: (-u.error_rate, -u.errors, u.id))[:n]


def _counts(summary: dict[str, Any], report: ScoreReport) -> str:
    counts = f"{report.n} ({summary['n_cer']} by CER, {summary['n_wer']} by WER)"
    skipped = report.skipped_empty
    skipped_note = f"{len(skipped)} not scored (empty reference: {', '.join(skipped[:5])}{'…' * (len(skipped) > 5)})"
    counts = f"{counts}; {skipped_note}" if skipped else counts
    unreadable = summary.get("n_unreadable") or 0
    return f"{counts}; {unreadable} skipped (audio unreadable, listed below)" if unreadable else counts


def _unreadable_lines(summary: dict[str, Any]) -> list[str]:
    rows = summary.get("skipped_unreadable") or []
    if not rows:
        return []
    lines = ["", f"## {len(rows)} utterances not scored: audio unreadable", "", "| id | reason |", "|---|---|"]
    lines += [f"| {_cell(row['id'], 40)} | {_cell(row['reason'], 300)} |" for row in rows[:UNREADABLE_LISTED]]
    if len(rows) > UNREADABLE_LISTED:
        lines.append(f"| … | {len(rows) - UNREADABLE_LISTED} more in summary.json (skipped_unreadable) |")
    return lines


def render_markdown(summary: dict[str, Any], report: ScoreReport, plot: str | None = None) -> str:
    lines = ["# ASR evaluation report", "", "| | |", "|---|---|"]
    source = summary.get("model") or summary.get("predictions") or "–"
    for label, value in (
        ("model / predictions", source),
        ("adapter", summary.get("adapter") or "–"),
        ("dataset", summary.get("dataset") or "–"),
        ("dataset hash", summary["dataset_hash"]),
        ("normaliser", f"{report.normalizer.name} ({' → '.join(report.normalizer.step_names)})"),
        ("utterances", _counts(summary, report)),
    ):
        lines.append(f"| {label} | {_cell(str(value))} |")
    lines += ["", "| metric | value | S | D | I | hits | reference length |", "|---|---|---|---|---|---|---|"]
    for metric, totals in report.totals.items():
        if totals.n:
            lines.append(
                f"| {metric.upper()} | {_pct(totals.rate)} | {totals.substitutions} | {totals.deletions} | "
                f"{totals.insertions} | {totals.hits} | {totals.ref_len} |"
            )
    lines.append(f"| exact match | {_pct(report.exact_match)} | | | | | |")
    lines += _unreadable_lines(summary)
    lines += _baseline_lines(summary.get("baseline"))
    lines += [
        "",
        "## Per-utterance error rate (CER or WER)",
        "",
        "| error rate | utterances | share | |",
        "|---|---|---|---|",
    ]
    for label, count in histogram([u.error_rate for u in report.utterances]):
        share = count / report.n if report.n else 0.0
        lines.append(f"| {label} | {count} | {100 * share:.1f}% | {'█' * round(20 * share)} |")
    if plot:
        lines += ["", f"![error-rate histogram]({plot})"]
    lines += [
        "",
        f"## {WORST_N} worst utterances",
        "",
        "| id | metric | rate | reference | hypothesis |",
        "|---|---|---|---|---|",
    ]
    bad = worst(report.utterances)
    for utt in bad:
        lines.append(
            f"| {_cell(utt.id, 40)} | {utt.metric.upper()} | {_pct(utt.error_rate)} | {_cell(utt.ref)} | "
            f"{_cell(utt.hyp) or '*(empty)*'} |"
        )
    if not bad:
        lines.append("| – | | | every utterance matches its reference | |")
    return "\n".join(lines) + "\n"


def _baseline_lines(baseline: dict[str, Any] | None) -> list[str]:
    if not baseline:
        return []
    lines = [
        "",
        f"## Compared with {baseline['baseline']}",
        "",
        "| metric | before | after | change |",
        "|---|---|---|---|",
    ]
    for key in ("cer", "wer", "exact_match"):
        before, after, delta = baseline["before"].get(key), baseline["after"].get(key), baseline["delta"].get(key)
        if before is not None or after is not None:
            change = "–" if delta is None else f"{100 * delta:+.2f} pt"
            lines.append(f"| {key.replace('_', ' ')} | {_pct(before)} | {_pct(after)} | {change} |")
    lines += [
        "",
        f"Per utterance ({baseline['matched']} matched by id): {baseline['improved']} improved, "
        f"{baseline['regressed']} regressed, {baseline['unchanged']} unchanged.",
    ]
    if not baseline["same_normalizer"]:
        lines.append("**Warning:** the baseline used a different normaliser; the numbers are not comparable.")
    return lines


def _plot(report: ScoreReport, path: str) -> bool:
    """Save a histogram PNG when matplotlib is installed (no pyplot: no global backend state)."""
    try:
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        return False
    labels, counts = zip(*histogram([u.error_rate for u in report.utterances]))
    figure = Figure(figsize=(7, 3), dpi=100)
    axes = figure.add_subplot()
    axes.bar(range(len(labels)), counts, color="#4c72b0")
    axes.set_xticks(range(len(labels)), labels, fontsize=8)
    axes.set_xlabel("per-utterance error rate")
    axes.set_ylabel("utterances")
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    figure.tight_layout()
    with atomic_open(path, "wb") as fh:
        figure.savefig(fh, format="png")
    return True


def spreadsheet_safe(value: Any) -> Any:
    """A text cell a spreadsheet would evaluate (``=``, ``+``, ``-``, ``@``, tab, CR first) gets a leading ``'``."""
    return "'" + value if isinstance(value, str) and value.startswith(FORMULA_PREFIXES) else value


def unescape_cell(value: Any) -> Any:
    """The text :func:`spreadsheet_safe` escaped (utterances.csv read back as predictions)."""
    escaped = isinstance(value, str) and value.startswith("'") and value[1:].startswith(FORMULA_PREFIXES)
    return value[1:] if escaped else value


def _csv_text(report: ScoreReport) -> str:
    buffer = io.StringIO()
    # RFC 4180 line ends: the writer then also quotes a cell holding a lone CR, which would otherwise split its row
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\r\n")
    writer.writeheader()
    for utt in report.utterances:
        row = {**utt.to_dict(), "errors": utt.errors, "ref_len": utt.ref_len}
        writer.writerow({key: spreadsheet_safe(value) for key, value in row.items()})
    return buffer.getvalue()


def write_outputs(out_dir: str, report: ScoreReport, summary: dict[str, Any], plot: bool = True) -> dict[str, str]:
    """Write every output file into ``out_dir``; returns name → path."""
    paths = {
        name: os.path.join(out_dir, name)
        for name in ("utterances.jsonl", "utterances.csv", "summary.json", "report.md")
    }
    write_lines(
        paths["utterances.jsonl"], lambda: (json.dumps(u.to_dict(), ensure_ascii=False) for u in report.utterances)
    )
    with atomic_open(paths["utterances.csv"], encoding="utf-8-sig") as fh:
        fh.write(_csv_text(report))
    write_json(paths["summary.json"], summary)
    plot_name = PLOT_NAME if plot and report.n and _plot(report, os.path.join(out_dir, PLOT_NAME)) else None
    if plot_name:
        paths[PLOT_NAME] = os.path.join(out_dir, plot_name)
    with atomic_open(paths["report.md"]) as fh:
        fh.write(render_markdown(summary, report, plot_name))
    return paths


def load_baseline(path: str) -> tuple[dict[str, Any], list[dict[str, Any]] | None, str]:
    """``(summary, per-utterance rows or None, display name)`` from an evaluate output dir or its summary.json."""
    summary_path = os.path.join(path, "summary.json") if os.path.isdir(path) else path
    if not os.path.isfile(summary_path):
        raise DataError(f"{path}: no summary.json there; pass the --out dir of an earlier evaluate run or its summary")
    try:
        with open(summary_path, encoding="utf-8") as fh:
            summary = json.load(fh)
    except json.JSONDecodeError as err:
        raise DataError(f"{summary_path} line {err.lineno}: invalid JSON ({err.msg})") from err
    rows_path = os.path.join(os.path.dirname(summary_path), "utterances.jsonl")
    rows = None
    if os.path.isfile(rows_path):
        with open(rows_path, encoding="utf-8") as fh:
            rows = [json.loads(line) for line in fh if line.strip()]
    return summary, rows, summary_path
