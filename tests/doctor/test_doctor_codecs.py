"""``doctor`` says which compressed formats the installed libsndfile reads."""

from __future__ import annotations

import pytest
import soundfile as sf

from llamafactory_kimi_audio.doctor import audio_formats as doctor_codecs
from llamafactory_kimi_audio.doctor.audio_formats import codec_checks


def test_every_corpus_format_is_checked_by_a_round_trip() -> None:
    checks = {check.name: check for check in codec_checks()}
    assert {"audio FLAC", "audio MP3", "audio OGG/Vorbis", "audio OGG/Opus"} <= set(checks)
    for check in checks.values():  # soundfile >= 0.12 wheels (pyproject) bundle libsndfile with all four
        assert check.ok and sf.__libsndfile_version__ in check.detail and not check.required


def test_a_format_libsndfile_cannot_handle_is_reported_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(doctor_codecs, "FORMATS", {"XYZ": ("XYZ", None, "nothing")})
    (check,) = codec_checks()
    assert not check.ok and "cannot encode a test sample" in check.detail and "pip install -U" in check.fix


def test_old_libsndfile_warns_about_mp3_without_xing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sf, "__libsndfile_version__", "1.1.0")
    names = [check.name for check in codec_checks()]
    assert "audio MP3 (no Xing header)" in names
