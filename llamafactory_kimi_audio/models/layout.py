"""The official Kimi-Audio conversation layout (spec §5.2–5.3) in one id stream.

A conversation is a list of turns; a user turn is a list of segments (text or audio, in order), an assistant turn
is text. Per turn the official rules give (audio-stream ids in capitals, text-stream ids in lower case)::

    user:       [msg_end if not first] USER_START  text… | MEDIA_BEGIN frame×N MEDIA_END …  [CT if audio last] MSG_END
                ASSISTANT_START
    assistant:  transcript…  text_eos

The assistant's closing ``MSG_END`` is emitted at the start of the next user turn, so a supervised response is
exactly ``transcript + text_eos`` — the positions of the official text loss (§5.4). Dropping the final ``MSG_END``
of a text-only sample changes no loss term (nothing is predicted from it).

An assistant **speech** turn (speech-output spec §1.3, "layout A": the rows the official generation loop feeds) is
opened by ``SPEECH_START`` in place of ``ASSISTANT_START`` and holds the *text* stream of its rows; the audio stream
(``D`` blanks, the N codes, ``MSG_END``) follows from the span and is rebuilt by the model (``models/speech.py``)::

    speech:     t_0 … t_{n-1}  text_eos  blank…  MSG_END        (D + N content rows, then the closing row)

It closes itself, so the next user turn starts without ``MSG_END``. A conversation with speech output gets ``CTD``
after a final user audio (official ``output_type="both"``) and no default instruction.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import InputError
from . import special_tokens as st

MEDIA_SPAN = re.compile(
    re.escape(st.MEDIA_BEGIN) + f"((?:{re.escape(st.AUDIO_PLACEHOLDER)})*)" + re.escape(st.MEDIA_END)
)


SPEECH_SPAN = re.compile(
    re.escape(st.SPEECH_START) + f"((?:{re.escape(st.AUDIO_PLACEHOLDER)})*)" + re.escape(st.MSG_END)
)
DEFAULT_AUDIO_DELAY = 6  # kimia_mimo_audiodelaytokens of the released config


@dataclass(frozen=True)
class SpeechReply:
    """An assistant turn that speaks: its text and the 12.5 Hz frame count of its target audio."""

    text: str
    audio_tokens: int


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


def speech_marker(num_tokens: int) -> str:
    """What the plugin puts in place of an assistant ``<audio>`` (the target): distinct from ``audio_marker``."""
    return st.SPEECH_START + st.AUDIO_PLACEHOLDER * num_tokens + st.MSG_END


def split_speech(content: str) -> SpeechReply | None:
    """The speech reply of expanded assistant content (``None`` for a text-only turn); the rest is its text."""
    matches = list(SPEECH_SPAN.finditer(content))
    if not matches:
        return None
    if len(matches) > 1:
        raise InputError(f"an assistant turn holds {len(matches)} <audio> targets; put at most one per assistant turn")
    count = len(matches[0].group(1)) // len(st.AUDIO_PLACEHOLDER)
    if count == 0:
        raise InputError("an assistant <audio> target has 0 frames: the audio clip is empty")
    text = (content[: matches[0].start()] + content[matches[0].end() :]).strip()
    return SpeechReply(text=text, audio_tokens=count)


def split_segments(content: str) -> list[Segment]:
    """Split expanded user content into text and audio segments (empty text pieces are dropped)."""
    segments, cursor = [], 0
    for match in MEDIA_SPAN.finditer(content):
        if content[cursor : match.start()].strip():
            segments.append(Segment(text=content[cursor : match.start()]))
        count = len(match.group(1)) // len(st.AUDIO_PLACEHOLDER)
        if count == 0:
            raise InputError("an audio span with 0 frames: the audio clip is empty")
        segments.append(Segment(audio_tokens=count))
        cursor = match.end()
    if content[cursor:].strip():
        segments.append(Segment(text=content[cursor:]))
    return segments


class LayoutEncoder:
    """Turns segments into ids with a tokenizer that exposes ``convert_tokens_to_ids`` and ``encode``."""

    def __init__(self, tokenizer, audio_delay: int | None = None):
        self.tokenizer = tokenizer
        self.ids = {token: tokenizer.convert_tokens_to_ids(token) for token in st.SPECIAL_TOKENS}
        self.audio_delay = audio_delay if audio_delay is not None else tokenizer_audio_delay(tokenizer)

    def text(self, text: str) -> list[int]:
        # Special-token strings inside user text stay plain text, as in the official tokenizer (disallowed_special=()).
        encode_ordinary = getattr(self.tokenizer, "encode_ordinary", None)
        if encode_ordinary is not None:
            return list(encode_ordinary(text))
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def user_turn(
        self, segments: list[Segment], first: bool, speech_output: bool = False, opens_speech: bool = False
    ) -> list[int]:
        """``first``: no ``MSG_END`` before it (first turn, or after a speech turn, which closes itself);
        ``speech_output``: the conversation speaks (CTD after a final audio); ``opens_speech``: the reply speaks."""
        ids = [] if first else [self.ids[st.MSG_END]]
        ids.append(self.ids[st.USER_MSG_START])
        for segment in segments:
            if segment.is_audio:
                ids += [self.ids[st.MEDIA_BEGIN], *[self.ids[st.AUDIO_PLACEHOLDER]] * segment.audio_tokens]
                ids.append(self.ids[st.MEDIA_END])
            else:
                ids += self.text(segment.text)
        if segments and segments[-1].is_audio:
            ids.append(self.ids[st.SPEECH_CTD if speech_output else st.SPEECH_CT])
        ids += [self.ids[st.MSG_END], self.ids[st.SPEECH_START if opens_speech else st.ASSISTANT_MSG_START]]
        return ids

    def assistant_turn(self, text: str) -> list[int]:
        return self.text(text) + [self.ids[st.TEXT_EOS]]

    def speech_turn(self, reply: SpeechReply, history: bool = False) -> list[int]:
        """Text stream of the D + N content rows of layout A, then ``MSG_END`` (the audio end, an audio target).
        ``history`` gives layout B (an earlier spoken answer in a prompt: no ``text_eos``)."""
        text = self.text(reply.text)
        rows = self.audio_delay + reply.audio_tokens
        if len(text) + 1 > rows:
            raise InputError(
                f"the spoken answer {reply.text[:40]!r} has {len(text)} text tokens + text_eos = {len(text) + 1} > "
                f"{rows} rows ({self.audio_delay} delay + {reply.audio_tokens} audio frames): its text must fit in "
                "the time its audio takes; shorten the text or use the matching (longer) audio"
            )
        closing = self.ids[st.TEXT_BLANK] if history else self.ids[st.TEXT_EOS]
        return [*text, closing] + [self.ids[st.TEXT_BLANK]] * (rows - len(text) - 1) + [self.ids[st.MSG_END]]

    def asr_prompt(self, num_audio_tokens: int, instruction: str | None, instruction_first: bool = True) -> list[int]:
        """The inference prompt of one ASR request (ends with the assistant-start token, spec §5.3)."""
        segments = [Segment(audio_tokens=num_audio_tokens)]
        if instruction:
            segments.insert(0 if instruction_first else 1, Segment(text=instruction))
        return self.user_turn(segments, first=True)

    def turns(self, turns: list[tuple[str, str]], default_instruction: str | None = None) -> list[list[int]]:
        """Ids of each (role, expanded content) turn; a user turn holding only audio gets ``default_instruction``
        unless the conversation has speech output (the official speech-to-speech prompt has no instruction)."""
        replies = [split_speech(content) if role == "assistant" else None for role, content in turns]
        speech_output = any(reply is not None for reply in replies)
        encoded = []
        for index, (role, content) in enumerate(turns):
            if role == "assistant":
                reply = replies[index]
                encoded.append(self.assistant_turn(content) if reply is None else self.speech_turn(reply))
                continue
            segments = split_segments(content)
            if default_instruction and not speech_output and segments and all(s.is_audio for s in segments):
                segments.insert(0, Segment(text=default_instruction))
            first = index == 0 or replies[index - 1] is not None
            opens = index + 1 < len(turns) and replies[index + 1] is not None
            encoded.append(self.user_turn(segments, first, speech_output, opens))
        return encoded

    def conversation(self, turns: Iterable[tuple[str, str]]) -> tuple[list[int], list[int]]:
        """Ids and labels (-100 outside assistant responses) for (role, expanded content) turns."""
        turns = list(turns)
        ids: list[int] = []
        labels: list[int] = []
        for (role, _), turn in zip(turns, self.turns(turns)):
            ids += turn
            labels += turn if role == "assistant" else [-100] * len(turn)
        return ids, labels

    def speech_prompt(self, segments: list[Segment]) -> list[int]:
        """The official ``output_type="both"`` prompt of one user turn (CTD after a final audio, no instruction)."""
        return self.user_turn(segments, first=True, speech_output=True)


def tokenizer_audio_delay(tokenizer) -> int:
    """``kimia_mimo_audiodelaytokens`` of the checkpoint the tokenizer was loaded from (its ``config.json``),
    else the released value 6."""
    delay = getattr(tokenizer, "kimia_mimo_audiodelaytokens", None)
    if delay is None:  # not set on the tokenizer: read once per directory (no attribute: the datasets hash stays)
        delay = _config_audio_delay(str(getattr(tokenizer, "name_or_path", "") or ""))
    return int(delay)


@functools.lru_cache(maxsize=32)
def _config_audio_delay(model_dir: str) -> int:
    path = os.path.join(model_dir, "config.json")
    if not model_dir or not os.path.isfile(path):
        return DEFAULT_AUDIO_DELAY
    with open(path, encoding="utf-8") as handle:
        return int(json.load(handle).get("kimia_mimo_audiodelaytokens", DEFAULT_AUDIO_DELAY))
