"""What the evaluator reads: a test set (sharegpt JSON, Kimi JSONL, or any format ``convert`` reads) and predictions.

Predictions come from LLaMA-Factory's ``generated_predictions.jsonl`` (``prompt`` / ``predict`` / ``label``, matched
to the test set by position) or from a JSONL / CSV with ``id``, ``ref`` and ``hyp`` columns (matched by id).
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field

from ..data.convert.dataset_files import resolve_audio
from ..data.convert.records import SourceRecord, iter_json_records
from ..data.convert.sources import ReadOptions, read_source
from ..data.convert.validate import Issue
from ..fileio.dataset_info import media_root
from ..fileio.textio import DataError, read_text
from .clips import Unreadable
from .report import CSV_FIELDS, unescape_cell

PREDICTION_KEYS: dict[str, tuple[str, ...]] = {
    "id": ("id", "key", "utt", "utt_id", "uttid", "name"),
    "hyp": ("predict", "hyp", "hypothesis", "prediction", "pred", "output"),
    "ref": ("label", "ref", "reference", "text", "transcript", "target"),
}


@dataclass(frozen=True)
class TestItem:
    id: str
    audio: str  # absolute path
    instruction: str | None
    reference: str


@dataclass(frozen=True)
class Prediction:
    id: str | None
    ref: str | None
    hyp: str


def require_test_set(path: str) -> None:
    """DataError naming --data and the datasets next to ``path`` (e.g. a convert whose --split wrote no test set)."""
    if os.path.exists(path):
        return
    folder = os.path.dirname(path) or "."
    names = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    held = [n for n in names if n.endswith((".json", ".jsonl")) and n != "dataset_info.json" and ".report." not in n]
    hint = f" (its folder holds {', '.join(held[:8])}{', ...' if len(held) > 8 else ''})" if held else ""
    raise DataError(f"{path}: no such test set file; check --data{hint}")


def load_test_set(path: str, root: str | None = None, encoding: str = "auto") -> list[TestItem]:
    """Test utterances in file order; any unusable record raises DataError (a test set must not shrink silently)."""
    require_test_set(path)
    source = read_source(path, "auto", ReadOptions(encoding=encoding))
    base = os.path.abspath(root) if root else media_root(path)
    items: list[TestItem] = []
    for record in source.records:
        if isinstance(record, Issue):
            raise DataError(f"{record.one_line()} (test set records cannot be skipped)")
        items.append(_test_item(record, base, len(items)))
    return items


def _test_item(record: SourceRecord, root: str, index: int) -> TestItem:
    audio = resolve_audio(str(record.audio), root, record.by_id) if record.audio else ""
    uid = record.uid or str(index)
    return TestItem(uid, audio, record.instruction, (record.text or "").strip())


def _pick(keys: list[str], role: str) -> str | None:
    lowered = {k.strip().lower(): k for k in keys if isinstance(k, str)}
    return next((lowered[a] for a in PREDICTION_KEYS[role] if a in lowered), None)


def _prediction(obj: dict, where: str) -> Prediction:
    keys = list(obj)
    hyp_key = _pick(keys, "hyp")
    if hyp_key is None:
        accepted = ", ".join(PREDICTION_KEYS["hyp"])
        raise DataError(f"{where}: no hypothesis field among {keys}; name it one of: {accepted}")
    id_key, ref_key = _pick(keys, "id"), _pick(keys, "ref")
    value = obj.get(id_key) if id_key else None
    return Prediction(
        None if value in (None, "") else str(value), obj.get(ref_key) if ref_key else None, str(obj.get(hyp_key) or "")
    )


def load_predictions(path: str, encoding: str = "auto") -> list[Prediction]:
    """Read ``generated_predictions.jsonl`` or an id/ref/hyp JSONL, JSON or CSV/TSV file."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such predictions file; check --predictions")
    name = os.path.basename(path)
    if name.lower().endswith((".csv", ".tsv")):
        text, _ = read_text(path, encoding)
        delimiter = "\t" if name.lower().endswith(".tsv") else ","
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
        own = set(CSV_FIELDS) <= set(reader.fieldnames or ())  # evaluate's utterances.csv: undo its formula escape
        rows = ({k: unescape_cell(v) for k, v in row.items()} if own else row for row in reader)
        return [_prediction(row, f"{name} row {n}") for n, row in enumerate(rows, start=2)]
    items, _ = iter_json_records(path, encoding)
    predictions = []
    for line, obj in items:
        if isinstance(obj, Issue):
            raise DataError(f"{obj.where}: {obj.message}; fix the line (predictions cannot be skipped)")
        if not isinstance(obj, dict):
            raise DataError(f"{name} line {line}: expected a JSON object, got {type(obj).__name__}")
        predictions.append(_prediction(obj, f"{name} line {line}"))
    return predictions


@dataclass
class Paired:
    ids: list[str]
    refs: list[str]
    hyps: list[str]
    audios: list[str | None]
    label_mismatches: int = 0  # positional pairing: predictions whose own label differs from the test reference
    unreadable: list[Unreadable] = field(default_factory=list)  # utterances skipped: their audio cannot be read
    silent: list[tuple[str, str]] = field(default_factory=list)  # (audio, "utterance ID"): silent, with a reference


def pair(predictions: list[Prediction], items: list[TestItem] | None, pred_name: str, data_name: str = "") -> Paired:
    """Pair predictions with references: from the test set when given (by id, else by position), else their own."""
    if items is None:
        missing = [i for i, p in enumerate(predictions) if p.ref is None]
        if missing:
            raise DataError(
                f"{pred_name}: {len(missing)} rows have no reference (label/ref); "
                "pass --data TEST.json to take references from the test set"
            )
        ids = [p.id or str(i) for i, p in enumerate(predictions)]
        return Paired(ids, [str(p.ref) for p in predictions], [p.hyp for p in predictions], [None] * len(ids))
    if predictions and all(p.id is not None for p in predictions):
        by_id = {p.id: p for p in predictions}
        missing = [item.id for item in items if item.id not in by_id]
        if missing:
            examples = ", ".join(missing[:3])
            raise DataError(
                f"{pred_name}: {len(missing)} of {len(items)} utterances of {data_name} have no "
                f"prediction (e.g. {examples}); predict them or evaluate a matching test set"
            )
        chosen = [by_id[item.id] for item in items]
    elif len(predictions) != len(items):
        raise DataError(
            f"{pred_name} has {len(predictions)} predictions but {data_name} has {len(items)} "
            "utterances; rows are matched by position, so the counts must be equal "
            "(was prediction cut short, or is it another test set?)"
        )
    else:
        chosen = predictions
    differ = sum(
        p.ref is not None and " ".join(str(p.ref).split()) != " ".join(i.reference.split())
        for p, i in zip(chosen, items)
    )
    return Paired(
        [i.id for i in items], [i.reference for i in items], [p.hyp for p in chosen], [i.audio for i in items], differ
    )
