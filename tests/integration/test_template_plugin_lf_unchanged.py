"""LLaMA-Factory's own behaviour stays as it was with the integration installed: the base plugin's text checks,
the ``qwen2_audio`` template, and (in subprocesses, integration on and off) registries that only gain the Kimi-Audio
entries while every other template encodes the same ids.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import llamafactory.data.template as T  # noqa: N812 - the name LLaMA-Factory's own tests use
import pytest
from lf_runs import two_at_a_time
from llamafactory.data.mm_plugin import BasePlugin, Qwen2AudioPlugin, get_mm_plugin

from llamafactory_kimi_audio import DISABLE_ENV

TEXT_MESSAGES = [{"role": "user", "content": "How are you"}, {"role": "assistant", "content": "I am fine!"}]


def test_lf_base_plugin_text_checks(tok):
    """LLaMA-Factory's tests/data/test_mm_plugin.py::test_base_plugin (text part), with an offline tokenizer."""
    base = get_mm_plugin(name="base")
    assert type(base) is BasePlugin
    assert base.process_messages(TEXT_MESSAGES, [], [], [], None) == TEXT_MESSAGES
    assert base.process_token_ids([0, 1, 2, 3, 4], [0, 1, 2, 3, 4], [], [], [], tok, None) == ([0, 1, 2, 3, 4],) * 2
    assert base.get_mm_inputs([], [], [], [0], [0], [0], [[1] * 1024], None) == {}


def test_lf_qwen2_audio_template_unchanged(tok):
    qwen2_audio = T.TEMPLATES["qwen2_audio"]
    assert type(qwen2_audio) is T.Template
    assert type(qwen2_audio.mm_plugin) is Qwen2AudioPlugin and qwen2_audio.mm_plugin.audio_token == "<|AUDIO|>"
    assert qwen2_audio.default_system == "You are a helpful assistant."
    prompt, response = qwen2_audio.encode_oneturn(tok, TEXT_MESSAGES)
    assert tok.decode(prompt) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHow are you<|im_end|>\n<|im_start|>assistant\n"
    )
    assert tok.decode(response) == "I am fine!<|im_end|>\n"
    assert type(T.TEMPLATES["default"].mm_plugin) is BasePlugin


PROBE = """
import json, sys
import llamafactory.data.template as T
import llamafactory.extras.constants as C
import llamafactory.model.model_utils.visual as V
from llamafactory.data.mm_plugin import PLUGINS
from llamafactory_kimi_audio.models.tokenization_kimi_audio import KimiAudioTokenizer

tok = KimiAudioTokenizer.from_pretrained(sys.argv[1])
msgs = [{"role": "user", "content": "How are you"}, {"role": "assistant", "content": "I am fine!"},
        {"role": "user", "content": "<audio>again"}, {"role": "assistant", "content": "ok"}]
names = ("qwen2_audio", "qwen2_omni", "qwen", "llama3", "default", "empty", "minicpm_o")
print(json.dumps({
    "templates": sorted(T.TEMPLATES), "plugins": sorted(PLUGINS), "composite": sorted(V.COMPOSITE_MODELS),
    "models": sorted(C.SUPPORTED_MODELS), "multimodal": sorted(C.MULTIMODAL_SUPPORTED_MODELS),
    "encoded": {name: T.TEMPLATES[name].encode_multiturn(tok, msgs, "sys") for name in names},
    "plugin_types": {name: type(T.TEMPLATES[name].mm_plugin).__name__ for name in names},
}))
"""


@pytest.mark.slow
def test_registrations_are_purely_additive(ckpt):
    """Compare LLaMA-Factory's registries with the integration on and off (one subprocess each, side by side)."""

    def probe(disabled: str) -> dict:
        command = [sys.executable, "-c", PROBE, ckpt]
        env = {**os.environ, DISABLE_ENV: disabled}
        proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])

    on, off = two_at_a_time(probe, ("0", "1"))
    assert set(on["templates"]) - set(off["templates"]) == {"kimi_audio"}
    assert set(off["templates"]) <= set(on["templates"])
    assert set(on["plugins"]) - set(off["plugins"]) == {"kimi_audio"}
    assert set(on["composite"]) - set(off["composite"]) == {"moonshot_kimia"}
    assert set(on["models"]) - set(off["models"]) == {"Kimi-Audio-7B", "Kimi-Audio-7B-Instruct"}
    assert set(off["multimodal"]) <= set(on["multimodal"])
    assert on["encoded"] == off["encoded"]
    assert on["plugin_types"] == off["plugin_types"]
