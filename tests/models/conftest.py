"""Fixtures shared by the model tests: the tiny model and grouped-LoRA call counts; for the ``test_modeling_*``
modules the perturbed fp32 model, its processor and layout, the spec ids and tokenizer, the reference Whisper encoder
and three clips with their encoder outputs (``spec_reference``); a tiny detokenizer for the ``test_detokenizer_*``
modules. Module-scoped: each module gets its own copies (cheap on the tiny checkpoint)."""

from __future__ import annotations

import json
import os

import pytest
import tiktoken
import torch
from detokenizer_reference import VOCAB
from lora_models import count_grouped_calls
from safetensors.torch import load_file
from spec_reference import SPEC_PAT, SR, WAVE_SECONDS, SpecIds, frames, speechy
from tiktoken.load import load_tiktoken_bpe
from transformers import WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from llamafactory_kimi_audio.models.detokenizer.tiny import write_tiny_detokenizer
from llamafactory_kimi_audio.models.layout import LayoutEncoder
from llamafactory_kimi_audio.models.modeling_kimi_audio import KimiAudioForCausalLM
from llamafactory_kimi_audio.models.processing_kimi_audio import KimiAudioProcessor


@pytest.fixture(scope="module")
def tiny_model(tiny_checkpoint):
    """The tiny checkpoint loaded once per test module (tests may change it: one copy per module)."""
    from llamafactory_kimi_audio.models.modeling_kimi_audio import KimiAudioForCausalLM

    return KimiAudioForCausalLM.from_pretrained(tiny_checkpoint.path)


@pytest.fixture
def grouped_calls(monkeypatch):
    """How many layers each call of the grouped LoRA path serves, from now on (``lora_models``)."""
    return count_grouped_calls(monkeypatch)


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


@pytest.fixture(scope="module")
def waves():
    return [speechy(int(s * SR) + 37 * i, seed=10 + i) for i, s in enumerate(WAVE_SECONDS)]


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


@pytest.fixture(scope="module")
def tiny_detokenizer(tmp_path_factory):
    """A tiny random detokenizer folder (``audio_detokenizer/`` + ``vocoder/``, vocabulary ``VOCAB``)."""
    torch.set_num_threads(1)  # tiny tensors: threads only contend on a shared machine
    directory = str(tmp_path_factory.mktemp("detok"))
    write_tiny_detokenizer(directory, VOCAB, seed=3)
    return directory
