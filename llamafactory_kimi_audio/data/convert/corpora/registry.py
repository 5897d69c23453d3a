"""The corpus layouts ``convert`` knows, in detection order, and the detection itself.

Detection looks at a few file names (one directory listing per level, never a walk of the corpus), so it is
instant on a 10^6-file tree. The first layout that matches wins; ``--format NAME`` skips detection.
"""

from __future__ import annotations

import os

from ....fileio.textio import DataError
from ..conversations import is_dataset_dir
from ..sources import AUDIO_EXTENSIONS
from .aishell import AISHELL1, AISHELL2
from .base import Layout
from .commonvoice import COMMONVOICE
from .hf import HF_DISK, PARQUET
from .kaldi import KALDI_SEGMENTS
from .librispeech import LIBRISPEECH
from .manifest_json import GIGASPEECH, WENETSPEECH

# hf-disk first: its dataset_info.json must not be mistaken for LLaMA-Factory's own; Kaldi-with-segments before the
# plain Kaldi reader of sources.py; parquet last (a corpus may ship extra parquet files)
LAYOUTS: tuple[Layout, ...] = (
    HF_DISK,
    WENETSPEECH,
    GIGASPEECH,
    AISHELL1,
    AISHELL2,
    LIBRISPEECH,
    COMMONVOICE,
    KALDI_SEGMENTS,
    PARQUET,
)
BY_NAME = {layout.name: layout for layout in LAYOUTS}


def detect_layout(path: str) -> tuple[Layout, str] | None:
    """The first layout matching ``path`` and the corpus directory it found, or None."""
    for layout in LAYOUTS:
        found = layout.detect(path)
        if found is not None:
            return layout, found
    return None


def named_layout(name: str, path: str) -> tuple[Layout, str]:
    """``--format NAME``: the layout and its corpus directory; DataError when ``path`` is not that layout."""
    layout = BY_NAME[name]
    found = layout.detect(path)
    if found is None:
        raise DataError(f"{path}: not a {name} corpus; expected {layout.looks_for}")
    return layout, found


def has_known_files(path: str, limit: int = 5000) -> bool:
    """Whether ``path`` is Kaldi (wav.scp + text) or holds an audio file within ``limit`` directory entries."""
    if all(os.path.isfile(os.path.join(path, f)) for f in ("wav.scp", "text")) or is_dataset_dir(path):
        return True
    seen = 0
    for _, _, files in os.walk(path):
        if any(f.lower().endswith(AUDIO_EXTENSIONS) for f in files):
            return True
        seen += len(files) + 1
        if seen > limit:
            return False
    return False


def unknown_layout(path: str) -> DataError:
    looked = "; ".join(layout.looks_for for layout in LAYOUTS)
    return DataError(
        f"{os.path.abspath(path)}: unknown corpus layout; looked for {looked}; Kaldi wav.scp + text; "
        "a folder of audio files with .txt/.lab transcripts. Point INPUT at the extracted corpus or pass --format"
    )
