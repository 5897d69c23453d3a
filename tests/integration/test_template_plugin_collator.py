"""LLaMA-Factory's SFT collator on ``kimi_audio`` features with the model LLaMA-Factory loads (in-process, CPU): a
batch with audio feeds the model, audio-free batches get the fake audio (right and left padding), a mixed batch
gives the same loss with left padding; and ``lora_target: all`` reaching only the decoder layers.
"""

from __future__ import annotations

import re

import pytest
import torch
from lf_pipeline import IGNORE, conv, sft_collator, sft_feature
from llamafactory.data.processor.supervised import SupervisedDatasetProcessor
from llamafactory.hparams import DataArguments, FinetuningArguments
from llamafactory.model import load_model
from llamafactory.model.model_utils.misc import find_all_linear_modules
from llamafactory.model.model_utils.visual import patch_target_modules
from template_spec import INSTRUCTION


@pytest.fixture(scope="module")
def model(tok, model_args):
    return load_model(tok, model_args, FinetuningArguments(finetuning_type="full"), is_trainable=False)


def make_feature(template, tok, processor, messages, audios) -> dict:
    data_args = DataArguments(template="kimi_audio", cutoff_len=1024)
    proc = SupervisedDatasetProcessor(template=template, tokenizer=tok, processor=processor, data_args=data_args)
    input_ids, labels = proc._encode_data_example(messages[:-1], messages[-1:], None, None, [], [], audios)
    return sft_feature(input_ids, labels, audios or None)


def test_collator_batch_feeds_the_model(template, tok, processor, tokenizer_module, model, ids, wav_a, wav_b):
    features = [
        make_feature(template, tok, processor, conv("<audio>", "one"), [wav_a[0]]),
        make_feature(template, tok, processor, conv(f"{INSTRUCTION}<audio>", "two three"), [wav_b[0]]),
    ]
    lengths = [len(f["input_ids"]) for f in features]
    expected_ids = [list(f["input_ids"]) for f in features]
    batch = sft_collator(template, model, tokenizer_module)(features)
    width = batch["input_ids"].shape[1]
    assert width % 8 == 0 and width >= max(lengths) and width - max(lengths) < 8
    for row, (length, row_ids) in enumerate(zip(lengths, expected_ids)):  # right padding
        assert batch["input_ids"][row, :length].tolist() == row_ids
        assert batch["attention_mask"][row].tolist() == [1] * length + [0] * (width - length)
        assert set(batch["input_ids"][row, length:].tolist()) <= {ids["pad"]}
        assert set(batch["labels"][row, length:].tolist()) <= {IGNORE}
    assert "audio_input_features" in batch and batch["audio_input_features"].shape[1:] == (128, 3000)
    num_placeholders = int((batch["input_ids"] == ids["ph"]).sum())
    assert int(batch["audio_chunk_tokens"].sum()) == num_placeholders == wav_a[1] + wav_b[1]
    with torch.no_grad():
        out = model(**batch)
    assert torch.isfinite(out.loss) and out.loss.item() > 0


@pytest.mark.parametrize("side", ["right", "left"])
def test_audio_free_batch_gets_the_fake_audio(side, template, tok, processor, tokenizer_module, model, ids):
    messages = conv("hello there", "hi")
    feature = make_feature(template, tok, processor, messages, [])
    real_ids, real_labels = list(feature["input_ids"]), list(feature["labels"])
    length = len(real_ids)
    tok.padding_side = side
    try:
        batch = sft_collator(template, model, tokenizer_module)([feature])
    finally:
        tok.padding_side = "right"
    width = batch["input_ids"].shape[1]
    assert width % 8 == 0
    fake = [ids["media_begin"], ids["ph"], ids["ph"], ids["media_end"]]  # 0.1 s of silence = 2 frames
    row, mask = batch["input_ids"][0].tolist(), batch["attention_mask"][0].tolist()
    if side == "right":  # appended after the sample, then padding
        assert row[: length + 4] == real_ids + fake
        assert mask == [1] * length + [0] * (width - length)
    else:  # padding, then prepended before the sample
        assert row[width - length - 4 :] == fake + real_ids
        assert mask == [0] * (width - length) + [1] * length
    assert sorted(i for i, m in zip(batch["labels"][0].tolist(), mask) if m) == sorted(real_labels)
    assert all(label == IGNORE for label, m in zip(batch["labels"][0].tolist(), mask) if not m)
    assert batch["audio_chunk_tokens"].tolist() == [2]
    with torch.no_grad():
        out = model(**batch)
        # the fake audio is masked out: same loss as the text-only sample without it
        plain = model(
            input_ids=torch.tensor([real_ids]),
            attention_mask=torch.ones(1, length, dtype=torch.long),
            labels=torch.tensor([real_labels]),
        )
    assert torch.isfinite(out.loss)
    torch.testing.assert_close(out.loss, plain.loss, rtol=1e-4, atol=1e-5)


def test_mixed_batch_with_left_padding(template, tok, processor, tokenizer_module, model, ids, wav_a):
    """Prediction pads on the left: rows keep their ids at the end, the loss stays finite and equals right padding."""

    def features() -> list[dict]:  # the collator pops keys: a fresh list per call
        return [
            make_feature(template, tok, processor, conv("<audio>", "one"), [wav_a[0]]),
            make_feature(template, tok, processor, conv("hello", "hi"), []),
        ]

    collator = sft_collator(template, model, tokenizer_module)
    right = collator(features())
    tok.padding_side = "left"
    try:
        left = collator(features())
    finally:
        tok.padding_side = "right"
    short = len(features()[1]["input_ids"])
    assert left["input_ids"][1, -short:].tolist() == features()[1]["input_ids"]
    assert left["attention_mask"][1, :-short].sum() == 0
    with torch.no_grad():
        loss_right, loss_left = model(**right).loss, model(**left).loss
    assert torch.isfinite(loss_left)
    torch.testing.assert_close(loss_left, loss_right, rtol=1e-4, atol=1e-5)


def test_lora_target_all_hits_only_decoder_layers(model):
    targets = find_all_linear_modules(model, freeze_vision_tower=True)
    assert sorted(targets) == sorted(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    names = patch_target_modules(model, FinetuningArguments(finetuning_type="lora", lora_target="all"), targets)
    decoder_linears = {
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name.startswith("model.layers.")
    }
    assert set(names) == decoder_linears
    assert len(names) == 7 * model.config.num_hidden_layers
    for name in names:
        assert re.fullmatch(r"model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)", name), name
    for forbidden in ("whisper_encoder", "mimo", "vq_adaptor", "lm_head"):
        assert not any(forbidden in name for name in names)
