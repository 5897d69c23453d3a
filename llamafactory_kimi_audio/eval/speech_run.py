"""Run a loaded model over a speech test set (``speech_eval.py``) and score its spoken answers against the targets.

``evaluate`` calls :func:`evaluate_speech` for a test set whose rows have an assistant ``<audio>``; the text stream
gets the usual CER / WER report (``utterances.*``), the codes ``speech_utterances.jsonl`` and ``summary.json``'s
``speech`` block, and ``report.md`` starts with both.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from ..fileio.audio import load_audio
from ..fileio.audio_errors import AudioError
from ..fileio.textio import atomic_open, ensure_writable_dir, write_lines
from .clips import Unreadable, check_skipped, split_readable, strict_error
from .report import PLOT_NAME, build_summary, render_markdown, write_outputs
from .scoring import score
from .speech_eval import CodeScore, SpeechItem, SpeechScores, code_score, speech_clips

RUNAWAY_MARGIN = 10  # decoding steps beyond 2 x the target's codes (+ the delay) before a runaway answer is cut


def target_codes(model: Any, processor: Any, path: str) -> list[int]:
    """GLM-4-Voice codes of a target clip: the feature cache's entry if it has one, else the checkpoint's tokenizer."""
    from ..data.features.feature_cache import process_cache

    try:
        cache = process_cache(getattr(processor, "name_or_path", None))
    except OSError:  # no encoder weights next to the processor (e.g. an adapter dir): encode, as without a cache
        cache = None
    if cache is not None:
        ((_, at),) = cache.lookup([path])
        if at is not None:
            return [int(c) for c in cache.read(at, path)[0].tolist()]
    inputs = processor.audio_inputs([load_audio(path, processor.audio_sampling_rate)], with_whisper=[False])
    device = next(model.parameters()).device
    features, mask = inputs["semantic_input_features"].to(device), inputs["semantic_frame_mask"].to(device)
    return [int(c) for c in model.audio_codes_from_features(features, mask).tolist()]


def spoken_text(tokenizer: Any, text_ids: Sequence[int]) -> str:
    """The text stream of a spoken answer (ids of the base vocabulary only)."""
    return tokenizer.decode([t for t in text_ids if t < tokenizer.num_base_tokens]).strip()


def speak(model: Any, processor: Any, item: SpeechItem, max_steps: int) -> tuple[list[int], str]:
    """Greedy codes and text of the model's spoken answer to ``item``'s question (official loop, both heads)."""
    wave = load_audio(item.question_audio, processor.audio_sampling_rate) if item.question_audio else None
    device = next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in processor.speech_prompt_inputs(wave, item.question_text or None).items()}
    prompt = inputs.pop("input_ids")
    out = model.generate_speech(prompt, output_type="both", max_new_tokens=max_steps, **inputs)
    return list(out.codes), spoken_text(processor.tokenizer, out.text_ids)


def score_items(
    model: Any, processor: Any, items: Sequence[SpeechItem], progress: bool = True, strict: bool = False
) -> SpeechScores:
    """Speak and score every item; one whose audio cannot be read is skipped (``SpeechScores.unreadable``) unless
    ``strict``, and none readable is an InputError."""
    from tqdm.auto import tqdm

    readable, skipped = split_readable(items, speech_clips, lambda i: i.id, strict)
    model.require_mimo_weights()
    delay = int(model.config.kimia_mimo_audiodelaytokens)
    scores: list[CodeScore] = []
    generated: list[list[int]] = []
    kept: list[SpeechItem] = []
    for item in tqdm(readable, desc="speak", unit="utt", disable=None if progress else True, file=sys.stderr):
        try:
            target = target_codes(model, processor, item.target_audio)
            codes, text = speak(model, processor, item, 2 * len(target) + delay + RUNAWAY_MARGIN)
        except AudioError as err:  # a clip whose header was fine but whose samples do not decode
            question = item.question_audio and str(err).startswith(item.question_audio)
            unreadable = Unreadable(item.id, item.question_audio if question else item.target_audio, str(err))
            if strict:
                raise strict_error(unreadable, 0) from err
            skipped.append(unreadable)
            continue
        scores.append(code_score(item.id, target, codes, item.answer_text, text))
        generated.append(codes)
        kept.append(item)
    check_skipped(skipped, len(items), strict)
    return SpeechScores(scores, generated, items=kept, unreadable=skipped)


def speech_markdown(scores: SpeechScores) -> str:
    trip = scores.round_trip
    lines = [
        "# Speech output evaluation",
        "",
        "Code-level accuracy of greedy spoken answers against the target audio's GLM-4-Voice codes"
        + (
            "; ASR round trip: the model's own transcript of the detokenized answer (speech_wav/) vs the answer text"
            if trip is not None
            else " (the checkpoint has no audio_detokenizer/ + vocoder/, so no ASR round trip)"
        )
        + ". The ASR-style report below scores the text stream against the answer text.",
        "",
        "| metric | value |",
        "|---|---|",
        f"| utterances | {scores.n} |",
        f"| code error rate (edit distance / target codes) | {100 * scores.code_error_rate:.2f}% |",
        f"| exact match (codes) | {100 * scores.exact_match:.1f}% |",
        f"| generated / target codes | {scores.length_ratio:.3f} |",
    ]
    for name in ("cer", "wer") if trip is not None else ():
        value = getattr(trip.report, name)
        if value is not None:
            lines.append(f"| round-trip {name.upper()} (transcript of the generated audio) | {100 * value:.2f}% |")
    return "\n".join(lines) + "\n\n"


def write_speech_outputs(out_dir: str, text_report: Any, summary: dict, scores: SpeechScores, plot: bool) -> dict:
    paths = write_outputs(out_dir, text_report, summary, plot=plot)
    paths["speech_utterances.jsonl"] = os.path.join(out_dir, "speech_utterances.jsonl")
    trip = scores.round_trip
    extra = [{"round_trip_hyp": h, "wav": w} for h, w in zip(trip.hyps, trip.wavs)] if trip else [{}] * scores.n
    rows = (json.dumps({**u.to_dict(), **e}, ensure_ascii=False) for u, e in zip(scores.utterances, extra))
    write_lines(paths["speech_utterances.jsonl"], lambda: rows)
    plot_name = PLOT_NAME if PLOT_NAME in paths else None
    with atomic_open(paths["report.md"]) as handle:  # speech first, then the text stream's report
        handle.write(speech_markdown(scores) + "\n" + render_markdown(summary, text_report, plot_name))
    return paths


def evaluate_speech(
    items: Sequence[SpeechItem],
    model: Any,
    processor: Any,
    out_dir: str | None,
    normalizer: str,
    language: str,
    meta: dict[str, Any],
    progress: bool = True,
    plot: bool = True,
    strict: bool = False,
) -> tuple[Any, dict[str, Any], dict[str, str], SpeechScores]:
    """``(text report, summary, paths, speech scores)`` of ``model``'s spoken answers to ``items``."""
    from .speech_roundtrip import round_trip

    scores = score_items(model, processor, items, progress, strict)
    items = scores.items
    out_dir = ensure_writable_dir(out_dir, "out_dir") if out_dir else None
    scores.round_trip = round_trip(model, processor, items, scores.generated, out_dir, normalizer, language, progress)
    hyps = [u.text_hyp for u in scores.utterances]
    text_report = score([i.id for i in items], [i.answer_text for i in items], hyps, normalizer, language)
    summary = {**build_summary(text_report, meta, unreadable=scores.unreadable), "speech": scores.to_dict()}
    paths = {}
    if out_dir:
        paths = write_speech_outputs(out_dir, text_report, summary, scores, plot)
    return text_report, summary, paths, scores
