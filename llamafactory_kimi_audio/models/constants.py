"""Facts of the Kimi-Audio checkpoint and its audio front-end, defined once (architecture spec §1, §3.2)."""

from __future__ import annotations

import os

from .. import settings
from ..errors import InputError

MODEL_TYPE = "moonshot_kimia"  # config.json's model_type for the official checkpoint
OFFICIAL_ARCHITECTURE = "MoonshotKimiaForCausalLM"  # config.json's architectures (its remote-code class)
WHISPER_SUBDIR = "whisper-large-v3"  # the Whisper encoder's folder inside a checkpoint
SEMANTIC_SUBDIR = "glm-4-voice-tokenizer"  # the GLM-4-Voice tokenizer's folder, inside or next to a checkpoint
SEMANTIC_TOKENIZER_ENV = "KIMI_AUDIO_SEMANTIC_TOKENIZER"  # declared and read in settings.py

SAMPLE_RATE = 16000  # every audio input is 16 kHz mono
CHUNK_SECONDS = 30  # Whisper and GLM-4-Voice both encode 30 s chunks independently
CHUNK_SAMPLES = CHUNK_SECONDS * SAMPLE_RATE
SAMPLES_PER_TOKEN = 1280  # 80 ms: one 12.5 Hz audio token (4 Whisper frames)
WHISPER_MEL_BINS = 128  # Whisper-large-v3 log-mel features


def find_semantic_tokenizer(model_dir: str) -> str | None:
    """The GLM-4-Voice tokenizer: $KIMI_AUDIO_SEMANTIC_TOKENIZER, ``<model>/glm-4-voice-tokenizer`` or a sibling."""
    candidates = [str(settings.get(SEMANTIC_TOKENIZER_ENV) or "")]
    candidates += [os.path.join(model_dir, SEMANTIC_SUBDIR), os.path.join(os.path.dirname(model_dir), SEMANTIC_SUBDIR)]
    for path in candidates:
        if path and os.path.isfile(os.path.join(path, "config.json")):
            return os.path.abspath(path)
    return None


def num_audio_tokens(num_samples: int) -> int:
    """12.5 Hz frames of a 16 kHz clip; equal for Whisper rows and GLM-4-Voice codes (480000 is a multiple of 1280)."""
    if num_samples <= 0:
        raise InputError("audio clip is empty (0 samples)")
    return (num_samples - 1) // SAMPLES_PER_TOKEN + 1
