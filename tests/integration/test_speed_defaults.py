"""Fast by default (issue 21): ``compile_pointwise=auto``, and idle weights parked in host memory in training."""

from __future__ import annotations

import types

import pytest
import torch
from speech_samples import asr_sample, load_native_model, speech_batch

from llamafactory_kimi_audio import settings
from llamafactory_kimi_audio.integration import speed
from llamafactory_kimi_audio.models import parking
from llamafactory_kimi_audio.models.modeling_kimi_audio import KimiAudioForCausalLM

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="parking moves weights off a GPU")


@pytest.fixture
def model(tiny_checkpoint) -> KimiAudioForCausalLM:
    return load_native_model(tiny_checkpoint.path)  # a fresh one per test: parking moves its weights


@pytest.mark.parametrize(
    "requested, trainable, quantization, cuda, triton, zero3, expected",
    [
        ("auto", True, None, True, True, False, "layers"),
        ("auto", True, None, False, True, False, "off"),  # CPU: compiling costs more than it saves
        ("auto", True, None, True, False, False, "off"),  # no Triton, no GPU kernels to generate
        ("auto", True, 4, True, True, False, "off"),  # QLoRA: bitsandbytes layers break the graph
        ("auto", True, None, True, True, True, "off"),  # ZeRO-3 gathers parameters inside the layers
        ("auto", False, None, True, True, False, "off"),  # inference: nothing to compile (layers are for training)
        ("on", False, 4, False, False, True, "on"),  # an explicit choice is kept as is
        ("off", True, None, True, True, False, "off"),
    ],
)
def test_auto_compiles_layers_only_where_it_pays(
    monkeypatch, requested, trainable, quantization, cuda, triton, zero3, expected
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(speed.importlib.util, "find_spec", lambda name: object() if triton else None)
    monkeypatch.setattr(speed, "zero3_enabled", lambda: zero3)
    model_args = types.SimpleNamespace(quantization_bit=quantization)
    assert speed.compile_mode(requested, trainable, model_args) == expected


def test_idle_submodules_are_the_mimo_branch_and_whisper_only_when_cached(model):
    idle = model.idle_submodules(audio_features_cached=False)
    assert idle == {
        "model.mimo_layers": model.model.mimo_layers,
        "model.mimo_norm": model.model.mimo_norm,
        "mimo_output": model.mimo_output,
    }
    assert model.idle_submodules(audio_features_cached=True)["whisper_encoder"] is model.whisper_encoder


def test_trainable_cpu_or_quantised_modules_are_never_parked(model):
    model.requires_grad_(False)
    assert not parking.parkable(model.mimo_output)  # on the CPU already
    assert parking.park(model.idle_submodules(audio_features_cached=True)) == []
    assert not parking.is_parked(model.mimo_output)
    meta = torch.nn.Linear(2, 2, device="meta")
    meta.requires_grad_(False)
    assert parking.parkable(meta)
    meta.weight.requires_grad_(True)  # e.g. LoRA on the MIMO layers (lora_target: all,mimo)
    assert not parking.parkable(meta)
    quantised = torch.nn.Module()
    quantised.register_buffer("packed", torch.zeros(4, dtype=torch.uint8, device="meta"))
    assert not parking.parkable(quantised)


def test_the_training_function_gets_the_callback_first_and_once():
    seen = []
    wrapped = speed.make_park_idle_weights(lambda config: seen.append(list(config["callbacks"])))
    first = object()
    config = {"callbacks": [first]}
    wrapped(config)
    wrapped(config)
    assert len(seen[1]) == 2 and seen[1][1] is first and getattr(seen[1][0], "parks_idle_weights", False)


def test_the_callback_leaves_other_models_and_the_opt_out_alone(model, monkeypatch):
    other = torch.nn.Linear(2, 2)
    assert speed.park_idle_weights(other, types.SimpleNamespace(fsdp="")) == []
    monkeypatch.setenv("KIMI_AUDIO_PARK_IDLE", "0")
    settings.reload()
    try:
        calls = []
        monkeypatch.setattr(parking, "park", lambda modules: calls.append(modules) or [])
        assert speed.park_idle_weights(model, types.SimpleNamespace(fsdp="")) == [] and not calls
    finally:
        monkeypatch.delenv("KIMI_AUDIO_PARK_IDLE")
        settings.reload()


@torch.no_grad()
def asr_loss(model, tok) -> float:
    device = model.device
    asr_ids, asr_labels = asr_sample(tok)
    rows = torch.randn(4, model.config.kimia_adaptor_input_dim, generator=torch.Generator().manual_seed(0))
    return model(
        input_ids=torch.tensor([asr_ids], device=device),
        labels=torch.tensor([asr_labels], device=device),
        audio_codes=torch.tensor([1, 2, 3, 4], device=device),
        whisper_features=rows.to(device),
    ).loss.item()


@torch.no_grad()
def speech_loss(model, tok) -> float:
    ids, labels, codes = speech_batch(tok)
    device = model.device
    return model(input_ids=ids.to(device), labels=labels.to(device), audio_codes=codes.to(device)).loss.item()


@needs_cuda
def test_cuda_parked_weights_leave_the_gpu_and_come_back_for_a_speech_batch(model, native_tok):
    model.cuda().requires_grad_(False)
    expected_asr, expected_speech = asr_loss(model, native_tok), speech_loss(model, native_tok)
    before = torch.cuda.memory_allocated()
    idle = model.idle_submodules(audio_features_cached=False)
    size = sum(p.numel() * p.element_size() for module in idle.values() for p in module.parameters())
    assert parking.park(idle) == list(idle)
    assert before - torch.cuda.memory_allocated() >= size
    assert model.mimo_output.weight.device.type == "cpu"
    assert asr_loss(model, native_tok) == expected_asr  # an ASR batch runs without the parked weights
    assert model.mimo_output.weight.device.type == "cpu"
    assert speech_loss(model, native_tok) == expected_speech  # a speech batch brings them back
    assert model.mimo_output.weight.is_cuda and model.model.mimo_layers[0].mlp.up_proj.weight.is_cuda
    assert not parking.is_parked(model.mimo_output)
