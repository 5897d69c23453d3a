"""Audio reading shared by the plugin, the converter, precompute and the evaluator: soundfile only (no torchcodec).

Every path returns mono float32 at 16 kHz, computed as the official pipeline's ``librosa.load(path, sr=16000)``
does: the channels are averaged first, then the float32 signal is resampled by soxr at "HQ" quality (librosa's
default ``res_type="soxr_hq"``) and cut or zero-padded to ``ceil(frames * 16000 / sr)`` samples. That length is
computable from the header alone (``resampled_length``), which lets placeholder counts be derived without decoding.

A WAV whose header declares more audio than the file holds (a copy cut short) is refused by ``probe``, so the
converter, training and precompute never pair half a clip with its whole transcript.

Segments: a sample may be a time span of a longer file, written ``PATH#t=BEGIN,END`` (W3C Media Fragments, seconds;
``fileio/audio_spans.py``). ``probe`` and ``load_audio`` take such values: the header describes the span
(``AudioInfo.start`` / ``frames``) and only the span is read (seek, no full decode). The error classes are in
``fileio/audio_errors.py``.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..constants import SAMPLE_RATE
from .audio_errors import NONFINITE_FIX, TRUNCATED_FIX, AudioError, NonFiniteAudioError, SpanError, TruncatedAudioError
from .audio_spans import media_value, span_frames, split_media

TARGET_SR = SAMPLE_RATE  # the name the rest of the package imported before constants.py
SOXR_QUALITY = "soxr_hq"  # librosa.resample's default res_type, passed to soxr.resample unchanged


@dataclass(frozen=True)
class AudioInfo:
    """Header facts of a file, or of a span of it: ``frames`` counts the span's frames from frame ``start``."""

    path: str
    sample_rate: int
    frames: int
    channels: int
    start: int = 0
    file_frames: int | None = None  # frames of the whole file when this describes a span
    clamped: bool = False  # the span's end was past the file's end by at most MAX_OVERSHOOT and was cut there

    @property
    def stop(self) -> int:
        return self.start + self.frames

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate else 0.0

    @property
    def num_samples_16k(self) -> int:
        return resampled_length(self.frames, self.sample_rate)


def resampled_length(frames: int, sample_rate: int, target_sr: int = TARGET_SR) -> int:
    """Length of ``resample(x)`` for ``frames`` input samples: librosa's ``ceil(frames * (target / sr))``."""
    if sample_rate == target_sr:
        return frames
    return int(math.ceil(frames * (float(target_sr) / sample_rate)))  # float ratio, exactly as librosa computes it


def resample(wave: np.ndarray, sample_rate: int, target_sr: int = TARGET_SR) -> np.ndarray:
    """``librosa.resample(wave, orig_sr=sample_rate, target_sr=target_sr)`` with its defaults, for float32 mono."""
    wave = np.asarray(wave, dtype=np.float32)
    if sample_rate == target_sr:
        return wave
    length = resampled_length(len(wave), sample_rate, target_sr)
    if wave.size == 0:
        return np.zeros(length, dtype=np.float32)
    import soxr

    out = soxr.resample(wave, sample_rate, target_sr, quality=SOXR_QUALITY)
    out = out[:length] if len(out) >= length else np.pad(out, (0, length - len(out)))  # librosa's fix_length
    return np.asarray(out, dtype=np.float32)


def to_mono_float(wave: np.ndarray) -> np.ndarray:
    """Mix channels down and scale integer PCM to [-1, 1]."""
    if np.issubdtype(wave.dtype, np.integer):
        wave = wave.astype(np.float32) / float(np.iinfo(wave.dtype).max + 1)
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim == 2:
        wave = wave.mean(axis=1 if wave.shape[0] > wave.shape[1] else 0)
    return wave.reshape(-1)


MP3_PREROLL_SECONDS = 1.0  # MP3 decodes exactly only this long after a seek (bit reservoir)


def probe(path: str) -> AudioInfo:
    """Read the header of an audio file or span (``PATH#t=B,E``), raising AudioError with the path on any problem
    (truncation and spans that do not fit included)."""
    path, begin, end = split_media(path)
    if begin is None or end is None:
        return _probe_file(path)
    info = _recording_header(path)
    try:
        start, stop, clamped = span_frames(info.sample_rate, info.frames, begin, end)
    except SpanError as err:
        raise SpanError(f"{media_value(path, begin, end)}: {err}; fix the segment's times", err.reason) from None
    return AudioInfo(path, info.sample_rate, stop - start, info.channels, start, info.frames, clamped)


_RECORDINGS: dict[tuple[str, int, int], AudioInfo] = {}


def _recording_header(path: str, keep: int = 256) -> AudioInfo:
    """The header of a segmented recording, kept per (path, size, mtime): each segment's token count probes it, and
    the header of a 2-hour Opus file costs a seek to its end."""
    try:
        stat = os.stat(path)
    except OSError:
        return _probe_file(path)  # raises the not-found error
    key = (path, stat.st_size, stat.st_mtime_ns)
    if key not in _RECORDINGS:
        if len(_RECORDINGS) >= keep:
            _RECORDINGS.pop(next(iter(_RECORDINGS)))
        _RECORDINGS[key] = _probe_file(path)
    return _RECORDINGS[key]


def _probe_file(path: str) -> AudioInfo:
    import soundfile as sf

    if not os.path.isfile(path):
        raise AudioError(
            f"{path}: audio file not found; check the path (relative paths resolve against the data root)"
        )
    try:
        info = sf.info(path)
    except Exception as err:  # soundfile raises RuntimeError / LibsndfileError / TypeError depending on version
        raise AudioError(f"{path}: unreadable audio ({_short(err)}); re-encode it as WAV/FLAC, e.g. with sox") from err
    result = AudioInfo(
        path=path, sample_rate=int(info.samplerate), frames=int(info.frames), channels=int(info.channels)
    )
    check_complete_wav(path, result.sample_rate)
    return result


def check_complete_wav(path: str, sample_rate: int) -> None:
    """Raise TruncatedAudioError when a RIFF/WAVE file's ``data`` chunk declares more bytes than the file holds.

    libsndfile silently shortens such a file to the bytes present, so only the header tells it was cut. Other
    containers are checked when decoded (``load_audio`` compares the decoded length with the header).
    """
    declared = _wav_data_sizes(path)
    if declared is None:
        return
    size, present, block = declared
    if present >= size:
        return
    want, have = size // block, present // block
    raise TruncatedAudioError(
        f"{path}: truncated audio: the WAV header declares {want} frames ({want / sample_rate:.2f} s) but the file "
        f"holds {have} ({have / sample_rate:.2f} s); {TRUNCATED_FIX}"
    )


def _wav_data_sizes(path: str, max_chunks: int = 64) -> tuple[int, int, int] | None:
    """``(declared data bytes, data bytes present, block align)`` of a RIFF/WAVE file; None for anything else or
    a streamed WAV whose size fields were left at 0 / 0xFFFFFFFF. Reads only the chunk headers (a few bytes each),
    since every training sample is probed."""
    file_size = os.path.getsize(path)
    with open(path, "rb") as fh:
        head = fh.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        block, pos = 0, 12
        for _ in range(max_chunks):
            fh.seek(pos)
            header = fh.read(24)  # chunk id + size, and for "fmt " the fields up to block align (body offset 12)
            if len(header) < 8:
                return None
            chunk, size = header[:4], struct.unpack_from("<I", header, 4)[0]
            if chunk == b"fmt " and len(header) >= 22:
                block = struct.unpack_from("<H", header, 20)[0]
            if chunk == b"data":
                if size in (0, 0xFFFFFFFF) or block <= 0:
                    return None
                return size, file_size - (pos + 8), block
            pos += 8 + size + (size & 1)  # chunks are padded to an even size
    return None


def load_audio(source: Any, sample_rate: int | None = None) -> np.ndarray:
    """Load a path, a ``{"array", "sampling_rate"}`` / ``{"path"}`` dict or an array as 16 kHz mono float32."""
    if isinstance(source, dict):
        if source.get("array") is not None:
            return load_audio(np.asarray(source["array"]), int(source.get("sampling_rate") or TARGET_SR))
        return load_audio(source.get("path"))
    if isinstance(source, (str, os.PathLike)):
        info = probe(os.fspath(source))
        return _load_file(info) if info.file_frames is None else _load_span(info)
    if hasattr(source, "read"):  # a file object: LLaMA-Factory's API hands over BytesIO (data URLs) and HTTP streams
        if getattr(source, "seekable", lambda: False)():
            source.seek(0)  # the whole file, also when read a second time
        return load_audio_bytes(read_limited(source), str(getattr(source, "name", None) or "audio"))
    wave = to_mono_float(np.asarray(source))
    check_finite(wave, f"an audio array of {len(wave)} samples", rate=sample_rate or TARGET_SR)
    return resample(wave, sample_rate or TARGET_SR)


def check_finite(wave: np.ndarray, shown: str, offset: float = 0.0, rate: int = TARGET_SR) -> None:
    """Raise NonFiniteAudioError naming ``shown`` and the first bad time when ``wave`` (frames[, channels]) holds
    NaN or ±inf: resampling would smear it over the clip and every loss and gradient of its batch would be NaN."""
    if np.isfinite(wave).all():  # one pass, cheap beside the decode
        return
    bad = ~np.isfinite(wave.reshape(len(wave), -1)).all(axis=1)
    first = offset + int(np.argmax(bad)) / rate
    raise NonFiniteAudioError(
        f"{shown}: {int(bad.sum())} of {len(bad)} samples are not finite (NaN/inf), the first at {first:.3f} s; "
        f"{NONFINITE_FIX}"
    )


def _load_file(info: AudioInfo) -> np.ndarray:
    import soundfile as sf

    path = info.path
    try:
        wave, sr = sf.read(path, dtype="float32", always_2d=True)
    except Exception as err:
        raise AudioError(f"{path}: cannot decode audio ({_short(err)}); re-encode it as WAV/FLAC") from err
    if info.frames == 0 or wave.shape[0] == 0:
        raise AudioError(f"{path}: audio is empty (0 samples); remove the row or replace the file")
    if wave.shape[0] < info.frames:
        raise TruncatedAudioError(
            f"{path}: truncated audio: the header declares {info.frames} frames but only {wave.shape[0]} could be "
            f"decoded; {TRUNCATED_FIX}"
        )
    check_finite(wave, path, rate=int(sr))
    # librosa.to_mono: the mean over channels of the (channels, frames) view, in float32
    return resample(np.mean(wave.T, axis=0), int(sr))


def _load_span(info: AudioInfo) -> np.ndarray:
    """Only the span's frames: seek, then read (MP3: from a preroll before the span, dropped after decoding)."""
    import soundfile as sf

    shown = media_value(info.path, info.start / info.sample_rate, info.stop / info.sample_rate)
    try:
        with sf.SoundFile(info.path) as fh:
            mp3 = fh.format == "MP3"
            lead = min(info.start, int(MP3_PREROLL_SECONDS * info.sample_rate)) if mp3 else 0
            fh.seek(info.start - lead)
            wave = fh.read(info.frames + lead, dtype="float32", always_2d=True)[lead:]
    except Exception as err:
        raise AudioError(f"{shown}: cannot decode audio ({_short(err)}); re-encode it as WAV/FLAC") from err
    if wave.shape[0] < info.frames:
        raise TruncatedAudioError(
            f"{shown}: truncated audio: the span needs frames {info.start}–{info.stop} but only "
            f"{info.start + wave.shape[0]} could be decoded; {TRUNCATED_FIX}"
        )
    check_finite(wave, shown, info.start / info.sample_rate, info.sample_rate)
    return resample(np.mean(wave.T, axis=0), info.sample_rate)


def _short(err: Exception) -> str:
    return str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__


def read_limited(stream: Any, max_bytes: int | None = None, name: str = "audio") -> bytes:
    """All bytes of a file object, refusing more than ``max_bytes`` (read one byte past the limit, never all)."""
    data = stream.read() if max_bytes is None else stream.read(max_bytes + 1)
    if isinstance(data, str):
        raise AudioError(f"{name}: the audio was opened as text; open it in binary mode ('rb')")
    if max_bytes is not None and len(data) > max_bytes:
        raise AudioError(f"{name}: audio larger than {max_bytes / 2**20:.0f} MiB; send a shorter or compressed clip")
    return bytes(data)


def load_audio_bytes(data: bytes, name: str = "audio", max_seconds: float | None = None) -> np.ndarray:
    """Decode an encoded audio file held in memory (WAV, FLAC, MP3, OGG Vorbis/Opus) as :func:`load_audio` decodes a
    path: the same header, truncation and empty checks, with ``name`` in the messages instead of a temporary path.
    ``max_seconds``: a longer clip is refused from its header, before decoding."""
    import tempfile

    if not data:
        raise AudioError(f"{name}: audio is empty (0 bytes); {SEND_AUDIO_FIX}")
    with tempfile.TemporaryDirectory(prefix="kimi-audio-") as folder:
        path = os.path.join(folder, "clip")
        with open(path, "wb") as fh:
            fh.write(data)
        try:
            info = probe(path)
            wave = None if max_seconds is not None and info.duration > max_seconds else _load_file(info)
        except AudioError as err:
            problem = str(err).replace(f"Error opening '{path}': ", "").replace(path, name).split("; ")[0]
            kind = type(err) if isinstance(err, (TruncatedAudioError, NonFiniteAudioError)) else AudioError
            raise kind(f"{problem}; {_send_fix(err)}") from None
    if wave is None:
        raise AudioError(f"{name}: audio is {info.duration:.1f} s long, the limit is {max_seconds:g} s; cut it")
    return wave


SEND_AUDIO_FIX = "send WAV, FLAC, MP3 or OGG (Vorbis/Opus) audio"


def _send_fix(err: AudioError) -> str:
    """What the sender of a refused clip should do; a wrong format is only one of the reasons."""
    if isinstance(err, TruncatedAudioError):
        return "send the complete file"
    if isinstance(err, NonFiniteAudioError):  # a valid file of a broken pipeline: another format would not help
        return "send audio without NaN/inf samples (re-export the clip from its source)"
    return SEND_AUDIO_FIX
