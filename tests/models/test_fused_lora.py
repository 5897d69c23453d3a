"""The fused LoRA forward gives PEFT's outputs and gradients, falls back to PEFT where it must, and is what
LLaMA-Factory's loader installs on the layer instances of a Kimi-Audio LoRA model (the patch table's ``fused_lora``
row) while any other PEFT model of the process keeps PEFT's forward."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora.layer import Linear as LoraLinear
from torch import nn

from llamafactory_kimi_audio import settings
from llamafactory_kimi_audio.models import fused_lora, grouped_lora
from llamafactory_kimi_audio.models.fused_lora import FUSED_FLAG, GROUPED_FLAG, install_fused_lora, remove_fused_lora

torch.set_num_threads(min(2, torch.get_num_threads()))
PEFT_FORWARD = LoraLinear.forward


@pytest.fixture
def fused_calls(monkeypatch):
    """Counts the layer calls that take the fused path, alone or grouped (q/k/v, gate/up: grouped_lora.py)."""
    calls: list[int] = []
    real, real_grouped = fused_lora.fused_lora_forward, grouped_lora.grouped_lora_forward
    monkeypatch.setattr(fused_lora, "fused_lora_forward", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(
        grouped_lora,
        "grouped_lora_forward",
        lambda layers, *a: calls.extend([1] * len(layers)) or real_grouped(layers, *a),
    )
    return calls


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up, self.down = nn.Linear(16, 48), nn.Linear(48, 16, bias=False)

    def forward(self, x):
        return self.down(torch.relu(self.up(x)))


def toy_pair(dropout: float = 0.0):
    torch.manual_seed(0)
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules=["up", "down"], init_lora_weights=False)
    peft_model = get_peft_model(Toy(), lora)
    fused = copy.deepcopy(peft_model)
    assert install_fused_lora(fused) == 2
    return peft_model, fused


def outputs_and_grads(model, x):
    model.zero_grad()
    x = x.clone().requires_grad_(True)
    out = model(x)
    out.float().square().sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return out.detach(), x.grad.clone(), grads


def assert_same(a, b, **tol):
    (out_a, dx_a, g_a), (out_b, dx_b, g_b) = a, b
    torch.testing.assert_close(out_a, out_b, **tol)
    torch.testing.assert_close(dx_a, dx_b, **tol)
    assert g_a.keys() == g_b.keys() and any("lora_A" in n for n in g_a)
    for name in g_a:
        torch.testing.assert_close(g_a[name], g_b[name], **tol)


def test_fp32_outputs_and_gradients_equal_peft(fused_calls):
    peft_model, fused = toy_pair()
    x = torch.randn(3, 5, 16)
    expected = outputs_and_grads(peft_model, x)
    assert fused_calls == []  # unmarked layers keep PEFT's forward
    assert_same(expected, outputs_and_grads(fused, x), rtol=1e-5, atol=1e-6)
    assert fused_calls == [1, 1]


def test_dropout_draws_the_same_mask():
    peft_model, fused = toy_pair(dropout=0.3)
    x = torch.randn(2, 7, 16)
    torch.manual_seed(1)
    expected = outputs_and_grads(peft_model.train(), x)
    torch.manual_seed(1)
    assert_same(expected, outputs_and_grads(fused.train(), x), rtol=1e-5, atol=1e-6)


def test_bf16_autocast_matches_within_bf16_rounding():
    peft_model, fused = toy_pair()
    for model in (peft_model, fused):  # LLaMA-Factory's layout: bf16 base weights, fp32 LoRA weights
        for name, param in model.named_parameters():
            if "lora_" not in name:
                param.data = param.data.to(torch.bfloat16)
    x = torch.randn(4, 6, 16, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected, got = outputs_and_grads(peft_model, x), outputs_and_grads(fused, x)
    assert expected[0].dtype == got[0].dtype == torch.bfloat16
    # bf16 rounds differently (one rounding fewer in the fused sum): compare whole tensors by relative error
    pairs = [(expected[0], got[0]), (expected[1], got[1])] + [(expected[2][n], got[2][n]) for n in expected[2]]
    for want, have in pairs:
        assert torch.linalg.norm((have - want).float()) <= 1e-2 * torch.linalg.norm(want.float())


def test_mismatched_dtype_without_autocast_falls_back_to_peft(fused_calls):
    peft_model, fused = toy_pair()
    for model in (peft_model, fused):
        model.base_model.model.up.base_layer.to(torch.bfloat16)
    x = torch.randn(2, 3, 16, dtype=torch.bfloat16)
    layer = fused.base_model.model.up
    with torch.no_grad():
        expected = peft_model.base_model.model.up(x)
        got = layer(x)
    assert fused_calls == []
    torch.testing.assert_close(got, expected)


def test_disabled_and_merged_adapters_take_peft_paths():
    peft_model, fused = toy_pair()
    x = torch.randn(2, 16)
    with torch.no_grad():
        with fused.disable_adapter(), peft_model.disable_adapter():
            torch.testing.assert_close(fused(x), peft_model(x))
            torch.testing.assert_close(fused(x), peft_model.base_model.model.down.base_layer(
                torch.relu(peft_model.base_model.model.up.base_layer(x))))  # fmt: skip
        unmerged = fused(x)
        fused.merge_adapter()
        torch.testing.assert_close(fused(x), unmerged, rtol=1e-5, atol=1e-6)


def test_install_is_idempotent_and_removable():
    peft_model, fused = toy_pair()
    assert install_fused_lora(fused) == 0
    assert remove_fused_lora(fused) == 2
    assert all(FUSED_FLAG not in m.__dict__ and "forward" not in m.__dict__ for m in fused.modules())
    x = torch.randn(2, 16)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), peft_model(x))


@pytest.fixture(scope="module")
def lora_kimi(tiny_checkpoint):
    from llamafactory.hparams import FinetuningArguments, ModelArguments
    from llamafactory.model import load_model, load_tokenizer

    model_args = ModelArguments(model_name_or_path=tiny_checkpoint.path, trust_remote_code=True)
    tokenizer = load_tokenizer(model_args)["tokenizer"]
    finetuning = FinetuningArguments(finetuning_type="lora", lora_target="all", lora_rank=4, lora_alpha=8)
    return load_model(tokenizer, model_args, finetuning, is_trainable=True)


def test_the_loader_installs_it_on_kimi_lora_layers(lora_kimi):
    lora_layers = [m for m in lora_kimi.modules() if type(m) is LoraLinear]
    assert lora_layers and all(m.__dict__.get(FUSED_FLAG) for m in lora_layers)
    assert all(m.__dict__.get(GROUPED_FLAG) is True for m in lora_layers)  # KIMI_AUDIO_GROUPED_LORA's default
    for layer in lora_layers:  # B starts at 0: give the adapters something to add
        nn.init.normal_(layer.lora_B["default"].weight, std=0.05)
    torch.manual_seed(0)
    ids = torch.randint(0, 400, (2, 12))
    batch = dict(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids)

    def loss_and_grads():
        lora_kimi.zero_grad()
        loss = lora_kimi(**batch).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in lora_kimi.named_parameters() if p.requires_grad}

    fused_loss, fused_grads = loss_and_grads()
    assert remove_fused_lora(lora_kimi) == len(lora_layers)
    try:
        plain_loss, plain_grads = loss_and_grads()
    finally:
        install_fused_lora(lora_kimi)
    torch.testing.assert_close(fused_loss, plain_loss, rtol=1e-5, atol=1e-6)
    assert fused_grads.keys() == plain_grads.keys()
    for name in plain_grads:
        torch.testing.assert_close(fused_grads[name], plain_grads[name], rtol=1e-4, atol=1e-6)
    assert all(m.__dict__.get(GROUPED_FLAG) is True for m in lora_layers)  # reinstalled as the loader did


def test_other_peft_models_keep_peft_forward(lora_kimi, fused_calls):
    """The Kimi-Audio model loaded in this process takes the fused path; a plain PEFT model built next to it does not
    (PEFT's class is untouched: the fused forward lives on the Kimi-Audio layer instances only)."""
    other = get_peft_model(Toy(), LoraConfig(r=4, lora_alpha=8, target_modules=["up", "down"]))
    other_layers = [m for m in other.modules() if type(m) is LoraLinear]
    assert LoraLinear.forward is PEFT_FORWARD and other_layers
    assert all("forward" not in m.__dict__ and FUSED_FLAG not in m.__dict__ for m in other_layers)
    with torch.no_grad():
        other(torch.randn(2, 16))
    assert fused_calls == []
    kimi_layers = [m for m in lora_kimi.modules() if type(m) is LoraLinear]
    assert all(m.forward.__func__ is fused_lora.fused_or_peft_forward for m in kimi_layers)
    ids = torch.randint(0, 400, (1, 6))
    with torch.no_grad():
        lora_kimi(input_ids=ids, attention_mask=torch.ones_like(ids))
    assert len(fused_calls) >= len(kimi_layers)


def test_opt_out_keeps_peft_forward(tiny_checkpoint, monkeypatch):
    from llamafactory.hparams import FinetuningArguments, ModelArguments
    from llamafactory.model import load_model, load_tokenizer

    monkeypatch.setenv("KIMI_AUDIO_FUSED_LORA", "0")
    settings.reload()
    model_args = ModelArguments(model_name_or_path=tiny_checkpoint.path, trust_remote_code=True)
    tokenizer = load_tokenizer(model_args)["tokenizer"]
    model = load_model(tokenizer, model_args, FinetuningArguments(finetuning_type="lora"), is_trainable=True)
    layers = [m for m in model.modules() if type(m) is LoraLinear]
    settings.reload()
    assert layers and not any(FUSED_FLAG in m.__dict__ or "forward" in m.__dict__ for m in layers)
    assert not any(GROUPED_FLAG in m.__dict__ for m in layers)


def test_grouped_opt_out_keeps_one_lora_a_matmul_per_layer(tiny_checkpoint, monkeypatch, fused_calls):
    """KIMI_AUDIO_GROUPED_LORA=0: the layers keep the fused forward, each called on its own (grouped_lora.py off)."""
    from llamafactory.hparams import FinetuningArguments, ModelArguments
    from llamafactory.model import load_model, load_tokenizer

    monkeypatch.setenv("KIMI_AUDIO_GROUPED_LORA", "0")
    settings.reload()
    model_args = ModelArguments(model_name_or_path=tiny_checkpoint.path, trust_remote_code=True)
    tokenizer = load_tokenizer(model_args)["tokenizer"]
    finetuning = FinetuningArguments(finetuning_type="lora", lora_target="all")
    model = load_model(tokenizer, model_args, finetuning, is_trainable=True)
    settings.reload()
    layers = [m for m in model.modules() if type(m) is LoraLinear]
    assert layers and all(m.__dict__.get(FUSED_FLAG) is True and m.__dict__.get(GROUPED_FLAG) is False for m in layers)
    grouped = []
    monkeypatch.setattr(grouped_lora, "grouped_lora_forward", lambda *a: grouped.append(1))
    ids = torch.randint(0, 400, (1, 6))
    with torch.no_grad():
        model(input_ids=ids, attention_mask=torch.ones_like(ids))
    assert grouped == [] and len(fused_calls) >= len(layers)


def test_parameter_count_walks_the_modules_once_per_training_phase(lora_kimi, monkeypatch):
    """The HF Trainer asks for ``num_parameters(exclude_embeddings=True)`` after every step; the answer stays the
    same, but the module walk behind it (ms of host time on the 7B) happens once per ``train()``."""
    base = lora_kimi.get_base_model()
    walks: list[int] = []
    named_parameters = base.named_parameters

    def counting_walk(*args, **kwargs):
        walks.append(1)
        return named_parameters(*args, **kwargs)

    monkeypatch.setattr(base, "named_parameters", counting_walk)
    lora_kimi.eval()
    expected = lora_kimi.num_parameters(exclude_embeddings=True)
    assert lora_kimi.num_parameters(exclude_embeddings=True) == expected and len(walks) == 2  # not cached in eval
    assert expected < lora_kimi.num_parameters()  # the embeddings are left out
    walks.clear()
    lora_kimi.train()
    assert [lora_kimi.num_parameters(exclude_embeddings=True) for _ in range(3)] == [expected] * 3
    assert len(walks) == 1
    lora_kimi.train()  # a new phase (e.g. after evaluation) counts again
    assert lora_kimi.num_parameters(exclude_embeddings=True) == expected and len(walks) == 2
