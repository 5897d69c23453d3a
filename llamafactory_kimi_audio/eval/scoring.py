"""CER / WER scoring with jiwer: per-utterance alignment counts, corpus totals and before/after comparisons.

Each utterance is scored by one metric. ``language="auto"`` decides per utterance from its reference (mostly CJK →
CER, character by character with spaces removed; otherwise WER, word by word). Corpus CER and WER are
``(S + D + I) / (S + D + hits)`` summed over the utterances scored with that metric, as ``jiwer`` computes them
for a list of sentences.

An utterance whose reference is empty after normalisation has no error rate (nothing to divide by): it is not
scored, and its id is listed in ``ScoreReport.skipped_empty`` (``evaluate`` warns with the count and records the ids
in ``summary.json``; a test set whose references are all empty is an error there).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import jiwer

from ..errors import InputError
from .normalize import Normalizer, detect_language, get_normalizer

METRIC_BY_LANGUAGE = {"zh": "cer", "en": "wer"}


class ScoringError(InputError):
    """Inputs that cannot be scored together (e.g. different numbers of references and hypotheses)."""


@dataclass(frozen=True)
class UtteranceScore:
    id: str
    ref: str
    hyp: str
    ref_norm: str
    hyp_norm: str
    metric: str  # "cer" | "wer"
    hits: int
    substitutions: int
    deletions: int
    insertions: int
    audio: str | None = None

    @property
    def ref_len(self) -> int:
        return self.hits + self.substitutions + self.deletions

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def error_rate(self) -> float:
        return self.errors / max(1, self.ref_len)

    @property
    def exact(self) -> bool:
        return self.errors == 0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "error_rate": round(self.error_rate, 6), "exact": self.exact}


@dataclass
class Totals:
    """Summed alignment counts of the utterances scored with one metric."""

    n: int = 0
    hits: int = 0
    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0

    def add(self, utt: UtteranceScore) -> None:
        self.n += 1
        self.hits += utt.hits
        self.substitutions += utt.substitutions
        self.deletions += utt.deletions
        self.insertions += utt.insertions

    @property
    def ref_len(self) -> int:
        return self.hits + self.substitutions + self.deletions

    @property
    def rate(self) -> float | None:
        """None when no utterance used this metric."""
        if not self.n:
            return None
        errors = self.substitutions + self.deletions + self.insertions
        return errors / self.ref_len if self.ref_len else float(errors > 0)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ref_len": self.ref_len, "rate": self.rate}


@dataclass
class ScoreReport:
    utterances: list[UtteranceScore]
    normalizer: Normalizer
    language: str
    totals: dict[str, Totals] = field(default_factory=dict)  # "cer" / "wer"
    skipped_empty: list[str] = field(default_factory=list)  # ids of utterances with an empty reference (not scored)

    @property
    def n(self) -> int:
        return len(self.utterances)

    @property
    def cer(self) -> float | None:
        return self.totals["cer"].rate

    @property
    def wer(self) -> float | None:
        return self.totals["wer"].rate

    @property
    def exact_match(self) -> float | None:
        return sum(u.exact for u in self.utterances) / self.n if self.n else None


def _align(ref: str, hyp: str) -> jiwer.WordOutput:
    return jiwer.process_words(ref, hyp)


def score_utterance(
    uid: str, ref: str, hyp: str, normalizer: Normalizer, language: str = "auto", audio: str | None = None
) -> UtteranceScore:
    """Normalise both sides, pick CER or WER, and align with jiwer."""
    ref_norm, hyp_norm = normalizer(ref), normalizer(hyp)
    lang = language if language != "auto" else detect_language(ref_norm or hyp_norm)
    metric = METRIC_BY_LANGUAGE[lang]
    if metric == "cer":  # characters as "words": spaces removed, one token per character
        out = _align(" ".join(ref_norm.replace(" ", "")), " ".join(hyp_norm.replace(" ", "")))
    else:
        out = _align(ref_norm, hyp_norm)
    return UtteranceScore(
        uid, ref, hyp, ref_norm, hyp_norm, metric, out.hits, out.substitutions, out.deletions, out.insertions, audio
    )


def score(
    ids: Sequence[str],
    refs: Sequence[str],
    hyps: Sequence[str],
    normalizer: str | Normalizer = "standard",
    language: str = "auto",
    audios: Sequence[str | None] | None = None,
) -> ScoreReport:
    """Score hypotheses against references (same order); ``language`` is ``auto``, ``zh`` (CER) or ``en`` (WER)."""
    if not (len(ids) == len(refs) == len(hyps)):
        raise ScoringError(
            f"{len(hyps)} hypotheses for {len(refs)} references ({len(ids)} ids); "
            "every utterance needs exactly one of each"
        )
    if language not in ("auto", *METRIC_BY_LANGUAGE):
        raise ScoringError(f"unknown language {language!r}; use auto, zh (CER) or en (WER)")
    norm = get_normalizer(normalizer) if isinstance(normalizer, str) else normalizer
    audio_list = list(audios) if audios is not None else [None] * len(ids)
    rows = [
        score_utterance(str(i), r or "", h or "", norm, language, a) for i, r, h, a in zip(ids, refs, hyps, audio_list)
    ]
    skipped = [row.id for row in rows if not row.ref_norm]
    rows = [row for row in rows if row.ref_norm]
    report = ScoreReport(rows, norm, language, {"cer": Totals(), "wer": Totals()}, skipped)
    for row in rows:
        report.totals[row.metric].add(row)
        if row.metric == "wer":  # CER is meaningful for every language: count characters of English rows too
            report.totals["cer"].add(character_score(row))
    return report


def character_score(row: UtteranceScore) -> UtteranceScore:
    """The character-level (CER) alignment of an utterance that was scored by words."""
    out = _align(" ".join(row.ref_norm.replace(" ", "")), " ".join(row.hyp_norm.replace(" ", "")))
    return replace(
        row,
        metric="cer",
        hits=out.hits,
        substitutions=out.substitutions,
        deletions=out.deletions,
        insertions=out.insertions,
    )


@dataclass
class Comparison:
    """This run against a baseline run (matched by utterance id)."""

    baseline: str
    before: dict[str, float | None]  # cer / wer / exact_match of the baseline
    after: dict[str, float | None]
    matched: int
    improved: int
    regressed: int
    unchanged: int
    only_in_baseline: int
    only_in_current: int
    same_normalizer: bool

    @property
    def delta(self) -> dict[str, float | None]:
        before = self.before
        return {k: None if before.get(k) is None or v is None else v - before[k] for k, v in self.after.items()}

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "delta": self.delta}


def compare(
    report: ScoreReport,
    baseline_summary: dict[str, Any],
    baseline_rows: list[dict[str, Any]] | None,
    baseline_name: str,
) -> Comparison:
    """Corpus deltas from the baseline's summary; improved/regressed counts from its per-utterance rows."""
    before_rates = {row["id"]: float(row["error_rate"]) for row in baseline_rows or []}
    improved = regressed = unchanged = 0
    current_ids = set()
    for utt in report.utterances:
        current_ids.add(utt.id)
        if utt.id not in before_rates:
            continue
        change = utt.error_rate - before_rates[utt.id]
        improved += change < -1e-12
        regressed += change > 1e-12
        unchanged += abs(change) <= 1e-12
    return Comparison(
        baseline=baseline_name,
        before={k: baseline_summary.get(k) for k in ("cer", "wer", "exact_match")},
        after={"cer": report.cer, "wer": report.wer, "exact_match": report.exact_match},
        matched=improved + regressed + unchanged,
        improved=improved,
        regressed=regressed,
        unchanged=unchanged,
        only_in_baseline=len(set(before_rates) - current_ids),
        only_in_current=len(current_ids - set(before_rates)) if baseline_rows is not None else 0,
        same_normalizer=(baseline_summary.get("normalizer") or {}).get("name") == report.normalizer.name,
    )
