"""The ``kimi_audio`` template's expectations written from the architecture spec, for the
``tests/integration/test_template_plugin_*.py`` modules: the special ids of spec §4 (string and official id), the
instructions, synthetic WAV files and the encoding calls LLaMA-Factory makes. Nothing here calls
``models/layout.py``."""

from __future__ import annotations

import os

import numpy as np
import soundfile as sf

OFFICIAL_BASE = 151643
SPEC = {  # spec §4: string -> official id
    "msg_end": ("<|im_msg_end|>", 151645),
    "media_begin": ("<|im_media_begin|>", 151661),
    "media_end": ("<|im_media_end|>", 151663),
    "blank": ("<|im_kimia_text_blank|>", 151666),
    "text_eos": ("<|im_kimia_text_eos|>", 151667),
    "user_start": ("<|im_kimia_user_msg_start|>", 151670),
    "assistant_start": ("<|im_kimia_assistant_msg_start|>", 151671),
    "ct": ("<|im_kimia_speech_ct_id|>", 151675),
    "pad": ("<|reserved_token_406|>", 152063),
}
DEFAULT_INSTRUCTION = "请将音频内容转换为文字。"  # official infer.py prompt (spec §7)
INSTRUCTION = "Please transcribe the spoken content into written text."
SAMPLES_PER_FRAME = 1280  # 16 kHz / 12.5 Hz


def write_wav(directory: str, name: str, sr: int, frames: int, channels: int = 1, subtype: str = "PCM_16") -> str:
    rng = np.random.default_rng(frames)
    wave = (0.3 * rng.standard_normal((frames, channels))).clip(-1, 1).astype(np.float32)
    path = os.path.join(directory, f"{name}.wav")
    sf.write(path, wave if channels > 1 else wave[:, 0], sr, subtype=subtype)
    return path


def n_frames(num_samples_16k: int) -> int:
    return (num_samples_16k - 1) // SAMPLES_PER_FRAME + 1


def enc(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False)


def encode_sample(template, tok, processor, messages, audios, system=None):
    processed = template.mm_plugin.process_messages(messages, [], [], audios, processor)
    return processed, template.encode_multiturn(tok, processed, system)
