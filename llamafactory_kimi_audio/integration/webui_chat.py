"""Web UI (LlamaBoard) chat speaks: a checkpoint that can talk adds its spoken answer as an audio player.

LlamaBoard's ``WebChatModel.stream`` streams the text answer into the chatbot. When the loaded model is a Kimi-Audio
model with its MIMO audio head and the checkpoint has ``audio_detokenizer/`` + ``vocoder/``, the wrapper then runs
the official two-stream loop (``generate_speech``, through ``serve_speech.speak`` as the API server does) for the
last user turn and appends the WAV as one more assistant message (gradio's Chatbot shows it as an ``<audio>``
player). The chat's temperature samples the audio head, its *Maximum new tokens* caps the decoding steps. The
voice is seeded (the same question gives the same wave); where the Chat tab has a *Seed* box (LLaMA-Factory after
0.9.5), a seed ≥ 0 picks the wave and -1 draws a new one each time, as the box does for the text. Other models,
checkpoints without a detokenizer, tool calls and observation turns chat as before; a failing spoken answer is one
warning and the text answer stays.
"""

from __future__ import annotations

import atexit
import functools
import inspect
import io
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Generator
from typing import Any

from ..logs import get_logger
from .webui_args import warn_on_page

logger = get_logger(__name__)
_speech_dir: str | None = None  # this process's spoken answers; gradio copies each into its own cache


def speaking_checkpoint(engine: Any) -> str | None:
    """The checkpoint directory when ``engine`` holds a Kimi-Audio model that can speak, else None."""
    from ..eval.speech_roundtrip import detokenizer_checkpoint

    model = getattr(engine, "model", None)  # the HF engine; vLLM / SGLang engines have no generate_speech
    if model is None or not hasattr(model, "generate_speech") or getattr(model, "missing_mimo_weights", ()):
        return None
    return detokenizer_checkpoint(model)


def spoken_question(messages: list[dict[str, str]], audio: Any) -> tuple[str | None, Any] | None:
    """(text, audio file or None) of the last user turn, or None when the last turn is not the user's.

    The speech prompt holds one question; the Audio box's clip belongs to the first turn, as LLaMA-Factory's chat
    puts it there."""
    from llamafactory.data import Role
    from llamafactory.extras.constants import AUDIO_PLACEHOLDER

    if not messages or messages[-1].get("role") != Role.USER.value:
        return None
    text = str(messages[-1].get("content") or "").replace(AUDIO_PLACEHOLDER, " ").strip() or None
    clip = audio if audio and len(messages) == 1 else None
    return (text, clip) if text or clip else None


def speech_dir() -> str:
    global _speech_dir
    if _speech_dir is None or not os.path.isdir(_speech_dir):
        _speech_dir = tempfile.mkdtemp(prefix="kimi_audio_webchat_")
        atexit.register(shutil.rmtree, _speech_dir, True)
    return _speech_dir


def write_spoken_answer(wav: bytes) -> str | None:
    """The WAV written atomically into :func:`speech_dir`; None when it holds no sample (no audio code)."""
    import soundfile as sf

    from ..fileio.textio import atomic_open

    if sf.info(io.BytesIO(wav)).frames == 0:
        return None
    path = os.path.join(speech_dir(), f"answer-{uuid.uuid4().hex}.wav")
    with atomic_open(path, "wb", encoding=None) as handle:
        handle.write(wav)
    return path


def chat_seed(stream: Callable[..., Generator], args: tuple, kwargs: dict[str, Any]) -> int | None:
    """The audio seed of one chat turn: the Chat tab's *Seed* box where it has one (-1: None, a fresh seed each
    time), else the fixed ``serve_speech.AUDIO_SEED``."""
    from .serve_speech import AUDIO_SEED

    try:
        seed = inspect.signature(stream).bind(*args, **kwargs).arguments.get("seed")
    except TypeError:  # a signature this wrapper does not know: keep the fixed seed
        return AUDIO_SEED
    if seed is None or seed == "":
        return AUDIO_SEED
    return int(seed) if int(seed) >= 0 else None


def spoken_message(
    engine: Any, checkpoint: str, question: tuple[str | None, Any], settings: tuple[int, float, int | None]
) -> dict[str, Any] | None:
    """The chatbot message holding the spoken answer, or None (with a warning) when there is none.
    ``question``: (text, audio file); ``settings``: the chat's (maximum new tokens, temperature, seed). The spoken
    words go into the message's alt text (read by screen readers; gradio's player does not show it)."""
    from ..fileio.audio import load_audio
    from .serve_speech import speak

    (text, clip), (budget, temperature, seed) = question, settings
    try:
        asked = (text, load_audio(clip) if clip else None)
        transcript, wav, _finished = speak(engine, checkpoint, asked, int(budget), float(temperature or 0.0), seed)
        path = write_spoken_answer(wav)
    except Exception as err:  # the text answer is already on the page: say why there is no voice, keep chatting
        warn_on_page(f"no spoken answer: {type(err).__name__}: {(str(err).splitlines() or [''])[0]}")
        logger.debug("spoken answer failed", exc_info=True)
        return None
    if path is None:
        warn_on_page("no spoken answer: the audio head ended before any audio code (a higher temperature samples it)")
        return None
    return {"role": "assistant", "content": {"path": path, "alt_text": transcript or "spoken answer"}}


def make_spoken_chat(original: Callable[..., Generator]) -> Callable[..., Generator]:
    @functools.wraps(original)
    def stream(
        self: Any,
        chatbot: list[dict[str, Any]],
        messages: list[dict[str, str]],
        lang: str,
        system: str,
        tools: str,
        image: Any,
        video: Any,
        audio: Any,
        max_new_tokens: int,
        top_p: float,
        temperature: float,
        *rest: Any,
        **kwargs: Any,
    ) -> Generator:  # a generator function, as the original: gradio streams what it yields
        args = (chatbot, messages, lang, system, tools, image, video, audio, max_new_tokens, top_p, temperature)
        last = None
        for last in original(self, *args, *rest, **kwargs):
            yield last
        checkpoint = speaking_checkpoint(getattr(self, "engine", None))
        if last is None or checkpoint is None or tools:
            return
        answer_bot, output_messages = last
        if output_messages and output_messages[-1].get("role") != "assistant":  # a tool call: nothing to say
            return
        question = spoken_question(messages, audio)
        seed = chat_seed(original, (self, *args, *rest), kwargs)
        message = question and spoken_message(self.engine, checkpoint, question, (max_new_tokens, temperature, seed))
        if message:
            yield [*answer_bot, message], output_messages

    return stream
