"""Audio reading shared by the plugin, the converter and the evaluator: soundfile only (no torchcodec).

Every path returns mono float32 at 16 kHz. Lengths after resampling are computable from the header alone
(``resampled_length``), which is what lets placeholder counts be derived without decoding the audio.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

TARGET_SR = 16000


class AudioError(ValueError):
    """An audio input that cannot be used; the message names the file and the fix."""


@dataclass(frozen=True)
class AudioInfo:
    path: str
    sample_rate: int
    frames: int
    channels: int

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate else 0.0

    @property
    def num_samples_16k(self) -> int:
        return resampled_length(self.frames, self.sample_rate)


def resampled_length(frames: int, sample_rate: int, target_sr: int = TARGET_SR) -> int:
    """Length of ``resample(x)`` for ``frames`` input samples (the same rule as ``scipy.signal.resample_poly``)."""
    if sample_rate == target_sr:
        return frames
    ratio = Fraction(target_sr, sample_rate)
    return math.ceil(frames * ratio.numerator / ratio.denominator)


def probe(path: str) -> AudioInfo:
    """Read the header of an audio file, raising AudioError with the path on any problem."""
    import soundfile as sf

    if not os.path.isfile(path):
        raise AudioError(
            f"{path}: audio file not found; check the path (relative paths resolve against the data root)"
        )
    try:
        info = sf.info(path)
    except Exception as err:  # soundfile raises RuntimeError / LibsndfileError / TypeError depending on version
        raise AudioError(f"{path}: unreadable audio ({_short(err)}); re-encode it as WAV/FLAC, e.g. with sox") from err
    return AudioInfo(path=path, sample_rate=int(info.samplerate), frames=int(info.frames), channels=int(info.channels))


def resample(wave: np.ndarray, sample_rate: int, target_sr: int = TARGET_SR) -> np.ndarray:
    if sample_rate == target_sr:
        return wave.astype(np.float32, copy=False)
    from scipy.signal import resample_poly

    ratio = Fraction(target_sr, sample_rate)
    return resample_poly(wave.astype(np.float64), ratio.numerator, ratio.denominator).astype(np.float32)


def to_mono_float(wave: np.ndarray) -> np.ndarray:
    """Mix channels down and scale integer PCM to [-1, 1]."""
    if np.issubdtype(wave.dtype, np.integer):
        wave = wave.astype(np.float32) / float(np.iinfo(wave.dtype).max + 1)
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim == 2:
        wave = wave.mean(axis=1 if wave.shape[0] > wave.shape[1] else 0)
    return wave.reshape(-1)


def load_audio(source: Any, sample_rate: int | None = None) -> np.ndarray:
    """Load a path, a ``{"array", "sampling_rate"}`` / ``{"path"}`` dict or an array as 16 kHz mono float32."""
    if isinstance(source, dict):
        if source.get("array") is not None:
            return load_audio(np.asarray(source["array"]), int(source.get("sampling_rate") or TARGET_SR))
        return load_audio(source.get("path"))
    if isinstance(source, (str, os.PathLike)):
        import soundfile as sf

        path = os.fspath(source)
        info = probe(path)
        try:
            wave, sr = sf.read(path, dtype="float32", always_2d=True)
        except Exception as err:
            raise AudioError(f"{path}: cannot decode audio ({_short(err)}); re-encode it as WAV/FLAC") from err
        if info.frames == 0 or wave.shape[0] == 0:
            raise AudioError(f"{path}: audio is empty (0 samples); remove the row or replace the file")
        return resample(wave.mean(axis=1), int(sr))
    wave = to_mono_float(np.asarray(source))
    return resample(wave, sample_rate or TARGET_SR)


def _short(err: Exception) -> str:
    return str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
