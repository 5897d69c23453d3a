"""bf16 autocast, as the HF Trainer runs ``bf16: true`` training (found on the GPU benchmark, issue 8).

Under autocast the VQ adaptor's LayerNorm returns float32 (the fused embedding is bf16), and the audio encoders would
run their matmuls in bf16: GLM-4-Voice codes must stay fp32's and online Whisper rows must equal the precomputed ones
(``kimi-audio-lf precompute`` runs without autocast). Raw audio and precomputed inputs must give the same loss.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llamafactory_kimi_audio.models.modeling_kimi_audio import KimiAudioForCausalLM
from llamafactory_kimi_audio.models.processing_kimi_audio import KimiAudioProcessor


@pytest.fixture(scope="module")
def bf16_model_and_batch(tiny_checkpoint):
    model = KimiAudioForCausalLM.from_pretrained(tiny_checkpoint.path, dtype=torch.bfloat16)
    processor = KimiAudioProcessor.from_pretrained(tiny_checkpoint.path)
    rng = np.random.default_rng(0)
    waves = [(0.1 * rng.standard_normal(16000 * s)).astype(np.float32) for s in (3, 2)]
    batch = processor.asr_inputs(waves, [None, None], padding_side="right")
    batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    return model, batch


def test_bf16_autocast_forward_and_online_equals_precomputed(bf16_model_and_batch):
    model, batch = bf16_model_and_batch
    with torch.no_grad():
        rows = model.whisper_rows(batch["audio_input_features"], batch["audio_chunk_tokens"])
        codes = model.audio_codes_from_features(batch["semantic_input_features"], batch["semantic_frame_mask"])
    text = {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        raw = model(**batch).loss
        cached = model(**text, audio_codes=codes, whisper_features=rows).loss
        autocast_rows = model.whisper_rows(batch["audio_input_features"], batch["audio_chunk_tokens"])
        autocast_codes = model.audio_codes_from_features(
            batch["semantic_input_features"], batch["semantic_frame_mask"]
        )
    assert torch.isfinite(raw)
    torch.testing.assert_close(raw, cached, rtol=0, atol=0)
    torch.testing.assert_close(autocast_rows, rows, rtol=0, atol=0)
    assert torch.equal(autocast_codes, codes)


def test_fp32_adaptor_output_is_cast_back(bf16_model_and_batch):
    """CUDA autocast runs LayerNorm in float32, so the adaptor returns fp32 rows into a bf16 embedding (CPU autocast
    keeps bf16): emulate that with a hook; the fused embedding must still build (masked_scatter needs equal dtypes)."""
    model, batch = bf16_model_and_batch
    handle = model.model.vq_adaptor.register_forward_hook(lambda module, args, output: output.float())
    try:
        with torch.no_grad():
            loss = model(**batch).loss
    finally:
        handle.remove()
    assert torch.isfinite(loss)
