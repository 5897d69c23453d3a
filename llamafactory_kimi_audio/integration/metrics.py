"""CER / WER for LLaMA-Factory's ``predict_with_generate`` (replaces BLEU/ROUGE for the kimi_audio template)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..eval.normalize import get_normalizer


def corpus_error_rates(references: list[str], hypotheses: list[str], normalizer: str = "standard") -> dict[str, float]:
    """Corpus-level CER (characters, spaces removed) and WER (words) after normalisation, plus exact match."""
    import jiwer

    normalize = get_normalizer(normalizer)
    refs = [normalize(r) for r in references]
    hyps = [normalize(h) for h in hypotheses]
    pairs = [(r, h) for r, h in zip(refs, hyps) if r]
    if not pairs:
        return {}
    ref_chars = [" ".join(r.replace(" ", "")) for r, _ in pairs]
    hyp_chars = [" ".join(h.replace(" ", "")) for _, h in pairs]
    hyp_chars = [h if h else "" for h in hyp_chars]
    cer = jiwer.process_words(ref_chars, hyp_chars)
    wer = jiwer.process_words([r for r, _ in pairs], [h for _, h in pairs])
    return {
        "cer": round(100 * cer.wer, 4),
        "wer": round(100 * wer.wer, 4),
        "exact_match": round(100 * float(np.mean([r == h for r, h in pairs])), 4),
    }


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
