"""Native GLM-4-Voice tokenizer: code counts, batching, block causality, chunking, checkpoint I/O (tiny model, CPU)."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from llamafactory_kimi_audio.errors import InputError, ModelError
from llamafactory_kimi_audio.models.constants import num_audio_tokens
from llamafactory_kimi_audio.models.glm4_voice import (
    Glm4VoiceConfig,
    Glm4VoiceEncoder,
    glm4_voice_features,
    load_glm4_voice_tokenizer,
    save_glm4_voice_tokenizer,
)
from llamafactory_kimi_audio.models.tiny import make_tiny_glm4_voice_tokenizer

FILES = ("config.json", "model.safetensors", "preprocessor_config.json")
VOCAB = 256


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> str:
    return make_tiny_glm4_voice_tokenizer(str(tmp_path_factory.mktemp("glm4_tiny")), seed=0, vocab_size=VOCAB)


@pytest.fixture(scope="module")
def enc(tiny_dir) -> Glm4VoiceEncoder:
    return load_glm4_voice_tokenizer(tiny_dir)


def speechy(n: int, seed: int) -> np.ndarray:
    """A gliding harmonic tone with noise and a slow amplitude envelope: content varies along the clip."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    f0 = 120 + 80 * rng.random()
    x = sum(np.sin(2 * np.pi * f0 * h * t * (1 + 0.3 * np.sin(2 * np.pi * 0.5 * t))) / h for h in range(1, 6))
    x = x * (1.1 + np.sin(2 * np.pi * (0.7 + rng.random()) * t)) + 0.05 * rng.standard_normal(n)
    return (0.2 * x / max(np.abs(x).max(), 1e-9)).astype(np.float32)


def test_audio_token_count():
    assert [num_audio_tokens(x) for x in (1, 1279, 1280, 1281, 2560, 2561, 480000, 480001, 496000)] == [
        1, 1, 1, 2, 2, 3, 375, 376, 388,
    ]  # fmt: skip
    for empty in (0, -1):
        with pytest.raises(ValueError, match="empty"):
            num_audio_tokens(empty)


def test_code_count(enc):
    lengths = [1, 159, 161, 1279, 1280, 1281, 2560, 2561, 16000, 64000, 480000, 480001, 496000]
    codes = enc.tokenize([speechy(n, i) for i, n in enumerate(lengths)])
    for n, c in zip(lengths, codes):
        assert c.dtype == torch.int64 and c.ndim == 1
        assert len(c) == -(-n // 1280) == num_audio_tokens(n), n
        assert 0 <= int(c.min()) and int(c.max()) < VOCAB
    assert len(set(torch.cat(codes).tolist())) > 10  # the tiny codebook is actually used


def test_features_and_frame_mask():
    feats, mask = glm4_voice_features([speechy(1000, 0), speechy(3000, 1)])
    assert feats.dtype == torch.float32 and tuple(feats.shape) == (2, 128, 24)  # P = 3840 = 3 * 1280
    assert mask.dtype == torch.int64 and mask.sum(1).tolist() == [7, 19]  # frame f valid iff 160 f < L
    with pytest.raises(ValueError, match="30 s"):
        glm4_voice_features([np.zeros(480001, np.float32)])


def test_batched_equals_per_clip(enc):
    clips = [speechy(n, 10 + i) for i, n in enumerate((3000, 12800, 40001, 77777, 500000))]  # 12800 = 10 * 1280
    alone = [enc.tokenize([clip])[0] for clip in clips]
    for batched in (enc.tokenize(clips), enc.tokenize(clips, batch_size=2)):
        assert all(torch.equal(a, b) for a, b in zip(alone, batched))
    # what a collator does: one padded batch of very different lengths (3000 samples padded to 30 s here)
    together = enc.encode_features(*glm4_voice_features([clips[0], clips[1], clips[4][:480000]]))
    assert all(torch.equal(a, b) for a, b in zip(together, [alone[0], alone[1], alone[4][:375]]))


def test_block_causality(enc):
    feats, mask = glm4_voice_features([speechy(12 * 16000, 3)])  # 1200 mel frames = 3 blocks, 150 codes
    base = enc.encode_features(feats, mask)[0]
    assert len(base) == 150
    gen = torch.Generator().manual_seed(0)
    for n in (0, 1):
        changed = feats.clone()
        changed[..., 400 * (n + 1) :] = torch.rand(changed[..., 400 * (n + 1) :].shape, generator=gen) * 2 - 1
        new = enc.encode_features(changed, mask)[0]
        assert torch.equal(new[: 50 * (n + 1)], base[: 50 * (n + 1)])
        assert not torch.equal(new[50 * (n + 1) :], base[50 * (n + 1) :])  # the replacement mattered


def test_chunks_are_independent(enc):
    audio = speechy(496000, 4)
    ks = (1, 1281, 16000)
    head, *rest = enc.tokenize([audio[:480000]] + [audio[: 480000 + k] for k in ks] + [audio[480000:][:k] for k in ks])
    for full, tail in zip(rest[:3], rest[3:]):
        assert torch.equal(full, torch.cat([head, tail]))


def test_codes_depend_on_content(enc):
    t = np.arange(32000) / 16000
    tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    noise = (0.1 * np.random.default_rng(0).standard_normal(t.size)).astype(np.float32)
    chirp = (0.3 * np.sin(2 * np.pi * (100 + 1500 * t) * t)).astype(np.float32)
    a, b, c = enc.tokenize([tone, noise, chirp])
    assert not torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(b, c)


def test_save_load_round_trip(enc, tiny_dir, tmp_path):
    save_glm4_voice_tokenizer(enc, tmp_path)
    for name in FILES:  # saving a loaded checkpoint reproduces it byte for byte
        assert (tmp_path / name).read_bytes() == open(os.path.join(tiny_dir, name), "rb").read(), name
    again = load_glm4_voice_tokenizer(tmp_path)
    on_disk = load_file(os.path.join(tiny_dir, "model.safetensors"))
    assert set(on_disk) == set(again.state_dict())
    for key, value in again.state_dict().items():
        assert value.dtype == torch.float32 and torch.equal(value, on_disk[key]), key
    assert not any(p.requires_grad for p in again.parameters()) and not again.training
    assert again.config == enc.config and again.config.to_dict() == enc.config.to_dict()
    clip = speechy(50000, 7)
    assert torch.equal(again.tokenize([clip])[0], enc.tokenize([clip])[0])


def test_hub_layout(tiny_dir):
    keys = set(load_file(os.path.join(tiny_dir, "model.safetensors")))
    per_layer = ["self_attn.k_proj.weight", "fc1.bias", "fc1.weight", "fc2.bias", "fc2.weight"]
    per_layer += [f"{m}.{p}" for m in ("self_attn_layer_norm", "final_layer_norm") for p in ("weight", "bias")]
    per_layer += [f"self_attn.{m}_proj.{p}" for m in ("q", "v", "out") for p in ("weight", "bias")]
    expected = {f"layers.{i}.{k}" for i in range(2) for k in per_layer}
    expected |= {"conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "embed_positions.weight"}
    expected |= {"codebook.weight", "embed_positions2.weight", "ema_count", "ema_weight"}
    assert keys == expected
    config = json.load(open(os.path.join(tiny_dir, "config.json")))
    assert len(config) == 58 and config["architectures"] == ["WhisperVQEncoder"] and config["pooling_type"] == "avg"
    prep = open(os.path.join(tiny_dir, "preprocessor_config.json"), "rb").read()
    assert len(prep) == 340 and json.loads(prep)["feature_size"] == 128
    assert len((json.dumps(Glm4VoiceConfig().to_dict(), indent=2, sort_keys=True) + "\n").encode()) == 1746  # Hub


def _rewrite(src: str, dst, edit) -> None:
    state = load_file(os.path.join(src, "model.safetensors"))
    os.makedirs(dst, exist_ok=True)
    for name in ("config.json", "preprocessor_config.json"):
        (dst / name).write_bytes(open(os.path.join(src, name), "rb").read())
    save_file(edit(state), str(dst / "model.safetensors"))


def test_strict_loading(tiny_dir, enc, tmp_path):
    _rewrite(tiny_dir, tmp_path / "missing", lambda s: {k: v for k, v in s.items() if k != "layers.0.fc1.bias"})
    with pytest.raises(ModelError, match=r"missing keys \['layers.0.fc1.bias'\]"):
        load_glm4_voice_tokenizer(tmp_path / "missing")
    _rewrite(tiny_dir, tmp_path / "extra", lambda s: {**s, "layers.2.fc1.bias": s["layers.0.fc1.bias"].clone()})
    with pytest.raises(ModelError, match=r"unexpected keys \['layers.2.fc1.bias'\]"):
        load_glm4_voice_tokenizer(tmp_path / "extra")
    _rewrite(tiny_dir, tmp_path / "shape", lambda s: {**s, "conv1.bias": s["conv1.bias"][:3]})
    with pytest.raises(ModelError, match="conv1.bias"):
        load_glm4_voice_tokenizer(tmp_path / "shape")
    # the three unused tensors may be absent; a GLM training checkpoint (model.encoder.*) also loads
    optional = ("embed_positions2.weight", "ema_count", "ema_weight")
    _rewrite(tiny_dir, tmp_path / "lean", lambda s: {k: v for k, v in s.items() if k not in optional})

    def as_training_checkpoint(s: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        extra = {"layer_norm.weight": "conv1.bias", "layers.5.fc1.bias": "layers.0.fc1.bias"}
        out = {f"model.encoder.{k}": v for k, v in s.items()}
        out.update({f"model.encoder.{k}": s[v].clone() for k, v in extra.items()})
        return {**out, "model.decoder.layers.0.fc1.bias": s["layers.0.fc1.bias"].clone()}

    _rewrite(tiny_dir, tmp_path / "train", as_training_checkpoint)
    clip = speechy(30000, 2)
    for name in ("lean", "train"):
        assert torch.equal(load_glm4_voice_tokenizer(tmp_path / name).tokenize([clip])[0], enc.tokenize([clip])[0])


def test_invalid_inputs(enc):
    with pytest.raises(InputError, match="empty"):
        enc.tokenize([speechy(1000, 0), np.zeros(0, np.float32)])
    with pytest.raises(InputError, match="1-D"):
        enc.tokenize([np.zeros((2, 1000), np.float32)])
    with pytest.raises(InputError):
        glm4_voice_features([])
    feats, mask = glm4_voice_features([speechy(2560, 0)])
    with pytest.raises(InputError, match="even"):
        enc.encode_features(feats[..., :-1], mask[:, :-1])
    with pytest.raises(InputError, match="30 s"):
        enc.encode_features(torch.zeros(1, 128, 3002), torch.ones(1, 3002))


def test_config_validation(tmp_path):
    for bad in (dict(encoder_causal_attention=True), dict(quantize_causal_encoder=True), dict(pooling_type="mean"),
                dict(quantize_causal_block_size=None), dict(pooling_position=8)):  # fmt: skip
        with pytest.raises(ModelError, match="unsupported GLM-4-Voice tokenizer config"):
            Glm4VoiceConfig(**bad)
    data = Glm4VoiceConfig().to_dict()
    del data["quantize_causal_block_size"]  # absent key -> the original class default (None) -> refused
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ModelError, match="quantize_causal_block_size"):
        Glm4VoiceConfig.from_json_file(tmp_path / "config.json")
    assert Glm4VoiceConfig.from_dict(Glm4VoiceConfig().to_dict()) == Glm4VoiceConfig()


def test_tiny_checkpoint_is_deterministic(tiny_dir, tmp_path):
    make_tiny_glm4_voice_tokenizer(tmp_path / "a", seed=0, vocab_size=VOCAB)
    make_tiny_glm4_voice_tokenizer(tmp_path / "b", seed=1, vocab_size=VOCAB)
    for name in FILES:
        assert (tmp_path / "a" / name).read_bytes() == open(os.path.join(tiny_dir, name), "rb").read(), name
    assert (tmp_path / "a" / FILES[1]).read_bytes() != (tmp_path / "b" / FILES[1]).read_bytes()


REFERENCE = os.environ.get("GLM4_VOICE_REFERENCE")  # a THUDM/GLM-4-Voice checkout (speech_tokenizer/ inside)


@pytest.mark.skipif(not REFERENCE, reason="set GLM4_VOICE_REFERENCE to a GLM-4-Voice checkout")
def test_matches_reference_implementation(enc, tiny_dir):
    """Optional: THUDM's unmodified speech_tokenizer (construct + load_state_dict, CPU) gives the same codes."""
    sys.path.insert(0, REFERENCE)
    from speech_tokenizer.configuration_whisper import WhisperVQConfig
    from speech_tokenizer.modeling_whisper import WhisperVQEncoder
    from transformers import WhisperFeatureExtractor

    ref = WhisperVQEncoder(WhisperVQConfig.from_pretrained(tiny_dir)).eval()
    ref.load_state_dict(load_file(os.path.join(tiny_dir, "model.safetensors")), strict=True)
    extractor = WhisperFeatureExtractor.from_pretrained(tiny_dir)
    clips = [speechy(n, n) for n in (1, 1281, 1300, 2561, 64001, 200000)]
    with torch.no_grad():
        feats = extractor(clips, sampling_rate=16000, return_attention_mask=True, return_tensors="pt",
                          padding="longest", pad_to_multiple_of=1280)  # fmt: skip
        ids = ref(**feats).quantized_token_ids
    keep = feats.attention_mask[:, ::2][:, ::4].bool()
    assert [row[m].tolist() for row, m in zip(ids, keep)] == [c.tolist() for c in enc.tokenize(clips)]
