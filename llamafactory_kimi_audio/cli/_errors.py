"""Exception → exit code table of the CLI (documented in the README).

0 success · 1 quality gate failed (e.g. ``evaluate --max-cer``) · 2 bad input data or arguments ·
3 model / checkpoint problem · 4 environment problem (versions, missing tools) · 130 interrupted.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_GATE = 1
EXIT_BAD_INPUT = 2
EXIT_MODEL = 3
EXIT_ENV = 4


class CliError(Exception):
    """An error already phrased for the user, carrying its exit code."""

    def __init__(self, message: str, code: int = EXIT_BAD_INPUT):
        super().__init__(message)
        self.code = code


def exit_code_for(err: BaseException) -> int | None:
    """Exit code for errors we phrase ourselves; None means an unexpected bug (show the traceback)."""
    from ..audio_io import AudioError
    from ..errors import KimiAudioError

    if isinstance(err, CliError):
        return err.code
    if isinstance(err, KimiAudioError):
        return err.exit_code
    if isinstance(err, (AudioError, UnicodeDecodeError)):
        return EXIT_BAD_INPUT
    if isinstance(err, (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)):
        return EXIT_BAD_INPUT
    if isinstance(err, ValueError):
        return EXIT_BAD_INPUT
    return None
