"""Grouped LoRA A (``models/grouped_lora.py``): q/k/v and gate/up share one LoRA-A matmul on the fused path. Same
outputs and gradients as the layers called one by one (fused) and as PEFT's own forward, in fp32 and under bf16
autocast; the grouped path is really taken (fewer matmuls, one graph when the layer is compiled), with FP8 base
layers, gradient checkpointing, packed rows and generation. The cases it cannot serve: test_grouped_lora_fallbacks.py.
"""

from __future__ import annotations

import pytest
import torch
from lora_models import (
    GROUPS_PER_LAYER,
    PROJECTIONS,
    layer_outputs_and_grads,
    lora_triple,
    loss_and_grads,
    packed_batch,
    relative_error,
    to_bf16_base,
    worst_relative_error,
)
from torch.utils._python_dispatch import TorchDispatchMode

from llamafactory_kimi_audio.models.fused_lora import install_fused_lora

torch.set_num_threads(min(2, torch.get_num_threads()))


def test_fp32_outputs_and_gradients_equal_the_ungrouped_and_peft_paths(tiny_model, grouped_calls):
    models = lora_triple(tiny_model)
    x = torch.randn(2, 9, tiny_model.config.hidden_size)
    results = {kind: layer_outputs_and_grads(model, x) for kind, model in models.items()}
    assert grouped_calls == [3, 2]  # one call for q/k/v, one for gate/up
    for kind in ("ungrouped", "peft"):  # fp32 rounding only: the input gradient's three parts are summed in one GEMM
        assert worst_relative_error(results[kind], results["grouped"]) < 1e-5
    # the whole model on packed rows: the loss and every LoRA gradient
    batch = packed_batch(tiny_model.config.num_base_tokens)
    whole = {kind: loss_and_grads(model.train(), batch) for kind, model in models.items()}
    assert len(grouped_calls) == GROUPS_PER_LAYER * (1 + tiny_model.config.num_hidden_layers)
    for kind in ("ungrouped", "peft"):
        torch.testing.assert_close(whole["grouped"][0], whole[kind][0], rtol=1e-5, atol=1e-6)
        assert whole["grouped"][1].keys() == whole[kind][1].keys()
        for name, grad in whole[kind][1].items():
            torch.testing.assert_close(whole["grouped"][1][name], grad, rtol=1e-4, atol=1e-6)


def test_bf16_autocast_matches_the_ungrouped_path(tiny_model, grouped_calls):
    models = {kind: to_bf16_base(model) for kind, model in lora_triple(tiny_model).items()}
    x = torch.randn(3, 10, tiny_model.config.hidden_size, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        results = {kind: layer_outputs_and_grads(model, x) for kind, model in models.items()}
    assert grouped_calls == [3, 2] and results["grouped"][0].dtype == torch.bfloat16
    # the forward is the same bf16 products as one layer at a time (each column is the same dot product); the
    # backward rounds the input gradient once (one GEMM over the stacked ranks) instead of adding three bf16 tensors
    torch.testing.assert_close(results["grouped"][0], results["ungrouped"][0])
    assert worst_relative_error(results["ungrouped"], results["grouped"]) < 1e-2
    # PEFT rounds its LoRA sum once more (fused_lora.py): the same bound as the fused path's own test, on a whole layer
    assert worst_relative_error(results["peft"], results["grouped"]) < 2e-2


class MatmulCount(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.addmm, torch.ops.aten.bmm):
            self.count += 1
        return func(*args, **(kwargs or {}))


def test_one_lora_a_matmul_per_group(tiny_model):
    """q/k/v: one A matmul instead of three, gate/up: one instead of two (3 fewer per layer in the forward); the
    backward saves the matching dA and input-gradient matmuls."""
    models = lora_triple(tiny_model)
    x = torch.randn(2, 6, tiny_model.config.hidden_size)
    counts = {}
    for kind in ("ungrouped", "grouped"):
        inner = models[kind].get_base_model().model
        x_in = x.clone().requires_grad_(True)
        with MatmulCount() as forward:
            out = inner.layers[0](x_in, inner.rotary_emb(x_in, torch.arange(6)[None]), None, True)
        with MatmulCount() as backward:
            out.sum().backward()
        counts[kind] = forward.count, backward.count
    assert counts["ungrouped"][0] - counts["grouped"][0] == (3 - 1) + (2 - 1)
    assert counts["grouped"][1] < counts["ungrouped"][1]


def test_fp8_emulated_base_layers_run_under_the_grouped_path(tiny_model, grouped_calls, monkeypatch):
    """The grouped path calls each FP8 base layer (fp8_linear.py, emulated on the CPU) once, as the fused path does:
    a layer gives the ungrouped fused path's output and gradients, the whole model its loss and gradients."""
    from llamafactory_kimi_audio.models import fp8_linear

    models = lora_triple(tiny_model)
    for kind in ("ungrouped", "grouped"):
        assert len(fp8_linear.convert_decoder_linears(models[kind])["frozen"]) > 0
    calls = []
    real = fp8_linear._FrozenFp8Matmul.apply
    monkeypatch.setattr(fp8_linear._FrozenFp8Matmul, "apply", lambda *a: calls.append(1) or real(*a))
    x = torch.randn(2, 9, tiny_model.config.hidden_size)
    layer = {kind: layer_outputs_and_grads(models[kind], x) for kind in ("ungrouped", "grouped")}
    assert worst_relative_error(layer["ungrouped"], layer["grouped"]) < 1e-5
    batch = packed_batch(tiny_model.config.num_base_tokens)
    calls.clear()
    grouped_calls.clear()
    grouped = loss_and_grads(models["grouped"].train(), batch)
    assert len(calls) == tiny_model.config.num_hidden_layers * len(PROJECTIONS)
    assert len(grouped_calls) == GROUPS_PER_LAYER * tiny_model.config.num_hidden_layers
    ungrouped = loss_and_grads(models["ungrouped"].train(), batch)
    torch.testing.assert_close(grouped[0], ungrouped[0], rtol=1e-4, atol=1e-6)
    # Across layers the per-token FP8 scales of the gradients amplify fp32-level differences (a 1e-6 change of one
    # LoRA weight moves the first layer's gradients by ~1% too): compare the whole gradient by direction.
    assert grouped[1].keys() == ungrouped[1].keys()
    flat = [torch.cat([grads[name].flatten() for name in sorted(grads)]) for grads in (grouped[1], ungrouped[1])]
    assert torch.nn.functional.cosine_similarity(*flat, dim=0) > 0.999


def test_gradient_checkpointing_recomputes_through_the_grouped_path(tiny_model, grouped_calls):
    models = lora_triple(tiny_model)
    batch = packed_batch(tiny_model.config.num_base_tokens)
    plain = loss_and_grads(models["grouped"].train(), batch)
    checkpointed_model = models["ungrouped"]  # the same weights; grouped from here on
    install_fused_lora(checkpointed_model, grouped=True)
    checkpointed_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    grouped_calls.clear()
    checkpointed = loss_and_grads(checkpointed_model.train(), batch)
    layers = tiny_model.config.num_hidden_layers
    assert len(grouped_calls) == 2 * GROUPS_PER_LAYER * layers  # forward + recomputation in the backward
    torch.testing.assert_close(checkpointed[0], plain[0])
    for name, grad in plain[1].items():
        torch.testing.assert_close(checkpointed[1][name], grad, rtol=1e-5, atol=1e-6)


def test_generation_with_unmerged_and_merged_adapters(tiny_model, grouped_calls):
    models = {kind: model.eval() for kind, model in lora_triple(tiny_model).items()}
    ids = torch.randint(0, tiny_model.config.num_base_tokens, (2, 7), generator=torch.Generator().manual_seed(2))
    kwargs = dict(attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False)
    kwargs.update(return_dict_in_generate=True, output_logits=True)
    want = models["peft"].generate(input_ids=ids, **kwargs)
    got = models["grouped"].generate(input_ids=ids, **kwargs)
    assert len(grouped_calls) >= 5 * GROUPS_PER_LAYER * tiny_model.config.num_hidden_layers  # prompt + decode steps
    assert torch.equal(got.sequences, want.sequences)
    for have, expected in zip(got.logits, want.logits, strict=True):
        torch.testing.assert_close(have, expected, rtol=1e-4, atol=1e-5)
    grouped_calls.clear()
    models["grouped"].merge_adapter()
    merged_out = models["grouped"].generate(input_ids=ids, **kwargs)
    assert grouped_calls == [] and torch.equal(merged_out.sequences, want.sequences)


def test_the_compiled_layer_is_one_graph_with_the_grouped_matmuls(tiny_model):
    """The recipes compile whole decoder layers (``compile_pointwise=layers``): the grouped path traces without a
    graph break, with one A matmul per group (4 LoRA-A linears per layer instead of 7)."""
    models = lora_triple(tiny_model)
    x = torch.randn(2, 6, tiny_model.config.hidden_size)
    linears = {}
    for kind in ("ungrouped", "grouped"):
        inner = models[kind].train().get_base_model().model
        torch._dynamo.reset()
        explained = torch._dynamo.explain(inner.layers[0])(x, inner.rotary_emb(x, torch.arange(6)[None]), None, True)
        assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
        nodes = explained.graphs[0].graph.nodes
        linears[kind] = sum(n.op == "call_function" and n.target is torch._C._nn.linear for n in nodes)
    torch._dynamo.reset()
    assert linears["ungrouped"] - linears["grouped"] == (3 - 1) + (2 - 1)


@pytest.mark.slow  # torch.compile: tens of seconds on a small CPU
def test_compiled_layers_train_like_eager(tiny_model, monkeypatch, grouped_calls):
    """Whole layers compiled (``compile_pointwise=layers``, as the recipes run on a GPU): the grouped path's loss and
    LoRA gradients equal the eager ones."""
    from llamafactory_kimi_audio.models import pointwise

    model = lora_triple(tiny_model)["grouped"].train()
    batch = packed_batch(tiny_model.config.num_base_tokens)
    eager = loss_and_grads(model, batch)
    assert len(grouped_calls) == GROUPS_PER_LAYER * tiny_model.config.num_hidden_layers
    monkeypatch.setattr(pointwise, "_compiled", {})
    monkeypatch.setattr(model.config, "compile_pointwise", "layers")
    torch._dynamo.reset()
    try:
        compiled = loss_and_grads(model, batch)
        assert len(pointwise._compiled) == tiny_model.config.num_hidden_layers
    finally:
        torch._dynamo.reset()
    torch.testing.assert_close(compiled[0], eager[0], rtol=1e-5, atol=1e-6)
    assert compiled[1].keys() == eager[1].keys()
    assert max(relative_error(compiled[1][name], grad) for name, grad in eager[1].items()) < 1e-5


@pytest.mark.slow  # inductor on a small CPU: about half a minute
@pytest.mark.parametrize("kind", ["ungrouped", "grouped"])
def test_compiled_layers_add_the_lora_products_without_an_addmm(tiny_model, kind):
    """Inside a compiled layer the LoRA products are plain matmuls added to the base outputs in fused kernels: an
    out-of-place ``addmm`` would first copy each base output into a new buffer (``fused_lora.add_lora_product``). The
    only ``addmm`` calls left in the generated forward are the q/k/v base layers' own (their bias)."""
    import re

    from torch._inductor.utils import run_and_get_code

    inner = lora_triple(tiny_model)[kind].train().get_base_model().model
    x = torch.randn(2, 6, tiny_model.config.hidden_size, requires_grad=True)
    position = inner.rotary_emb(x, torch.arange(6)[None])
    torch._dynamo.reset()
    try:
        step = torch.compile(lambda x: inner.layers[0](x, position, None, True).sum())
        _, (forward_code, *_) = run_and_get_code(lambda: step(x).backward())
    finally:
        torch._dynamo.reset()
    biased = sum(
        getattr(inner.layers[0].self_attn, name).base_layer.bias is not None for name in ("q_proj", "k_proj", "v_proj")
    )
    assert len(re.findall(r"extern_kernels\.addmm\(", forward_code)) == biased == 3
    assert x.grad is not None and bool(torch.isfinite(x.grad).all())
