"""``POST /v1/audio/transcriptions`` on LLaMA-Factory's API server, as OpenAI's API answers it.

Multipart ``file`` + ``model`` (any name, as for chat), optional ``language``, ``prompt`` (used as the instruction),
``temperature`` (0: greedy, as the evaluator decodes) and ``response_format`` (``json``, ``text``, ``verbose_json``).
The clip is decoded with the chat requests' checks and limits (``serve_audio``) and transcribed as
``kimi-audio-lf evaluate`` transcribes: one ASR prompt, the audio read by Whisper in 30 s chunks
(``KimiAudioProcessor.asr_inputs``), greedy decoding; the token budget grows with the number of chunks.
"""

from __future__ import annotations

import asyncio
import math
import os
from typing import Annotated, Any

from fastapi import Depends, File, Form, HTTPException, UploadFile, status
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security.http import HTTPAuthorizationCredentials, HTTPBearer

from .. import settings
from ..fileio.audio import load_audio_bytes, read_limited
from ..fileio.audio_errors import AudioError
from ..models.constants import CHUNK_SAMPLES, SAMPLE_RATE
from ..models.special_tokens import DEFAULT_INSTRUCTION
from .serve_audio import bad_request, max_bytes, max_seconds

ROUTE = "/v1/audio/transcriptions"
RESPONSE_FORMATS = ("json", "text", "verbose_json")
TOKENS_PER_CHUNK = 256  # the evaluator's max_new_tokens for one clip, per 30 s Whisper chunk here
_bearer = HTTPBearer(auto_error=False)


async def verify_api_key(auth: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
    """LLaMA-Factory's rule for its own routes: with API_KEY set, the bearer token must match it."""
    api_key = os.getenv("API_KEY")
    if api_key and (auth is None or auth.credentials != api_key):
        raise HTTPException(status_code=status.HTTP_401_UNAUTHORIZED, detail="Invalid API key.")


def instruction_for(language: str | None, prompt: str | None) -> str:
    """The ASR instruction: the request's ``prompt``, else KIMI_AUDIO_DEFAULT_INSTRUCTION, else the official one of
    ``language`` (zh / en; Chinese otherwise, as the template's default)."""
    if prompt and prompt.strip():
        return prompt.strip()
    configured = settings.get("KIMI_AUDIO_DEFAULT_INSTRUCTION")
    if configured:
        return str(configured)
    return DEFAULT_INSTRUCTION.get((language or "").lower()[:2], DEFAULT_INSTRUCTION["zh"])


def transcribe_wave(engine: Any, wave: Any, instruction: str, temperature: float) -> str:
    import torch

    processor, model = engine.processor, engine.model
    inputs = processor.asr_inputs([wave], [instruction])
    inputs = {key: value.to(model.device) for key, value in inputs.items()}
    chunks = max(1, math.ceil(len(wave) / CHUNK_SAMPLES))
    options: dict[str, Any] = {"do_sample": temperature > 0, "max_new_tokens": TOKENS_PER_CHUNK * chunks}
    if temperature > 0:
        options["temperature"] = temperature
    with torch.inference_mode():
        output = model.generate(**inputs, **options)
    return processor.decode_transcripts(output[:, inputs["input_ids"].shape[1] :])[0]


def check_engine(chat_model: Any) -> Any:
    engine = chat_model.engine
    if getattr(engine, "model", None) is None or not hasattr(getattr(engine, "processor", None), "asr_inputs"):
        raise bad_request(
            f"{ROUTE} needs a Kimi-Audio model served with infer_backend: huggingface (the default); "
            "this server runs another model or engine"
        )
    return engine


def add_transcription_route(app: Any, chat_model: Any) -> None:
    async def create_transcription(
        file: Annotated[UploadFile, File()],
        model: Annotated[str, Form()],
        language: Annotated[str | None, Form()] = None,
        prompt: Annotated[str | None, Form()] = None,
        temperature: Annotated[float, Form()] = 0.0,
        response_format: Annotated[str, Form()] = "json",
    ) -> Any:
        if response_format not in RESPONSE_FORMATS:
            raise bad_request(f"response_format {response_format!r} is not supported; use one of {RESPONSE_FORMATS}")
        if not 0 <= temperature <= 2:
            raise bad_request(f"temperature {temperature} is out of range; use 0 (greedy) to 2")
        engine = check_engine(chat_model)
        name = f"file {file.filename!r}" if file.filename else "file"
        try:
            wave = load_audio_bytes(read_limited(file.file, max_bytes(), name), name, max_seconds())
        except AudioError as err:
            raise bad_request(str(err)) from None
        instruction = instruction_for(language, prompt)
        async with engine.semaphore:
            text = await asyncio.to_thread(transcribe_wave, engine, wave, instruction, temperature)
        if response_format == "text":
            return PlainTextResponse(text)
        if response_format == "verbose_json":
            duration = len(wave) / SAMPLE_RATE
            body = {"task": "transcribe", "language": language or "", "duration": duration, "text": text}
            return JSONResponse(body)
        return JSONResponse({"text": text})

    app.add_api_route(ROUTE, create_transcription, methods=["POST"], dependencies=[Depends(verify_api_key)])
