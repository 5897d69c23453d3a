"""``KimiAudioForCausalLM`` in bf16 (tiny checkpoint, CPU): forward, loss (fp32) and embedding fusion against the
spec formula computed in bf16, with the GLM-4-Voice tokenizer left in fp32; and the √2 of the fusion computed in the
dtype of the adaptor output (fp32, pure bf16, bf16 autocast), as the original does.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from spec_reference import reference_embeddings, right_padded_training_batch, training_sample

BF16_SQRT2 = 1.4140625  # torch.sqrt(torch.tensor(2.0, dtype=torch.bfloat16))
FP32_SQRT2 = 1.4142135381698608  # torch.sqrt(torch.tensor(2.0)): math.sqrt(2) rounded to fp32


def test_bf16_forward_loss_and_fusion(model, processor, layout, ids, tik, waves):
    m = copy.deepcopy(model).to(torch.bfloat16)
    glm_dtypes = {p.dtype for p in m.semantic_tokenizer(torch.device("cpu")).parameters()}
    assert glm_dtypes == {torch.float32}  # .to(bf16) does not reach the GLM-4-Voice tokenizer (it must run in fp32)
    samples, batch = right_padded_training_batch(layout, waves[:2], ids.pad)
    audio = processor.audio_inputs(waves[:2])
    with torch.no_grad():
        out = m(**batch, **audio)
        logits = m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **audio).logits
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss) and out.loss.item() > 0
    assert logits.dtype == torch.bfloat16 and bool(torch.isfinite(logits).all())

    # Fusion in bf16 against the spec formula computed in bf16.
    rng = np.random.default_rng(4)
    (audio_s, text_s, cont_s, _), layout_ids, _, codes = training_sample(layout, ids, tik, rng, 9, "blue green")
    rows = torch.randn(9, m.config.kimia_adaptor_input_dim, generator=torch.Generator().manual_seed(9))
    n = layout_ids.shape[0]
    with torch.no_grad():
        fused = m.fuse_embeddings(layout_ids[None], audio_codes=codes, whisper_features=rows)[0]
        ref = reference_embeddings(m.state_dict(), m.config, ids, audio_s, text_s, cont_s, rows)[:n]
    assert fused.dtype == torch.bfloat16
    torch.testing.assert_close(fused, ref, rtol=1.6e-2, atol=1e-2)


@pytest.mark.parametrize("regime", ["fp32", "bf16", "bf16_autocast"])
def test_sqrt2_is_computed_in_the_dtype_of_the_adaptor_output(model, layout, ids, tik, regime):
    """Spec §3.3: the original scales by ``torch.sqrt(torch.tensor(2.0, dtype=<adaptor output dtype>))``: bf16's
    1.4140625 in pure bf16; fp32 √2 for fp32 weights and under bf16 autocast, where CUDA runs the adaptor's LayerNorm
    in fp32 (emulated by a hook: CPU autocast keeps LayerNorm in bf16). A zero adaptor output (LayerNorm gain and bias
    0) isolates the scale, so the hand computation is exact: ``E[code] · √2 + E[blank]`` in the original's dtypes."""
    m = copy.deepcopy(model)
    if regime != "fp32":
        m.to(torch.bfloat16)
    m.model.vq_adaptor.layers[4].weight.data.zero_()
    m.model.vq_adaptor.layers[4].bias.data.zero_()
    rng = np.random.default_rng(5)
    (_, _, cont, _), layout_ids, _, codes = training_sample(layout, ids, tik, rng, 6, "red blue")
    rows = torch.randn(6, m.config.kimia_adaptor_input_dim, generator=torch.Generator().manual_seed(5))
    hook = m.model.vq_adaptor.register_forward_hook(lambda module, args, output: output.float())
    if regime != "bf16_autocast":
        hook.remove()
    with torch.no_grad():
        fused = m.fuse_embeddings(layout_ids[None], audio_codes=codes, whisper_features=rows)[0]
    hook.remove()
    frames_only = fused[cont[: layout_ids.shape[0]]]
    embed = m.model.embed_tokens.weight.detach()
    code_emb, blank_emb = embed[codes + ids.offset], embed[ids.blank]

    def by_hand(sqrt2: float, dtype: torch.dtype) -> torch.Tensor:
        scaled = code_emb.to(dtype) * torch.tensor(sqrt2, dtype=dtype)
        return (scaled + blank_emb).to(embed.dtype)

    expected, other = {
        "fp32": (by_hand(FP32_SQRT2, torch.float32), by_hand(BF16_SQRT2, torch.float32)),
        "bf16": (by_hand(BF16_SQRT2, torch.bfloat16), by_hand(FP32_SQRT2, torch.float32)),
        "bf16_autocast": (by_hand(FP32_SQRT2, torch.float32), by_hand(BF16_SQRT2, torch.bfloat16)),
    }[regime]
    assert frames_only.dtype == embed.dtype
    assert torch.equal(frames_only, expected)
    assert not torch.equal(frames_only, other)  # the test tells the two constants (and roundings) apart
