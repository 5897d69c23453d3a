"""Config and weights of ``KimiAudioForCausalLM`` in the official layout (tiny checkpoint, CPU): the official
config.json fields, ``rope_theta`` / ``rope_parameters`` and the refusal to guess a missing one; speed switches that
are never saved; ``save_pretrained`` / ``from_pretrained`` round trip (sharded LM, ``whisper-large-v3/``,
``glm-4-voice-tokenizer/``, ignored ``rotary_emb.inv_freq``) and the native classes behind the Auto classes even with
``trust_remote_code=True``; ``device_map`` loading of the Whisper encoder.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from llamafactory_kimi_audio.errors import ModelError
from llamafactory_kimi_audio.models.configuration_kimi_audio import KimiAudioConfig
from llamafactory_kimi_audio.models.modeling_kimi_audio import KimiAudioForCausalLM

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


def test_device_map_loads_the_whisper_encoder(ckpt) -> None:
    """LLaMA-Factory loads with device_map={"": device}; transformers 4.x would dispatch meta Whisper weights."""
    plain = KimiAudioForCausalLM.from_pretrained(ckpt)
    mapped = KimiAudioForCausalLM.from_pretrained(ckpt, device_map={"": "cpu"})
    reference, loaded = plain.whisper_encoder.state_dict(), mapped.whisper_encoder.state_dict()
    for name, tensor in reference.items():
        assert loaded[name].device.type == "cpu" and torch.equal(tensor, loaded[name]), name
