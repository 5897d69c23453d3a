"""The named patches of LLaMA-Factory / transformers this package applies — one table, each with apply/revert.

Registrations (template, plugin, model groups, composite) go through LLaMA-Factory's registries in
``registration.py``; only what no registry reaches is patched here, at the module that defines the name.
"""

from __future__ import annotations

import functools
import os
import sys
from types import ModuleType
from typing import Any

from ..audio_io import AudioError
from ..data.textio import DataError
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


def _is_kimi_source(model_args: Any) -> bool:
    from ..models.auto import is_kimi_audio_checkpoint
    from .registration import MODEL_GROUPS

    path = getattr(model_args, "model_name_or_path", None)
    return path in MODEL_GROUPS.values() or is_kimi_audio_checkpoint(path)


def _asr_predict_dependencies(original):
    @functools.wraps(original)
    def check_extra_dependencies(model_args, finetuning_args, training_args=None, *args: Any, **kwargs: Any):
        if not (getattr(training_args, "predict_with_generate", False) and _is_kimi_source(model_args)):
            return original(model_args, finetuning_args, training_args, *args, **kwargs)
        # jieba / nltk / rouge_chinese only serve BLEU/ROUGE, which `asr_metrics` replaces by CER/WER (jiwer).
        training_args.predict_with_generate = False
        try:
            return original(model_args, finetuning_args, training_args, *args, **kwargs)
        finally:
            training_args.predict_with_generate = True

    return check_extra_dependencies


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


def _audio_span_guard(original):
    """Fail at preprocessing, naming the sample, when ``cutoff_len`` cuts an audio span (the forward would fail)."""

    @functools.wraps(original)
    def _encode_data_example(self, prompt, response, system, tools, images, videos, audios):
        input_ids, labels = original(self, prompt, response, system, tools, images, videos, audios)
        if audios and _is_kimi_template(self.template):
            _check_audio_spans(self, input_ids, prompt + response, system, tools, audios)
        return input_ids, labels

    return _encode_data_example


def _is_kimi_template(template: Any) -> bool:
    from .template import KimiAudioTemplate

    return isinstance(template, KimiAudioTemplate)


def _check_audio_spans(processor_obj: Any, input_ids: list[int], messages, system, tools, audios) -> None:
    from ..models import special_tokens as st

    tokenizer, template = processor_obj.tokenizer, processor_obj.template
    begin, end = (tokenizer.convert_tokens_to_ids(token) for token in (st.MEDIA_BEGIN, st.MEDIA_END))
    if input_ids.count(begin) == input_ids.count(end) == len(audios):
        return
    expanded = template.mm_plugin.process_messages(messages, [], [], audios, processor_obj.processor)
    needed = sum(len(a) + len(b) for a, b in template.encode_multiturn(tokenizer, expanded, system, tools))
    preview = next((m["content"] for m in messages if m["content"].strip()), "")[:60]
    names = [a for a in audios if isinstance(a, str)][:3]
    raise DataError(
        f"sample {preview!r} {names}: cutoff_len={processor_obj.data_args.cutoff_len} cuts its audio, which needs "
        f"{needed} tokens in all (audio: 12.5 tokens/s); raise cutoff_len to at least {needed} or drop long clips "
        "(kimi-audio-lf convert --max-duration SECONDS --drop-long)"
    )


DATA_PATCHES = [
    Patch(
        name=f"audio_span_guard.{kind}",
        owner=f"llamafactory.data.processor.{kind}:{cls}",
        attribute="_encode_data_example",
        make_replacement=_audio_span_guard,
        why="cutoff_len truncation must not cut an audio span silently: the sample fails at preprocessing, by name, "
        "instead of crashing training/prediction later with a frame-count mismatch",
    )
    for kind, cls in (("supervised", "SupervisedDatasetProcessor"), ("unsupervised", "UnsupervisedDatasetProcessor"))
]


def _official_auto_map(original):
    @functools.wraps(original)
    def register_autoclass(config, model, tokenizer):
        from ..models.auto import KIMI_MODEL_TYPES

        if getattr(config, "model_type", None) in KIMI_MODEL_TYPES:
            return None  # keep the checkpoint's auto_map: the native classes are not remote code
        return original(config, model, tokenizer)

    return register_autoclass


FUSED_LORA_ENV = "KIMI_AUDIO_FUSED_LORA"  # "0": PEFT's own LoRA forward


def _fused_lora(original):
    @functools.wraps(original)
    def init_adapter(config, model, model_args, finetuning_args, is_trainable, *args: Any, **kwargs: Any):
        model = original(config, model, model_args, finetuning_args, is_trainable, *args, **kwargs)
        if _is_kimi_model(model) and os.environ.get(FUSED_LORA_ENV, "1") != "0":
            from ..models.fused_lora import install_fused_lora

            install_fused_lora(model)
        return model

    return init_adapter


LOADER_PATCHES = [
    Patch(
        name="fused_lora",
        owner="llamafactory.model.loader",
        attribute="init_adapter",
        make_replacement=_fused_lora,
        why="PEFT's LoRA forward copies every input to fp32 and back under bf16 autocast and scales/adds in two extra "
        "passes; Kimi-Audio's LoRA layers get a forward with the same math in one addmm (models/fused_lora.py)",
    ),
    Patch(
        name="official_auto_map",
        owner="llamafactory.model.loader",
        attribute="register_autoclass",
        make_replacement=_official_auto_map,
        why="saved / exported checkpoints keep the official auto_map instead of pointing at copies of this "
        "package's sources (register_for_auto_class would rewrite AutoConfig/AutoModel and copy *.py files)",
    ),
]

METRIC_PATCHES = [
    Patch(
        name="asr_metrics",
        owner="llamafactory.train.sft.workflow",
        attribute="ComputeSimilarity",
        make_replacement=_asr_metrics,
        why="predict_with_generate reports CER/WER (jiwer) instead of BLEU/ROUGE for Kimi-Audio",
    ),
    Patch(
        name="asr_predict_dependencies",
        owner="llamafactory.hparams.parser",
        attribute="_check_extra_dependencies",
        make_replacement=_asr_predict_dependencies,
        why="predict_with_generate demands jieba/nltk/rouge_chinese for BLEU/ROUGE; Kimi-Audio scores CER/WER instead",
    ),
    Patch(
        name="greedy_asr_predictions",
        owner="llamafactory.train.sft.trainer:CustomSeq2SeqTrainer",
        attribute="prediction_step",
        make_replacement=_greedy_prediction,
        why="LLaMA-Factory samples by default (do_sample=True, T=0.95); ASR evaluation decodes greedily",
    ),
]


DEBUG_ENV = "KIMI_AUDIO_LF_DEBUG"  # "1": keep the traceback of bad-input errors (as `kimi-audio-lf --debug`)


def _one_line_input_errors(original):
    @functools.wraps(original)
    def run_exp(*args: Any, **kwargs: Any):
        try:
            return original(*args, **kwargs)
        except (AudioError, DataError) as err:
            if os.environ.get(DEBUG_ENV) == "1":
                raise
            print(f"llamafactory-cli: {err}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None

    return run_exp


TUNER_PATCHES = [
    Patch(
        name="one_line_input_errors",
        owner="llamafactory.train.tuner",
        attribute="run_exp",
        make_replacement=_one_line_input_errors,
        why="a bad audio file or a sample cut by cutoff_len ends the run with this package's one-line message "
        "(file / sample and the fix, exit code 2) instead of a traceback through datasets and LLaMA-Factory; "
        f"{DEBUG_ENV}=1 keeps the traceback",
    ),
]


def apply_tuner_patches(tuner: ModuleType) -> None:
    for patch in TUNER_PATCHES:
        patch.apply()


def apply_loader_patches(loader: ModuleType) -> None:
    """Official Kimi-Audio dirs load the native config/tokenizer/processor/model through the names the loader uses."""
    from ..models.auto import register_auto_classes

    register_auto_classes()
    for patch in LOADER_PATCHES:
        patch.apply()


def apply_metric_patches(workflow: ModuleType) -> None:
    """SFT workflow patches: metrics and decoding, plus the dataset guards (datasets are built by ``run_sft``)."""
    for patch in [*METRIC_PATCHES, *DATA_PATCHES]:
        patch.apply()


def all_patches() -> list[Patch]:
    from ..models.auto import AUTO_PATCHES

    return [*AUTO_PATCHES, *LOADER_PATCHES, *METRIC_PATCHES, *DATA_PATCHES, *TUNER_PATCHES]


def revert_all() -> None:
    for patch in all_patches():
        patch.revert()
