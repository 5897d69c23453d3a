"""Demo-data generator: audio format, CSVs, split disjointness, determinism, fallback, audibility."""

from __future__ import annotations

import csv
import hashlib
import os
import shutil

import numpy as np
import pytest
import soundfile as sf

from llamafactory_kimi_audio.cli import main as cli_main
from llamafactory_kimi_audio.data.synth import corpus as synth
from llamafactory_kimi_audio.data.synth.corpus import Utterance, synthesize_corpus
from llamafactory_kimi_audio.errors import EXIT_ENV, EnvironmentProblem

HAVE_ESPEAK = shutil.which("espeak-ng") is not None
needs_espeak = pytest.mark.skipif(not HAVE_ESPEAK, reason="espeak-ng binary not on PATH (apt-get install espeak-ng)")
BACKENDS = [pytest.param("tones"), pytest.param("espeak", marks=needs_espeak)]


def read_csv(path: str) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["id", "audio", "text"]
        return list(reader)


def words_of(text: str) -> tuple[str, ...]:
    return tuple(text.split()) if " " in text or text.isascii() else tuple(text)


@pytest.fixture(scope="module", params=BACKENDS)
def corpus(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"synth_{request.param}")
    return synthesize_corpus(str(out), n_train=40, n_test=10, lang="mixed", seed=3, backend=request.param)


def test_wavs_are_16k_mono_and_durations_vary(corpus):
    rows = read_csv(corpus.transcripts_csv)
    durations = []
    for row in rows:
        x, sr = sf.read(os.path.join(corpus.out_dir, row["audio"]), always_2d=True)
        assert sr == 16000 and x.shape[1] == 1
        assert np.sqrt(np.mean(x**2)) > 0.01, f"{row['audio']} is (nearly) silent"
        durations.append(len(x) / sr)
    assert 0.3 < min(durations) and max(durations) < 5.0
    assert np.std(durations) > 0.1 and len(set(durations)) > len(durations) // 2
    assert corpus.total_seconds == pytest.approx(sum(durations), abs=0.01)


def test_csvs_match_files_and_splits(corpus):
    train, test, everything = (read_csv(p) for p in (corpus.train_csv, corpus.test_csv, corpus.transcripts_csv))
    assert (len(train), len(test)) == (corpus.n_train, corpus.n_test) == (40, 10)
    assert everything == train + test
    assert len({r["id"] for r in everything}) == 50
    wavs = {os.path.join("wavs", f) for f in os.listdir(os.path.join(corpus.out_dir, "wavs"))}
    assert {r["audio"] for r in everything} == wavs
    assert all(not os.path.isabs(r["audio"]) for r in everything)
    train_seqs = {words_of(r["text"]) for r in train}
    test_seqs = [words_of(r["text"]) for r in test]
    assert not train_seqs & set(test_seqs), "a test word sequence also occurs in training"
    train_words = {w for s in train_seqs for w in s}
    assert {w for s in test_seqs for w in s} <= train_words
    assert all(2 <= len(s) <= 4 for s in train_seqs | set(test_seqs))
    assert set(synth.vocabulary("mixed")) <= train_words, "training should cover the whole vocabulary"


@pytest.mark.parametrize("lang", ["en", "zh", "mixed"])
def test_plan_disjoint_for_every_lang(lang):
    utts = synth.plan_utterances(200, 50, lang, seed=1)
    train = {(u.lang, u.words) for u in utts if u.split == "train"}
    test = [(u.lang, u.words) for u in utts if u.split == "test"]
    assert len(train) == 200 and len(set(test)) == 50 and not train & set(test)
    assert {w for _, s in test for w in s} <= {w for _, s in train for w in s}
    assert {w for _, s in train for w in s} == set(synth.vocabulary(lang))


def _digest(folder: str) -> dict[str, str]:
    wav_dir = os.path.join(folder, "wavs")
    return {f: hashlib.sha256(open(os.path.join(wav_dir, f), "rb").read()).hexdigest() for f in os.listdir(wav_dir)}


def test_tones_deterministic(tmp_path):
    a, b, c = (
        synthesize_corpus(str(tmp_path / n), 12, 4, "en", seed=s, backend="tones")
        for n, s in (("a", 5), ("b", 5), ("c", 6))
    )
    assert open(a.transcripts_csv, "rb").read() == open(b.transcripts_csv, "rb").read()
    assert _digest(a.out_dir) == _digest(b.out_dir)
    assert open(a.transcripts_csv, "rb").read() != open(c.transcripts_csv, "rb").read()


@needs_espeak
def test_espeak_deterministic(tmp_path):
    a, b = (synthesize_corpus(str(tmp_path / n), 12, 4, "mixed", seed=5, backend="espeak") for n in "ab")
    assert open(a.transcripts_csv, "rb").read() == open(b.transcripts_csv, "rb").read()
    for row in read_csv(a.transcripts_csv):
        frames = [sf.info(os.path.join(c.out_dir, row["audio"])).frames for c in (a, b)]
        assert frames[0] == frames[1]


def test_missing_espeak_falls_back_with_warning(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    corpus = synthesize_corpus(str(tmp_path), 6, 2, "en", backend="auto")
    assert corpus.backend == "tones"
    err = capsys.readouterr().err
    assert "espeak-ng not found" in err and "apt-get install espeak-ng" in err and "tone-word fallback" in err


def test_missing_espeak_with_explicit_backend_is_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    with pytest.raises(EnvironmentProblem) as info:
        synthesize_corpus(str(tmp_path), 6, 2, backend="espeak")
    assert info.value.exit_code == EXIT_ENV and "apt-get install espeak-ng" in str(info.value)
    assert cli_main(["synth", str(tmp_path / "cli"), "--backend", "espeak"]) == EXIT_ENV
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "espeak-ng not found" in err[0] and "apt-get install espeak-ng" in err[0]


def test_cli_prints_summary(tmp_path, capsys):
    assert cli_main(["synth", str(tmp_path), "--n-train", "8", "--n-test", "2", "--backend", "tones"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "8 train + 2 test" in out[0] and "backend tones" in out[0]
    assert len(read_csv(str(tmp_path / "test.csv"))) == 2


def _spectrum(x: np.ndarray) -> np.ndarray:
    frames = np.lib.stride_tricks.sliding_window_view(x, 512)[::256] * np.hanning(512)
    spec = np.log(np.abs(np.fft.rfft(frames, axis=1)).mean(axis=0) + 1e-6)
    return spec - spec.mean()


def _render_word(backend: str, lang: str, word: str, tmp_path) -> np.ndarray:
    render = synth.espeak_render if backend == "espeak" else synth.tones_render
    return render(Utterance(f"w_{word.encode().hex()}", "train", lang, (word,), seed=7), str(tmp_path))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("lang,pair", [("en", ("one", "six")), ("en", ("red", "blue")), ("zh", ("一", "八"))])
def test_words_audible_and_spectrally_distinct(backend, lang, pair, tmp_path):
    a, b = (_render_word(backend, lang, w, tmp_path) for w in pair)
    for x in (a, b):
        assert np.sqrt(np.mean(x**2)) > 0.02
    same = _render_word(backend, lang, pair[0], tmp_path)
    sa, sb = _spectrum(a), _spectrum(b)
    distance = np.linalg.norm(sa - sb) / np.sqrt(sa.size)
    assert distance > 0.3, f"{pair} sound alike (log-spectrum distance {distance:.2f})"
    assert np.linalg.norm(_spectrum(same) - sa) < 1e-6  # same word + same seed → same audio


@pytest.mark.parametrize("backend", BACKENDS)
def test_words_identifiable_across_voices(backend, tmp_path):
    """Learnability proxy: a nearest-centroid classifier on time-averaged spectra, trained on other renders of each
    word (other voice / speed / pitch / jitter), identifies held-out single-word renders far above chance."""
    render = synth.espeak_render if backend == "espeak" else synth.tones_render
    spectra = {
        w: [
            _spectrum(render(Utterance(f"{i}_{j}", "train", "en", (w,), seed=100 + j), str(tmp_path)))
            for j in range(4)
        ]
        for i, w in enumerate(synth.EN_WORDS)
    }
    hits = 0
    for word, specs in spectra.items():
        for j, spec in enumerate(specs):
            cents = {
                w: np.mean([s for k, s in enumerate(ss) if (w, k) != (word, j)], axis=0) for w, ss in spectra.items()
            }
            hits += min(cents, key=lambda w: np.linalg.norm(cents[w] - spec)) == word
    accuracy = hits / (4 * len(spectra))
    assert accuracy > 0.5, f"held-out word accuracy {accuracy:.2f} (chance {1 / len(spectra):.2f})"
