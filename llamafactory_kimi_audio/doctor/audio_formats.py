"""``doctor``: which compressed formats the installed libsndfile reads (corpora ship FLAC, MP3, Ogg/Vorbis, Opus).

Each format is checked by a round trip in memory (a short silence written and read back through soundfile), since
the format lists only say what was compiled in. Opus needs libsndfile ≥ 1.0.29, MP3 ≥ 1.1.0, and MP3 files without a
Xing/INFO header read only from 1.2.1; soundfile ≥ 0.12 wheels bundle a libsndfile with all of them.
"""

from __future__ import annotations

import io

from .checkpoint import Check

FORMATS = {  # shown name → (soundfile format, subtype, corpora that ship it)
    "FLAC": ("FLAC", None, "LibriSpeech"),
    "MP3": ("MP3", "MPEG_LAYER_III", "Common Voice"),
    "OGG/Vorbis": ("OGG", "VORBIS", "some Hugging Face datasets"),
    "OGG/Opus": ("OGG", "OPUS", "WenetSpeech, GigaSpeech"),
}
FIX = "pip install -U 'soundfile>=0.12' (its wheels bundle a libsndfile that reads FLAC, MP3, Vorbis and Opus)"
MP3_NO_XING_VERSION = (1, 2, 1)


def _version(text: str) -> tuple[int, ...]:
    digits = text.split("-")[-1].split(".")
    return tuple(int(d) for d in digits if d.isdigit())


def readable(fmt: str, subtype: str | None, frames: int = 800, rate: int = 8000) -> tuple[bool, str]:
    """Whether a short silence in this format survives a write + read; with the reason when not."""
    import numpy as np
    import soundfile as sf

    buffer = io.BytesIO()
    try:
        sf.write(buffer, np.zeros(frames, dtype="float32"), rate, format=fmt, subtype=subtype)
    except Exception as err:  # soundfile raises TypeError / ValueError / LibsndfileError for unsupported formats
        return False, f"cannot encode a test sample ({str(err).strip()[:80]})"
    try:
        data, _ = sf.read(io.BytesIO(buffer.getvalue()), dtype="float32")
    except Exception as err:
        return False, f"cannot decode ({str(err).strip()[:80]})"
    return len(data) == frames, f"decoded {len(data)} of {frames} frames"


def codec_checks() -> list[Check]:
    import soundfile as sf

    version = getattr(sf, "__libsndfile_version__", "unknown")
    checks = []
    for name, (fmt, subtype, corpora) in FORMATS.items():
        ok, detail = readable(fmt, subtype)
        text = f"libsndfile {version} reads it ({corpora})" if ok else f"libsndfile {version}: {detail} ({corpora})"
        checks.append(Check(f"audio {name}", ok, text, "" if ok else FIX, required=False))
    parsed = _version(str(version))
    if parsed and parsed < MP3_NO_XING_VERSION:
        detail = f"libsndfile {version} < 1.2.1: MP3 files without a Xing/INFO header may not read"
        checks.append(Check("audio MP3 (no Xing header)", False, detail, FIX, required=False))
    return checks
