"""Fixtures shared by the model tests."""

from __future__ import annotations

import pytest
from lora_models import count_grouped_calls


@pytest.fixture(scope="module")
def tiny_model(tiny_checkpoint):
    """The tiny checkpoint loaded once per test module (tests may change it: one copy per module)."""
    from llamafactory_kimi_audio.models.modeling_kimi_audio import KimiAudioForCausalLM

    return KimiAudioForCausalLM.from_pretrained(tiny_checkpoint.path)


@pytest.fixture
def grouped_calls(monkeypatch):
    """How many layers each call of the grouped LoRA path serves, from now on (``lora_models``)."""
    return count_grouped_calls(monkeypatch)
