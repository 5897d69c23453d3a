"""LLaMA-Factory's SFT data pipeline as the tests drive it in-process on the tiny checkpoint: a conversation, one
sample encoded by the supervised processor, the feature dict and the SFT collator the workflow builds."""

from __future__ import annotations

from typing import Any

import torch
from llamafactory.data.collator import SFTDataCollatorWith4DAttentionMask
from llamafactory.data.processor.supervised import PackedSupervisedDatasetProcessor, SupervisedDatasetProcessor
from llamafactory.data.template import get_template_and_fix_tokenizer
from llamafactory.hparams import DataArguments, FinetuningArguments, ModelArguments
from llamafactory.model import load_model, load_tokenizer

IGNORE = -100


def load_tiny(checkpoint: str, data_args: DataArguments | None = None) -> tuple[dict, Any, Any]:
    """(tokenizer module, kimi_audio template, model for inference) of a checkpoint, loaded as LLaMA-Factory does."""
    args = ModelArguments(model_name_or_path=checkpoint, trust_remote_code=True)
    module = load_tokenizer(args)
    data_args = data_args or DataArguments(template="kimi_audio")
    template = get_template_and_fix_tokenizer(module["tokenizer"], data_args)
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
    template,
    model,
    tokenizer_module: dict,
    pad_to_multiple_of: int | None = 8,
    attn_implementation: str = "sdpa",
    block_diag_attn: bool = False,
) -> SFTDataCollatorWith4DAttentionMask:
    """LLaMA-Factory's SFT collator as the workflow builds it for a Kimi-Audio training run (fp32 on the CPU)."""
    return SFTDataCollatorWith4DAttentionMask(
        template=template,
        model=model,
        pad_to_multiple_of=pad_to_multiple_of,
        label_pad_token_id=IGNORE,
        attn_implementation=attn_implementation,
        block_diag_attn=block_diag_attn,
        compute_dtype=torch.float32,
        **tokenizer_module,
    )


def sft_columns(users: list[str], answers: list[str], audios: list[list[str]]) -> dict[str, list]:
    """A batch of one-turn conversations in the column layout LLaMA-Factory's dataset processors take."""
    return {
        "_prompt": [[{"role": "user", "content": user}] for user in users],
        "_response": [[{"role": "assistant", "content": answer}] for answer in answers],
        "_system": ["" for _ in users],
        "_tools": ["" for _ in users],
        "_images": [None for _ in users],
        "_videos": [None for _ in users],
        "_audios": audios,
    }


def packed_and_plain_batches(setup: dict, columns: dict[str, list]) -> tuple[dict, dict]:
    """The same conversations through LLaMA-Factory's packing processor and block-diagonal collator, and through the
    ordinary processor and collator. ``setup``: ``tm`` (tokenizer module), ``template``, ``model`` and the packing
    ``data_args``."""
    kwargs = dict(template=setup["template"], tokenizer=setup["tm"]["tokenizer"], processor=setup["tm"]["processor"])
    plain_args = DataArguments(template="kimi_audio", cutoff_len=setup["data_args"].cutoff_len)
    batches = []
    for processor, block_diag in (
        (PackedSupervisedDatasetProcessor(data_args=setup["data_args"], **kwargs), True),
        (SupervisedDatasetProcessor(data_args=plain_args, **kwargs), False),
    ):
        processed = processor.preprocess_dataset({name: list(values) for name, values in columns.items()})
        rows = [dict(zip(processed, values)) for values in zip(*processed.values())]
        for row in rows:
            row.pop("packing_params", None)  # not a model input for a model without mrope
        collator = sft_collator(setup["template"], setup["model"], setup["tm"], block_diag_attn=block_diag)
        batches.append(collator(rows))
    return batches[0], batches[1]
