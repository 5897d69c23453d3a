"""``config.compile_pointwise = "on"`` fuses RMSNorm / RoPE / SwiGLU with torch.compile: same values and gradients
as eager, in the functions and in the whole model's loss."""

from __future__ import annotations

import functools

import pytest
import torch

from llamafactory_kimi_audio.models import pointwise
from llamafactory_kimi_audio.models.modeling_kimi_audio import KimiAudioForCausalLM

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def compiling(monkeypatch):
    monkeypatch.setattr(pointwise, "_compiled", {})
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def run(function, *tensors):
    inputs = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in tensors]
    out = function(*inputs)
    outs = out if isinstance(out, tuple) else (out,)
    sum(o.float().square().sum() for o in outs).backward()
    return [o.detach() for o in outs], [i.grad for i in inputs if i.grad is not None]


def test_off_and_layers_return_the_eager_function(tiny_checkpoint):
    assert KimiAudioForCausalLM.from_pretrained(tiny_checkpoint.path).config.compile_pointwise == "off"
    for mode in ("off", "layers"):  # "layers" compiles the whole layer around the eager function
        assert pointwise.fused(pointwise.swiglu, mode) is pointwise.swiglu


@pytest.mark.slow  # torch.compile: minutes on a small CPU
def test_compiled_functions_match_eager(compiling):
    torch.manual_seed(0)
    q, k, cos, sin = torch.randn(2, 4, 5, 8), torch.randn(2, 2, 5, 8), torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    cases = [
        (pointwise.rms_norm, (torch.randn(2, 5, 16), torch.randn(16)), {"eps": 1e-6}),
        (pointwise.rotary, (q, k, cos, sin), {}),
        (pointwise.swiglu, (torch.randn(3, 7, 32), torch.randn(3, 7, 32)), {}),
    ]
    for function, tensors, extra in cases:
        compiled = pointwise.fused(function, "on")
        assert compiled is not function and pointwise.fused(function, "on") is compiled  # compiled once
        expected = run(functools.partial(function, **extra), *tensors)
        got = run(functools.partial(compiled, **extra), *tensors)
        for want, have in zip(expected[0] + expected[1], got[0] + got[1]):
            torch.testing.assert_close(have, want, rtol=1e-5, atol=1e-5)
        # another length runs the same compiled function (dynamic shapes)
        longer = [torch.cat([t, t], dim=-2) if t.dim() > 1 else t for t in tensors]
        want = run(functools.partial(function, **extra), *longer)[0]
        torch.testing.assert_close(run(functools.partial(compiled, **extra), *longer)[0], want)


@pytest.mark.slow  # torch.compile: minutes on a small CPU
def test_model_loss_is_unchanged_when_compiled(tiny_checkpoint, monkeypatch):
    model = KimiAudioForCausalLM.from_pretrained(tiny_checkpoint.path)
    ids = torch.randint(0, 400, (2, 11))
    with torch.no_grad():
        eager = model(input_ids=ids, labels=ids).loss
    monkeypatch.setattr(model.config, "compile_pointwise", "on")
    monkeypatch.setattr(pointwise, "_compiled", {})
    torch._dynamo.reset()
    try:
        with torch.no_grad():
            compiled = model(input_ids=ids, labels=ids).loss
        assert set(pointwise._compiled) == {pointwise.rms_norm, pointwise.rotary, pointwise.swiglu}
    finally:
        torch._dynamo.reset()
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # torch.compile: minutes on a small CPU
def test_compiled_layers_train_like_eager(tiny_checkpoint, monkeypatch):
    """``=layers`` compiles whole decoder layers in training: same loss and gradients as eager."""
    model = KimiAudioForCausalLM.from_pretrained(tiny_checkpoint.path).train()
    ids = torch.randint(0, 400, (2, 11))

    def loss_and_grads():
        model.zero_grad()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.model.layers.parameters()]

    eager = loss_and_grads()
    monkeypatch.setattr(model.config, "compile_pointwise", "layers")
    monkeypatch.setattr(pointwise, "_compiled", {})
    torch._dynamo.reset()
    try:
        compiled = loss_and_grads()
        assert set(pointwise._compiled) == set(model.model.layers)
    finally:
        torch._dynamo.reset()
    torch.testing.assert_close(compiled[0], eager[0], rtol=1e-5, atol=1e-5)
    for want, have in zip(eager[1], compiled[1]):
        torch.testing.assert_close(have, want, rtol=1e-4, atol=1e-5)
