"""OpenAI's ``input_audio`` content parts and the ``modalities`` field in LLaMA-Factory's chat request model.

LLaMA-Factory 0.9.5's ``MultimodalInputItem.type`` knows text / image_url / video_url / audio_url only, so an OpenAI
client's ``{"type": "input_audio", "input_audio": {"data": BASE64, "format": "wav"}}`` is refused by validation.
The patch row replaces ``ChatCompletionRequest`` in ``llamafactory.api.protocol`` (before ``api.app`` imports it)
by a subclass whose messages also take those parts; ``serve_audio`` turns them into ``audio_url`` data URLs.
"""

from __future__ import annotations

from typing import Any, Literal


def make_audio_chat_request(original: Any) -> Any:
    from llamafactory.api import protocol
    from pydantic import BaseModel  # here: patches.py is imported by every process that loads transformers' Auto

    class InputAudio(BaseModel):
        data: str
        format: str | None = None

    class AudioInputItem(protocol.MultimodalInputItem):
        type: Literal["text", "image_url", "video_url", "audio_url", "input_audio"]
        input_audio: InputAudio | None = None

    class AudioChatMessage(protocol.ChatMessage):
        content: str | list[AudioInputItem] | None = None

    class ChatCompletionRequest(original):
        messages: list[AudioChatMessage]
        modalities: list[Literal["text", "audio"]] | None = None

    return ChatCompletionRequest
