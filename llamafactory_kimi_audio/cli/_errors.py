"""The CLI's one table from exception class to exit code (the codes are documented in ``errors.py`` and the README).

Package errors (``KimiAudioError``) carry their own exit code. The few other classes listed here are problems with
what the user passed in (a path that does not exist, a file in the wrong encoding); they print one line too. Every
other exception is a bug: it keeps its traceback (Python's exit status 1).
"""

from __future__ import annotations

from ..errors import (
    EXIT_BAD_INPUT,
    EXIT_ENV,
    EXIT_GATE,
    EXIT_INTERRUPTED,
    EXIT_MODEL,
    EXIT_OK,
    KimiAudioError,
)

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_ENV",
    "EXIT_GATE",
    "EXIT_INTERRUPTED",
    "EXIT_MODEL",
    "EXIT_OK",
    "exit_code_for",
    "user_input_errors",
]


def user_input_errors() -> dict[type[BaseException], int]:
    """Exceptions outside the package hierarchy that mean "bad input", in the order they are checked."""
    return {
        # a text file in another encoding than the one given (--encoding)
        UnicodeDecodeError: EXIT_BAD_INPUT,
        # a path the user typed: the message names it
        FileNotFoundError: EXIT_BAD_INPUT,
        NotADirectoryError: EXIT_BAD_INPUT,
        IsADirectoryError: EXIT_BAD_INPUT,
        PermissionError: EXIT_BAD_INPUT,
    }


def exit_code_for(err: BaseException) -> int | None:
    """The exit code of an error phrased for the user; None for anything else (a bug: show its traceback)."""
    if isinstance(err, KimiAudioError):
        return err.exit_code
    for cls, code in user_input_errors().items():
        if isinstance(err, cls):
            return code
    return None
