"""Self-contained exports: the official file set is kept (remote-code files, ``whisper-large-v3/``, the GLM-4-Voice
tokenizer, ``audio_detokenizer/`` + ``vocoder/``), tensor names and config keys are those vLLM's Kimi-Audio loader
reads, and a fresh interpreter loads the directory with ``AutoModelForCausalLM.from_pretrained(dir,
trust_remote_code=True)`` with no call but ``import llamafactory_kimi_audio``.

vLLM's names were read from its source (``vllm/model_executor/models/kimi_audio.py``, ``moonaudio.py`` and
``kimi_audio_asr.py``): a Qwen2 decoder under ``model.``, the MIMO branch under ``model.mimo_layers.`` /
``model.mimo_norm`` / ``mimo_output``, the Whisper adaptor under ``model.vq_adaptor.layers.{0,3,4}``, ``lm_head``,
and the Whisper encoder read from ``<dir>/whisper-large-v3``. vLLM itself is not installed here: only names are
checked, not a vLLM load.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from lf_runs import two_at_a_time

LAYER = r"(layers|mimo_layers)\.\d+\."
VLLM_NAMES = [  # every LM tensor of the checkpoint must match one of these (vLLM drops what it does not know)
    r"model\.embed_tokens\.weight",
    rf"model\.{LAYER}self_attn\.[qkv]_proj\.(weight|bias)",
    rf"model\.{LAYER}self_attn\.o_proj\.weight",
    rf"model\.{LAYER}mlp\.(gate|up|down)_proj\.weight",
    rf"model\.{LAYER}(input_layernorm|post_attention_layernorm)\.weight",
    r"model\.(norm|mimo_norm)\.weight",
    r"model\.vq_adaptor\.layers\.[034]\.(weight|bias)",
    r"(lm_head|mimo_output)\.weight",
]
VLLM_CONFIG_KEYS = {  # read by vLLM's MoonshotKimiaModel / MoonshotKimiaForCausalLM / Qwen2 attention
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "hidden_act",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "max_position_embeddings",
    "rope_theta",
    "rms_norm_eps",
    "tie_word_embeddings",
    "kimia_mimo_layers",
    "kimia_mimo_transformer_from_layer_index",
    "kimia_media_begin",
    "kimia_media_end",
    "kimia_token_offset",
    "kimia_adaptor_input_dim",
    "use_whisper_feature",
}
REMOTE_CODE = {  # stand-ins for the Hub's files (this package never executes them; they must only travel along)
    "configuration_moonshot_kimia.py": "raise ImportError('stand-in: the official remote code is not run here')\n",
    "modeling_moonshot_kimia.py": "raise ImportError('stand-in: the official remote code is not run here')\n",
    "tokenization_kimia.py": "raise ImportError('stand-in: the official remote code is not run here')\n",
}


def lm_tensor_names(directory: Path) -> list[str]:
    """The tensor names of the LM shards (``*.safetensors`` at the top: one file or several with an index)."""
    from safetensors import safe_open

    names = []
    for shard in sorted(directory.glob("*.safetensors")):
        with safe_open(str(shard), "pt") as handle:
            names += list(handle.keys())
    return names


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A tiny checkpoint with the detokenizer and the Hub's remote-code file names, as a real download has."""
    from llamafactory_kimi_audio.models.tiny import make_tiny_checkpoint

    root = Path(make_tiny_checkpoint(str(tmp_path_factory.mktemp("speaking") / "tiny"), detokenizer=True).path)
    for name, text in REMOTE_CODE.items():
        (root / name).write_text(text)
    return root


@pytest.fixture(scope="module")
def saved(source, tmp_path_factory) -> Path:
    """What ``llamafactory-cli export`` writes: the model's and the processor's ``save_pretrained``."""
    from llamafactory_kimi_audio.models.modeling_kimi_audio import KimiAudioForCausalLM
    from llamafactory_kimi_audio.models.processing_kimi_audio import KimiAudioProcessor

    target = tmp_path_factory.mktemp("saved") / "export"
    KimiAudioForCausalLM.from_pretrained(str(source)).save_pretrained(str(target))
    KimiAudioProcessor.from_pretrained(str(source)).save_pretrained(str(target))
    return target


def same_files(left: Path, right: Path) -> list[str]:
    names = sorted(str(p.relative_to(left)) for p in left.rglob("*") if p.is_file())
    assert names, left
    assert names == sorted(str(p.relative_to(right)) for p in right.rglob("*") if p.is_file())
    for name in names:
        assert (left / name).read_bytes() == (right / name).read_bytes(), name
    return names


def test_save_keeps_the_official_file_set(source, saved):
    for name in REMOTE_CODE:
        assert (saved / name).read_text() == REMOTE_CODE[name]
    for folder in ("audio_detokenizer", "vocoder", "glm-4-voice-tokenizer"):
        same_files(source / folder, saved / folder)
    assert (saved / "whisper-large-v3" / "model.safetensors").is_file()
    assert (saved / "whisper-large-v3" / "preprocessor_config.json").is_file()


def test_tensor_names_and_config_keys_are_the_ones_vllm_reads(saved, source):
    names = lm_tensor_names(saved)
    unknown = [name for name in names if not any(re.fullmatch(pattern, name) for pattern in VLLM_NAMES)]
    assert unknown == []
    assert sorted(names) == sorted(lm_tensor_names(source))  # the official names, kept through a reload
    for prefix in ("model.layers.0.", "model.mimo_layers.0.", "model.vq_adaptor.", "lm_head.", "mimo_output."):
        assert any(name.startswith(prefix) for name in names), prefix
    assert not [name for name in names if "whisper" in name or "rotary_emb" in name or "lora_" in name]
    config = json.loads((saved / "config.json").read_text())
    assert VLLM_CONFIG_KEYS - set(config) == set()
    assert config["architectures"] == ["MoonshotKimiaForCausalLM"] and config["hidden_act"] == "silu"
    assert config["kimia_mimo_transformer_from_layer_index"] < config["num_hidden_layers"]


CHILD = """\
import json, sys
import llamafactory_kimi_audio  # the only call: no use_native_auto_classes()
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained(sys.argv[1], trust_remote_code=True)
print(json.dumps({"model": type(model).__name__, "tokenizer": type(tokenizer).__name__,
                  "remote": sorted(m for m in sys.modules if "moonshot_kimia" in m or "tokenization_kimia" in m),
                  "llamafactory": "llamafactory" in sys.modules}))
"""


def load_in_fresh_interpreter(directory: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIMI_AUDIO_")}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(directory)], capture_output=True, text=True, timeout=600, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def fresh_loads(saved, tmp_path_factory) -> dict[bool, dict]:
    """remote_code -> what a fresh interpreter loaded from ``saved`` (True) or from a copy without the auto_map
    files (False, the case of issue 26: auto_map names files that are not there); the two children side by side."""
    without = tmp_path_factory.mktemp("no_remote_code") / "model"
    shutil.copytree(saved, without)
    for name in REMOTE_CODE:
        (without / name).unlink()
    with_hub_files, absent = two_at_a_time(load_in_fresh_interpreter, (saved, without))
    return {True: with_hub_files, False: absent}


@pytest.mark.parametrize("remote_code", [True, False], ids=["with_hub_files", "auto_map_files_absent"])
def test_fresh_interpreter_loads_with_trust_remote_code(fresh_loads, remote_code):
    out = fresh_loads[remote_code]
    native = {"model": "KimiAudioForCausalLM", "tokenizer": "KimiAudioTokenizer"}
    assert out == {**native, "remote": [], "llamafactory": False}


@pytest.mark.slow
def test_llamafactory_cli_export_is_self_contained(source, tmp_path):
    """The stock CLI (``llamafactory-cli export``) on the speaking checkpoint, then a fresh interpreter loads it."""
    from lf_runs import check_ok, run_cli

    export_dir = tmp_path / "export"
    config = {"model_name_or_path": str(source), "template": "kimi_audio", "trust_remote_code": True}
    rc, output = run_cli("export", {**config, "export_dir": str(export_dir)}, tmp_path, "export")
    check_ok(rc, output)
    for name in REMOTE_CODE:
        assert (export_dir / name).is_file(), name
    for folder in ("audio_detokenizer", "vocoder"):
        same_files(source / folder, export_dir / folder)
    assert [n for n in lm_tensor_names(export_dir) if not any(re.fullmatch(p, n) for p in VLLM_NAMES)] == []
    assert load_in_fresh_interpreter(export_dir)["model"] == "KimiAudioForCausalLM"
