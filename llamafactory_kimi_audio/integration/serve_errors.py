"""One-line JSON errors for LLaMA-Factory's API server: no traceback ever reaches a client.

- request validation (FastAPI's 422 that echoes the whole body, base64 audio included) → 400, the one field at fault;
- the package's input errors (a bad clip found while generating) → 400 with their message;
- anything else → 500 naming the exception class only (the server log keeps the traceback).
"""

from __future__ import annotations

from typing import Any

from ..errors import InputError, KimiAudioError

INTERNAL = "internal error ({name}); the server log has the details"


def one_line(err: BaseException, limit: int = 400) -> str:
    text = " ".join(str(err).split())
    return text[:limit] if text else type(err).__name__


def validation_message(errors: list[dict[str, Any]]) -> str:
    """The most specific pydantic error (the deepest location) as ``invalid request: FIELD: WHY``."""
    if not errors:
        return "invalid request"
    error = max(errors, key=lambda e: len(e.get("loc", ())))
    where = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
    return one_line(Exception(f"invalid request: {where}: {error.get('msg', '')}"))


def install_error_handlers(app: Any) -> None:
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    def answer(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        # "detail" as FastAPI / LLaMA-Factory answer; "error" as OpenAI does, so that its clients show the message
        kind = "invalid_request_error" if status < 500 else "server_error"
        error = {"message": message, "type": kind, "param": None, "code": None}
        return JSONResponse(status_code=status, content={"detail": message, "error": error}, headers=headers)

    async def http_error(request: Any, exc: StarletteHTTPException) -> JSONResponse:  # ours and LLaMA-Factory's
        return answer(exc.status_code, " ".join(str(exc.detail).split()), getattr(exc, "headers", None))

    async def invalid_request(request: Any, exc: RequestValidationError) -> JSONResponse:
        return answer(400, validation_message(list(exc.errors())))

    async def bad_input(request: Any, exc: InputError) -> JSONResponse:
        return answer(400, one_line(exc))

    async def model_problem(request: Any, exc: KimiAudioError) -> JSONResponse:
        return answer(500, one_line(exc))

    async def unexpected(request: Any, exc: Exception) -> JSONResponse:
        return answer(500, INTERNAL.format(name=type(exc).__name__))

    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(InputError, bad_input)
    app.add_exception_handler(KimiAudioError, model_problem)
    app.add_exception_handler(Exception, unexpected)
