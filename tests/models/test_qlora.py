"""QLoRA (bitsandbytes 4-bit, what ``examples/kimi_qlora.yaml`` asks for): the language model is quantised, the
Whisper encoder is not — its weights come from ``whisper-large-v3/`` after ``from_pretrained`` and must load intact."""

from __future__ import annotations

import collections

import pytest
import torch

bnb = pytest.importorskip("bitsandbytes")

from llamafactory_kimi_audio.models.modeling_kimi_audio import KimiAudioForCausalLM  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


def linear_kinds(model) -> collections.Counter:
    return collections.Counter(
        (name.split(".")[0], "4bit" if isinstance(module, bnb.nn.Linear4bit) else "plain")
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
    )


def whisper_output(model, seed: int = 0) -> torch.Tensor:
    encoder = model.whisper_encoder
    generator = torch.Generator().manual_seed(seed)
    mel = torch.randn(1, encoder.config.num_mel_bins, 2 * encoder.config.max_source_positions, generator=generator)
    with torch.no_grad():
        return encoder(mel.to(next(encoder.parameters()).dtype)).last_hidden_state.float()


def test_4bit_load_quantises_the_lm_and_keeps_whisper_intact(tiny_checkpoint):
    from transformers import BitsAndBytesConfig

    quant = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_use_double_quant=True
    )
    quantised = KimiAudioForCausalLM.from_pretrained(
        tiny_checkpoint.path, quantization_config=quant, torch_dtype=torch.bfloat16
    )
    reference = KimiAudioForCausalLM.from_pretrained(tiny_checkpoint.path, torch_dtype=torch.bfloat16)
    kinds = linear_kinds(quantised)
    assert kinds[("model", "4bit")] > 0 and kinds[("model", "plain")] == 0
    assert kinds[("whisper_encoder", "plain")] > 0 and kinds[("whisper_encoder", "4bit")] == 0
    assert kinds[("lm_head", "plain")] == 1  # the text head stays exact too
    assert quantised.whisper_encoder.dtype == torch.bfloat16
    torch.testing.assert_close(whisper_output(quantised), whisper_output(reference), rtol=0, atol=0)
    ids = torch.randint(0, 400, (2, 9))
    with torch.no_grad():
        loss = quantised(input_ids=ids, labels=ids).loss
    assert torch.isfinite(loss)


def test_llamafactory_qlora_recipe_loads_and_trains_a_step(tiny_checkpoint):
    """LLaMA-Factory's loader with the recipe's quantisation keys: LoRA on 4-bit layers, Whisper untouched."""
    from llamafactory.hparams import FinetuningArguments, ModelArguments
    from llamafactory.model import load_model, load_tokenizer

    model_args = ModelArguments(
        model_name_or_path=tiny_checkpoint.path, trust_remote_code=True, quantization_bit=4,
        quantization_method="bnb", double_quantization=True,
    )  # fmt: skip
    model_args.compute_dtype = torch.bfloat16
    tokenizer = load_tokenizer(model_args)["tokenizer"]
    finetuning = FinetuningArguments(finetuning_type="lora", lora_target="all", lora_rank=4)
    model = load_model(tokenizer, model_args, finetuning, is_trainable=True)
    base = model.base_model.model
    assert linear_kinds(base)[("whisper_encoder", "4bit")] == 0
    assert not any(p.requires_grad for p in base.whisper_encoder.parameters())
    lora_on_4bit = [n for n, m in model.named_modules() if type(m).__name__ == "Linear4bit" and hasattr(m, "lora_A")]
    assert lora_on_4bit, "LoRA adapters sit on the quantised decoder linears"
    ids = torch.randint(0, 400, (2, 9))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_" in n and p.requires_grad]
    assert torch.isfinite(loss) and grads and all(g is not None and torch.isfinite(g).all() for g in grads)
