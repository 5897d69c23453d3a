"""settings.py: one prefix, one parsing rule, defaults, read once per process."""

from __future__ import annotations

import pytest

from llamafactory_kimi_audio import settings


@pytest.fixture
def env(monkeypatch, capsys):
    """Set variables, re-read the settings; the cache and the warned messages are reset around each test."""
    for setting in settings.SETTINGS:
        monkeypatch.delenv(setting.name, raising=False)
    monkeypatch.setattr(settings, "_warned", set())
    settings.reload()

    def set_env(**values: str):
        for name, value in values.items():
            monkeypatch.setenv(name, value)
        settings.reload()
        capsys.readouterr()

    yield set_env
    monkeypatch.undo()
    settings.reload()


def test_one_prefix_and_every_default(env):
    assert all(setting.name.startswith(settings.PREFIX) for setting in settings.SETTINGS)
    assert {s.name: settings.get(s.name) for s in settings.SETTINGS} == {s.name: s.default for s in settings.SETTINGS}
    assert settings.get("KIMI_AUDIO_FUSED_LORA") is True and settings.get("KIMI_AUDIO_DISABLE") is False


@pytest.mark.parametrize(
    "raw, expected",
    [("1", True), ("TRUE", True), (" yes ", True), ("on", True), ("0", False), ("False", False), ("off", False)],
)
def test_switches_share_one_parsing_rule(env, raw, expected):
    env(KIMI_AUDIO_STRICT=raw, KIMI_AUDIO_FUSED_LORA=raw)
    assert settings.get("KIMI_AUDIO_STRICT") is expected and settings.get("KIMI_AUDIO_FUSED_LORA") is expected


def test_a_bad_value_is_one_warning_and_the_default(env, capsys):
    env(KIMI_AUDIO_FUSED_LORA="maybe", KIMI_AUDIO_COMPILE_POINTWISE="fast")
    assert settings.get("KIMI_AUDIO_FUSED_LORA") is True
    assert settings.get("KIMI_AUDIO_COMPILE_POINTWISE") == "auto"
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "llamafactory-kimi-audio: KIMI_AUDIO_FUSED_LORA='maybe' is not a switch (use 1 or 0); using the default True",
        "llamafactory-kimi-audio: KIMI_AUDIO_COMPILE_POINTWISE='fast' is not one of off, on, layers, auto; "
        "using 'auto'",
    ]


@pytest.mark.parametrize("raw, expected", [("layers", "layers"), ("ON", "on"), ("1", "on"), ("0", "off")])
def test_choices(env, raw, expected):
    env(KIMI_AUDIO_COMPILE_POINTWISE=raw)
    assert settings.get("KIMI_AUDIO_COMPILE_POINTWISE") == expected


def test_read_once_per_process(env, monkeypatch):
    env(KIMI_AUDIO_DEFAULT_INSTRUCTION="Transcribe.")
    assert settings.get("KIMI_AUDIO_DEFAULT_INSTRUCTION") == "Transcribe."
    monkeypatch.setenv("KIMI_AUDIO_DEFAULT_INSTRUCTION", "Changed.")
    assert settings.get("KIMI_AUDIO_DEFAULT_INSTRUCTION") == "Transcribe."  # cached
    settings.reload()
    assert settings.get("KIMI_AUDIO_DEFAULT_INSTRUCTION") == "Changed."


def test_env_for_and_describe(env):
    assert settings.env_for("KIMI_AUDIO_FUSED_LORA", False) == {"KIMI_AUDIO_FUSED_LORA": "0"}
    assert settings.env_for("KIMI_AUDIO_COMPILE_POINTWISE", "layers") == {"KIMI_AUDIO_COMPILE_POINTWISE": "layers"}
    rows = settings.describe()
    assert [row[0] for row in rows] == [s.name for s in settings.SETTINGS] and all(row[2] for row in rows)


def test_the_model_finds_the_glm4_voice_tokenizer_through_the_setting(env, tiny_checkpoint, tmp_path):
    """KIMI_AUDIO_SEMANTIC_TOKENIZER is read through settings.py by the model's config too (no second reader)."""
    import shutil
    from pathlib import Path

    from llamafactory_kimi_audio.models.configuration_kimi_audio import KimiAudioConfig
    from llamafactory_kimi_audio.models.constants import SEMANTIC_SUBDIR, find_semantic_tokenizer

    model_dir = tmp_path / "models" / "kimi"
    shutil.copytree(tiny_checkpoint.path, model_dir, ignore=shutil.ignore_patterns(SEMANTIC_SUBDIR))
    elsewhere = tmp_path / "tokenizers" / "glm4"
    shutil.copytree(Path(tiny_checkpoint.path) / SEMANTIC_SUBDIR, elsewhere)
    assert find_semantic_tokenizer(str(model_dir)) is None
    env(KIMI_AUDIO_SEMANTIC_TOKENIZER=str(elsewhere))
    assert find_semantic_tokenizer(str(model_dir)) == str(elsewhere)
    assert KimiAudioConfig.from_pretrained(str(model_dir)).semantic_tokenizer_path == str(elsewhere)


def test_every_variable_the_package_names_is_declared_here():
    """A ``KIMI_AUDIO_*`` name anywhere in the package's code is a row of settings.py (no undeclared variable)."""
    import re
    from pathlib import Path

    package = Path(settings.__file__).parent
    declared = {setting.name for setting in settings.SETTINGS}
    used = {
        (name, path.relative_to(package).as_posix())
        for path in package.rglob("*.py")
        for name in re.findall(r"\bKIMI_AUDIO_[A-Z0-9_]*[A-Z0-9]\b", path.read_text(encoding="utf-8"))
    }
    assert len(used) > 20  # the scan sees the package
    assert sorted(item for item in used if item[0] not in declared) == []
