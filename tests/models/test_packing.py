"""LLaMA-Factory's ``packing`` + ``neat_packing``: several utterances share a row, each must see only itself.

The packed batch goes through LLaMA-Factory's own packing processor and collator (block-diagonal 4-D mask, positions
restarting per utterance) and must give the loss of the same utterances in an ordinary padded batch, for both loss
reductions; the per-utterance (``sample``) mean must treat every packed utterance as its own sample.
"""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
from lf_pipeline import IGNORE, load_tiny, packed_and_plain_batches, sft_columns
from llamafactory.hparams import DataArguments

torch.set_num_threads(min(2, torch.get_num_threads()))

CUTOFF = 512
UTTERANCES = [(1.0, "one two"), (0.6, "three"), (1.4, "four five six"), (0.3, "seven")]  # seconds, transcript


@pytest.fixture(scope="module")
def setup(tiny_checkpoint, tmp_path_factory):
    directory = tmp_path_factory.mktemp("packing_wavs")
    rng = np.random.default_rng(0)
    audios = []
    for index, (seconds, _) in enumerate(UTTERANCES):
        path = str(directory / f"u{index}.wav")
        sf.write(path, (0.1 * rng.standard_normal(int(seconds * 16000))).astype(np.float32), 16000)
        audios.append(path)
    data_args = DataArguments(template="kimi_audio", cutoff_len=CUTOFF, packing=True, neat_packing=True)
    tokenizer_module, template, model = load_tiny(tiny_checkpoint.path, data_args)
    return dict(audios=audios, tm=tokenizer_module, data_args=data_args, template=template, model=model)


def packed_and_plain(setup) -> tuple[dict, dict]:
    columns = sft_columns(
        ["<audio>"] * len(UTTERANCES), [text for _, text in UTTERANCES], [[a] for a in setup["audios"]]
    )
    return packed_and_plain_batches(setup, columns)


@pytest.mark.parametrize("reduction", ["sample", "token"])
def test_packed_rows_give_the_loss_of_separate_utterances(setup, reduction, monkeypatch):
    packed, plain = packed_and_plain(setup)
    assert packed["input_ids"].shape[0] == 1, "all four utterances fit one packed row"
    assert packed["attention_mask"].dim() == 4 and "position_ids" in packed
    assert int((packed["labels"] != IGNORE).sum()) == int((plain["labels"] != IGNORE).sum())
    monkeypatch.setattr(setup["model"].config, "loss_reduction", reduction)
    with torch.no_grad():
        packed_loss = setup["model"](**packed).loss
        plain_loss = setup["model"](**plain).loss
    torch.testing.assert_close(packed_loss, plain_loss, rtol=1e-4, atol=1e-5)


def test_packed_utterances_do_not_see_each_other(setup):
    """The same row without its block-diagonal mask (plain causal attention over the whole row) changes the loss."""
    packed, plain = packed_and_plain(setup)
    leaky = dict(packed, attention_mask=torch.ones_like(packed["input_ids"]))
    with torch.no_grad():
        isolated = setup["model"](**packed).loss.item()
        leaked = setup["model"](**leaky).loss.item()
        separate = setup["model"](**plain).loss.item()
    # a random tiny model attends weakly, so the leak is small; still 100x what isolation leaves
    assert abs(leaked - separate) > 100 * abs(isolated - separate) and abs(leaked - separate) > 1e-3


def test_a_packed_mask_without_position_ids_is_refused(setup):
    packed, _ = packed_and_plain(setup)
    packed.pop("position_ids")
    with pytest.raises(ValueError, match="position_ids"):
        setup["model"](**packed)


def test_packing_without_neat_packing_warns(setup, monkeypatch):
    """Plain ``packing: true`` (2-D mask, positions restarting per utterance) trains with cross-attention: say so."""
    from llamafactory_kimi_audio.models import masks

    packed, plain = packed_and_plain(setup)
    warnings: list[str] = []
    monkeypatch.setattr(masks.logger, "warning_once", warnings.append)
    model = setup["model"]
    model.train()
    try:
        with torch.no_grad():
            model(**dict(packed, attention_mask=torch.ones_like(packed["input_ids"])))
            assert len(warnings) == 1 and "neat_packing" in warnings[0]
            model(**packed)  # neat packing: the block mask is there
            model(**plain)  # ordinary batches: positions never restart
    finally:
        model.eval()
    assert len(warnings) == 1


def reference_varlen(q, k, v, cu_seqlens, max_len):
    """What variable-length causal attention computes, sequence by sequence ([T, H, D] tokens, GQA by groups)."""
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    out = torch.empty_like(q)
    bounds = cu_seqlens.tolist()
    assert bounds[0] == 0 and bounds[-1] == q.shape[0] and max(b - a for a, b in zip(bounds, bounds[1:])) <= max_len
    for a, b in zip(bounds, bounds[1:]):
        pieces = [x[a:b].transpose(0, 1) for x in (q, k, v)]
        out[a:b] = torch.nn.functional.scaled_dot_product_attention(*pieces, is_causal=True).transpose(0, 1)
    return out


@pytest.mark.parametrize("native_gqa", [True, False], ids=["gqa", "kv-repeated"])
def test_packed_rows_run_as_one_sequence_per_utterance(setup, monkeypatch, native_gqa):
    """The variable-length path (GPU + bf16 only; here with a reference kernel) splits packed rows into their
    utterances, plus one sequence for each row's pad tail, and gives the dense-mask loss."""
    from llamafactory_kimi_audio.models import modeling_kimi_audio, packed_attention

    packed, plain = packed_and_plain(setup)
    model = setup["model"]
    with torch.no_grad():
        dense = model(**packed).loss
        plain_loss = model(**plain).loss
    calls: list[torch.Tensor] = []
    monkeypatch.setattr(modeling_kimi_audio, "varlen_applies", lambda hidden: True)
    monkeypatch.setattr(packed_attention, "call_varlen", recording(reference_varlen, calls))
    monkeypatch.setattr(packed_attention, "native_gqa", lambda: native_gqa)  # else K/V heads repeated
    with torch.no_grad():
        varlen = model(**packed).loss
    assert len(calls) == len(model.model.layers)
    lengths = calls[0].diff().tolist()
    real = int((torch.diagonal(packed["attention_mask"][:, 0], dim1=-2, dim2=-1) == 0).sum())
    row = packed["input_ids"].shape[1]
    utterances = len(UTTERANCES)
    assert len(lengths) == utterances + (real < row) and sum(lengths) == row and sum(lengths[:utterances]) == real
    torch.testing.assert_close(varlen, dense, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(varlen, plain_loss, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="variable-length FlashAttention runs on CUDA only")
@pytest.mark.parametrize("mode", ["bf16", "fp32-autocast", "bf16-checkpointing"])
def test_varlen_attention_matches_the_dense_mask_on_cuda(setup, monkeypatch, mode):
    """On a GPU: the real kernel against the dense-mask path, loss and gradients, for a bf16 model, an fp32 model
    under bf16 autocast (the Trainer's bf16 without a bf16 load) and with gradient checkpointing in training."""
    import contextlib

    from llamafactory_kimi_audio.models import packed_attention

    if packed_attention.varlen_attn is None:
        pytest.skip("torch.nn.attention.varlen needs PyTorch >= 2.9")
    packed, _ = packed_and_plain(setup)
    dtype = torch.float32 if mode == "fp32-autocast" else torch.bfloat16
    model = setup["model"].to("cuda", dtype)
    batch = {key: value.cuda() if torch.is_tensor(value) else value for key, value in packed.items()}
    batch["attention_mask"] = batch["attention_mask"].to(dtype)
    for parameter in model.model.layers.parameters():  # the fixture's model is loaded for inference: frozen
        monkeypatch.setattr(parameter, "requires_grad", True)
    if mode == "bf16-checkpointing":
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
    autocast = torch.autocast("cuda", torch.bfloat16) if mode == "fp32-autocast" else contextlib.nullcontext()
    calls: list[torch.Tensor] = []
    monkeypatch.setattr(packed_attention, "call_varlen", recording(packed_attention.call_varlen, calls))

    def loss_and_grads():
        model.zero_grad()
        with autocast:
            loss = model(**batch).loss
        loss.backward()
        return loss.detach().float(), torch.cat([p.grad.float().flatten() for p in model.model.layers.parameters()])

    try:
        varlen = loss_and_grads()
        assert len(calls) >= len(model.model.layers)  # (checkpointing runs each layer's forward twice)
        monkeypatch.setattr(model.config, "use_varlen_attention", False)
        seen = len(calls)
        dense = loss_and_grads()
        assert len(calls) == seen
    finally:
        model.zero_grad()
        model.gradient_checkpointing_disable()
        model.eval()
        model.to("cpu", torch.float32)
    torch.testing.assert_close(varlen[0], dense[0], rtol=2e-2, atol=2e-2)
    assert (varlen[1] - dense[1]).norm() <= 0.05 * dense[1].norm()


def recording(kernel, calls: list):
    """``kernel`` (``call_varlen``'s signature), noting the ``cu_seqlens`` of every call in ``calls``."""

    def wrapper(q, k, v, cu_seqlens, max_len):
        calls.append(cu_seqlens)
        return kernel(q, k, v, cu_seqlens, max_len)

    return wrapper
