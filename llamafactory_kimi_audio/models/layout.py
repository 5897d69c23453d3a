"""The official Kimi-Audio conversation layout (spec §5.2–5.3) in one id stream.

A conversation is a list of turns; a user turn is a list of segments (text or audio, in order), an assistant turn
is text. Per turn the official rules give (audio-stream ids in capitals, text-stream ids in lower case)::

    user:       [msg_end if not first] USER_START  text… | MEDIA_BEGIN frame×N MEDIA_END …  [CT if audio last] MSG_END
                ASSISTANT_START
    assistant:  transcript…  text_eos

The assistant's closing ``MSG_END`` is emitted at the start of the next user turn, so a supervised response is
exactly ``transcript + text_eos`` — the positions of the official text loss (§5.4). Dropping the final ``MSG_END``
of a sample changes no loss term (nothing is predicted from it).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from . import special_tokens as st

MEDIA_SPAN = re.compile(
    re.escape(st.MEDIA_BEGIN) + f"((?:{re.escape(st.AUDIO_PLACEHOLDER)})*)" + re.escape(st.MEDIA_END)
)


@dataclass(frozen=True)
class Segment:
    text: str = ""
    audio_tokens: int = 0  # > 0 marks an audio segment of that many 12.5 Hz frames

    @property
    def is_audio(self) -> bool:
        return self.audio_tokens > 0


def audio_marker(num_tokens: int) -> str:
    """The string the LLaMA-Factory plugin puts in place of ``<audio>``: one placeholder per 12.5 Hz frame."""
    return st.MEDIA_BEGIN + st.AUDIO_PLACEHOLDER * num_tokens + st.MEDIA_END


def split_segments(content: str) -> list[Segment]:
    """Split expanded user content into text and audio segments (empty text pieces are dropped)."""
    segments, cursor = [], 0
    for match in MEDIA_SPAN.finditer(content):
        if content[cursor : match.start()].strip():
            segments.append(Segment(text=content[cursor : match.start()]))
        count = len(match.group(1)) // len(st.AUDIO_PLACEHOLDER)
        if count == 0:
            raise ValueError("an audio span with 0 frames: the audio clip is empty")
        segments.append(Segment(audio_tokens=count))
        cursor = match.end()
    if content[cursor:].strip():
        segments.append(Segment(text=content[cursor:]))
    return segments


class LayoutEncoder:
    """Turns segments into ids with a tokenizer that exposes ``convert_tokens_to_ids`` and ``encode``."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids = {token: tokenizer.convert_tokens_to_ids(token) for token in st.SPECIAL_TOKENS}

    def text(self, text: str) -> list[int]:
        # Special-token strings inside user text stay plain text, as in the official tokenizer (disallowed_special=()).
        encode_ordinary = getattr(self.tokenizer, "encode_ordinary", None)
        if encode_ordinary is not None:
            return list(encode_ordinary(text))
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def user_turn(self, segments: list[Segment], first: bool) -> list[int]:
        ids = [] if first else [self.ids[st.MSG_END]]
        ids.append(self.ids[st.USER_MSG_START])
        for segment in segments:
            if segment.is_audio:
                ids += [self.ids[st.MEDIA_BEGIN], *[self.ids[st.AUDIO_PLACEHOLDER]] * segment.audio_tokens]
                ids.append(self.ids[st.MEDIA_END])
            else:
                ids += self.text(segment.text)
        if segments and segments[-1].is_audio:
            ids.append(self.ids[st.SPEECH_CT])
        ids += [self.ids[st.MSG_END], self.ids[st.ASSISTANT_MSG_START]]
        return ids

    def assistant_turn(self, text: str) -> list[int]:
        return self.text(text) + [self.ids[st.TEXT_EOS]]

    def asr_prompt(self, num_audio_tokens: int, instruction: str | None, instruction_first: bool = True) -> list[int]:
        """The inference prompt of one ASR request (ends with the assistant-start token, spec §5.3)."""
        segments = [Segment(audio_tokens=num_audio_tokens)]
        if instruction:
            segments.insert(0 if instruction_first else 1, Segment(text=instruction))
        return self.user_turn(segments, first=True)

    def conversation(self, turns: Iterable[tuple[str, str]]) -> tuple[list[int], list[int]]:
        """Ids and labels (-100 outside assistant responses) for (role, expanded content) turns."""
        ids: list[int] = []
        labels: list[int] = []
        for index, (role, content) in enumerate(turns):
            if role == "assistant":
                turn = self.assistant_turn(content)
                labels += turn
            else:
                turn = self.user_turn(split_segments(content), first=index == 0)
                labels += [-100] * len(turn)
            ids += turn
        return ids, labels
