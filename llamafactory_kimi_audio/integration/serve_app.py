"""``create_app`` of LLaMA-Factory's API server, with one-line JSON errors and the transcription route."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def make_serving_app(original: Callable[..., Any]) -> Callable[..., Any]:
    def create_app(chat_model: Any) -> Any:
        from .serve_errors import install_error_handlers
        from .serve_transcribe import add_transcription_route

        app = original(chat_model)
        install_error_handlers(app)
        add_transcription_route(app, chat_model)
        return app

    return create_app
