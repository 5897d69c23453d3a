"""The forward pass of ``KimiAudioForCausalLM`` equals the spec references of ``spec_reference`` (tiny
checkpoint, CPU): the single-stream layout against the official two streams, embedding fusion, decoder logits and
text loss against a stock Qwen2; Whisper rows against transformers' ``WhisperEncoder`` (also for audio longer than
one 30 s chunk); the MIMO audio head forking after the configured layer; and the error that names both numbers when
the audio frames in the ids and the audio inputs disagree.
"""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from spec_reference import (
    INSTRUCTION,
    SR,
    frames,
    official_text_loss,
    qwen2_reference,
    reference_embeddings,
    reference_logits,
    reference_whisper_rows,
    speechy,
    training_sample,
)
from transformers import Qwen2ForCausalLM, WhisperFeatureExtractor


@pytest.fixture(scope="module")
def text_ref(model) -> Qwen2ForCausalLM:
    n = model.config.num_hidden_layers
    return qwen2_reference(model, [f"model.layers.{i}" for i in range(n)], "model.norm.weight", "lm_head.weight")


def test_layout_fusion_decoder_and_loss_match_official_two_streams(model, layout, ids, tik, text_ref):
    rng = np.random.default_rng(0)
    n_codes, transcript = 7, "the quick brown fox"
    (audio, text, cont, mx), layout_ids, labels, codes = training_sample(layout, ids, tik, rng, n_codes, transcript)
    n_i, n_a = len(tik.encode_ordinary(INSTRUCTION)), len(tik.encode_ordinary(transcript))
    assert audio.shape[0] == n_i + n_codes + n_a + 8  # spec §5.3
    length = (
        audio.shape[0] - 1
    )  # the LayoutEncoder leaves the final msg_end to the next turn (nothing predicts from it)
    assert layout_ids.shape[0] == length

    # Every official row holds blank in exactly one stream; the single stream carries the other one.
    assert bool(((audio == ids.blank) ^ (text == ids.blank)).all())
    expected = torch.where(audio == ids.blank, text, torch.where(cont, torch.full_like(audio, ids.placeholder), audio))
    assert layout_ids.tolist() == expected[:length].tolist()
    # Split rule: controls / frames → audio stream, everything else → text stream; frames get their codes back.
    in_audio = torch.tensor([t in ids.audio_stream_controls or t == ids.placeholder for t in layout_ids.tolist()])
    split_audio = torch.where(in_audio, layout_ids, ids.blank)
    split_audio[layout_ids == ids.placeholder] = codes + ids.offset
    split_text = torch.where(in_audio, ids.blank, layout_ids)
    assert split_audio.tolist() == audio[:length].tolist()
    assert split_text.tolist() == text[:length].tolist()
    assert (layout_ids == ids.placeholder).tolist() == cont[:length].tolist()
    # Labels: the text stream at transcript + text_eos rows, -100 elsewhere.
    assert labels.tolist() == torch.where(mx, text, -100)[:length].tolist()
    assert int((labels != -100).sum()) == n_a + 1

    rows = torch.randn(n_codes, model.config.kimia_adaptor_input_dim, generator=torch.Generator().manual_seed(0))
    state = model.state_dict()
    ref_embeds = reference_embeddings(state, model.config, ids, audio, text, cont, rows)
    audio_kwargs = {"audio_codes": codes, "whisper_features": rows}
    with torch.no_grad():
        fused = model.fuse_embeddings(layout_ids[None], **audio_kwargs)[0]
        torch.testing.assert_close(fused, ref_embeds[:length], rtol=0, atol=1e-6)
        # Official JSONL style (codes already in the id stream instead of placeholders) fuses identically.
        official_style = torch.where(cont[:length], audio[:length], layout_ids)
        fused_codes = model.fuse_embeddings(official_style[None], whisper_features=rows)[0]
        torch.testing.assert_close(fused_codes, ref_embeds[:length], rtol=0, atol=1e-6)

        logits = model(input_ids=layout_ids[None], **audio_kwargs).logits[0]
        decoder_out, _ = model.model(ref_embeds[None])
        decoder_logits = model.lm_head(decoder_out.last_hidden_state)[0]
        qwen_logits = reference_logits(text_ref, ref_embeds)
        torch.testing.assert_close(logits, decoder_logits[:length], rtol=0, atol=1e-5)
        torch.testing.assert_close(decoder_logits, qwen_logits, rtol=0, atol=1e-4)

        loss = model(input_ids=layout_ids[None], labels=labels[None], **audio_kwargs).loss
    expected_loss = official_text_loss(qwen_logits, text, mx, ids.pad)
    torch.testing.assert_close(loss, expected_loss, rtol=0, atol=1e-5)
    assert expected_loss.item() > 1.0  # a random model: far from trivially zero


def test_whisper_rows_match_reference_encoder(model, processor, whisper_ref, ckpt):
    wave = speechy(int(1.3 * SR), seed=3)
    inputs = processor.audio_inputs([wave], with_semantic=False)
    mel = WhisperFeatureExtractor(feature_size=128)(wave, sampling_rate=SR, padding="max_length", return_tensors="pt")
    torch.testing.assert_close(inputs["audio_input_features"], mel.input_features)
    assert inputs["audio_chunk_tokens"].tolist() == [frames(len(wave))]
    # The encoder holds the model.encoder.* tensors of whisper-large-v3/model.safetensors, on a real device.
    file_state = load_file(os.path.join(ckpt, "whisper-large-v3", "model.safetensors"))
    for key, value in model.whisper_encoder.state_dict().items():
        assert value.device.type == "cpu", key
        assert torch.equal(value, file_state["model.encoder." + key]), key
    with torch.no_grad():
        rows = model.whisper_rows(inputs["audio_input_features"], inputs["audio_chunk_tokens"])
    torch.testing.assert_close(rows, reference_whisper_rows(whisper_ref, wave), rtol=1e-5, atol=1e-5)


def test_mimo_audio_logits_fork_after_configured_layer(model, layout, ids, tik, text_ref):
    rng = np.random.default_rng(11)
    (audio, text, cont, _), layout_ids, _, codes = training_sample(layout, ids, tik, rng, 6, "four five six")
    rows = torch.randn(6, model.config.kimia_adaptor_input_dim, generator=torch.Generator().manual_seed(11))
    n = layout_ids.shape[0]
    kwargs = {"input_ids": layout_ids[None], "audio_codes": codes, "whisper_features": rows}
    with torch.no_grad():
        plain = model(**kwargs)
        both = model(**kwargs, return_audio_logits=True)
    assert plain.audio_logits is None
    assert torch.equal(both.logits, plain.logits)
    assert both.audio_logits.shape == plain.logits.shape

    fork = model.config.kimia_mimo_transformer_from_layer_index
    assert 0 < fork < model.config.num_hidden_layers - 1
    layers = [f"model.layers.{i}" for i in range(fork + 1)]
    layers += [f"model.mimo_layers.{j}" for j in range(model.config.kimia_mimo_layers)]
    mimo_ref = qwen2_reference(model, layers, "model.mimo_norm.weight", "mimo_output.weight")
    embeds = reference_embeddings(model.state_dict(), model.config, ids, audio, text, cont, rows)[:n]
    torch.testing.assert_close(both.audio_logits[0], reference_logits(mimo_ref, embeds), rtol=0, atol=1e-4)
    torch.testing.assert_close(both.logits[0], reference_logits(text_ref, embeds), rtol=0, atol=1e-4)
    # forking one layer later would be a different function: the comparison is sharp
    shifted = [f"model.layers.{i}" for i in range(fork + 2)] + layers[fork + 1 :]
    wrong = reference_logits(qwen2_reference(model, shifted, "model.mimo_norm.weight", "mimo_output.weight"), embeds)
    assert not torch.allclose(both.audio_logits[0], wrong, atol=1e-3)


def test_audio_longer_than_30_seconds(model, processor, layout, whisper_ref):
    wave = speechy(31 * SR, seed=31)  # 388 frames
    audio = processor.audio_inputs([wave])
    assert audio["audio_chunk_tokens"].tolist() == [375, 13]  # 30 s chunk + 1 s chunk (spec §3.2)
    assert audio["audio_input_features"].shape == (2, 128, 3000)
    input_ids = torch.tensor([layout.asr_prompt(388, INSTRUCTION)])
    rows = reference_whisper_rows(whisper_ref, wave)
    assert rows.shape == (388, model.config.kimia_adaptor_input_dim)
    semantic = {k: audio[k] for k in ("semantic_input_features", "semantic_frame_mask")}
    with torch.no_grad():
        logits = model(input_ids=input_ids, **audio).logits  # both chunks encoded inside the forward
        with_reference_rows = model(input_ids=input_ids, whisper_features=rows, **semantic).logits
    assert logits.shape == (1, input_ids.shape[1], model.config.vocab_size)
    assert bool(torch.isfinite(logits).all())
    torch.testing.assert_close(logits, with_reference_rows, rtol=0, atol=1e-4)


def test_audio_token_count_mismatch_names_both_numbers(model, processor, layout):
    def check(match_numbers, **kwargs):
        with pytest.raises(ValueError) as info, torch.no_grad():
            model(**kwargs)
        for number in match_numbers:
            assert re.search(rf"\b{number}\b", str(info.value)), (number, str(info.value))

    ids_13 = torch.tensor([layout.asr_prompt(13, INSTRUCTION)])
    rows_12 = torch.randn(12, model.config.kimia_adaptor_input_dim)
    check((13, 12), input_ids=ids_13, audio_codes=torch.zeros(12, dtype=torch.long), whisper_features=rows_12)
    wave = speechy(int(0.9 * SR), seed=1)  # 12 frames
    check((13, 12), input_ids=ids_13, **processor.audio_inputs([wave]))
    with pytest.raises(ValueError, match="13"), torch.no_grad():
        model(input_ids=ids_13)  # frames in the ids, no audio at all
