"""CER / WER for LLaMA-Factory's ``predict_with_generate`` (replaces BLEU/ROUGE for the kimi_audio template)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


def corpus_error_rates(references: list[str], hypotheses: list[str], normalizer: str = "standard") -> dict[str, float]:
    """The corpus figures ``kimi-audio-lf evaluate`` reports for the same pairs, in %: CER over every utterance (by
    characters), WER over the utterances of space-delimited languages (by words; absent when there are none, e.g. an
    all-Chinese test set), exact match."""
    from ..eval.scoring import score

    report = score([str(i) for i in range(len(references))], references, hypotheses, normalizer)
    if not report.n:
        return {}
    rates = {"cer": report.cer, "wer": report.wer, "exact_match": report.exact_match}
    return {key: round(100 * value, 4) for key, value in rates.items() if value is not None}


@dataclass
class ComputeAsrMetrics:
    """Drop-in for ``ComputeSimilarity``: same call protocol (``batch_eval_metrics`` included)."""

    tokenizer: Any
    references: list[str] = field(default_factory=list)
    hypotheses: list[str] = field(default_factory=list)

    def decode(self, rows: np.ndarray) -> list[str]:
        from ..models.processing_kimi_audio import transcript_text

        return [transcript_text(self.tokenizer, [t for t in row if t >= 0]) for row in rows.tolist()]

    def __call__(self, eval_preds: Any, compute_result: bool = True) -> dict[str, float] | None:
        from llamafactory.extras.misc import numpify

        self.hypotheses += self.decode(numpify(eval_preds.predictions))
        self.references += self.decode(numpify(eval_preds.label_ids))
        if not compute_result:
            return None
        result = corpus_error_rates(self.references, self.hypotheses)
        self.references, self.hypotheses = [], []
        return result
