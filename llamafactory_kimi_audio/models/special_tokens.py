"""Kimi-Audio special tokens (architecture spec §4).

The 421 specials are appended after the base tiktoken vocabulary in this exact order, so the id of a special is
``num_base_tokens + index``. For the real checkpoint ``num_base_tokens`` is 151643; tiny checkpoints keep the same
order on a smaller base vocabulary, so code must always resolve ids through the tokenizer or the config.
"""

from __future__ import annotations

BOS = "[BOS]"
EOS = "[EOS]"
MSG_END = "<|im_msg_end|>"
MEDIA_BEGIN = "<|im_media_begin|>"
MEDIA_END = "<|im_media_end|>"
TEXT_BLANK = "<|im_kimia_text_blank|>"
TEXT_EOS = "<|im_kimia_text_eos|>"
USER_MSG_START = "<|im_kimia_user_msg_start|>"
ASSISTANT_MSG_START = "<|im_kimia_assistant_msg_start|>"
SPEECH_CT = "<|im_kimia_speech_ct_id|>"
SPEECH_CTD = "<|im_kimia_speech_ctd_id|>"
# The official layout never uses the reserved slot between media_begin and media_end; we use it as the audio
# placeholder of the single id stream (the model swaps it for the semantic code of that frame).
AUDIO_PLACEHOLDER = "<|reserved_token_12|>"
# Likewise unused officially: the role row of an assistant *speech* turn in the single id stream. The model embeds it
# as the official row (audio stream: assistant_msg_start, text stream: blank) and reads the turn's audio stream from
# it (see ``models/speech.py``).
SPEECH_START = "<|reserved_token_13|>"
SPEECH_TURN_BOUNDS = (SPEECH_START, MSG_END)  # a speech turn runs from SPEECH_START to the first MSG_END after it
PAD = "<|reserved_token_406|>"

NUM_SPECIAL_TOKENS = 421


def _reserved(start: int, stop: int) -> list[str]:
    return [f"<|reserved_token_{i}|>" for i in range(start, stop + 1)]


SPECIAL_TOKENS: list[str] = [
    BOS,
    EOS,
    MSG_END,
    "<|im_user_msg_start|>",
    "<|im_assistant_msg_start|>",
    *_reserved(0, 3),
    "[EOT]",
    *_reserved(4, 11),
    MEDIA_BEGIN,
    *_reserved(12, 12),
    MEDIA_END,
    *_reserved(13, 14),
    TEXT_BLANK,
    TEXT_EOS,
    *_reserved(15, 16),
    USER_MSG_START,
    ASSISTANT_MSG_START,
    *_reserved(17, 19),
    SPEECH_CT,
    SPEECH_CTD,
    *_reserved(20, 406),
]
assert len(SPECIAL_TOKENS) == NUM_SPECIAL_TOKENS

# Ids that belong to the audio stream of the official two-stream layout (spec §5.3); all others are text.
AUDIO_STREAM_TOKENS = (USER_MSG_START, ASSISTANT_MSG_START, MEDIA_BEGIN, MEDIA_END, SPEECH_CT, SPEECH_CTD, MSG_END)

# Instruction used when a user turn holds only audio (the one of the official inference example).
DEFAULT_INSTRUCTION = {
    "zh": "请将音频内容转换为文字。",
    "en": "Please transcribe the spoken content into written text.",
}


def special_id(config, token: str) -> int:
    """Id of a Kimi special token for a ``KimiAudioConfig``: base vocabulary size + its fixed index (spec §4)."""
    return config.num_base_tokens + SPECIAL_TOKENS.index(token)
