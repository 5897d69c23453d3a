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
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ...errors import EnvironmentProblem, InputError
from ...logs import get_logger
from .voices import EN_WORDS, SR, ZH_WORDS, Utterance, espeak_render, tones_render

LANGS = ("en", "zh", "mixed")
BACKENDS = ("auto", "espeak", "tones")
INSTALL_HINT = "install it with `apt-get install espeak-ng`"
FALLBACK_WARNING = f"espeak-ng not found: using the synthetic tone-word fallback; {INSTALL_HINT} for real speech"

logger = get_logger(__name__)


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
        return (
            f"synth: {self.n_train} train + {self.n_test} test utterances, {self.total_seconds:.1f} s of audio, "
            f"lang {self.lang}, backend {self.backend} -> {self.train_csv}, {self.test_csv}"
        )


def vocabulary(lang: str) -> tuple[str, ...]:
    return {"en": EN_WORDS, "zh": tuple(ZH_WORDS), "mixed": EN_WORDS + tuple(ZH_WORDS)}[lang]


def resolve_backend(backend: str) -> str:
    """``auto`` → espeak when the binary exists, else tones with a warning; ``espeak`` without it is an error."""
    if backend not in BACKENDS:
        raise InputError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    found = shutil.which("espeak-ng") is not None
    if backend == "espeak" and not found:
        raise EnvironmentProblem(f"espeak-ng not found on PATH; {INSTALL_HINT} (or use --backend tones)")
    if backend == "auto" and not found:
        logger.warning("%s", FALLBACK_WARNING)
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


def _draw_unique(
    rng: np.random.Generator, langs: tuple[str, ...], pools: dict[str, tuple[str, ...]], taken: set[Seq], count: int
) -> list[Seq]:
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
        raise InputError(f"could not draw {count} distinct word sequences; ask for fewer utterances")
    return out


def plan_utterances(n_train: int, n_test: int, lang: str, seed: int) -> list[Utterance]:
    """Train/test utterances: disjoint word sequences, every test word seen in training."""
    if lang not in LANGS:
        raise InputError(f"unknown lang {lang!r}; choose one of {', '.join(LANGS)}")
    if n_train < 1 or n_test < 0:
        raise InputError(f"need n_train >= 1 and n_test >= 0 (got {n_train}, {n_test})")
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
    return [
        Utterance(f"{split}_{i:04d}", split, lg, words, int(seed))
        for (split, i, (lg, words)), seed in zip(labelled, seeds)
    ]


# ---------------------------------------------------------------- corpus


def _render_all(utts: list[Utterance], out_dir: str, backend: str, workers: int) -> list[float]:
    import soundfile as sf

    render = espeak_render if backend == "espeak" else tones_render
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


def synthesize_corpus(
    out_dir: str,
    n_train: int = 240,
    n_test: int = 40,
    lang: str = "en",
    seed: int = 0,
    backend: str = "auto",
    workers: int = 2,
) -> SynthCorpus:
    """Write the demo corpus under ``out_dir`` and return its paths and counts (see the module docstring)."""
    used = resolve_backend(backend)
    utts = plan_utterances(n_train, n_test, lang, seed)
    out_dir = os.path.abspath(out_dir)
    durations = _render_all(utts, out_dir, used, workers)
    paths = {name: os.path.join(out_dir, f"{name}.csv") for name in ("transcripts", "train", "test")}
    _write_csv(paths["transcripts"], utts)
    _write_csv(paths["train"], [u for u in utts if u.split == "train"])
    _write_csv(paths["test"], [u for u in utts if u.split == "test"])
    return SynthCorpus(
        out_dir,
        paths["transcripts"],
        paths["train"],
        paths["test"],
        n_train,
        n_test,
        lang,
        used,
        round(float(sum(durations)), 3),
    )
