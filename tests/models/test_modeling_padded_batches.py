"""Padded batches equal their samples run one at a time (tiny checkpoint, CPU): a right-padded training batch
(logits, per-utterance losses and their mean, the official normalisation), a left-padded generation batch of ASR
prompts, and SDPA against eager attention on both paddings, including ``attn_implementation="eager"`` at load time.
"""

from __future__ import annotations

import torch
from spec_reference import INSTRUCTION, frames, hf_per_sample_loss, right_padded_training_batch

from llamafactory_kimi_audio.models import attention
from llamafactory_kimi_audio.models.modeling_kimi_audio import KimiAudioForCausalLM


def test_right_padded_training_batch_equals_per_sample(model, layout, ids, waves, audio_case):
    samples, batch = right_padded_training_batch(layout, waves, ids.pad)
    assert len({len(s[0]) for s in samples}) == 3
    no_labels = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        batch_loss = model(**batch, **audio_case["batch_audio"]).loss  # processor inputs → encoders inside forward
        batch_logits = model(**no_labels, **audio_case["precomputed"]).logits
        singles = []
        for row, ((sample_ids, sample_labels), audio) in enumerate(zip(samples, audio_case["singles"])):
            sample_ids, sample_labels = torch.tensor([sample_ids]), torch.tensor([sample_labels])
            single_loss = model(input_ids=sample_ids, labels=sample_labels, **audio).loss
            logits = model(input_ids=sample_ids, **audio).logits[0]
            n = sample_ids.shape[1]
            torch.testing.assert_close(batch_logits[row, :n], logits, rtol=0, atol=1e-5)
            loss_from_batch = hf_per_sample_loss(batch_logits[row, :n], sample_labels[0])
            torch.testing.assert_close(loss_from_batch, single_loss, rtol=0, atol=1e-5)
            singles.append(single_loss)
    # Official normalisation: each utterance is a per-token mean; the batch averages utterances.
    torch.testing.assert_close(batch_loss, torch.stack(singles).mean(), rtol=0, atol=1e-5)


def test_left_padded_generation_batch_equals_per_sample(model, processor, layout, waves, audio_case):
    instructions = [INSTRUCTION, None, "请将音频内容转换为文字。"]
    batch = processor.asr_inputs(waves, instructions, padding_side="left")
    lengths = batch["attention_mask"].sum(1).tolist()
    assert len(set(lengths)) == 3 and bool(batch["attention_mask"][:, -1].all())
    with torch.no_grad():
        batch_logits = model(**batch).logits
        for row, (wave, instruction, audio) in enumerate(zip(waves, instructions, audio_case["singles"])):
            prompt = layout.asr_prompt(frames(len(wave)), instruction)
            assert batch["input_ids"][row, -lengths[row] :].tolist() == prompt
            assert batch["input_ids"][row, : -lengths[row]].eq(batch["input_ids"][0, 0]).all()  # pad
            logits = model(input_ids=torch.tensor([prompt]), **audio).logits[0]
            torch.testing.assert_close(batch_logits[row, -lengths[row] :], logits, rtol=0, atol=1e-5)


def test_sdpa_equals_eager_on_padded_batches(model, processor, layout, ids, waves, audio_case, ckpt, monkeypatch):
    calls = {"eager": 0}
    eager = attention.eager_attention_forward

    def counting_eager(*args, **kwargs):
        calls["eager"] += 1
        return eager(*args, **kwargs)

    monkeypatch.setattr(attention, "eager_attention_forward", counting_eager)
    audio = audio_case["precomputed"]
    left = {
        k: v for k, v in processor.asr_inputs(waves, [INSTRUCTION] * 3).items() if k in ("input_ids", "attention_mask")
    }
    _, right = right_padded_training_batch(layout, waves, ids.pad)
    right_no_labels = {k: v for k, v in right.items() if k != "labels"}
    original = model.config._attn_implementation
    results = {}
    try:
        for implementation in ("sdpa", "eager"):
            model.config._attn_implementation = implementation
            with torch.no_grad():
                results[implementation] = (
                    model(**left, **audio).logits,
                    model(**right, **audio).loss,
                    model(**right_no_labels, **audio).logits,
                )
    finally:
        model.config._attn_implementation = original
    assert calls["eager"] == 3 * model.config.num_hidden_layers
    valid_left, valid_right = left["attention_mask"].bool(), right["attention_mask"].bool()
    assert not valid_left.all() and not valid_right.all()
    torch.testing.assert_close(results["sdpa"][0][valid_left], results["eager"][0][valid_left], rtol=0, atol=1e-5)
    torch.testing.assert_close(results["sdpa"][1], results["eager"][1], rtol=0, atol=1e-5)
    torch.testing.assert_close(results["sdpa"][2][valid_right], results["eager"][2][valid_right], rtol=0, atol=1e-5)

    calls["eager"] = 0
    loaded = KimiAudioForCausalLM.from_pretrained(ckpt, attn_implementation="eager")
    assert loaded.config._attn_implementation == "eager"
    with torch.no_grad():
        loaded(input_ids=torch.tensor([[3, 10, 20, 30, 40]]))
    assert calls["eager"] == loaded.config.num_hidden_layers
