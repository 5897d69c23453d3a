"""Evaluation as a library: ``evaluate(...) -> EvalResult`` scores saved predictions, or transcribes a test set with
a model the caller already loaded, then compares with a baseline and writes the reports.

    from llamafactory_kimi_audio.eval import evaluate
    from llamafactory_kimi_audio.eval import load_for_inference

    model, processor = load_for_inference("models/Kimi-Audio-7B-Instruct", adapter_path="saves/lora")
    for name in ("test_clean", "test_noisy"):
        result = evaluate(f"data/{name}.json", model=model, processor=processor, out_dir=f"eval/{name}")
        print(name, result.report.cer)

``kimi-audio-lf evaluate`` is this function plus argument parsing and printing.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import InputError, ModelError
from ..fileio.audio_errors import AudioError
from ..fileio.audio_silence import EVAL_FIX, SETTING_SWITCH, SilentClipError, error_line, silent_clips_mode
from ..fileio.audio_spans import split_media
from ..fileio.textio import ensure_writable_dir
from .clips import Unreadable, check_skipped, split_readable, strict_error
from .inputs import Paired, TestItem, load_predictions, pair
from .normalize import detect_language
from .options import EvaluateOptions, TestSet, is_speech_items, prepare_test_set
from .report import build_summary, load_baseline, write_outputs
from .scoring import ScoreReport, compare, score
from .speech_eval import SpeechScores, is_speech_test_set


@dataclass
class EvalResult:
    """Scores, the ``summary.json`` payload, and the paths written (empty without ``out_dir``)."""

    report: ScoreReport
    summary: dict[str, Any]
    paths: dict[str, str] = field(default_factory=dict)
    label_mismatches: int = 0  # predictions whose own label differs from the test set's reference
    speech: SpeechScores | None = None  # code-level scores of spoken answers (a speech-output test set)
    unreadable: list[Unreadable] = field(default_factory=list)  # utterances skipped: their audio cannot be read
    silent: list[tuple[str, str]] = field(default_factory=list)  # scored clips that are silent but have a reference

    @property
    def skipped_empty(self) -> list[str]:
        """Ids of utterances not scored because their reference is empty."""
        return self.report.skipped_empty

    def gate(self, max_cer: float | None = None, max_wer: float | None = None) -> tuple[list[str], list[str]]:
        """``(failures, notes)``: the limits exceeded, and the limits that could not be checked."""
        failures, notes = [], []
        for metric, limit in (("cer", max_cer), ("wer", max_wer)):
            rate = self.report.totals[metric].rate
            if limit is None:
                continue
            if rate is None:
                notes.append(f"--max-{metric} ignored: no utterance was scored by {metric.upper()}")
            elif rate > limit:
                failures.append(f"{metric.upper()} {100 * rate:.2f}% exceeds --max-{metric} {100 * limit:.2f}%")
        return failures, notes


def instructions_for(items: Sequence[TestItem], instruction: str | None = None) -> list[str]:
    """``instruction`` for every item if given; else each record's own; else the default of the set's language."""
    from ..models.special_tokens import DEFAULT_INSTRUCTION

    default = instruction or DEFAULT_INSTRUCTION[detect_language(i.reference for i in items)]
    return [instruction or item.instruction or default for item in items]


def transcribe_items(
    model: Any,
    processor: Any,
    items: Sequence[TestItem],
    instruction: str | None = None,
    generation: Any = None,
    progress: bool = True,
    strict: bool = False,
) -> Paired:
    """Transcribe a loaded test set with a loaded model; references from the test set. Utterances whose audio cannot
    be read are skipped (``Paired.unreadable``) unless ``strict``; none readable is an InputError."""
    from .transcribe import Generation, transcribe

    readable, skipped = split_readable(items, lambda i: [i.audio], lambda i: i.id, strict)
    audios = [item.audio for item in readable]
    failed: dict[int, str] = {}
    silent: list[tuple[str, str]] = []
    on_silent = None if silent_clips_mode() == "off" else _silent_check(readable, silent)
    try:
        hyps = transcribe(
            model,
            processor,
            audios,
            instructions_for(readable, instruction),
            generation or Generation(),
            progress=progress,
            unreadable=None if strict else failed,
            on_silent=on_silent,
        )
    except AudioError as err:  # strict: the first clip that does not decode ends the run
        item = next((i for i in readable if str(err).startswith(split_media(i.audio)[0])), None)
        raise strict_error(Unreadable(item.id if item else "?", item.audio if item else "", str(err)), 0) from err
    if len(hyps) != len(readable):
        raise ModelError(f"the model returned {len(hyps)} transcripts for {len(readable)} audios")
    skipped += [Unreadable(readable[i].id, readable[i].audio, reason) for i, reason in sorted(failed.items())]
    check_skipped(skipped, len(items), strict)
    kept = [n for n in range(len(readable)) if n not in failed]
    return Paired(
        [readable[n].id for n in kept],
        [readable[n].reference for n in kept],
        [hyps[n] for n in kept],
        [audios[n] for n in kept],
        unreadable=skipped,
        silent=sorted(silent),
    )


def _silent_check(items: Sequence[TestItem], found: list[tuple[str, str]]) -> Callable[[int], None]:
    """``transcribe``'s callback for a silent clip: one whose reference is not empty goes to ``found`` as
    (audio, "utterance ID"), or, in error mode, stops the run before its batch is transcribed."""

    def on_silent(index: int) -> None:
        item = items[index]
        if not item.reference.strip():  # nothing to transcribe: not scored anyway
            return
        clip = (item.audio, f"utterance {item.id}")
        if silent_clips_mode() == "error":
            raise SilentClipError(error_line([clip], SETTING_SWITCH, "; nothing scored", EVAL_FIX))
        found.append(clip)

    return on_silent


def _paired(
    test_set: TestSet | None, predictions: str | None, model: Any, processor: Any, options: EvaluateOptions
) -> tuple[Paired, dict[str, Any]]:
    meta: dict[str, Any] = {"dataset": test_set.dataset if test_set else None}
    if predictions is not None:
        paired = pair(
            load_predictions(predictions, options.encoding),
            None if test_set is None else list(test_set.items),
            os.path.basename(predictions),
            os.path.basename(test_set.path) if test_set and test_set.path else "",
        )
        return paired, {**meta, "predictions": os.path.abspath(predictions)}
    assert test_set is not None  # prepare_test_set refuses a model run without data
    generation = options.generation
    paired = transcribe_items(
        model, processor, test_set.items, options.instruction, generation, options.progress, options.strict
    )
    name = getattr(getattr(model, "config", None), "_name_or_path", None)
    return paired, {**meta, "model": name, "generation": generation.to_dict() if generation else None}


def evaluate(
    data: str | Sequence[TestItem] | TestSet | None = None,
    *,
    predictions: str | None = None,
    model: Any = None,
    processor: Any = None,
    out_dir: str | None = None,
    baseline: str | None = None,
    meta: dict[str, Any] | None = None,
    options: EvaluateOptions | None = None,
    **changes: Any,
) -> EvalResult:
    """Score ``predictions`` (a file) or the transcripts of ``model`` on ``data`` (a test-set file, loaded items, or
    a :class:`TestSet` from :func:`prepare_test_set`).

    ``options`` (:class:`EvaluateOptions`), or its fields as keywords (``normalizer``, ``language``, ``root``,
    ``encoding``, ``instruction``, ``generation``, ``progress``, ``plot``, ``strict``), which override ``options``.
    ``meta`` overrides summary fields (e.g. the model path). Writes ``utterances.*``, ``summary.json`` and
    ``report.md`` into ``out_dir`` when given.
    """
    options = EvaluateOptions.from_keywords(options, **changes) if changes or options is None else options
    if predictions is None and (model is None or processor is None):
        raise InputError(_needs_model(data, options))
    test_set = prepare_test_set(data, options, transcribe=predictions is None)
    if test_set is not None and test_set.speech:
        return _evaluate_speech(test_set, model, processor, out_dir, meta, options)
    paired, found = _paired(test_set, predictions, model, processor, options)
    report = score(paired.ids, paired.refs, paired.hyps, options.normalizer, options.language, paired.audios)
    if not report.n:
        raise InputError(
            f"all {len(report.skipped_empty)} references are empty: nothing to score; check that the "
            "test set's transcripts were read (the text column)"
        )
    comparison = compare(report, *load_baseline(baseline)) if baseline else None
    summary = build_summary(report, {**found, **(meta or {})}, comparison, paired.unreadable)
    paths = {}
    if out_dir:
        paths = write_outputs(ensure_writable_dir(out_dir, "out_dir"), report, summary, plot=options.plot)
    return EvalResult(
        report, summary, paths, paired.label_mismatches, unreadable=paired.unreadable, silent=paired.silent
    )


def _needs_model(data: str | Sequence[Any] | TestSet | None, options: EvaluateOptions) -> str:
    if isinstance(data, TestSet):
        speech = data.speech
    else:
        speech = is_speech_test_set(data, options.encoding) if isinstance(data, str) else is_speech_items(data or [])
    if speech:
        return "a speech-output test set (assistant <audio>) is evaluated with --model (spoken answers)"
    return "evaluate needs predictions, or a loaded model and processor (--model)"


def _evaluate_speech(
    test_set: TestSet, model: Any, processor: Any, out_dir: str | None, meta: dict | None, options: EvaluateOptions
) -> EvalResult:
    """Spoken answers (speech_run.py): code error rate and exact match against the target codes + the text CER."""
    from .speech_run import evaluate_speech

    found = {
        "dataset": test_set.dataset,
        "model": getattr(getattr(model, "config", None), "_name_or_path", None),
        "generation": {"speech": "greedy, both heads (official loop)"},
    }
    text_report, summary, paths, scores = evaluate_speech(
        test_set.items,
        model,
        processor,
        out_dir,
        options.normalizer,
        options.language,
        {**found, **(meta or {})},
        options.progress,
        options.plot,
        options.strict,
    )
    return EvalResult(text_report, summary, paths, 0, scores, unreadable=scores.unreadable)
