"""The replacements that the LLaMA-Factory rows of the patch table (``patches.py``) install.

Each ``make_*`` takes the original and returns the wrapper; the wrappers change behaviour for Kimi-Audio models,
tokenizers, templates and recipes only and call the original for everything else.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator
from typing import Any

from .. import settings
from ..fileio.textio import DataError
from ..models.constants import MODEL_TYPE as KIMI_MODEL_TYPE


def is_kimi_tokenizer(tokenizer: Any) -> bool:
    return type(tokenizer).__name__ == "KimiAudioTokenizer"


def kimi_base_model(model: Any) -> Any | None:
    """The ``KimiAudioForCausalLM`` inside DDP / DeepSpeed / PEFT wrappers, or None for any other model."""
    base = getattr(model, "module", model)  # DDP / DeepSpeed wrappers
    base = getattr(getattr(base, "base_model", None), "model", base)  # PEFT
    return base if getattr(getattr(base, "config", None), "model_type", None) == KIMI_MODEL_TYPE else None


def is_kimi_model(model: Any) -> bool:
    return kimi_base_model(model) is not None


def is_kimi_source(model_args: Any) -> bool:
    from ..models.auto import is_kimi_audio_checkpoint
    from .registration import MODEL_GROUPS

    path = getattr(model_args, "model_name_or_path", None)
    return path in MODEL_GROUPS.values() or is_kimi_audio_checkpoint(path)


def make_asr_metrics(original):
    @functools.wraps(original)
    def compute_similarity(tokenizer, *args: Any, **kwargs: Any):
        if is_kimi_tokenizer(tokenizer):
            from .metrics import ComputeAsrMetrics

            return ComputeAsrMetrics(tokenizer)
        return original(tokenizer, *args, **kwargs)

    return compute_similarity


def make_asr_predict_dependencies(original):
    @functools.wraps(original)
    def check_extra_dependencies(model_args, finetuning_args, training_args=None, *args: Any, **kwargs: Any):
        if not (getattr(training_args, "predict_with_generate", False) and is_kimi_source(model_args)):
            return original(model_args, finetuning_args, training_args, *args, **kwargs)
        # jieba / nltk / rouge_chinese only serve BLEU/ROUGE, which `asr_metrics` replaces by CER/WER (jiwer).
        training_args.predict_with_generate = False
        try:
            return original(model_args, finetuning_args, training_args, *args, **kwargs)
        finally:
            training_args.predict_with_generate = True

    return check_extra_dependencies


def make_segment_media_paths(original):
    """``PATH#t=B,E`` entries (segments of a long recording) resolve against ``media_dir`` like plain paths: the
    fragment is split off before the original's ``isfile`` lookup and put back after (no per-segment warning)."""

    @functools.wraps(original)
    def _find_medias(self, medias, *args: Any, **kwargs: Any):
        from ..fileio.audio_spans import split_fragment

        values = medias if isinstance(medias, list) else [medias]
        if not any(isinstance(value, str) and "#t=" in value for value in values):
            return original(self, medias, *args, **kwargs)
        pairs = [split_fragment(value) if isinstance(value, str) else (value, "") for value in values]
        found = original(self, [path for path, _ in pairs], *args, **kwargs)
        return [path + fragment for path, (_, fragment) in zip(found, pairs)] if found else found

    return _find_medias


def make_audio_span_guard(original):
    """Fail at preprocessing, naming the sample, when ``cutoff_len`` cuts an audio span (the forward would fail) or
    the answer (the model would learn transcripts that stop mid-sentence, without their end token)."""

    @functools.wraps(original)
    def _encode_data_example(self, prompt, response, system, tools, images, videos, audios):
        input_ids, labels = original(self, prompt, response, system, tools, images, videos, audios)
        if _is_kimi_template(self.template):
            if audios:
                _check_audio_spans(self, input_ids, prompt + response, system, tools, audios)
            if len(input_ids) >= self.data_args.cutoff_len and response:  # only then can anything have been cut
                _check_label_fits(self, labels, prompt, response, system, tools, audios)
        return input_ids, labels

    return _encode_data_example


def _is_kimi_template(template: Any) -> bool:
    from .template import KimiAudioTemplate

    return isinstance(template, KimiAudioTemplate)


def _check_audio_spans(processor_obj: Any, input_ids: list[int], messages, system, tools, audios) -> None:
    from ..models import special_tokens as st

    tokenizer, template = processor_obj.tokenizer, processor_obj.template
    begin, end = (tokenizer.convert_tokens_to_ids(token) for token in (st.MEDIA_BEGIN, st.MEDIA_END))
    speech = _complete_speech_turns(input_ids, *(tokenizer.convert_tokens_to_ids(t) for t in st.SPEECH_TURN_BOUNDS))
    if (
        speech is not None
        and input_ids.count(begin) == input_ids.count(end)
        and input_ids.count(end) + speech == len(audios)
    ):
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


def _check_label_fits(processor_obj: Any, labels: list[int], prompt, response, system, tools, audios) -> None:
    """Raise when the last answer is not whole in ``labels`` (history that ``mask_history`` drops is not an error)."""
    template, tokenizer = processor_obj.template, processor_obj.tokenizer
    expanded = template.mm_plugin.process_messages(prompt + response, [], [], audios, processor_obj.processor)
    pairs = template.encode_multiturn(tokenizer, expanded, system, tools)
    needed = sum(len(a) + len(b) for a, b in pairs) + (1 if template.efficient_eos else 0)
    cutoff = processor_obj.data_args.cutoff_len
    if needed <= cutoff or _holds(labels, pairs[-1][1]):
        return
    answer = str(response[-1].get("content", ""))
    names = [a for a in audios if isinstance(a, str)][:3]
    raise DataError(
        f"sample {names or 'without audio'} answer {answer[:40]!r}{'…' if len(answer) > 40 else ''} "
        f"({len(answer)} characters): cutoff_len={cutoff} cuts its label, the sample needs {needed} tokens (the "
        f"answer alone {len(pairs[-1][1])}); raise cutoff_len to at least {needed}, or fix the row if the "
        "transcript is wrong (kimi-audio-lf convert warns about transcripts longer than their audio: long_transcript)"
    )


def _holds(sequence: list[int], part: list[int]) -> bool:
    """Whether ``part`` occurs in ``sequence`` as a contiguous run."""
    width = len(part)
    return any(sequence[i : i + width] == part for i in range(len(sequence) - width + 1))


def _complete_speech_turns(input_ids: list[int], start: int, close: int) -> int | None:
    """Number of assistant speech turns (``start`` … ``close``), or ``None`` when one was cut."""
    starts = [index for index, token in enumerate(input_ids) if token == start]
    if any(close not in input_ids[index + 1 :] for index in starts):
        return None
    return len(starts)


def make_official_auto_map(original):
    @functools.wraps(original)
    def register_autoclass(config, model, tokenizer):
        if getattr(config, "model_type", None) == KIMI_MODEL_TYPE:
            return None  # keep the checkpoint's auto_map: the native classes are not remote code
        return original(config, model, tokenizer)

    return register_autoclass


MIMO_LORA_TARGET = "mimo"  # a lora_target entry: LoRA on the 6 MIMO (audio head) layers too, for speech output


def make_mimo_lora_targets(original):
    """``lora_target: all,mimo`` (or ``q_proj,…,mimo``): the usual targets plus every linear layer of the MIMO
    branch, named in full so that Whisper's equally named projections stay untouched. Opt-in: ``all`` alone keeps
    the MIMO branch frozen (ASR recipes unchanged)."""

    @functools.wraps(original)
    def patch_target_modules(model, finetuning_args, target_modules, *args: Any, **kwargs: Any):
        if MIMO_LORA_TARGET not in target_modules or not is_kimi_model(model):
            return original(model, finetuning_args, target_modules, *args, **kwargs)
        others = [target for target in target_modules if target != MIMO_LORA_TARGET]
        if others == ["all"]:
            from llamafactory.model.model_utils.misc import find_all_linear_modules

            others = find_all_linear_modules(model, finetuning_args.freeze_vision_tower)
        names = list(original(model, finetuning_args, others, *args, **kwargs)) if others else []
        return names + mimo_linear_names(model)

    return patch_target_modules


def mimo_linear_names(model: Any) -> list[str]:
    from torch import nn

    return [name for name, module in model.named_modules() if "mimo_layers." in name and isinstance(module, nn.Linear)]


def make_fused_lora(original):
    @functools.wraps(original)
    def init_adapter(config, model, model_args, finetuning_args, is_trainable, *args: Any, **kwargs: Any):
        model = original(config, model, model_args, finetuning_args, is_trainable, *args, **kwargs)
        if is_kimi_model(model) and settings.enabled("KIMI_AUDIO_FUSED_LORA"):
            from ..models.fused_lora import install_fused_lora

            install_fused_lora(model, grouped=settings.enabled("KIMI_AUDIO_GROUPED_LORA"))
        return model

    return init_adapter


class _NoTorchDtypeNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "`torch_dtype` is deprecated" not in record.getMessage()


@contextlib.contextmanager
def quiet_torch_dtype_access() -> Iterator[None]:
    """LLaMA-Factory 0.9.5's ``patch_config`` reads ``config.torch_dtype``, which transformers 5 reports as
    deprecated: a notice the user can do nothing about (the attribute is read, not set by the recipe)."""
    config_logger = logging.getLogger("transformers.configuration_utils")
    quiet = _NoTorchDtypeNotice()
    config_logger.addFilter(quiet)
    try:
        yield
    finally:
        config_logger.removeFilter(quiet)
