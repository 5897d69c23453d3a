"""logs.py: library lines reach stderr as ``llamafactory-kimi-audio: <message>``, once, on rank 0 only."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CODE = """\
import logging
logging.basicConfig(level=logging.WARNING, format="ROOT %(message)s")  # an application's own logging config
from llamafactory_kimi_audio.logs import get_logger, info_rank0, warning_rank0
logger = get_logger("llamafactory_kimi_audio.data.example")
info_rank0(logger, "found %d clips", 3)
warning_rank0(logger, "cache is read-only")
logger.debug("not shown")
logging.getLogger("other").warning("someone else's line")
"""


@pytest.mark.parametrize("rank", ["", "0", "1"])
def test_package_lines_have_the_prefix_once_and_only_on_rank_0(rank: str):
    env = {**os.environ, "RANK": rank}
    result = subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    ours = ["llamafactory-kimi-audio: found 3 clips", "llamafactory-kimi-audio: cache is read-only"]
    assert result.stderr.splitlines() == (ours if rank != "1" else []) + ["ROOT someone else's line"]


def test_lines_follow_a_replaced_stderr(capsys):
    from llamafactory_kimi_audio.logs import get_logger

    get_logger("llamafactory_kimi_audio.tests").warning("to the captured stream")
    assert capsys.readouterr().err == "llamafactory-kimi-audio: to the captured stream\n"
