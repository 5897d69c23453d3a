"""The package's errors: one hierarchy, each class carrying the CLI exit code of its kind of problem.

Library code raises these with a one-line message that names the file / row / setting and says the fix; the CLI
(``cli/_errors.py``) and the LLaMA-Factory run guard print that line and exit with ``exit_code``. Anything else is
a bug and keeps its traceback.

Exit codes: 0 success · 1 quality gate failed · 2 bad input data or arguments · 3 model / checkpoint problem ·
4 environment problem (versions, missing tools) · 130 interrupted.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_GATE = 1
EXIT_BAD_INPUT = 2
EXIT_MODEL = 3
EXIT_ENV = 4
EXIT_INTERRUPTED = 130


class KimiAudioError(Exception):
    """Root of the package's errors: a message already phrased for the user, and its exit code."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class InputError(KimiAudioError, ValueError):
    """Bad input data or arguments: audio, transcripts, dataset files, CLI flags, recipe settings."""

    exit_code = EXIT_BAD_INPUT


class NonFiniteTrainingError(InputError):
    """A training step produced a NaN / inf loss or gradient norm (exit 2: the data or the recipe)."""


class ModelError(KimiAudioError):
    """A model directory or checkpoint that is missing, incomplete or not Kimi-Audio."""

    exit_code = EXIT_MODEL


class EnvironmentProblem(KimiAudioError):
    """Versions, missing tools or devices: the fix is in the installation, not in the data."""

    exit_code = EXIT_ENV


class GateFailed(KimiAudioError):
    """A quality gate (e.g. ``evaluate --max-cer``) was not met."""

    exit_code = EXIT_GATE
