"""LLaMA-Factory's SFT data pipeline as the tests drive it in-process on the tiny checkpoint: a conversation, one
sample encoded by the supervised processor, the feature dict and the SFT collator the workflow builds."""

from __future__ import annotations

from typing import Any

import torch
from llamafactory.data.collator import SFTDataCollatorWith4DAttentionMask
from llamafactory.data.processor.supervised import SupervisedDatasetProcessor
from llamafactory.data.template import get_template_and_fix_tokenizer
from llamafactory.hparams import DataArguments, FinetuningArguments, ModelArguments
from llamafactory.model import load_model, load_tokenizer

IGNORE = -100


def load_tiny(checkpoint: str) -> tuple[dict, Any, Any]:
    """(tokenizer module, kimi_audio template, model for inference) of a checkpoint, loaded as LLaMA-Factory does."""
    args = ModelArguments(model_name_or_path=checkpoint, trust_remote_code=True)
    module = load_tokenizer(args)
    template = get_template_and_fix_tokenizer(module["tokenizer"], DataArguments(template="kimi_audio"))
    model = load_model(module["tokenizer"], args, FinetuningArguments(finetuning_type="full"), is_trainable=False)
    return module, template, model


def conv(user: str, assistant: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


def encode(template, tok, processor, messages, audios, cutoff_len: int = 1024):
    """(input_ids, labels) of one sample, as ``SupervisedDatasetProcessor`` encodes it in an SFT run."""
    import llamafactory.train.sft.workflow  # noqa: F401 - installs the cutoff guard

    data_args = DataArguments(template="kimi_audio", cutoff_len=cutoff_len)
    proc = SupervisedDatasetProcessor(template=template, tokenizer=tok, processor=processor, data_args=data_args)
    return proc._encode_data_example(messages[:-1], messages[-1:], None, None, [], [], audios)


def sft_feature(input_ids: list[int], labels: list[int], audios: list[str] | None) -> dict[str, Any]:
    """One row of a tokenized SFT dataset, as the collator receives it."""
    return {
        "input_ids": input_ids,
        "attention_mask": [1] * len(input_ids),
        "labels": labels,
        "images": None,
        "videos": None,
        "audios": audios,
    }


def sft_collator(
    template, model, tokenizer_module: dict, pad_to_multiple_of: int | None = 8, attn_implementation: str = "sdpa"
) -> SFTDataCollatorWith4DAttentionMask:
    """LLaMA-Factory's SFT collator as the workflow builds it for a Kimi-Audio training run (fp32 on the CPU)."""
    return SFTDataCollatorWith4DAttentionMask(
        template=template,
        model=model,
        pad_to_multiple_of=pad_to_multiple_of,
        label_pad_token_id=IGNORE,
        attn_implementation=attn_implementation,
        compute_dtype=torch.float32,
        **tokenizer_module,
    )
