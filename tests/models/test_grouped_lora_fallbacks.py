"""Grouped LoRA A (``models/grouped_lora.py``) only where every layer of a group takes the plain fused path: each
case it cannot serve calls the layers one by one, as before, with PEFT's results."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from lora_models import (
    GROUPS_PER_LAYER,
    layer_outputs_and_grads,
    lora_triple,
    packed_batch,
    to_bf16_base,
    worst_relative_error,
)

torch.set_num_threads(min(2, torch.get_num_threads()))


def dropout_model(model):
    return lora_triple(model, dropout=0.1)["grouped"].train()


def mixed_batch(model):
    """PEFT's mixed-adapter batch: ``adapter_names`` become forward pre-hooks on the LoRA layers."""
    grouped = lora_triple(model)["grouped"].eval()
    return functools.partial(grouped, adapter_names=["default", "default"])


def hooked(model):
    """A forward hook on each k_proj LoRA layer, a pre-hook on each up_proj's lora_A: those must fire."""
    grouped = lora_triple(model)["grouped"]
    grouped.hook_calls = []
    for layer in grouped.get_base_model().model.layers:
        layer.self_attn.k_proj.register_forward_hook(lambda *a: grouped.hook_calls.append("k"))
        layer.mlp.up_proj.lora_A["default"].register_forward_pre_hook(lambda *a: grouped.hook_calls.append("up"))
    return grouped


def zero3_like(model):
    """A ZeRO-3-partitioned LoRA weight (DeepSpeed marks it with ``ds_id``) sends its layer to PEFT's forward."""
    grouped = lora_triple(model)["grouped"]
    for layer in grouped.get_base_model().model.layers:
        layer.self_attn.v_proj.lora_A["default"].weight.ds_id = 1
        layer.mlp.gate_proj.lora_B["default"].weight.ds_id = 2
    return grouped


def merged(model):
    grouped = lora_triple(model)["grouped"]
    grouped.merge_adapter()
    return grouped


def disabled(model):
    grouped = lora_triple(model)["grouped"]
    grouped.base_model.disable_adapter_layers()
    return grouped


FALLBACKS = {
    "no_peft": copy.deepcopy,
    "peft_forward": lambda model: lora_triple(model)["peft"],
    "ungrouped": lambda model: lora_triple(model)["ungrouped"],
    "merged": merged,
    "disabled": disabled,
    "dropout": dropout_model,
    "dora": lambda model: lora_triple(model, use_dora=True)["grouped"],
    "zero3_weights": zero3_like,
    "hooks": hooked,
    "mixed_adapter_batch": mixed_batch,
}


@pytest.mark.parametrize("case", list(FALLBACKS))
def test_cases_it_cannot_serve_call_each_layer(tiny_model, grouped_calls, case):
    model = FALLBACKS[case](tiny_model)
    batch = packed_batch(tiny_model.config.num_base_tokens)
    torch.manual_seed(3)
    with torch.no_grad():
        loss = model(**batch).loss
    assert grouped_calls == [] and torch.isfinite(loss)
    if case == "hooks":
        layers = tiny_model.config.num_hidden_layers
        assert sorted(model.hook_calls) == ["k"] * layers + ["up"] * layers


@pytest.mark.parametrize("case", ["merged", "disabled", "dora"])
def test_fallbacks_give_peft_outputs(tiny_model, grouped_calls, case):
    """The layers called one by one keep PEFT's result (merged: the merged weights; disabled: the base model)."""
    models = lora_triple(tiny_model, use_dora=case == "dora")
    reference = models["peft"]
    model = FALLBACKS[case](tiny_model) if case != "dora" else models["grouped"]
    if case == "disabled":
        reference = copy.deepcopy(tiny_model)
    batch = packed_batch(tiny_model.config.num_base_tokens)
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, reference(**batch).logits, rtol=1e-4, atol=1e-5)
    assert grouped_calls == []


def test_lora_weights_of_another_dtype_are_not_stacked(tiny_model, grouped_calls):
    """Under bf16 autocast a layer whose LoRA weights are fp16 (the others fp32) is called on its own (autocast
    casts each); the other group of the layer still shares its matmul, and the result is the ungrouped one."""
    models = {kind: to_bf16_base(lora_triple(tiny_model)[kind]) for kind in ("ungrouped", "grouped")}
    for model in models.values():
        for layer in model.get_base_model().model.layers:
            layer.self_attn.q_proj.lora_A.half()
            layer.self_attn.q_proj.lora_B.half()
    x = torch.randn(2, 5, tiny_model.config.hidden_size, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        results = {kind: layer_outputs_and_grads(model, x) for kind, model in models.items()}
    assert grouped_calls == [2]  # gate/up only
    assert worst_relative_error(results["ungrouped"], results["grouped"]) < 1e-2


def test_a_process_wide_module_hook_sees_every_lora_layer(tiny_model, grouped_calls):
    """While a ``register_module_forward_hook`` hook is registered, the layers are called one by one, so that the hook
    sees every LoRA layer and its ``lora_A``; afterwards the grouped path is back."""
    model = lora_triple(tiny_model)["grouped"]
    decoder = model.get_base_model().model.layers
    grouped_modules = [
        module
        for layer in decoder
        for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.mlp.up_proj)
        for module in (proj, proj.lora_A["default"])
    ]
    seen: list[int] = []
    handle = torch.nn.modules.module.register_module_forward_hook(lambda module, *a: seen.append(id(module)))
    batch = packed_batch(tiny_model.config.num_base_tokens)
    try:
        with torch.no_grad():
            model(**batch)
    finally:
        handle.remove()
    assert grouped_calls == [] and {id(m) for m in grouped_modules} <= set(seen)
    with torch.no_grad():
        model(**batch)
    assert len(grouped_calls) == GROUPS_PER_LAYER * tiny_model.config.num_hidden_layers
