"""The modules below ``data/`` and ``eval/`` (``constants``, ``text``, ``dataset_info``), the error classes of
``data/``, and the import direction ``eval → data``: ``data/`` never imports ``eval/`` or ``cli/``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from import_graph import PACKAGE, ROOT, import_graph, imported_modules

from llamafactory_kimi_audio import text
from llamafactory_kimi_audio.errors import EnvironmentProblem, InputError, ModelError
from llamafactory_kimi_audio.fileio.dataset_info import media_root, read_dataset_info


def package_imports(path: Path) -> set[str]:
    """Package-relative names a module imports (``..eval.normalize`` from ``data/x.py`` → ``eval.normalize``)."""
    prefix = f"{PACKAGE}."
    return {name.removeprefix(prefix) for name in imported_modules(path) if name.startswith(prefix)}


@pytest.mark.parametrize(
    ("files", "forbidden"),
    [
        ("data/**/*.py", ("eval", "cli", "integration")),
        ("fileio/*.py", ("data", "eval", "cli", "integration", "models", "doctor")),
        ("constants.py", ("data", "eval", "cli", "integration")),
        ("text.py", ("data", "eval", "cli", "integration", "models")),
    ],
)
def test_import_direction(files: str, forbidden: tuple[str, ...]) -> None:
    paths = sorted(ROOT.glob(files))
    assert paths
    for path in paths:
        bad = {name for name in package_imports(path) if name.split(".")[0] in forbidden}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_constants_are_defined_once_in_models() -> None:
    """The data side's ``constants`` re-exports ``models/constants.py`` (which may not import outside models/)."""
    from llamafactory_kimi_audio import constants
    from llamafactory_kimi_audio.models import constants as model_constants

    assert import_graph()[f"{PACKAGE}.constants"] == {f"{PACKAGE}.models.constants"}
    for name in ("MODEL_TYPE", "SAMPLE_RATE", "CHUNK_SECONDS", "CHUNK_SAMPLES", "SAMPLES_PER_TOKEN"):
        assert getattr(constants, name) is getattr(model_constants, name)


def test_library_errors_sit_in_the_hierarchy() -> None:
    from llamafactory_kimi_audio.data.features.encoders import EncoderError
    from llamafactory_kimi_audio.data.features.feature_cache import CacheEntryError
    from llamafactory_kimi_audio.fileio.audio_errors import AudioError
    from llamafactory_kimi_audio.fileio.textio import DataError

    for kind, root, code in [
        (AudioError, InputError, 2),
        (DataError, InputError, 2),
        (CacheEntryError, InputError, 2),
    ]:
        assert issubclass(kind, root) and issubclass(kind, ValueError) and kind("x").exit_code == code
    assert issubclass(EncoderError, ModelError) and not issubclass(EncoderError, ValueError)
    assert EncoderError("x").exit_code == 3 and EnvironmentProblem("x").exit_code == 4


def test_synth_raises_library_errors(monkeypatch) -> None:
    import shutil

    from llamafactory_kimi_audio.data.synth import corpus as synth

    with pytest.raises(InputError, match="unknown lang 'fr'"):
        synth.plan_utterances(3, 1, "fr", 0)
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    with pytest.raises(EnvironmentProblem, match="espeak-ng not found on PATH"):
        synth.resolve_backend("espeak")


# ------------------------------------------------------------------------------------------------------ text.py
def test_character_classes() -> None:
    assert [text.is_han(c) for c in "数かA한"] == [True, False, False, False]
    assert [text.is_cjk_char(c) for c in "数かA한，"] == [True, True, False, True, False]
    assert text.drop_spaceless_gaps("今天 天气 ， 很好 ok") == "今天天气，很好 ok"
    assert text.drop_spaceless_gaps("안녕 하세요") == "안녕 하세요"  # Korean keeps its word spaces


def test_language_detection_counts_words_and_characters() -> None:
    assert text.detect_language("我们讨论machine learning和deep learning") == "zh"
    assert text.detect_language("I visited 北京 last summer with my family") == "en"
    assert text.detect_language(["你好", "hello world", "再见"]) == "zh"  # 4 characters vs 2 words
    assert text.cjk_ratio("") == 0.0 and text.detect_language("") == "en"


def test_eval_uses_the_same_functions() -> None:
    from llamafactory_kimi_audio.eval import normalize

    assert normalize.detect_language is text.detect_language and normalize.is_cjk_char is text.is_cjk_char


# ---------------------------------------------------------------------------------------------- fileio/dataset_info.py
def test_dataset_info_absent_valid_and_broken(tmp_path: Path) -> None:
    assert read_dataset_info(str(tmp_path)) is None
    (tmp_path / "dataset_info.json").write_text('{"a": {"file_name": "a.json"}}', encoding="utf-8-sig")
    assert read_dataset_info(str(tmp_path)) == {"a": {"file_name": "a.json"}}
    cases = [
        (b'{"a": 1,\n oops}', "dataset_info.json line 2: invalid JSON (Expecting property name"),
        (b"[1, 2]", "dataset_info.json: expected a JSON object of dataset entries, got list"),
        ('{"a": "数据"}'.encode("gbk"), "dataset_info.json: not UTF-8 text"),
    ]
    for raw, message in cases:
        (tmp_path / "dataset_info.json").write_bytes(raw)
        with pytest.raises(InputError) as info:
            read_dataset_info(str(tmp_path))
        assert message in str(info.value) and str(info.value).startswith(str(tmp_path))


def test_media_root_finds_the_dataset_folder(tmp_path: Path) -> None:
    data = tmp_path / "sets" / "asr" / "test.json"
    data.parent.mkdir(parents=True)
    data.write_text("[]", encoding="utf-8")
    assert media_root(str(data)) == str(data.parent)
    (tmp_path / "sets" / "dataset_info.json").write_text(json.dumps({"t": {"file_name": "asr/test.json"}}))
    assert media_root(str(data)) == str(tmp_path / "sets")
    (tmp_path / "sets" / "dataset_info.json").write_text("{broken")
    with pytest.raises(InputError, match="dataset_info.json line 1: invalid JSON"):
        media_root(str(data))  # one policy: a dataset_info.json that cannot be read is never silently skipped
