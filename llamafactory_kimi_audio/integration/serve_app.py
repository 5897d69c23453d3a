"""``create_app`` of LLaMA-Factory's API server, with one-line JSON errors and the transcription route.

It also guards the served model's ``generate``: LLaMA-Factory streams by running ``generate`` on a thread that feeds
a ``TextIteratorStreamer``; when ``generate`` raises, nothing ends the streamer, the request waits forever while
holding the engine's semaphore, and every later request queues behind it. Guarded, a failure ends the stream (the
server log has the traceback) and the server keeps serving.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_GUARD = "__kimi_audio_stream_guard__"


def make_serving_app(original: Callable[..., Any]) -> Callable[..., Any]:
    def create_app(chat_model: Any) -> Any:
        from .serve_errors import install_error_handlers
        from .serve_transcribe import add_transcription_route

        app = original(chat_model)
        install_error_handlers(app)
        add_transcription_route(app, chat_model)
        model = getattr(chat_model.engine, "model", None)
        if model is not None:
            guard_streamed_generate(model)
        return app

    return create_app


def guard_streamed_generate(model: Any) -> None:
    """``model.generate`` ends its ``streamer`` when it raises (idempotent)."""
    generate = model.generate
    if getattr(generate, _GUARD, False):
        return

    def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            return generate(*args, **kwargs)
        except BaseException:
            streamer = kwargs.get("streamer")
            if streamer is not None:
                streamer.end()  # LLaMA-Factory's stream loop would wait for the next token forever
            raise

    setattr(guarded, _GUARD, True)
    model.generate = guarded
