"""KimiAudioForCausalLM against independent references written from the architecture spec (tiny checkpoint, CPU).

References used here never call the code under test:

- the official two-stream layout is built row by row from the table of spec §5.3, with token ids taken from the
  spec's numbering (§4) shifted onto the tiny base vocabulary, and text tokens from ``tiktoken`` + the spec regex;
- embeddings follow spec §3.3 literally: a zero-padded ``[L, 4·d]`` Whisper buffer filled between media markers, the
  VQ adaptor written with ``F.linear``/``F.silu``/``F.layer_norm`` from the checkpoint tensors, masked, then
  ``(E[a] + adaptor) · √2`` (√2 in the adaptor output's dtype) at continuous positions and ``+ E[text]`` everywhere;
- the decoder is a stock ``transformers.Qwen2ForCausalLM`` holding the same tensors (spec §2.1: identical names);
  the MIMO head is a stock Qwen2 whose layers are main ``0..k`` followed by the MIMO layers (spec §3.4);
- Whisper rows use transformers' ``WhisperEncoder`` loaded from ``whisper-large-v3/model.safetensors`` (spec §3.2);
- the loss is ``Σ CE·mask / (Σ mask + 1e-4)`` over the shifted text stream (spec §5.4); greedy decoding is the loop
  of spec §7 with full recomputation.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import shutil
import sys
from dataclasses import dataclass

import numpy as np
import pytest
import tiktoken
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tiktoken.load import load_tiktoken_bpe
from transformers import Qwen2Config, Qwen2ForCausalLM, WhisperConfig, WhisperFeatureExtractor
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from llamafactory_kimi_audio.errors import ModelError
from llamafactory_kimi_audio.models import attention
from llamafactory_kimi_audio.models.configuration_kimi_audio import KimiAudioConfig
from llamafactory_kimi_audio.models.layout import LayoutEncoder, audio_marker
from llamafactory_kimi_audio.models.modeling_kimi_audio import KimiAudioForCausalLM
from llamafactory_kimi_audio.models.processing_kimi_audio import KimiAudioProcessor

# ------------------------------------------------------------------------------------------ spec constants (§4)
OFFICIAL_BASE = 151643  # num_base_tokens of the real tiktoken.model
OFFICIAL_AUDIO_OFFSET = 152064  # kimia_token_offset: GLM-4-Voice code c has id c + 152064
OFFICIAL_IDS = {
    "msg_end": 151645,
    "media_begin": 151661,
    "placeholder": 151662,  # <|reserved_token_12|>: the package's single-stream audio-frame placeholder
    "media_end": 151663,
    "blank": 151666,
    "text_eos": 151667,
    "user_start": 151670,
    "assistant_start": 151671,
    "speech_ct": 151675,
    "pad": 152063,
}
SPEC_PAT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
BF16_SQRT2 = 1.4140625  # torch.sqrt(torch.tensor(2.0, dtype=torch.bfloat16))
FP32_SQRT2 = 1.4142135381698608  # torch.sqrt(torch.tensor(2.0)): math.sqrt(2) rounded to fp32
INSTRUCTION = "Please transcribe the spoken content into written text."
SR = 16000


@dataclass(frozen=True)
class SpecIds:
    msg_end: int
    media_begin: int
    placeholder: int
    media_end: int
    blank: int
    text_eos: int
    user_start: int
    assistant_start: int
    speech_ct: int
    pad: int
    offset: int
    num_base: int

    @classmethod
    def for_base(cls, num_base: int) -> SpecIds:
        shift = num_base - OFFICIAL_BASE
        return cls(
            **{k: v + shift for k, v in OFFICIAL_IDS.items()}, offset=OFFICIAL_AUDIO_OFFSET + shift, num_base=num_base
        )

    @property
    def audio_stream_controls(self) -> set[int]:
        """Ids that spec §5.3 puts in the audio stream (besides the semantic codes)."""
        return {self.user_start, self.assistant_start, self.media_begin, self.media_end, self.speech_ct, self.msg_end}


def speechy(num_samples: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(num_samples) / SR
    f0 = 110 + 90 * rng.random()
    x = sum(np.sin(2 * np.pi * f0 * h * t * (1 + 0.2 * np.sin(2 * np.pi * 0.7 * t))) / h for h in range(1, 5))
    x = x * (1.2 + np.sin(2 * np.pi * (0.5 + rng.random()) * t)) + 0.05 * rng.standard_normal(num_samples)
    return (0.2 * x / np.abs(x).max()).astype(np.float32)


def frames(num_samples: int) -> int:
    return (num_samples - 1) // 1280 + 1  # spec §3.2 token_len


# ------------------------------------------------------------------------------------------------ references
def official_streams(ids: SpecIds, instruction: list[int], codes: list[int], transcript: list[int] | None = None):
    """Rows of spec §5.3: (audio stream, text stream, is_continuous, text-loss mask before the shift)."""
    b = ids.blank
    rows = [(ids.user_start, b, False, False)]
    rows += [(b, t, False, False) for t in instruction]
    rows += [(ids.media_begin, b, False, False)]
    rows += [(c + ids.offset, b, True, False) for c in codes]
    rows += [(ids.media_end, b, False, False), (ids.speech_ct, b, False, False)]
    rows += [(ids.msg_end, b, False, False), (ids.assistant_start, b, False, False)]
    if transcript is not None:
        rows += [(b, t, False, True) for t in transcript]
        rows += [(b, ids.text_eos, False, True), (ids.msg_end, b, False, False)]
    audio, text, cont, loss = zip(*rows)
    return torch.tensor(audio), torch.tensor(text), torch.tensor(cont), torch.tensor(loss)


def reference_embeddings(state, config, ids: SpecIds, audio, text, is_cont, whisper_rows, sqrt2=None):
    """Spec §3.3, ``inputs_embeds is None`` branch, one sample."""
    embed = state["model.embed_tokens.weight"]
    dtype = embed.dtype
    length = audio.shape[0]
    expanded = torch.zeros(length, whisper_rows.shape[-1], dtype=dtype)
    starts = (audio == ids.media_begin).nonzero().flatten().tolist()
    ends = (audio == ids.media_end).nonzero().flatten().tolist()
    used = 0
    for start, end in zip(starts, ends):
        expanded[start + 1 : end] = whisper_rows[used : used + end - start - 1].to(dtype)
        used += end - start - 1
    assert used == whisper_rows.shape[0] == int(is_cont.sum())
    a = "model.vq_adaptor.layers."
    h = F.silu(F.linear(expanded, state[a + "0.weight"], state[a + "0.bias"]))
    h = F.linear(h, state[a + "3.weight"], state[a + "3.bias"])
    h = F.layer_norm(h, (h.shape[-1],), state[a + "4.weight"], state[a + "4.bias"], eps=config.rms_norm_eps)
    w = h * is_cont[:, None]
    sqrt2 = torch.sqrt(torch.tensor(2.0, dtype=w.dtype)) if sqrt2 is None else sqrt2  # in the adaptor output's dtype
    audio_emb = embed[audio]
    audio_emb = torch.where(is_cont[:, None], (audio_emb + w) * sqrt2, audio_emb)
    return audio_emb + embed[text]


def official_text_loss(text_logits, text, text_mask, pad: int) -> torch.Tensor:
    """Spec §5.4: labels = text stream shifted by one (pad at the end), mask shifted the same way."""
    labels = torch.cat([text[1:], torch.tensor([pad])])
    mask = torch.cat([text_mask[1:], torch.tensor([False])])
    ce = F.cross_entropy(text_logits.float(), labels, reduction="none")
    return (ce * mask).sum() / (mask.sum() + 1e-4)


def hf_per_sample_loss(logits, labels) -> torch.Tensor:
    """The same per-utterance mean for LLaMA-Factory style labels (-100 outside the response)."""
    shift_logits, shift_labels = logits[:-1].float(), labels[1:]
    keep = shift_labels != -100
    ce = F.cross_entropy(shift_logits[keep], shift_labels[keep], reduction="sum")
    return ce / (keep.sum() + 1e-4)


def qwen2_reference(model, layers: list[str], norm: str, head: str) -> Qwen2ForCausalLM:
    """A stock Qwen2ForCausalLM holding the Kimi tensors (embed + the given layer prefixes + norm + head)."""
    c = model.config
    qcfg = Qwen2Config(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
        num_hidden_layers=len(layers), num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads, max_position_embeddings=c.max_position_embeddings,
        rms_norm_eps=c.rms_norm_eps, rope_theta=c.rope_theta, tie_word_embeddings=False, hidden_act="silu",
        attention_dropout=0.0, use_sliding_window=False,
    )  # fmt: skip
    qcfg._attn_implementation = "eager"
    reference = Qwen2ForCausalLM(qcfg).eval()
    state = model.state_dict()
    mapped = {
        "model.embed_tokens.weight": state["model.embed_tokens.weight"],
        "model.norm.weight": state[norm],
        "lm_head.weight": state[head],
    }
    for index, prefix in enumerate(layers):
        for key, value in state.items():
            if key.startswith(prefix + "."):
                mapped[f"model.layers.{index}.{key[len(prefix) + 1 :]}"] = value
    reference.load_state_dict(mapped, strict=True)
    return reference


def reference_logits(reference: Qwen2ForCausalLM, embeds: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return reference(inputs_embeds=embeds[None]).logits[0]


# ------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def ids(ckpt) -> SpecIds:
    ranks = load_tiktoken_bpe(os.path.join(ckpt, "tiktoken.model"))
    with open(os.path.join(ckpt, "config.json"), encoding="utf-8") as f:
        assert json.load(f)["num_base_tokens"] == len(ranks)
    return SpecIds.for_base(len(ranks))


@pytest.fixture(scope="module")
def tik(ckpt) -> tiktoken.Encoding:
    ranks = load_tiktoken_bpe(os.path.join(ckpt, "tiktoken.model"))
    return tiktoken.Encoding(name="kimi_spec", pat_str=SPEC_PAT, mergeable_ranks=ranks, special_tokens={})


@pytest.fixture(scope="module")
def model(ckpt) -> KimiAudioForCausalLM:
    """fp32 tiny model; every 1-D tensor (biases, norm weights) perturbed so that none of them is a no-op."""
    m = KimiAudioForCausalLM.from_pretrained(ckpt).eval()
    generator = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for name, param in sorted(m.named_parameters()):
            if param.ndim == 1 and not name.startswith("whisper_encoder."):
                param.add_(torch.randn(param.shape, generator=generator) * 0.2)
    m.semantic_tokenizer(torch.device("cpu"))  # the lazily loaded GLM-4-Voice encoder must stay outside the model
    return m


@pytest.fixture(scope="module")
def processor(ckpt) -> KimiAudioProcessor:
    return KimiAudioProcessor.from_pretrained(ckpt)


@pytest.fixture(scope="module")
def layout(processor) -> LayoutEncoder:
    return LayoutEncoder(processor.tokenizer)


@pytest.fixture(scope="module")
def text_ref(model) -> Qwen2ForCausalLM:
    n = model.config.num_hidden_layers
    return qwen2_reference(model, [f"model.layers.{i}" for i in range(n)], "model.norm.weight", "lm_head.weight")


@pytest.fixture(scope="module")
def whisper_ref(ckpt) -> WhisperEncoder:
    directory = os.path.join(ckpt, "whisper-large-v3")
    with open(os.path.join(directory, "config.json"), encoding="utf-8") as f:
        wcfg = WhisperConfig(**json.load(f))
    wcfg._attn_implementation = "eager"
    encoder = WhisperEncoder(wcfg).eval()
    prefix = "model.encoder."
    state = {k[len(prefix) :]: v for k, v in load_file(os.path.join(directory, "model.safetensors")).items()
             if k.startswith(prefix)}  # fmt: skip
    encoder.load_state_dict(state, strict=True)
    return encoder


def reference_whisper_rows(whisper_ref: WhisperEncoder, wave: np.ndarray) -> torch.Tensor:
    """Spec §3.2: 30 s chunks, log-mel padded to 30 s, encoder, first 4·T frames, 4 frames → one 4·d row."""
    extractor = WhisperFeatureExtractor(feature_size=128)
    rows = []
    for start in range(0, len(wave), 480000):
        chunk = wave[start : start + 480000]
        mel = extractor(chunk, sampling_rate=SR, padding="max_length", return_tensors="pt").input_features
        with torch.no_grad():
            hidden = whisper_ref(mel).last_hidden_state
        t = frames(len(chunk))
        rows.append(hidden[0, : 4 * t].reshape(t, -1))
    return torch.cat(rows)


@pytest.fixture(scope="module")
def glm(ckpt):
    from llamafactory_kimi_audio.models.glm4_voice import load_glm4_voice_tokenizer

    return load_glm4_voice_tokenizer(os.path.join(ckpt, "glm-4-voice-tokenizer"))


def training_sample(layout, ids, tik, rng, num_codes: int, transcript: str):
    """Official streams + single-stream LayoutEncoder ids/labels for one ASR sample with random audio inputs."""
    codes = rng.integers(0, 256, size=num_codes).tolist()
    instr, trans = tik.encode_ordinary(INSTRUCTION), tik.encode_ordinary(transcript)
    streams = official_streams(ids, instr, codes, trans)
    layout_ids, labels = layout.conversation(
        [("user", INSTRUCTION + audio_marker(num_codes)), ("assistant", transcript)]
    )
    return streams, torch.tensor(layout_ids), torch.tensor(labels), torch.tensor(codes)


# ============================================================================== 1. layout, fusion, decoder, loss
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


# ================================================================================== 2. padded batch = per sample
WAVE_SECONDS = (0.3, 1.1, 2.0)
TRANSCRIPTS = ("red", "one two three four", "the quick brown fox jumps")


@pytest.fixture(scope="module")
def waves():
    return [speechy(int(s * SR) + 37 * i, seed=10 + i) for i, s in enumerate(WAVE_SECONDS)]


def right_padded_training_batch(layout, waves, pad_id: int):
    samples = [
        layout.conversation([("user", INSTRUCTION + audio_marker(frames(len(w)))), ("assistant", t)])
        for w, t in zip(waves, TRANSCRIPTS)
    ]
    width = max(len(s[0]) for s in samples)
    input_ids = torch.full((len(samples), width), pad_id)
    labels = torch.full((len(samples), width), -100)
    mask = torch.zeros((len(samples), width), dtype=torch.long)
    for row, (sample_ids, sample_labels) in enumerate(samples):
        input_ids[row, : len(sample_ids)] = torch.tensor(sample_ids)
        labels[row, : len(sample_ids)] = torch.tensor(sample_labels)
        mask[row, : len(sample_ids)] = 1
    return samples, {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


@pytest.fixture(scope="module")
def audio_case(model, processor, waves):
    """Processor inputs of the 3-clip batch, and Whisper rows / semantic codes computed once, batched and per clip."""
    batch_audio = processor.audio_inputs(waves)
    with torch.no_grad():
        rows = model.whisper_rows(batch_audio["audio_input_features"], batch_audio["audio_chunk_tokens"])
        codes = model.audio_codes_from_features(
            batch_audio["semantic_input_features"], batch_audio["semantic_frame_mask"]
        )
        singles = []
        for wave in waves:
            single = processor.audio_inputs([wave])
            whisper = model.whisper_rows(single["audio_input_features"], single["audio_chunk_tokens"])
            codes_i = model.audio_codes_from_features(single["semantic_input_features"], single["semantic_frame_mask"])
            singles.append({"whisper_features": whisper, "audio_codes": codes_i})
    # batching the encoders changes nothing per clip
    torch.testing.assert_close(rows, torch.cat([s["whisper_features"] for s in singles]), rtol=0, atol=1e-5)
    assert torch.equal(codes, torch.cat([s["audio_codes"] for s in singles]))
    assert rows.shape[0] == codes.shape[0] == sum(frames(len(w)) for w in waves)
    return {
        "batch_audio": batch_audio,
        "precomputed": {"whisper_features": rows, "audio_codes": codes},
        "singles": singles,
    }


def test_right_padded_training_batch_equals_per_sample(model, layout, ids, waves, audio_case):
    samples, batch = right_padded_training_batch(layout, waves, ids.pad)
    assert len({len(s[0]) for s in samples}) == 3
    no_labels = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        batch_loss = model(**batch, **audio_case["batch_audio"]).loss  # processor inputs → encoders inside forward
        batch_logits = model(**no_labels, **audio_case["precomputed"]).logits
        singles = []
        for row, ((sample_ids, sample_labels), audio) in enumerate(zip(samples, audio_case["singles"])):
            sample_ids, sample_labels = torch.tensor([sample_ids]), torch.tensor([sample_labels])
            single_loss = model(input_ids=sample_ids, labels=sample_labels, **audio).loss
            logits = model(input_ids=sample_ids, **audio).logits[0]
            n = sample_ids.shape[1]
            torch.testing.assert_close(batch_logits[row, :n], logits, rtol=0, atol=1e-5)
            loss_from_batch = hf_per_sample_loss(batch_logits[row, :n], sample_labels[0])
            torch.testing.assert_close(loss_from_batch, single_loss, rtol=0, atol=1e-5)
            singles.append(single_loss)
    # Official normalisation: each utterance is a per-token mean; the batch averages utterances.
    torch.testing.assert_close(batch_loss, torch.stack(singles).mean(), rtol=0, atol=1e-5)


def test_left_padded_generation_batch_equals_per_sample(model, processor, layout, waves, audio_case):
    instructions = [INSTRUCTION, None, "请将音频内容转换为文字。"]
    batch = processor.asr_inputs(waves, instructions, padding_side="left")
    lengths = batch["attention_mask"].sum(1).tolist()
    assert len(set(lengths)) == 3 and bool(batch["attention_mask"][:, -1].all())
    with torch.no_grad():
        batch_logits = model(**batch).logits
        for row, (wave, instruction, audio) in enumerate(zip(waves, instructions, audio_case["singles"])):
            prompt = layout.asr_prompt(frames(len(wave)), instruction)
            assert batch["input_ids"][row, -lengths[row] :].tolist() == prompt
            assert batch["input_ids"][row, : -lengths[row]].eq(batch["input_ids"][0, 0]).all()  # pad
            logits = model(input_ids=torch.tensor([prompt]), **audio).logits[0]
            torch.testing.assert_close(batch_logits[row, -lengths[row] :], logits, rtol=0, atol=1e-5)


# ===================================================================================== 3. SDPA == eager (padded)
def test_sdpa_equals_eager_on_padded_batches(model, processor, layout, ids, waves, audio_case, ckpt, monkeypatch):
    calls = {"eager": 0}
    eager = attention.eager_attention_forward

    def counting_eager(*args, **kwargs):
        calls["eager"] += 1
        return eager(*args, **kwargs)

    monkeypatch.setattr(attention, "eager_attention_forward", counting_eager)
    audio = audio_case["precomputed"]
    left = {
        k: v for k, v in processor.asr_inputs(waves, [INSTRUCTION] * 3).items() if k in ("input_ids", "attention_mask")
    }
    _, right = right_padded_training_batch(layout, waves, ids.pad)
    right_no_labels = {k: v for k, v in right.items() if k != "labels"}
    original = model.config._attn_implementation
    results = {}
    try:
        for implementation in ("sdpa", "eager"):
            model.config._attn_implementation = implementation
            with torch.no_grad():
                results[implementation] = (
                    model(**left, **audio).logits,
                    model(**right, **audio).loss,
                    model(**right_no_labels, **audio).logits,
                )
    finally:
        model.config._attn_implementation = original
    assert calls["eager"] == 3 * model.config.num_hidden_layers
    valid_left, valid_right = left["attention_mask"].bool(), right["attention_mask"].bool()
    assert not valid_left.all() and not valid_right.all()
    torch.testing.assert_close(results["sdpa"][0][valid_left], results["eager"][0][valid_left], rtol=0, atol=1e-5)
    torch.testing.assert_close(results["sdpa"][1], results["eager"][1], rtol=0, atol=1e-5)
    torch.testing.assert_close(results["sdpa"][2][valid_right], results["eager"][2][valid_right], rtol=0, atol=1e-5)

    calls["eager"] = 0
    loaded = KimiAudioForCausalLM.from_pretrained(ckpt, attn_implementation="eager")
    assert loaded.config._attn_implementation == "eager"
    with torch.no_grad():
        loaded(input_ids=torch.tensor([[3, 10, 20, 30, 40]]))
    assert calls["eager"] == loaded.config.num_hidden_layers


# ====================================================================================== 4. gradient checkpointing
def _grads(m, batch):
    m.zero_grad(set_to_none=True)
    loss = m(**batch).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("lora_like", [False, True], ids=["full", "frozen-embeddings"])
def test_gradient_checkpointing_gives_the_same_gradients(model, layout, ids, waves, lora_like):
    m = copy.deepcopy(model).train()
    if lora_like:  # PEFT-style: only q/v projections train; inputs must be made to require grad for reentrant GC
        for name, param in m.named_parameters():
            param.requires_grad_(
                name.startswith("model.layers.") and name.endswith(("q_proj.weight", "v_proj.weight"))
            )
        m.enable_input_require_grads()
    samples, batch = right_padded_training_batch(layout, waves, ids.pad)
    generator = torch.Generator().manual_seed(5)
    n_frames = sum(frames(len(w)) for w in waves)
    batch["audio_codes"] = torch.randint(0, 256, (n_frames,), generator=generator)
    batch["whisper_features"] = torch.randn(n_frames, m.config.kimia_adaptor_input_dim, generator=generator)
    loss_plain, grads_plain = _grads(m, batch)
    # every trainable tensor of the text path gets a gradient; the MIMO branch is not run for the text loss
    trained = {n for n, p in m.named_parameters() if p.requires_grad and not n.startswith(("model.mimo_", "mimo_"))}
    assert grads_plain.keys() == trained

    counter = {"calls": 0}
    layer0, original_forward = m.model.layers[0], m.model.layers[0].forward

    def counting_forward(*args, **kwargs):  # (forward hooks do not fire during non-reentrant recomputation)
        counter["calls"] += 1
        return original_forward(*args, **kwargs)

    layer0.forward = counting_forward
    for kwargs in (None, {"use_reentrant": False}):
        m.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        assert m.is_gradient_checkpointing
        counter["calls"] = 0
        loss_ckpt, grads_ckpt = _grads(m, batch)
        assert counter["calls"] == 2, "layer 0 must be recomputed in backward"
        torch.testing.assert_close(loss_ckpt, loss_plain, rtol=0, atol=1e-6)
        assert grads_ckpt.keys() == grads_plain.keys()
        for name, grad in grads_plain.items():
            torch.testing.assert_close(grads_ckpt[name], grad, rtol=1e-5, atol=1e-7, msg=name)
        m.gradient_checkpointing_disable()


# ===================================================================================================== 5. generate
def reference_greedy(text_ref, state, config, ids, prompt_streams, rows, steps: int, eos: int) -> list[int]:
    """Spec §7: prefill, then feed text stream = argmax (full vocabulary), audio stream = blank; full recompute."""
    audio, text, cont, _ = prompt_streams
    embeds = reference_embeddings(state, config, ids, audio, text, cont, rows)
    embed = state["model.embed_tokens.weight"]
    out: list[int] = []
    for _ in range(steps):
        logits = reference_logits(text_ref, embeds)[-1]
        top2 = logits.topk(2).values
        assert float(top2[0] - top2[1]) > 1e-5, "near tie: the comparison would not be meaningful"
        token = int(logits.argmax())
        out.append(token)
        if token == eos:
            break
        embeds = torch.cat([embeds, (embed[ids.blank] + embed[token])[None]])
    return out + [ids.pad] * (steps - len(out))


def reference_transcript(tik, ids, generated: list[int]) -> str:
    """Cut at text_eos, drop audio ids (spec §7) and Kimi specials, tiktoken-decode."""
    generated = generated[: generated.index(ids.text_eos)] if ids.text_eos in generated else generated
    return tik.decode_bytes([t for t in generated if t < ids.num_base]).decode("utf-8", errors="replace").strip()


@pytest.fixture(scope="module")
def generation_case(model, processor, ids, tik, whisper_ref, glm):
    """Two left-padded ASR prompts and a copy of the model whose embeddings are scaled up (x50): random weights then
    decode varied tokens — base text, Kimi specials and audio ids — instead of repeating one token."""
    gen_model = copy.deepcopy(model)
    with torch.no_grad():
        gen_model.model.embed_tokens.weight.mul_(50.0)
        for layer in gen_model.model.layers:  # louder residual branches: the 0.02-std tiny weights otherwise
            layer.self_attn.o_proj.weight.mul_(5.0)  # let the embedding dominate and decode no base-text token
            layer.mlp.down_proj.weight.mul_(5.0)
    n = gen_model.config.num_hidden_layers
    gen_ref = qwen2_reference(
        gen_model, [f"model.layers.{i}" for i in range(n)], "model.norm.weight", "lm_head.weight"
    )
    waves = [speechy(int(0.5 * SR), seed=21), speechy(int(1.25 * SR), seed=22)]
    instructions = [INSTRUCTION, None]
    batch = processor.asr_inputs(waves, instructions, padding_side="left")
    prompts = []
    for wave, instruction in zip(waves, instructions):
        codes = glm.tokenize([wave])[0].tolist()
        assert len(codes) == frames(len(wave))
        streams = official_streams(ids, tik.encode_ordinary(instruction) if instruction else [], codes)
        prompts.append((streams, reference_whisper_rows(whisper_ref, wave)))
    # The same prompts with encoder outputs precomputed, so that decoding without a cache does not re-encode audio.
    with torch.no_grad():
        rows = gen_model.whisper_rows(batch["audio_input_features"], batch["audio_chunk_tokens"])
        codes = gen_model.audio_codes_from_features(batch["semantic_input_features"], batch["semantic_frame_mask"])
    light = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    light.update(whisper_features=rows, audio_codes=codes)
    return gen_model, gen_ref, batch, light, prompts


def test_generate_cache_nocache_and_reference_loop_agree(processor, ids, tik, generation_case):
    gen_model, gen_ref, batch, light, prompts = generation_case
    state = gen_model.state_dict()
    steps = 8
    prompt_len = batch["input_ids"].shape[1]
    config = gen_model.generation_config
    assert config.eos_token_id == ids.text_eos and config.pad_token_id == ids.pad and config.do_sample is False
    with torch.no_grad():
        cached = gen_model.generate(**batch, max_new_tokens=steps, do_sample=False)
        uncached = gen_model.generate(**light, max_new_tokens=steps, do_sample=False, use_cache=False)
    assert cached.shape == (2, prompt_len + steps)
    assert torch.equal(cached[:, :prompt_len], batch["input_ids"])
    for row, (streams, rows) in enumerate(prompts):
        valid = batch["attention_mask"][row].bool()
        # the processor's prompt is the spec's inference prompt (rows 0 .. assistant start) in one stream
        audio, text, cont, _ = streams
        single = torch.where(
            audio == ids.blank, text, torch.where(cont, torch.full_like(audio, ids.placeholder), audio)
        )
        assert batch["input_ids"][row][valid].tolist() == single.tolist()
        expected = reference_greedy(gen_ref, state, gen_model.config, ids, streams, rows, steps, ids.text_eos)
        assert cached[row, prompt_len:].tolist() == expected
    new = cached[:, prompt_len:]
    # The case is discriminative: several distinct tokens, including an audio id that, fed back without a KV cache,
    # must still go to the text stream (spec §7) rather than be taken for an audio frame.
    assert len(set(new.flatten().tolist())) > 4 and bool((new >= ids.offset).any())
    assert torch.equal(cached, uncached)
    transcripts = processor.decode_transcripts(new)
    assert transcripts == [reference_transcript(tik, ids, new[r].tolist()) for r in range(2)]
    assert any(transcripts)


def test_generate_stops_each_sample_at_its_eos(ids, generation_case):
    """Make the token the first sample emits at step 3 the EOS: that row stops and is padded, the other continues."""
    gen_model, gen_ref, _, light, prompts = generation_case
    state = gen_model.state_dict()
    steps = 8
    free = [reference_greedy(gen_ref, state, gen_model.config, ids, s, r, steps, -1) for s, r in prompts]
    eos = free[0][2]
    cuts = [tokens.index(eos) + 1 if eos in tokens else steps for tokens in free]
    expected = [tokens[:cut] + [ids.pad] * (steps - cut) for tokens, cut in zip(free, cuts)]
    assert min(cuts) < max(cuts)  # rows finish at different steps
    with torch.no_grad():
        for use_cache in (True, False):
            out = gen_model.generate(
                **light, max_new_tokens=steps, do_sample=False, eos_token_id=eos, use_cache=use_cache
            )
            new = out[:, light["input_ids"].shape[1] :].tolist()
            assert len(new[0]) == max(cuts), use_cache  # generation ends when every row has finished
            assert new == [row[: max(cuts)] for row in expected], use_cache


def test_cached_chunked_prefill_equals_full_forward(model, layout, waves, audio_case):
    """A multi-token step on top of a KV cache (attention bias path with past_len > 0) equals a full forward."""
    input_ids = torch.tensor([layout.asr_prompt(frames(len(waves[0])), INSTRUCTION)])
    extra = torch.tensor([[5, 17, 42, 9]])
    audio = audio_case["singles"][0]
    with torch.no_grad():
        full = model(input_ids=torch.cat([input_ids, extra], 1), **audio).logits[0, -4:]
        prefix = model(input_ids=input_ids, use_cache=True, **audio)
        step = model(input_ids=extra, past_key_values=prefix.past_key_values, use_cache=True, text_only=True).logits[0]
    torch.testing.assert_close(step, full, rtol=0, atol=1e-5)


# ========================================================================================== 6. save / load / auto
FAKE_REMOTE = "raise RuntimeError('remote code was executed')\n"


def test_save_load_round_trip_and_native_auto_dispatch(model, processor, ckpt, tmp_path):
    out = str(tmp_path / "saved")
    model.save_pretrained(out, max_shard_size="1MB")
    with open(os.path.join(out, "config.json"), encoding="utf-8") as f:
        config_json = json.load(f)
    assert config_json["model_type"] == "moonshot_kimia"
    assert config_json["architectures"] == ["MoonshotKimiaForCausalLM"]
    assert config_json["auto_map"]["AutoConfig"] == "configuration_moonshot_kimia.KimiAudioConfig"
    assert config_json["auto_map"]["AutoModelForCausalLM"] == "modeling_moonshot_kimia.MoonshotKimiaForCausalLM"

    state = model.state_dict()
    assert not any("semantic" in k for k in state)  # the loaded GLM-4-Voice tokenizer is no submodule
    lm_keys = {k for k in state if not k.startswith("whisper_encoder.")}
    with open(os.path.join(out, "model.safetensors.index.json"), encoding="utf-8") as f:
        weight_map = json.load(f)["weight_map"]
    assert set(weight_map) == lm_keys
    assert len(set(weight_map.values())) > 1
    assert any(k.startswith("model.mimo_layers.") for k in weight_map)
    assert {"model.mimo_norm.weight", "mimo_output.weight", "lm_head.weight"} <= set(weight_map)
    on_disk = {}
    for shard in set(weight_map.values()):
        on_disk.update(load_file(os.path.join(out, shard)))
    assert all(torch.equal(on_disk[k], state[k]) for k in lm_keys)
    whisper_file = load_file(os.path.join(out, "whisper-large-v3", "model.safetensors"))
    assert set(whisper_file) == {
        "model.encoder." + k[len("whisper_encoder.") :] for k in state if k.startswith("whisper_encoder.")
    }
    assert os.path.isfile(os.path.join(out, "whisper-large-v3", "preprocessor_config.json"))
    assert os.path.isfile(os.path.join(out, "glm-4-voice-tokenizer", "config.json"))

    # A shard carrying the official checkpoint's rotary_emb.inv_freq (BF16 garbage here) must be ignored.
    shard = weight_map["model.layers.0.self_attn.q_proj.weight"]
    tensors = load_file(os.path.join(out, shard))
    for layer in range(model.config.num_hidden_layers):
        key = f"model.layers.{layer}.self_attn.rotary_emb.inv_freq"
        tensors[key] = torch.full((model.config.head_dim // 2,), 7.0, dtype=torch.bfloat16)
        weight_map[key] = shard
    save_file(tensors, os.path.join(out, shard), metadata={"format": "pt"})
    with open(os.path.join(out, "model.safetensors.index.json"), encoding="utf-8") as f:
        index = json.load(f)
    index["weight_map"] = weight_map
    with open(os.path.join(out, "model.safetensors.index.json"), "w", encoding="utf-8") as f:
        json.dump(index, f)

    loaded = KimiAudioForCausalLM.from_pretrained(out)
    loaded_state = loaded.state_dict()
    assert loaded_state.keys() == state.keys()
    for key, value in state.items():
        assert loaded_state[key].dtype == value.dtype and torch.equal(loaded_state[key], value), key
    probe = {"input_ids": torch.tensor([[3, 10, 20, 30, 40]])}
    with torch.no_grad():
        assert torch.equal(loaded(**probe).logits, model(**probe).logits)

    # Official directory with remote code files: trust_remote_code=True must still give the native classes.
    processor.tokenizer.save_pretrained(out)
    for name in ("modeling_moonshot_kimia.py", "configuration_moonshot_kimia.py", "tokenization_kimia.py"):
        with open(os.path.join(out, name), "w", encoding="utf-8") as f:
            f.write(FAKE_REMOTE)
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    from llamafactory_kimi_audio import use_native_auto_classes
    from llamafactory_kimi_audio.integration.patches import AUTO_PATCHES
    from llamafactory_kimi_audio.models.tokenization_kimi_audio import KimiAudioTokenizer

    was_applied = all(p.applied for p in AUTO_PATCHES)
    use_native_auto_classes()
    try:
        assert type(AutoConfig.from_pretrained(out, trust_remote_code=True)) is KimiAudioConfig
        auto_model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
        assert type(auto_model) is KimiAudioForCausalLM
        assert type(AutoModel.from_pretrained(out, trust_remote_code=True)) is KimiAudioForCausalLM
        assert isinstance(AutoTokenizer.from_pretrained(out, trust_remote_code=True), KimiAudioTokenizer)
        auto_state = auto_model.state_dict()
        assert all(torch.equal(auto_state[k], v) for k, v in state.items())
    finally:
        if not was_applied:
            for patch in AUTO_PATCHES:
                patch.revert()
    assert not any("moonshot_kimia" in name or "tokenization_kimia" in name for name in sys.modules)


# ============================================================================================== 7. bf16 path
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


# ======================================================================================= 8. audio longer than 30 s
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


# ====================================================================================== 9. audio-token mismatch
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


# ============================================================================================== 10. config
OFFICIAL_CONFIG_FIELDS = {  # spec §1.1 values of the real config.json
    "architectures": ["MoonshotKimiaForCausalLM"], "model_type": "moonshot_kimia", "hidden_size": 3584,
    "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
    "max_position_embeddings": 8192, "vocab_size": 168448, "kimia_mimo_layers": 6,
    "kimia_mimo_transformer_from_layer_index": 21, "kimia_mimo_audiodelaytokens": 6,
    "kimia_audio_output_vocab": 16896, "kimia_text_output_vocab": 152064, "kimia_token_offset": 152064,
    "kimia_adaptor_input_dim": 5120, "use_whisper_feature": True, "kimia_media_begin": 151661,
    "kimia_media_end": 151663, "num_base_tokens": 151643, "num_audio_special_tokens": 512, "rms_norm_eps": 1e-6,
    "hidden_act": "silu", "tie_word_embeddings": False, "rope_theta": 1000000.0, "use_cache": True,
}  # fmt: skip


def _write_config(directory, fields) -> str:
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w", encoding="utf-8") as f:
        json.dump(fields, f)
    return str(directory)


def test_config_official_fields_rope_theta_and_rope_parameters(tmp_path, ckpt, model):
    official = {**OFFICIAL_CONFIG_FIELDS, "torch_dtype": "bfloat16", "auto_map": {
        "AutoConfig": "configuration_moonshot_kimia.KimiAudioConfig",
        "AutoModelForCausalLM": "modeling_moonshot_kimia.MoonshotKimiaForCausalLM"}}  # fmt: skip
    config = KimiAudioConfig.from_pretrained(_write_config(tmp_path / "official", official))
    for key, value in OFFICIAL_CONFIG_FIELDS.items():
        assert getattr(config, key) == value, key
    assert config.head_dim == 128

    config.save_pretrained(tmp_path / "resaved")
    with open(tmp_path / "resaved" / "config.json", encoding="utf-8") as f:
        written = json.load(f)
    for key, value in OFFICIAL_CONFIG_FIELDS.items():
        assert written[key] == value, key
    assert set(official["auto_map"].items()) <= set(written["auto_map"].items())
    assert written.get("torch_dtype", written.get("dtype")) == "bfloat16"
    assert not {"rope_parameters", "whisper_config", "semantic_tokenizer_path", "head_dim"} & set(written)

    # No rope_theta anywhere: never fall back to a default base.
    no_theta = {k: v for k, v in official.items() if k != "rope_theta"}
    config = KimiAudioConfig.from_pretrained(_write_config(tmp_path / "no_theta", no_theta))
    with pytest.raises(ModelError, match="rope_theta"):
        config.require_rope_theta()
    small = copy.deepcopy(model.config)
    small.rope_theta = None
    with pytest.raises(ModelError, match="rope_theta"):
        KimiAudioForCausalLM(small)
    with pytest.raises(ModelError, match="rope"):
        KimiAudioConfig(rope_theta=1e6, rope_scaling={"rope_type": "linear", "factor": 2.0})

    # transformers 5.x form: rope_parameters; it is read, used by the model and written back as rope_theta.
    copied = str(tmp_path / "ckpt")
    shutil.copytree(ckpt, copied)
    with open(os.path.join(copied, "config.json"), encoding="utf-8") as f:
        fields = json.load(f)
    theta = fields.pop("rope_theta")
    logits = {}
    for name, rope in (("same", theta), ("other", 10000.0)):
        fields["rope_parameters"] = {"rope_type": "default", "rope_theta": rope}
        _write_config(copied, fields)
        loaded = KimiAudioForCausalLM.from_pretrained(copied)
        assert loaded.config.rope_theta == rope and loaded.model.rotary_emb.base == rope
        with torch.no_grad():
            logits[name] = loaded(input_ids=torch.tensor([[3, 10, 20, 30, 40, 50]])).logits
        if name == "same":
            loaded.config.save_pretrained(tmp_path / "rope_saved")
            with open(tmp_path / "rope_saved" / "config.json", encoding="utf-8") as f:
                assert json.load(f)["rope_theta"] == rope
    _write_config(copied, {**fields, "rope_parameters": None, "rope_theta": theta})
    with torch.no_grad():
        baseline = KimiAudioForCausalLM.from_pretrained(copied)(
            input_ids=torch.tensor([[3, 10, 20, 30, 40, 50]])
        ).logits
    assert torch.equal(logits["same"], baseline)
    assert not torch.allclose(logits["other"], baseline, atol=1e-4)

    missing = {k: v for k, v in fields.items() if k not in ("rope_theta", "rope_parameters")}
    _write_config(copied, missing)
    with pytest.raises(ModelError, match="rope_theta"):
        KimiAudioForCausalLM.from_pretrained(copied)


def test_speed_switches_are_config_attributes_never_saved(tmp_path, model) -> None:
    """``use_varlen_attention`` / ``compile_pointwise`` are per-process switches (the integration sets them from its
    settings): validated, and never written into config.json, which stays loadable as the official one."""
    config = copy.deepcopy(model.config)
    assert (config.use_varlen_attention, config.compile_pointwise) == (True, "off")
    config.use_varlen_attention, config.compile_pointwise = False, "layers"
    config.save_pretrained(tmp_path / "saved")
    with open(tmp_path / "saved" / "config.json", encoding="utf-8") as f:
        written = json.load(f)
    assert not {"use_varlen_attention", "compile_pointwise"} & set(written)
    reloaded = KimiAudioConfig.from_pretrained(tmp_path / "saved")
    assert (reloaded.use_varlen_attention, reloaded.compile_pointwise) == (True, "off")
    assert KimiAudioConfig(rope_theta=1e6, compile_pointwise="on").compile_pointwise == "on"
    with pytest.raises(ValueError, match="compile_pointwise must be one of off, on, layers"):
        KimiAudioConfig(rope_theta=1e6, compile_pointwise="1")


# ================================================================================================= 11. MIMO
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


def test_device_map_loads_the_whisper_encoder(ckpt) -> None:
    """LLaMA-Factory loads with device_map={"": device}; transformers 4.x would dispatch meta Whisper weights."""
    plain = KimiAudioForCausalLM.from_pretrained(ckpt)
    mapped = KimiAudioForCausalLM.from_pretrained(ckpt, device_map={"": "cpu"})
    reference, loaded = plain.whisper_encoder.state_dict(), mapped.whisper_encoder.state_dict()
    for name, tensor in reference.items():
        assert loaded[name].device.type == "cpu" and torch.equal(tensor, loaded[name]), name


# ================================================================================================ 12. resume
class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_resume_from_a_full_checkpoint_is_quiet_and_keeps_the_whisper_encoder(ckpt, tmp_path) -> None:
    """Checkpoints hold the LM only (the frozen Whisper encoder lives in ``whisper-large-v3/``): resuming a full
    fine-tune through the HF Trainer must restore the trained LM weights, keep the encoder, and warn about nothing."""
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    rows = [{"input_ids": [5, 6, 7, 8, 9, 10], "labels": [-100, -100, 7, 8, 9, 10]}] * 4
    dataset = Dataset.from_list(rows)

    def trainer(steps: int) -> Trainer:
        model = KimiAudioForCausalLM.from_pretrained(ckpt)
        args = TrainingArguments(
            output_dir=str(tmp_path),
            max_steps=steps,
            per_device_train_batch_size=2,
            learning_rate=1e-2,
            save_strategy="steps",
            save_steps=1,
            report_to=[],
            use_cpu=True,
            logging_strategy="no",
        )
        return Trainer(model=model, args=args, train_dataset=dataset)

    first = trainer(1)
    first.train()
    checkpoint = tmp_path / "checkpoint-1"
    assert not any(k.startswith("whisper_encoder.") for k in load_file(str(checkpoint / "model.safetensors")))
    trained = {k: v.clone() for k, v in first.model.state_dict().items()}

    second = trainer(1)  # max_steps reached: resuming loads the weights and trains no further step
    records = _Records()
    hf_logger = logging.getLogger("transformers")
    hf_logger.addHandler(records)
    try:
        second.train(resume_from_checkpoint=str(checkpoint))
    finally:
        hf_logger.removeHandler(records)
    assert not [m for m in records.messages if "missing keys" in m or "unexpected keys" in m], records.messages
    resumed = second.model.state_dict()
    assert resumed.keys() == trained.keys()
    for name, tensor in trained.items():
        assert torch.equal(resumed[name], tensor), name
    embed = "model.embed_tokens.weight"
    assert not torch.equal(trained[embed], KimiAudioForCausalLM.from_pretrained(ckpt).state_dict()[embed])
