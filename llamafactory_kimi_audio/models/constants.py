"""Facts of the Kimi-Audio checkpoint and its audio front-end, defined once (architecture spec §1, §3.2)."""

from __future__ import annotations

from ..errors import InputError

MODEL_TYPE = "moonshot_kimia"  # config.json's model_type for the official checkpoint
OFFICIAL_ARCHITECTURE = "MoonshotKimiaForCausalLM"  # config.json's architectures (its remote-code class)

SAMPLE_RATE = 16000  # every audio input is 16 kHz mono
CHUNK_SECONDS = 30  # Whisper and GLM-4-Voice both encode 30 s chunks independently
CHUNK_SAMPLES = CHUNK_SECONDS * SAMPLE_RATE
SAMPLES_PER_TOKEN = 1280  # 80 ms: one 12.5 Hz audio token (4 Whisper frames)
WHISPER_MEL_BINS = 128  # Whisper-large-v3 log-mel features


def num_audio_tokens(num_samples: int) -> int:
    """12.5 Hz frames of a 16 kHz clip; equal for Whisper rows and GLM-4-Voice codes (480000 is a multiple of 1280)."""
    if num_samples <= 0:
        raise InputError("audio clip is empty (0 samples)")
    return (num_samples - 1) // SAMPLES_PER_TOKEN + 1
