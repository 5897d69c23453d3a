"""Audio in the chat requests of LLaMA-Factory's OpenAI-style server (``llamafactory-cli api``).

LLaMA-Factory's ``_process_request`` turns each ``audio_url`` part into a ``BytesIO`` (base64 data URL), a checked
local path, or a raw HTTP stream, and passes those to the model's plugin. Wrapped here:

- before it: OpenAI's ``input_audio`` parts become ``audio_url`` data URLs, and every data URL's base64 is checked
  (any ``data:audio/...`` type; LLaMA-Factory's own pattern knows only mpeg/mp3/wav/ogg);
- after it: every audio is read (size limit), decoded and checked (empty, not audio, truncated, too long,
  non-finite) and handed on as a 16 kHz mono float32 array, the form LLaMA-Factory's plugins take as decoded.

A bad clip is HTTP 400 with one line naming it (``audio #2 of the request``) before any generation starts; local
paths and URLs still pass LLaMA-Factory's own checks (``check_lfi_path``, ``check_ssrf_url``).
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from .. import settings
from ..fileio.audio import load_audio_bytes, read_limited
from ..fileio.audio_errors import AudioError

MAX_SECONDS_ENV = "KIMI_AUDIO_SERVE_MAX_SECONDS"
MAX_MB_ENV = "KIMI_AUDIO_SERVE_MAX_MB"
INPUT_AUDIO_FORMATS = ("wav", "mp3", "flac", "ogg", "opus")  # OpenAI names wav and mp3; the rest decode as well
CANONICAL_PREFIX = "data:audio/wav;base64,"  # one LLaMA-Factory's pattern accepts; the bytes decide the format


def _number(name: str) -> float:
    raw = str(settings.get(name))
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value <= 0:
        default = float(str(settings.BY_NAME[name].default))
        settings._warn(f"{name}={raw!r} is not a positive number; using {default:g}")
        return default
    return value


def max_seconds() -> float:
    return _number(MAX_SECONDS_ENV)


def max_bytes() -> int:
    return int(_number(MAX_MB_ENV) * 2**20)


def bad_request(message: str) -> Exception:
    """HTTP 400 with ``message`` on one line (FastAPI answers ``{"detail": message}``)."""
    from fastapi import HTTPException, status

    return HTTPException(status_code=status.HTTP_400_BAD_REQUEST, detail=" ".join(message.split()))


def checked_base64(payload: str, what: str) -> str:
    """``payload`` without whitespace, after checking it is base64 within the size limit (else HTTP 400)."""
    payload = "".join(payload.split())
    if not payload:
        raise bad_request(f"{what}: audio is empty (no base64 data); send the file's bytes, base64-encoded")
    if len(payload) * 3 // 4 > max_bytes():
        raise bad_request(
            f"{what}: audio larger than {max_bytes() / 2**20:.0f} MiB ({MAX_MB_ENV}); send a shorter clip"
        )
    try:
        base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request(f"{what}: the audio data is not valid base64; encode the file's bytes with base64") from None
    return payload


def data_url_payload(url: str, what: str) -> str:
    """The base64 payload of a ``data:`` URL (``data:audio/flac;base64,...``), checked."""
    header, comma, payload = url.partition(",")
    if not comma or not header.endswith(";base64"):
        raise bad_request(f"{what}: only base64 data URLs are read (data:audio/wav;base64,...)")
    return checked_base64(payload, what)


def normalize_audio_parts(request: Any) -> None:
    """``input_audio`` parts → ``audio_url`` data URLs; every audio data URL checked and spelled as one
    LLaMA-Factory's pattern accepts (the format comes from the bytes, not from the declared type)."""
    from llamafactory.api.protocol import URL

    index = 0
    for message in request.messages:
        for item in message.content if isinstance(message.content, list) else ():
            if item.type not in ("audio_url", "input_audio"):
                continue
            index += 1
            what = f"audio #{index} of the request"
            if item.type == "input_audio":
                payload = input_audio_payload(getattr(item, "input_audio", None), what)
                item.type, item.input_audio = "audio_url", None
                item.audio_url = URL(url=CANONICAL_PREFIX + payload)
            elif item.audio_url is None or not item.audio_url.url:
                raise bad_request(f"{what}: audio_url has no url; give a data URL, a file path or an http(s) URL")
            elif item.audio_url.url.startswith("data:"):
                item.audio_url.url = CANONICAL_PREFIX + data_url_payload(item.audio_url.url, what)


def input_audio_payload(part: Any, what: str) -> str:
    if part is None:
        raise bad_request(f'{what}: an input_audio part needs "input_audio": {{"data": BASE64, "format": "wav"}}')
    fmt = (part.format or "").lower()
    if fmt and fmt not in INPUT_AUDIO_FORMATS:
        raise bad_request(
            f"{what}: input_audio format {part.format!r} is not supported; use one of {INPUT_AUDIO_FORMATS}"
        )
    return checked_base64(part.data or "", what)


def decode_audios(audios: list[Any]) -> list[np.ndarray]:
    """Every audio of a request as 16 kHz mono float32, or HTTP 400 naming the first bad one."""
    return [decode_one(audio, f"audio #{number} of the request") for number, audio in enumerate(audios, 1)]


def decode_one(audio: Any, what: str) -> np.ndarray:
    limit = max_bytes()
    try:
        if isinstance(audio, (str, os.PathLike)):
            with open(audio, "rb") as fh:
                data = read_limited(fh, limit, what)
        else:
            if hasattr(audio, "decode_content"):  # requests' raw stream: undo a gzip transfer encoding
                audio.decode_content = True
            try:
                data = read_limited(audio, limit, what)
            finally:
                audio.close()
        wave = load_audio_bytes(data, what, max_seconds())
    except AudioError as err:
        raise bad_request(str(err)) from None
    except Exception as err:  # an HTTP stream that breaks off, an unreadable local file
        raise bad_request(f"{what}: could not be read ({type(err).__name__}); check the URL or path") from None
    if not np.isfinite(wave).all():
        raise bad_request(f"{what}: audio holds NaN or infinite samples; send the clip re-encoded as 16-bit PCM")
    return wave


def make_audio_requests(original: Callable[..., Any]) -> Callable[..., Any]:
    """``_process_request`` with audio checked and decoded before the engine sees it (see the module docstring)."""

    def process_request(request: Any) -> Any:
        prepared = PREPARED.pop(id(request), None)
        if prepared is not None:  # already processed by the streaming route before its 200 went out
            return prepared
        normalize_audio_parts(request)
        try:
            messages, system, tools, images, videos, audios = original(request)
        except OSError as err:  # requests' connection errors are OSErrors
            raise bad_request(f"an audio URL could not be fetched ({type(err).__name__}); check the URL") from None
        return messages, system, tools, images, videos, decode_audios(audios) if audios else audios

    return process_request


PREPARED: dict[int, Any] = {}  # id(request) -> its processed form, between the streaming route and the engine


def make_eager_stream(original: Callable[..., Any]) -> Callable[..., Any]:
    """The streaming response, with the request processed *before* the 200 is sent: a bad clip is a 400 there, not a
    stream that breaks off. An error during generation ends the stream with one ``{"error": ...}`` event."""

    def create_stream(request: Any, chat_model: Any) -> Any:
        import llamafactory.api.chat as lf_chat

        if "audio" in (getattr(request, "modalities", None) or ()):
            raise bad_request('spoken answers ("modalities": ["text", "audio"]) are not streamed; set "stream": false')
        prepared = lf_chat._process_request(request)
        if prepared[2]:
            raise bad_request("Cannot stream function calls.")
        if request.n > 1:
            raise bad_request("Cannot stream multiple responses.")
        return _stream(original, request, chat_model, prepared)

    return create_stream


async def _stream(original: Callable[..., Any], request: Any, chat_model: Any, prepared: Any) -> Any:
    import json

    from .serve_errors import one_line

    PREPARED[id(request)] = prepared
    try:
        async for chunk in original(request, chat_model):
            yield chunk
    except Exception as err:  # the 200 is out: tell the client in the stream, keep the server up
        yield json.dumps({"error": {"message": one_line(err), "type": "server_error"}})
        yield "[DONE]"
    finally:
        PREPARED.pop(id(request), None)
