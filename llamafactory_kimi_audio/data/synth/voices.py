"""The two voices of the synthetic demo corpus: the ``espeak-ng`` binary, and a deterministic tone-word fallback
(per word a fixed pattern of 2-3 harmonic segments with formant-like gains) that keeps the task learnable where
espeak-ng is missing. Both render one ``Utterance`` as 16 kHz mono float audio, reproducibly from its seed.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass

import numpy as np

from ...constants import SAMPLE_RATE
from ...errors import EnvironmentProblem
from ...fileio.audio import resample

SR = SAMPLE_RATE
EN_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "red", "blue")
# Hanzi in the transcript, pinyin for espeak (its cmn Hanzi dictionary is partial in distro builds).
ZH_WORDS = dict(zip("一二三四五六七八九十", "yi1 er4 san1 si4 wu3 liu4 qi1 ba1 jiu3 shi2".split()))
EN_VOICES = ("en-us", "en-gb", "en-us+f3", "en-gb+f4", "en-us+m3", "en-gb-x-rp+f2", "en-029+m2")
ZH_VOICES = ("cmn-latn-pinyin", "cmn-latn-pinyin+f3", "cmn-latn-pinyin+m3", "cmn-latn-pinyin+f4")


@dataclass(frozen=True)
class Utterance:
    uid: str
    split: str
    lang: str
    words: tuple[str, ...]
    seed: int  # per-utterance render randomness (voice, speed, pitch, jitter)

    @property
    def text(self) -> str:
        return " ".join(self.words) if self.lang == "en" else "".join(self.words)

    @property
    def audio(self) -> str:
        return f"wavs/{self.uid}.wav"


# ---------------------------------------------------------------- espeak backend


def _trim(x: np.ndarray, pad: float = 0.08) -> np.ndarray:
    """Cut espeak's leading/trailing silence, keeping ``pad`` seconds each side."""
    loud = np.flatnonzero(np.abs(x) > 0.02 * (np.abs(x).max() + 1e-9))
    if loud.size == 0:
        return x
    k = int(pad * SR)
    return x[max(0, loud[0] - k) : loud[-1] + k]


def espeak_render(utt: Utterance, tmp_dir: str) -> np.ndarray:
    import soundfile as sf

    rng = np.random.default_rng(utt.seed)
    voices = EN_VOICES if utt.lang == "en" else ZH_VOICES
    text = " ".join(utt.words) if utt.lang == "en" else " ".join(ZH_WORDS[w] for w in utt.words)
    tmp = os.path.join(tmp_dir, f"{utt.uid}.wav")
    voice, speed = voices[int(rng.integers(0, len(voices)))], int(rng.integers(135, 196))
    pitch, gap = int(rng.integers(30, 71)), int(rng.integers(0, 4))  # drawn in this order: corpora stay reproducible
    cmd = ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-g", str(gap), "-w", tmp, text]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise EnvironmentProblem(f"espeak-ng failed ({' '.join(cmd)}): {proc.stderr.strip()[:300]}")
    x, sr = sf.read(tmp, dtype="float32", always_2d=True)
    return _trim(resample(x.mean(axis=1), sr))  # the resampler training uses (librosa's soxr HQ)


# ---------------------------------------------------------------- tone-word fallback

_FORMANTS = ((300, 2300), (400, 1000), (550, 1750), (700, 1200), (800, 1500), (350, 1500))
_PITCHES = (110.0, 135.0, 165.0, 200.0, 245.0, 300.0)


def _tone_signatures() -> dict[str, tuple]:
    """Per word: (duration, [(f0, glide, (F1, F2)) per 2-3 segments]); distinct patterns, fixed for all seeds."""
    rng = np.random.default_rng(20240601)
    sigs: dict[str, tuple] = {}
    used: set = set()
    for word in EN_WORDS + tuple(ZH_WORDS):
        while True:
            n = int(rng.integers(2, 4))
            key = tuple((int(rng.integers(0, len(_PITCHES))), int(rng.integers(0, len(_FORMANTS)))) for _ in range(n))
            if key not in used and len({p for p, _ in key}) > 1:
                break
        used.add(key)
        segs = [(_PITCHES[p], float(rng.uniform(-0.25, 0.25)), _FORMANTS[f]) for p, f in key]
        sigs[word] = (float(rng.uniform(0.25, 0.4)), segs)
    return sigs


_SIGNATURES = _tone_signatures()


def _tone_segment(n: int, f0: float, glide: float, formants: tuple[int, int]) -> np.ndarray:
    f_inst = f0 * (1.0 + glide * np.linspace(0.0, 1.0, n))
    phase = 2 * np.pi * np.cumsum(f_inst) / SR
    out = np.zeros(n)
    for h in range(1, int(4000 / (f0 * (1 + max(glide, 0)))) + 1):
        gain = sum(np.exp(-0.5 * ((h * f0 - f) / 120.0) ** 2) for f in formants) + 0.05 / h
        out += gain * np.sin(h * phase)
    ramp = min(n // 4, int(0.015 * SR))
    env = np.ones(n)
    env[:ramp], env[n - ramp :] = np.linspace(0, 1, ramp), np.linspace(1, 0, ramp)
    return out * env


def _tone_word(word: str, pitch_scale: float, tempo: float) -> np.ndarray:
    duration, segs = _SIGNATURES[word]
    n = int(duration / tempo * SR / len(segs))
    return np.concatenate([_tone_segment(n, f0 * pitch_scale, glide, fm) for f0, glide, fm in segs])


def tones_render(utt: Utterance, tmp_dir: str) -> np.ndarray:
    rng = np.random.default_rng(utt.seed)
    pitch, tempo = rng.uniform(0.9, 1.12), rng.uniform(0.85, 1.15)
    parts = [np.zeros(int(rng.uniform(0.05, 0.15) * SR))]
    for word in utt.words:
        parts += [_tone_word(word, pitch, tempo), np.zeros(int(rng.uniform(0.05, 0.15) * SR))]
    x = np.concatenate(parts)
    x = 0.5 * x / (np.abs(x).max() + 1e-9)
    return x + rng.normal(0.0, 0.002, size=x.size)
