"""Synthetic demo speech: a tiny vocabulary spoken in random word sequences, written as a user-style CSV corpus.

``synthesize_corpus`` writes ``wavs/<id>.wav`` (16 kHz mono PCM-16) plus ``transcripts.csv`` (all utterances),
``train.csv`` and ``test.csv`` with the header ``id,audio,text`` (audio relative to the CSV) -- the format a user
brings, so the demo goes through the converter. Test word sequences never occur in training, while every test
word does. Speech comes from the ``espeak-ng`` binary; without it a deterministic tone-word fallback keeps the
task learnable (with a warning on stderr, never silently). Output is a pure function of the arguments.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from ..cli._errors import EXIT_ENV, CliError

SR = 16000
EN_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "red", "blue")
# Hanzi in the transcript, pinyin for espeak (its cmn Hanzi dictionary is partial in distro builds).
ZH_WORDS = {"一": "yi1", "二": "er4", "三": "san1", "四": "si4", "五": "wu3", "六": "liu4", "七": "qi1", "八": "ba1",
            "九": "jiu3", "十": "shi2"}
EN_VOICES = ("en-us", "en-gb", "en-us+f3", "en-gb+f4", "en-us+m3", "en-gb-x-rp+f2", "en-029+m2")
ZH_VOICES = ("cmn-latn-pinyin", "cmn-latn-pinyin+f3", "cmn-latn-pinyin+m3", "cmn-latn-pinyin+f4")
LANGS = ("en", "zh", "mixed")
BACKENDS = ("auto", "espeak", "tones")
INSTALL_HINT = "install it with `apt-get install espeak-ng`"
FALLBACK_WARNING = f"espeak-ng not found: using the synthetic tone-word fallback; {INSTALL_HINT} for real speech"


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


@dataclass(frozen=True)
class SynthCorpus:
    out_dir: str
    transcripts_csv: str
    train_csv: str
    test_csv: str
    n_train: int
    n_test: int
    lang: str
    backend: str  # the backend actually used ("espeak" or "tones")
    total_seconds: float

    def summary(self) -> str:
        return (f"synth: {self.n_train} train + {self.n_test} test utterances, {self.total_seconds:.1f} s of audio, "
                f"lang {self.lang}, backend {self.backend} -> {self.train_csv}, {self.test_csv}")


def vocabulary(lang: str) -> tuple[str, ...]:
    return {"en": EN_WORDS, "zh": tuple(ZH_WORDS), "mixed": EN_WORDS + tuple(ZH_WORDS)}[lang]


def resolve_backend(backend: str) -> str:
    """``auto`` → espeak when the binary exists, else tones with a warning; ``espeak`` without it → CliError."""
    if backend not in BACKENDS:
        raise CliError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    found = shutil.which("espeak-ng") is not None
    if backend == "espeak" and not found:
        raise CliError(f"espeak-ng not found on PATH; {INSTALL_HINT} (or use --backend tones)", EXIT_ENV)
    if backend == "auto" and not found:
        print(f"warning: {FALLBACK_WARNING}", file=sys.stderr)
        return "tones"
    return "tones" if backend == "tones" else "espeak"


# ---------------------------------------------------------------- word sequences

def _random_sequence(rng: np.random.Generator, words: tuple[str, ...]) -> tuple[str, ...]:
    length = int(rng.integers(2, 5))
    return tuple(words[i] for i in rng.integers(0, len(words), size=length))


def _coverage_sequences(rng: np.random.Generator, words: tuple[str, ...]) -> list[tuple[str, ...]]:
    """A few sequences that together contain every word once (so a small train split still covers the vocab)."""
    order = [words[i] for i in rng.permutation(len(words))]
    chunks: list[tuple[str, ...]] = []
    while order:
        size = int(rng.integers(2, 5))
        size = len(order) if len(order) - size < 2 else size
        chunks.append(tuple(order[:size]))
        order = order[size:]
    return chunks


Seq = tuple[str, tuple[str, ...]]  # (lang, words)


def _draw_unique(rng: np.random.Generator, langs: tuple[str, ...], pools: dict[str, tuple[str, ...]], taken: set[Seq],
                 count: int) -> list[Seq]:
    out: list[Seq] = []
    for _ in range(200 * count + 1000):
        if len(out) == count:
            break
        lang = langs[int(rng.integers(0, len(langs)))]
        seq = _random_sequence(rng, pools[lang])
        if (lang, seq) not in taken:
            taken.add((lang, seq))
            out.append((lang, seq))
    if len(out) < count:
        raise ValueError(f"could not draw {count} distinct word sequences; ask for fewer utterances")
    return out


def plan_utterances(n_train: int, n_test: int, lang: str, seed: int) -> list[Utterance]:
    """Train/test utterances: disjoint word sequences, every test word seen in training."""
    if lang not in LANGS:
        raise CliError(f"unknown lang {lang!r}; choose one of {', '.join(LANGS)}")
    if n_train < 1 or n_test < 0:
        raise CliError(f"need n_train >= 1 and n_test >= 0 (got {n_train}, {n_test})")
    rng = np.random.default_rng(seed)
    langs = ("en", "zh") if lang == "mixed" else (lang,)
    pools = {"en": EN_WORDS, "zh": tuple(ZH_WORDS)}
    train = [(lg, seq) for lg in langs for seq in _coverage_sequences(rng, pools[lg])][:n_train]
    taken = set(train)
    train += _draw_unique(rng, langs, pools, taken, n_train - len(train))
    train = [train[i] for i in rng.permutation(len(train))]
    seen = {lg: tuple(w for w in pools[lg] if any(w in s for g, s in train if g == lg)) for lg in langs}
    test_langs = tuple(lg for lg in langs if len(seen[lg]) >= 2)
    test = _draw_unique(rng, test_langs, seen, taken, n_test) if n_test else []
    labelled = [("train", i, s) for i, s in enumerate(train)] + [("test", i, s) for i, s in enumerate(test)]
    seeds = rng.integers(0, 2**31 - 1, size=len(labelled))
    return [Utterance(f"{split}_{i:04d}", split, lg, words, int(seed))
            for (split, i, (lg, words)), seed in zip(labelled, seeds)]


# ---------------------------------------------------------------- espeak backend

def _resample(x: np.ndarray, sr: int) -> np.ndarray:
    from scipy.signal import resample_poly

    ratio = Fraction(SR, sr)
    return x if sr == SR else resample_poly(x, ratio.numerator, ratio.denominator)


def _trim(x: np.ndarray, pad: float = 0.08) -> np.ndarray:
    """Cut espeak's leading/trailing silence, keeping ``pad`` seconds each side."""
    loud = np.flatnonzero(np.abs(x) > 0.02 * (np.abs(x).max() + 1e-9))
    if loud.size == 0:
        return x
    k = int(pad * SR)
    return x[max(0, loud[0] - k): loud[-1] + k]


def _espeak_render(utt: Utterance, tmp_dir: str) -> np.ndarray:
    import soundfile as sf

    rng = np.random.default_rng(utt.seed)
    voices = EN_VOICES if utt.lang == "en" else ZH_VOICES
    text = " ".join(utt.words) if utt.lang == "en" else " ".join(ZH_WORDS[w] for w in utt.words)
    tmp = os.path.join(tmp_dir, f"{utt.uid}.wav")
    cmd = ["espeak-ng", "-v", voices[int(rng.integers(0, len(voices)))], "-s", str(int(rng.integers(135, 196))),
           "-p", str(int(rng.integers(30, 71))), "-g", str(int(rng.integers(0, 4))), "-w", tmp, text]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise CliError(f"espeak-ng failed ({' '.join(cmd)}): {proc.stderr.strip()[:300]}", EXIT_ENV)
    x, sr = sf.read(tmp, dtype="float32", always_2d=True)
    return _trim(_resample(x.mean(axis=1), sr))


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
    env[:ramp], env[n - ramp:] = np.linspace(0, 1, ramp), np.linspace(1, 0, ramp)
    return out * env


def _tone_word(word: str, pitch_scale: float, tempo: float) -> np.ndarray:
    duration, segs = _SIGNATURES[word]
    n = int(duration / tempo * SR / len(segs))
    return np.concatenate([_tone_segment(n, f0 * pitch_scale, glide, fm) for f0, glide, fm in segs])


def _tones_render(utt: Utterance, tmp_dir: str) -> np.ndarray:
    rng = np.random.default_rng(utt.seed)
    pitch, tempo = rng.uniform(0.9, 1.12), rng.uniform(0.85, 1.15)
    parts = [np.zeros(int(rng.uniform(0.05, 0.15) * SR))]
    for word in utt.words:
        parts += [_tone_word(word, pitch, tempo), np.zeros(int(rng.uniform(0.05, 0.15) * SR))]
    x = np.concatenate(parts)
    x = 0.5 * x / (np.abs(x).max() + 1e-9)
    return x + rng.normal(0.0, 0.002, size=x.size)


# ---------------------------------------------------------------- corpus

def _render_all(utts: list[Utterance], out_dir: str, backend: str, workers: int) -> list[float]:
    import soundfile as sf

    render = _espeak_render if backend == "espeak" else _tones_render
    os.makedirs(os.path.join(out_dir, "wavs"), exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kimi-synth-") as tmp_dir:
        def job(utt: Utterance) -> float:
            x = np.clip(render(utt, tmp_dir), -1.0, 1.0)
            sf.write(os.path.join(out_dir, utt.audio), x, SR, subtype="PCM_16")
            return len(x) / SR

        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            return list(pool.map(job, utts))


def _write_csv(path: str, utts: list[Utterance]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["id", "audio", "text"])
        writer.writerows([u.uid, u.audio, u.text] for u in utts)


def synthesize_corpus(out_dir: str, n_train: int = 240, n_test: int = 40, lang: str = "en", seed: int = 0,
                      backend: str = "auto", workers: int = 2) -> SynthCorpus:
    """Write the demo corpus under ``out_dir`` and return its paths and counts (see the module docstring)."""
    used = resolve_backend(backend)
    utts = plan_utterances(n_train, n_test, lang, seed)
    out_dir = os.path.abspath(out_dir)
    durations = _render_all(utts, out_dir, used, workers)
    paths = {name: os.path.join(out_dir, f"{name}.csv") for name in ("transcripts", "train", "test")}
    _write_csv(paths["transcripts"], utts)
    _write_csv(paths["train"], [u for u in utts if u.split == "train"])
    _write_csv(paths["test"], [u for u in utts if u.split == "test"])
    return SynthCorpus(out_dir, paths["transcripts"], paths["train"], paths["test"], n_train, n_test, lang, used,
                       round(float(sum(durations)), 3))
