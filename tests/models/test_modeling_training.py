"""Training paths of ``KimiAudioForCausalLM`` (tiny checkpoint, CPU): gradient checkpointing (reentrant and not,
full fine-tune and frozen embeddings) gives the plain run's loss and gradients, and resuming a full fine-tune through
the HF Trainer restores the trained LM weights, keeps the Whisper encoder and warns about nothing.
"""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from safetensors.torch import load_file
from spec_reference import frames, right_padded_training_batch

from llamafactory_kimi_audio.models.modeling_kimi_audio import KimiAudioForCausalLM


def _grads(m, batch):
    m.zero_grad(set_to_none=True)
    loss = m(**batch).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("lora_like", [False, True], ids=["full", "frozen-embeddings"])
def test_gradient_checkpointing_gives_the_same_gradients(model, layout, ids, waves, lora_like):
    m = copy.deepcopy(model).train()
    if lora_like:  # PEFT-style: only q/v projections train; inputs must be made to require grad for reentrant GC
        for name, param in m.named_parameters():
            param.requires_grad_(
                name.startswith("model.layers.") and name.endswith(("q_proj.weight", "v_proj.weight"))
            )
        m.enable_input_require_grads()
    samples, batch = right_padded_training_batch(layout, waves, ids.pad)
    generator = torch.Generator().manual_seed(5)
    n_frames = sum(frames(len(w)) for w in waves)
    batch["audio_codes"] = torch.randint(0, 256, (n_frames,), generator=generator)
    batch["whisper_features"] = torch.randn(n_frames, m.config.kimia_adaptor_input_dim, generator=generator)
    loss_plain, grads_plain = _grads(m, batch)
    # every trainable tensor of the text path gets a gradient; the MIMO branch is not run for the text loss
    trained = {n for n, p in m.named_parameters() if p.requires_grad and not n.startswith(("model.mimo_", "mimo_"))}
    assert grads_plain.keys() == trained

    counter = {"calls": 0}
    layer0, original_forward = m.model.layers[0], m.model.layers[0].forward

    def counting_forward(*args, **kwargs):  # (forward hooks do not fire during non-reentrant recomputation)
        counter["calls"] += 1
        return original_forward(*args, **kwargs)

    layer0.forward = counting_forward
    for kwargs in (None, {"use_reentrant": False}):
        m.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        assert m.is_gradient_checkpointing
        counter["calls"] = 0
        loss_ckpt, grads_ckpt = _grads(m, batch)
        assert counter["calls"] == 2, "layer 0 must be recomputed in backward"
        torch.testing.assert_close(loss_ckpt, loss_plain, rtol=0, atol=1e-6)
        assert grads_ckpt.keys() == grads_plain.keys()
        for name, grad in grads_plain.items():
            torch.testing.assert_close(grads_ckpt[name], grad, rtol=1e-5, atol=1e-7, msg=name)
        m.gradient_checkpointing_disable()


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_resume_from_a_full_checkpoint_is_quiet_and_keeps_the_whisper_encoder(ckpt, tmp_path) -> None:
    """Checkpoints hold the LM only (the frozen Whisper encoder lives in ``whisper-large-v3/``): resuming a full
    fine-tune through the HF Trainer must restore the trained LM weights, keep the encoder, and warn about nothing."""
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    rows = [{"input_ids": [5, 6, 7, 8, 9, 10], "labels": [-100, -100, 7, 8, 9, 10]}] * 4
    dataset = Dataset.from_list(rows)

    def trainer(steps: int) -> Trainer:
        model = KimiAudioForCausalLM.from_pretrained(ckpt)
        args = TrainingArguments(
            output_dir=str(tmp_path),
            max_steps=steps,
            per_device_train_batch_size=2,
            learning_rate=1e-2,
            save_strategy="steps",
            save_steps=1,
            report_to=[],
            use_cpu=True,
            logging_strategy="no",
        )
        return Trainer(model=model, args=args, train_dataset=dataset)

    first = trainer(1)
    first.train()
    checkpoint = tmp_path / "checkpoint-1"
    assert not any(k.startswith("whisper_encoder.") for k in load_file(str(checkpoint / "model.safetensors")))
    trained = {k: v.clone() for k, v in first.model.state_dict().items()}

    second = trainer(1)  # max_steps reached: resuming loads the weights and trains no further step
    records = _Records()
    hf_logger = logging.getLogger("transformers")
    hf_logger.addHandler(records)
    try:
        second.train(resume_from_checkpoint=str(checkpoint))
    finally:
        hf_logger.removeHandler(records)
    assert not [m for m in records.messages if "missing keys" in m or "unexpected keys" in m], records.messages
    resumed = second.model.state_dict()
    assert resumed.keys() == trained.keys()
    for name, tensor in trained.items():
        assert torch.equal(resumed[name], tensor), name
    embed = "model.embed_tokens.weight"
    assert not torch.equal(trained[embed], KimiAudioForCausalLM.from_pretrained(ckpt).state_dict()[embed])
