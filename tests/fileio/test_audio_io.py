"""Audio reading as the official pipeline does it (``librosa.load(path, sr=16000)``), and truncated WAV files.

The reference for resampling is soxr itself, called with the parameters librosa documents for its default
``res_type="soxr_hq"``: the float32 channel mean (``librosa.to_mono``), ``soxr.resample(y, sr, 16000,
quality="soxr_hq")``, then ``librosa.util.fix_length`` to ``ceil(frames * 16000 / sr)`` samples. librosa itself is
used as a second reference when it is installed.
"""

from __future__ import annotations

import math
import struct
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from llamafactory_kimi_audio.errors import InputError
from llamafactory_kimi_audio.fileio.audio import load_audio, probe, resampled_length
from llamafactory_kimi_audio.fileio.audio_errors import AudioError, TruncatedAudioError

RATES = (8000, 22050, 44100, 48000)


def write(path: Path, frames: int, sr: int, channels: int = 1, subtype: str = "FLOAT", seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    wave = (0.3 * rng.standard_normal((frames, channels))).clip(-1, 1).astype(np.float32)
    sf.write(path, wave if channels > 1 else wave[:, 0], sr, subtype=subtype)
    return path


def reference(path: Path) -> np.ndarray:
    """What librosa.load(path, sr=16000) computes, written out from librosa's documented defaults."""
    data, sr = sf.read(path, dtype="float32", always_2d=True)
    mono = np.mean(data.T, axis=0)  # librosa.to_mono on librosa's (channels, frames) layout
    if sr == 16000:
        return mono
    out = soxr.resample(mono, sr, 16000, quality="soxr_hq")
    length = math.ceil(Fraction(len(mono) * 16000, sr))
    return out[:length] if len(out) >= length else np.pad(out, (0, length - len(out)))


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("sr", RATES)
def test_resampling_is_soxr_hq_exactly(tmp_path: Path, sr: int, channels: int) -> None:
    for frames in (1, 999, sr + 7):
        path = write(tmp_path / f"{sr}_{channels}_{frames}.wav", frames, sr, channels, seed=frames)
        wave = load_audio(str(path))
        assert wave.dtype == np.float32
        np.testing.assert_array_equal(wave, reference(path))


def test_equal_to_librosa_when_installed(tmp_path: Path) -> None:
    librosa = pytest.importorskip("librosa")
    for sr in RATES:
        for channels in (1, 2):
            path = write(tmp_path / f"{sr}_{channels}.wav", 3 * sr + 11, sr, channels, subtype="PCM_16", seed=sr)
            expected, _ = librosa.load(path, sr=16000)
            np.testing.assert_array_equal(load_audio(str(path)), expected)


def test_resampling_keeps_the_passband_and_removes_aliases(tmp_path: Path) -> None:
    t = np.arange(48000) / 48000
    inside, above = np.sin(2 * np.pi * 1000 * t), np.sin(2 * np.pi * 10000 * t)  # 10 kHz > the 8 kHz Nyquist
    sf.write(tmp_path / "in.wav", (0.5 * inside).astype(np.float32), 48000, subtype="FLOAT")
    sf.write(tmp_path / "alias.wav", (0.5 * above).astype(np.float32), 48000, subtype="FLOAT")
    got, middle = load_audio(str(tmp_path / "in.wav")), slice(1000, 15000)
    want = 0.5 * np.sin(2 * np.pi * 1000 * np.arange(16000) / 16000)
    assert np.abs(got[middle] - want[middle]).max() < 1e-4
    assert np.sqrt(np.mean(load_audio(str(tmp_path / "alias.wav"))[middle] ** 2)) < 1e-4


@pytest.mark.parametrize("sr", [*RATES, 11025, 32000, 96000])
def test_header_length_equals_decoded_length(tmp_path: Path, sr: int) -> None:
    for frames in (1, 2, 441, 1280, sr, 2 * sr + 1):
        path = write(tmp_path / f"{frames}.wav", frames, sr)
        assert resampled_length(frames, sr) == probe(str(path)).num_samples_16k == len(load_audio(str(path)))
        assert len(load_audio(np.zeros(frames, np.float32), sr)) == resampled_length(frames, sr)


# ------------------------------------------------------------------------------------------------ truncation
def truncated(path: Path, keep_frames: int = 4000) -> Path:
    """A real 0.5 s 16 kHz PCM-16 WAV (8000 frames) cut after ``keep_frames`` frames, as an interrupted copy."""
    write(path, 8000, 16000, subtype="PCM_16")
    with open(path, "r+b") as fh:
        fh.truncate(44 + 2 * keep_frames)  # the canonical 44-byte header, then 2 bytes per frame
    return path


def test_truncated_wav_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = str(truncated(tmp_path / "cut.wav"))
    assert sf.info(path).frames == 4000  # libsndfile alone silently shortens the clip
    expected = (
        f"{path}: truncated audio: the WAV header declares 8000 frames (0.50 s) but the file holds 4000 (0.25 s); "
        "copy the file again from its source or re-export it (or delete its row)"
    )
    for read in (probe, load_audio):
        with pytest.raises(TruncatedAudioError) as info:
            read(path)
        assert str(info.value) == expected and "\n" not in str(info.value)
        assert isinstance(info.value, AudioError) and isinstance(info.value, InputError)


def test_complete_and_streamed_wavs_are_accepted(tmp_path: Path) -> None:
    whole = write(tmp_path / "whole.wav", 8000, 16000, subtype="PCM_16")
    assert probe(str(whole)).frames == 8000
    streamed = tmp_path / "streamed.wav"  # a writer that could not seek back leaves the size fields at 0xFFFFFFFF
    raw = bytearray(whole.read_bytes())
    raw[4:8] = raw[40:44] = struct.pack("<I", 0xFFFFFFFF)
    streamed.write_bytes(bytes(raw))
    assert len(load_audio(str(streamed))) == 8000
    extra = tmp_path / "extra.wav"  # trailing bytes after the data chunk are no truncation
    extra.write_bytes(whole.read_bytes() + b"LIST\x04\x00\x00\x00abcd")
    assert probe(str(extra)).frames == 8000


def test_truncation_found_behind_other_chunks(tmp_path: Path) -> None:
    """A chunk of odd size (padded to even) before ``data``, as tagging tools write; then the file is cut."""
    raw = write(tmp_path / "plain.wav", 8000, 16000, subtype="PCM_16").read_bytes()
    assert raw[36:40] == b"data"  # canonical layout: RIFF header, fmt chunk, data chunk
    tagged = raw[:36] + b"LIST" + struct.pack("<I", 5) + b"INFO\x00\x00" + raw[36:]
    (tmp_path / "tagged.wav").write_bytes(tagged)
    assert probe(str(tmp_path / "tagged.wav")).frames == 8000
    (tmp_path / "cut.wav").write_bytes(tagged[: len(tagged) - 2 * 1000])
    with pytest.raises(TruncatedAudioError, match="declares 8000 frames .* holds 7000 "):
        probe(str(tmp_path / "cut.wav"))


def test_training_refuses_a_truncated_wav(tmp_path: Path) -> None:
    """The plugin counts placeholders from the header (dataset preprocessing) and decodes at collate time."""
    import llamafactory.data.mm_plugin  # noqa: F401  (LLaMA-Factory first, as in training)

    from llamafactory_kimi_audio.integration.mm_plugin import audio_token_count

    path = str(truncated(tmp_path / "cut.wav"))
    with pytest.raises(TruncatedAudioError, match=f"^{path}: truncated audio"):
        audio_token_count(path)
    with pytest.raises(TruncatedAudioError, match=f"^{path}: truncated audio"):
        load_audio({"path": path})
