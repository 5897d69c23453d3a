"""ASR evaluation as a library: transcription with a loaded model, CER/WER scoring, reports.

``evaluate(...) -> EvalResult`` (``evaluation.py``) is the whole of ``kimi-audio-lf evaluate``;
``load_for_inference`` and ``eval.transcribe.transcribe`` load a model once and transcribe with it. The names here
are imported lazily, so ``import llamafactory_kimi_audio.eval.normalize`` does not import torch.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "evaluate": "evaluation",
    "EvalResult": "evaluation",
    "EvaluateOptions": "options",
    "TestSet": "options",
    "prepare_test_set": "options",
    "load_for_inference": "transcribe",
    "Generation": "transcribe",
    "score": "scoring",
    "ScoreReport": "scoring",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
