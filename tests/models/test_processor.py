"""``KimiAudioProcessor``: a transformers ``ProcessorMixin``, registered with ``AutoProcessor`` (tiny, CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from transformers import ProcessorMixin

from llamafactory_kimi_audio.models import special_tokens as st
from llamafactory_kimi_audio.models.processing_kimi_audio import KimiAudioProcessor

AUTO_LOAD = """
import sys
from transformers import AutoProcessor
from llamafactory_kimi_audio.models.auto import register_auto_classes

register_auto_classes()
for path in sys.argv[1:]:
    processor = AutoProcessor.from_pretrained(path)
    print(type(processor).__name__, type(processor.tokenizer).__name__, processor.feature_extractor.feature_size)
"""


@pytest.fixture(scope="module")
def processor(tiny_checkpoint) -> KimiAudioProcessor:
    return KimiAudioProcessor.from_pretrained(tiny_checkpoint.path)


def waves() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (16000, 5000)]


def test_is_a_processor_mixin_with_the_official_parts(processor, tiny_checkpoint):
    assert isinstance(processor, ProcessorMixin)
    assert type(processor.tokenizer).__name__ == "KimiAudioTokenizer"
    assert processor.feature_extractor.feature_size == 128 and processor.audio_sampling_rate == 16000
    assert processor.name_or_path == os.path.abspath(tiny_checkpoint.path)


def test_asr_batch_pads_with_the_kimi_pad_token(processor):
    clips = waves()
    batch = processor.asr_inputs(clips, ["hello", None], padding_side="left")
    pad = processor.tokenizer.convert_tokens_to_ids(st.PAD)
    lengths = batch["attention_mask"].sum(1).tolist()
    assert lengths[0] > lengths[1]
    assert batch["input_ids"][1, : lengths[0] - lengths[1]].eq(pad).all()
    assert batch["input_ids"][1, lengths[0] - lengths[1] :].tolist() == processor.layout.asr_prompt(4, None)
    assert batch["audio_chunk_tokens"].tolist() == [13, 4]
    right = processor.asr_inputs(clips, ["hello", None], padding_side="right")
    assert right["input_ids"][1, lengths[1] :].eq(pad).all()
    called = processor(audio=clips, text=["hello", None])
    for key, value in batch.items():
        assert torch.equal(called[key], value), key


def test_saved_by_the_mixin_and_reloaded_through_auto_processor(processor, tiny_checkpoint, tmp_path):
    """Fresh interpreter, no LLaMA-Factory and no dispatch patch: ``AutoProcessor`` reaches the class through the
    registry only, for the official checkpoint and for a directory the mixin saved."""
    saved = tmp_path / "saved"
    processor.save_pretrained(saved)
    # 5.x writes processor_config.json; 4.x names the class in the feature extractor's preprocessor_config.json
    configs = [
        saved / name for name in ("processor_config.json", "preprocessor_config.json") if (saved / name).exists()
    ]
    assert "KimiAudioProcessor" in {json.loads(path.read_text()).get("processor_class") for path in configs}
    reloaded = KimiAudioProcessor.from_pretrained(saved)
    clips = waves()
    for key, value in processor.asr_inputs(clips, [None, "x"]).items():
        assert torch.equal(reloaded.asr_inputs(clips, [None, "x"])[key], value), key
    env = {**os.environ, "KIMI_AUDIO_DISABLE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", AUTO_LOAD, tiny_checkpoint.path, str(saved)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split("\n")[:2] == ["KimiAudioProcessor KimiAudioTokenizer 128"] * 2
