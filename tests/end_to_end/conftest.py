"""Fixtures of the stock ``llamafactory-cli`` test modules: each module gets its own work folder and dataset (some
tests edit ``dataset_info.json``), all share the session's tiny checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
from lf_runs import make_asr_dataset


@pytest.fixture(scope="module")
def ckpt(tiny_checkpoint) -> str:
    return tiny_checkpoint.path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("lf_cli")


@pytest.fixture(scope="module")
def dataset(workdir) -> Path:
    return make_asr_dataset(workdir)
