"""The named patches of LLaMA-Factory / transformers this package applies — one table, each with apply/revert.

Registrations (template, plugin, model groups, composite) go through LLaMA-Factory's registries in
``registration.py``; only what no registry reaches is patched here, at the module that defines the name.
"""

from __future__ import annotations

import functools
from types import ModuleType
from typing import Any

from ..patching import Patch


def _is_kimi_tokenizer(tokenizer: Any) -> bool:
    return type(tokenizer).__name__ == "KimiAudioTokenizer"


def _is_kimi_model(model: Any) -> bool:
    base = getattr(model, "module", model)  # DDP / DeepSpeed wrappers
    base = getattr(getattr(base, "base_model", None), "model", base)  # PEFT
    return getattr(getattr(base, "config", None), "model_type", None) == "moonshot_kimia"


def _asr_metrics(original):
    @functools.wraps(original)
    def compute_similarity(tokenizer, *args: Any, **kwargs: Any):
        if _is_kimi_tokenizer(tokenizer):
            from .metrics import ComputeAsrMetrics

            return ComputeAsrMetrics(tokenizer)
        return original(tokenizer, *args, **kwargs)

    return compute_similarity


def _greedy_prediction(original):
    @functools.wraps(original)
    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None, **gen_kwargs):
        if _is_kimi_model(model) and getattr(self, "_gen_kwargs", None):
            # ASR is scored on greedy transcripts (the official decoding, spec §7); sampling would make CER noisy.
            for key in ("temperature", "top_p", "top_k"):
                self._gen_kwargs.pop(key, None)
            self._gen_kwargs["do_sample"] = False
        return original(self, model, inputs, prediction_loss_only, ignore_keys=ignore_keys, **gen_kwargs)

    return prediction_step


METRIC_PATCHES = [
    Patch(
        name="asr_metrics",
        owner="llamafactory.train.sft.workflow",
        attribute="ComputeSimilarity",
        make_replacement=_asr_metrics,
        why="predict_with_generate reports CER/WER (jiwer) instead of BLEU/ROUGE for Kimi-Audio",
    ),
    Patch(
        name="greedy_asr_predictions",
        owner="llamafactory.train.sft.trainer:CustomSeq2SeqTrainer",
        attribute="prediction_step",
        make_replacement=_greedy_prediction,
        why="LLaMA-Factory samples by default (do_sample=True, T=0.95); ASR evaluation decodes greedily",
    ),
]


def apply_loader_patches(loader: ModuleType) -> None:
    """Official Kimi-Audio dirs load the native config/tokenizer/processor/model through the names the loader uses."""
    from ..models.auto import register_auto_classes

    register_auto_classes()


def apply_metric_patches(workflow: ModuleType) -> None:
    for patch in METRIC_PATCHES:
        patch.apply()


def all_patches() -> list[Patch]:
    from ..models.auto import AUTO_PATCHES

    return [*AUTO_PATCHES, *METRIC_PATCHES]


def revert_all() -> None:
    for patch in all_patches():
        patch.revert()
