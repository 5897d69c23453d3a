"""The tiny native model and tokenizer (no LLaMA-Factory) and the hand-built samples the speech-output tests feed
them: a single-stream spoken reply (layout A) and an ASR turn."""

from __future__ import annotations

import torch

from llamafactory_kimi_audio.models.layout import LayoutEncoder, speech_marker
from llamafactory_kimi_audio.models.modeling_kimi_audio import KimiAudioForCausalLM
from llamafactory_kimi_audio.models.tokenization_kimi_audio import KimiAudioTokenizer


def load_native_model(checkpoint: str) -> KimiAudioForCausalLM:
    """The checkpoint in eval mode; seeded, so that any weight the checkpoint lacks is the same in every run."""
    torch.manual_seed(0)
    return KimiAudioForCausalLM.from_pretrained(checkpoint).eval()


def load_native_tokenizer(checkpoint: str) -> KimiAudioTokenizer:
    return KimiAudioTokenizer.from_pretrained(checkpoint)


def single_stream(layout: LayoutEncoder, tok, user_text: str, reply_text: str, n_codes: int):
    return layout.conversation([("user", user_text), ("assistant", reply_text + speech_marker(n_codes))])


def speech_batch(tok, delay: int = 6) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, labels, audio_codes) of one spoken reply "efg" + 10 codes (100..109) to the user text "abcd"."""
    ids, labels = single_stream(LayoutEncoder(tok, audio_delay=delay), tok, "abcd", "efg", 10)
    return torch.tensor([ids]), torch.tensor([labels]), torch.arange(100, 110)


def asr_sample(tok, n_frames: int = 4):
    """(ids, labels) of an ASR turn: "hi" + ``n_frames`` audio placeholders → "abc"."""
    layout = LayoutEncoder(tok)
    user = "<|im_media_begin|>" + "<|reserved_token_12|>" * n_frames + "<|im_media_end|>"
    return layout.conversation([("user", "hi" + user), ("assistant", "abc")])
