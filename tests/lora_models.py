"""LoRA on every projection of the tiny Kimi-Audio model, three ways (PEFT's forward, the fused forward one layer at
a time, grouped), and the comparisons the grouped-LoRA tests make (``tests/models/test_grouped_lora*.py``)."""

from __future__ import annotations

import copy

import torch
from peft import LoraConfig, get_peft_model

from llamafactory_kimi_audio.models import grouped_lora
from llamafactory_kimi_audio.models.fused_lora import install_fused_lora

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
GROUPS_PER_LAYER = 2  # q/k/v and gate/up


def count_grouped_calls(monkeypatch) -> list[int]:
    """From now on, how many layers each call of the grouped path serves (one entry per call)."""
    calls: list[int] = []
    real = grouped_lora.grouped_lora_forward
    monkeypatch.setattr(
        grouped_lora, "grouped_lora_forward", lambda layers, *a: calls.append(len(layers)) or real(layers, *a)
    )
    return calls


def lora_triple(model, dropout: float = 0.0, **extra) -> dict[str, torch.nn.Module]:
    """The same LoRA model (B random, so that gradients reach A) three ways: PEFT's own forward, the fused forward
    one layer at a time, the fused forward grouped. Ranks and scalings differ within each group, so that a wrong
    split of the stacked product cannot pass."""
    torch.manual_seed(0)
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        rank_pattern={"k_proj": 2, "up_proj": 6},
        alpha_pattern={"v_proj": 3, "gate_proj": 16},
        lora_dropout=dropout,
        target_modules=list(PROJECTIONS),
        init_lora_weights=False,
        **extra,
    )
    peft_model = get_peft_model(copy.deepcopy(model), config)
    ungrouped, grouped = copy.deepcopy(peft_model), copy.deepcopy(peft_model)
    assert install_fused_lora(ungrouped, grouped=False) == install_fused_lora(grouped) > 0
    return {"peft": peft_model, "ungrouped": ungrouped, "grouped": grouped}


def to_bf16_base(model):
    """LLaMA-Factory's bf16 layout: bf16 base weights, fp32 LoRA weights."""
    for name, param in model.named_parameters():
        if "lora_" not in name:
            param.data = param.data.to(torch.bfloat16)
    return model


def packed_batch(vocab: int) -> dict[str, torch.Tensor]:
    """One row of two packed utterances (5 + 7 tokens: block-diagonal causal mask, positions restarting) and a
    padded row."""
    ids = torch.randint(0, vocab, (2, 12), generator=torch.Generator().manual_seed(1))
    segment = torch.tensor([0] * 5 + [1] * 7)
    causal = torch.ones(12, 12, dtype=torch.bool).tril()
    mask = torch.stack([causal & (segment[:, None] == segment[None]), causal & (torch.arange(12) < 9)])[:, None]
    positions = torch.stack([torch.cat([torch.arange(5), torch.arange(7)]), torch.arange(12)])
    labels = ids.masked_fill(torch.arange(12)[None] >= torch.tensor([[12], [9]]), -100)
    return dict(input_ids=ids, attention_mask=mask, position_ids=positions, labels=labels)


def loss_and_grads(model, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad()
    loss = model(**batch).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def layer_outputs_and_grads(model, x: torch.Tensor, layer_index: int = 1):
    """A decoder layer's output, its input gradient and its LoRA gradients."""
    inner = model.get_base_model().model
    layer = inner.layers[layer_index]
    layer.zero_grad()
    x = x.clone().requires_grad_(True)
    positions = torch.arange(x.shape[1])[None].expand(x.shape[0], -1)
    out = layer(x, inner.rotary_emb(x, positions), None, True)
    out.float().square().sum().backward()
    grads = {n: p.grad.clone() for n, p in layer.named_parameters() if p.grad is not None}
    assert sum("lora_A" in n for n in grads) == len(PROJECTIONS)
    return out.detach(), x.grad.clone(), grads


def relative_error(have: torch.Tensor, want: torch.Tensor) -> float:
    return float(torch.linalg.norm((have - want).float()) / torch.linalg.norm(want.float()))


def worst_relative_error(want, have) -> float:
    """The largest relative (norm) error over the output, the input gradient and every LoRA gradient."""
    (out_w, dx_w, g_w), (out_h, dx_h, g_h) = want, have
    assert g_w.keys() == g_h.keys()
    pairs = [(out_w, out_h), (dx_w, dx_h)] + [(g_w[name], g_h[name]) for name in g_w]
    return max(relative_error(h, w) for w, h in pairs)
