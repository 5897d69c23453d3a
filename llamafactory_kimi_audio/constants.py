"""Audio constants of Kimi-Audio's front-end for the data side; defined once in ``models/constants.py``.

Audio is read at 16 kHz mono, encoded in independent 30 s chunks, and one 12.5 Hz token covers 1280 samples
(80 ms). 480000 is a multiple of 1280, so tokens never straddle a chunk boundary.
"""

from __future__ import annotations

from .models.constants import CHUNK_SAMPLES, CHUNK_SECONDS, MODEL_TYPE, SAMPLE_RATE, SAMPLES_PER_TOKEN

__all__ = ["CHUNK_SAMPLES", "CHUNK_SECONDS", "MODEL_TYPE", "SAMPLE_RATE", "SAMPLES_PER_TOKEN", "chunk_count"]


def chunk_count(num_samples: int) -> int:
    """Number of 30 s chunks a clip of ``num_samples`` 16 kHz samples is encoded in (0 for an empty clip)."""
    return -(-num_samples // CHUNK_SAMPLES)
