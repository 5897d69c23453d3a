"""The package's log lines: one logger per module under the package logger, and one rank-0 rule.

Library code logs with ``logger = get_logger(__name__)``; the CLIs keep printing their own results. The package
logger writes ``llamafactory-kimi-audio: <message>`` to the current ``sys.stderr`` (INFO and up) and does not
propagate, so LLaMA-Factory's or the user's logging configuration neither swallows nor doubles these lines.
Stdlib only, and ``logging`` is imported on first use: ``_startup`` (loaded by every interpreter) imports
:func:`is_main_process` from here.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    import logging

PACKAGE = __package__ or "llamafactory_kimi_audio"
PREFIX = "llamafactory-kimi-audio: "

_configured = False


def process_rank() -> str:
    """This process's global rank under torchrun / accelerate / DeepSpeed (``RANK``); "0" for a plain process."""
    return os.environ.get("RANK", "0") or "0"


def is_main_process() -> bool:
    """Rank 0 under torchrun / accelerate / DeepSpeed (``RANK``), and every plain single process."""
    return process_rank() == "0"


def get_logger(name: str) -> logging.Logger:
    """The logger of module ``name`` (``__name__``), with the package logger set up once."""
    import logging

    _configure_package_logger()
    return logging.getLogger(name)


def info_rank0(logger: logging.Logger, message: str, *args: object) -> None:
    """``logger.info`` on rank 0 only: under torchrun every rank would write the same line."""
    if is_main_process():
        logger.info(message, *args)


def warning_rank0(logger: logging.Logger, message: str, *args: object) -> None:
    """``logger.warning`` on rank 0 only."""
    if is_main_process():
        logger.warning(message, *args)


def _configure_package_logger() -> None:
    global _configured
    if _configured:
        return
    import logging

    class _CurrentStderr(logging.StreamHandler):
        """Writes to ``sys.stderr`` as it is at each line (pytest's capture, a redirected stream)."""

        def __init__(self) -> None:
            logging.Handler.__init__(self)

        @property
        def stream(self):  # type: ignore[override]
            return sys.stderr

    package_logger = logging.getLogger(PACKAGE)
    handler = _CurrentStderr()
    handler.setFormatter(logging.Formatter(PREFIX + "%(message)s"))
    package_logger.addHandler(handler)
    package_logger.setLevel(logging.INFO)
    package_logger.propagate = False
    _configured = True
