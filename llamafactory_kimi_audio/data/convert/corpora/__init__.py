"""Readers for public ASR corpus layouts (one module per layout; ``registry`` lists and detects them)."""

from __future__ import annotations

from .base import Corpus, CorpusOptions, Layout
from .registry import BY_NAME, LAYOUTS, detect_layout, named_layout, unknown_layout

__all__ = [
    "BY_NAME",
    "LAYOUTS",
    "Corpus",
    "CorpusOptions",
    "Layout",
    "detect_layout",
    "named_layout",
    "unknown_layout",
]
