"""Spoken answers on LLaMA-Factory's API server: ``"modalities": ["text", "audio"]`` → ``message.audio``.

As OpenAI's chat completions answer it: ``message.audio = {id, data (base64 WAV), format: "wav", expires_at,
transcript}`` (``content`` carries the same text). The answer comes from the official two-stream decoding loop
(``generate_speech``, as ``kimi-audio-lf respond``) and the checkpoint's native detokenizer (24 kHz). The question is
one user turn: text, one audio, or text then audio (the official speech prompt). Without ``audio_detokenizer/`` +
``vocoder/`` next to the served model the request is a 400 saying so; ``stream: true`` with audio is a 400 too.
"""

from __future__ import annotations

import asyncio
import base64
import io
import secrets
import time
import uuid
from collections.abc import Callable
from typing import Any

from .serve_audio import bad_request

_DETOKENIZERS: dict[str, Any] = {}  # checkpoint -> its detokenizer, loaded on the first spoken answer
AUDIO_SEED = 0  # audio sampling and the flow's start noise: the same request gives the same waveform


def wants_speech(request: Any) -> bool:
    return "audio" in (getattr(request, "modalities", None) or ())


def make_spoken_answers(original: Callable[..., Any]) -> Callable[..., Any]:
    async def create_chat_completion_response(request: Any, chat_model: Any) -> Any:
        if not wants_speech(request):
            return await original(request, chat_model)
        return await spoken_answer(request, chat_model)

    return create_chat_completion_response


def speech_checkpoint(engine: Any) -> str:
    from ..eval.speech_roundtrip import detokenizer_checkpoint

    model = getattr(engine, "model", None)
    if model is None or not hasattr(model, "generate_speech"):
        raise bad_request("spoken answers need a Kimi-Audio model served with infer_backend: huggingface")
    checkpoint = detokenizer_checkpoint(model)
    if checkpoint is None:
        name = getattr(model.config, "_name_or_path", "the served model")
        raise bad_request(
            f"{name} has no audio_detokenizer/ + vocoder/ (the official Kimi-Audio layout), so it cannot speak; "
            'ask with "modalities": ["text"], or serve a checkpoint that has them'
        )
    return checkpoint


def question(prepared: Any) -> tuple[str | None, Any]:
    """(text, 16 kHz wave or None) of the one user turn a spoken answer takes."""
    from llamafactory.extras.constants import AUDIO_PLACEHOLDER

    messages, _system, tools, images, videos, audios = prepared
    if len(messages) != 1 or tools or images or videos or len(audios or ()) > 1:
        raise bad_request(
            "a spoken answer takes one user turn: text, one audio, or text then audio (no history, tools or images)"
        )
    text = messages[0]["content"].replace(AUDIO_PLACEHOLDER, " ").strip()
    return text or None, audios[0] if audios else None


async def spoken_answer(request: Any, chat_model: Any) -> Any:
    import llamafactory.api.chat as lf_chat
    from fastapi.responses import JSONResponse

    engine = chat_model.engine
    checkpoint = speech_checkpoint(engine)
    text, wave = question(lf_chat._process_request(request))
    async with engine.semaphore:
        answer, audio, finished = await asyncio.to_thread(
            speak, engine, checkpoint, (text, wave), request.max_tokens, request.temperature or 0.0
        )
    created = int(time.time())
    message = {
        "role": "assistant",
        "content": answer,
        "audio": {
            "id": f"audio_{uuid.uuid4().hex}",
            "data": base64.b64encode(audio).decode(),
            "format": "wav",
            "expires_at": created + 3600,
            "transcript": answer,
        },
    }
    choice = {"index": 0, "message": message, "finish_reason": "stop" if finished else "length"}
    body = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": created}
    return JSONResponse({**body, "model": request.model, "choices": [choice]})


def speak(
    engine: Any,
    checkpoint: str,
    asked: tuple[str | None, Any],
    max_tokens: int | None,
    temperature: float,
    seed: int | None = AUDIO_SEED,
) -> tuple[str, bytes, bool]:
    """(answer text, its speech as WAV bytes, whether the text ended before the token budget). ``temperature`` > 0
    samples the audio head (top-k 10, as the official examples); 0 is the official API default, both heads greedy.
    The text head stays greedy. ``seed`` seeds the audio sampling and the flow's start noise (the same request gives
    the same wave); None draws a fresh seed."""
    import numpy as np
    import soundfile as sf
    import torch

    from ..eval.speech_roundtrip import open_detokenizer
    from ..models.speech_generation import HeadSampling, SpeechSampling

    model, processor = engine.model, engine.processor
    device = next(model.parameters()).device
    text, wave = asked
    inputs = {key: value.to(device) for key, value in processor.speech_prompt_inputs(wave, text).items()}
    prompt = inputs.pop("input_ids")
    sampling = SpeechSampling(audio=HeadSampling(temperature=temperature, top_k=10)) if temperature else None
    seed = secrets.randbits(63) if seed is None else seed  # not torch.seed(): that would reseed the global RNG
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.inference_mode():
        out = model.generate_speech(
            prompt, output_type="both", sampling=sampling, max_new_tokens=max_tokens, generator=generator, **inputs
        )
    tokenizer = processor.tokenizer
    answer = tokenizer.decode([t for t in out.text_ids if t < tokenizer.num_base_tokens]).strip()
    if checkpoint not in _DETOKENIZERS:
        _DETOKENIZERS[checkpoint] = open_detokenizer(checkpoint, device)
    detokenizer = _DETOKENIZERS[checkpoint]
    samples = np.zeros(0, dtype=np.float32)  # no audio code before the end: an empty (valid) WAV
    if out.codes:
        samples = detokenizer(list(out.codes), generator=torch.Generator().manual_seed(seed)).cpu().numpy()
    buffer = io.BytesIO()
    sf.write(buffer, samples, detokenizer.sampling_rate, format="WAV", subtype="PCM_16")
    finished = max_tokens is None or len(out.text_ids) < max_tokens
    return answer, buffer.getvalue(), finished
