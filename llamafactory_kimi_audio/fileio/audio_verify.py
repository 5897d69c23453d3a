"""The converter's sample check: every clip that reaches a dataset decodes to its end, with finite samples only.

``probe`` reads headers, which catches a cut PCM WAV (``check_complete_wav``) but not a cut FLAC or MP3: their
headers still declare the whole clip, and the training step that first decodes them stops the run. Nor can a
header tell NaN / ±inf samples (float WAV from a broken pipeline), which train a NaN model. So ``verify_samples``
decodes what a header cannot vouch for, exactly as training will (``load_audio``: the same reads, span seeks and MP3
preroll), in blocks of bounded memory:

* integer PCM / µ-law / A-law in a RIFF WAV: nothing more to read (no NaN possible, length checked by the header);
* float samples (any container) and every compressed format: decoded to the end; fewer frames than the header
  declares is truncation, a non-finite sample is refused with its time;
* Ogg (Vorbis, Opus): a cut file also ends without its end-of-stream page, although it decodes to the (shorter)
  length its header then reports; ``_ogg_cut_short`` looks at the last page.

Costs (one CPU core, 10 s clip): FLAC ~2 ms, MP3 ~3 ms, Vorbis ~7 ms, Opus ~30 ms, float WAV the read alone.
A decoded clip's peak comes back too, for the silent-clip warning (``audio_silence.py``); a PCM WAV is not read.
"""

from __future__ import annotations

import os

import numpy as np

from .audio import MP3_PREROLL_SECONDS, AudioInfo, check_finite
from .audio_errors import TRUNCATED_FIX, AudioError, TruncatedAudioError
from .audio_spans import media_value

HEADER_CHECKED_FORMATS = ("WAV", "WAVEX")  # RIFF containers whose data size check_complete_wav compares
INTEGER_SUBTYPES = ("PCM_S8", "PCM_U8", "PCM_16", "PCM_24", "PCM_32", "ULAW", "ALAW")
BLOCK_FRAMES = 1 << 16  # frames decoded per read: bounded memory for a 2-hour recording
OGG_TAIL_BYTES = 1 << 16  # an Ogg page is at most 65,307 bytes: the last one starts in this tail


def header_vouches(fmt: str, subtype: str) -> bool:
    """True when the header alone proves a complete, finite clip (PCM integer WAV, length checked by probe)."""
    return fmt in HEADER_CHECKED_FORMATS and subtype in INTEGER_SUBTYPES


def verify_samples(info: AudioInfo) -> float | None:
    """Decode ``info``'s clip or span unless its header vouches for it; raise TruncatedAudioError,
    NonFiniteAudioError or AudioError (undecodable), each naming the file and the fix. Returns the peak absolute
    sample of what was decoded, None when the header vouched (nothing decoded)."""
    import soundfile as sf

    span = info.file_frames is not None
    shown = shown_name(info)
    try:
        with sf.SoundFile(info.path) as fh:
            if header_vouches(fh.format, fh.subtype):
                return None
            decoded, peak = _decode_checking(fh, info, shown)
            fmt = fh.format
    except AudioError:
        raise
    except Exception as err:  # libsndfile: "flac decoder lost sync", "unexpected end of file", ...
        reason = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise TruncatedAudioError(
            f"{shown}: truncated or corrupt audio: decoding stopped ({reason}); {TRUNCATED_FIX}"
        ) from err
    if decoded < info.frames:
        raise TruncatedAudioError(
            f"{shown}: truncated audio: the header declares {info.frames} frames ({info.duration:.2f} s) but only "
            f"{decoded} ({decoded / info.sample_rate:.2f} s) decode; {TRUNCATED_FIX}"
        )
    if fmt == "OGG" and not span and _ogg_cut_short(info.path):
        raise TruncatedAudioError(
            f"{shown}: truncated audio: the Ogg stream ends without its end-of-stream page (the file was cut "
            f"short); {TRUNCATED_FIX}"
        )
    return peak


def shown_name(info: AudioInfo) -> str:
    """How the errors of ``verify_samples`` name the clip: its path, or ``PATH#t=BEGIN,END`` for a span."""
    if info.file_frames is None:
        return info.path
    return media_value(info.path, info.start / info.sample_rate, info.stop / info.sample_rate)


def _decode_checking(fh, info: AudioInfo, shown: str) -> tuple[int, float]:
    """Frames of the clip / span decoded from the open ``fh``, each block checked for non-finite samples, and the
    peak absolute sample."""
    lead = min(info.start, int(MP3_PREROLL_SECONDS * info.sample_rate)) if fh.format == "MP3" else 0
    if info.start:
        fh.seek(info.start - lead)
    wanted, decoded, peak = info.frames + lead, 0, 0.0
    while decoded < wanted:
        block = fh.read(min(BLOCK_FRAMES, wanted - decoded), dtype="float32", always_2d=True)
        if len(block) == 0:
            break
        kept = block[max(lead - decoded, 0) :]  # the MP3 preroll is decoded, never used
        start = info.start + max(decoded - lead, 0)
        check_finite(kept, shown, start / info.sample_rate, info.sample_rate)
        peak = max(peak, float(np.abs(kept).max())) if kept.size else peak
        decoded += len(block)
    return max(decoded - lead, 0), peak


def _ogg_cut_short(path: str) -> bool:
    """True when the last Ogg page is incomplete or lacks the end-of-stream flag (RFC 3533: the last page of a
    logical bitstream sets it), i.e. the file was cut after the encoder wrote it."""
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        fh.seek(max(0, size - OGG_TAIL_BYTES))
        tail = fh.read()
    at = tail.rfind(b"OggS")
    while at >= 0:
        header = tail[at : at + 27]
        if len(header) == 27 and header[4] == 0:  # stream structure version 0: a page header, not audio bytes
            segments = tail[at + 27 : at + 27 + header[26]]
            complete = len(segments) == header[26] and at + 27 + header[26] + sum(segments) <= len(tail)
            return not (complete and header[5] & 0x04)
        at = tail.rfind(b"OggS", 0, at)
    return True
