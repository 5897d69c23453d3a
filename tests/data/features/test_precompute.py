"""``kimi-audio-lf precompute``: cached codes / Whisper rows equal what the model computes online, resumable, atomic,
and served by the LLaMA-Factory plugin. Runs on the tiny checkpoint and a few synthetic clips (CPU, seconds)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from llamafactory_kimi_audio import settings
from llamafactory_kimi_audio.cli import main
from llamafactory_kimi_audio.data.features.cache_format import clip_key
from llamafactory_kimi_audio.data.features.dataset_audio import collect_audio_paths, data_file, dataset_files
from llamafactory_kimi_audio.data.features.feature_cache import CACHE_ENV, FeatureCache, encoder_identity
from llamafactory_kimi_audio.data.features.precompute import PrecomputeOptions, load_audio_encoders, precompute
from llamafactory_kimi_audio.fileio.audio import load_audio
from llamafactory_kimi_audio.fileio.audio_errors import AudioError
from llamafactory_kimi_audio.models import special_tokens as st

QUIET = {"progress": False}


def _clip(seconds: float, freq: float, rate: int = 16000, channels: int = 1, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(seed)
    mono = 0.4 * np.sin(2 * np.pi * freq * t * (1 + 0.3 * t)) + 0.05 * rng.standard_normal(t.size)
    return np.stack([mono] * channels, axis=1).astype(np.float32) if channels > 1 else mono.astype(np.float32)


@pytest.fixture(scope="module")
def wavs(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    folder = tmp_path_factory.mktemp("wavs")
    specs = [("a.wav", 0.7, 220, 16000, 1), ("b.wav", 1.9, 440, 16000, 1), ("c.wav", 1.3, 330, 22050, 2)]
    paths = []
    for i, (name, seconds, freq, rate, channels) in enumerate(specs):
        sf.write(folder / name, _clip(seconds, freq, rate, channels, seed=i), rate)
        paths.append(str(folder / name))
    return paths


@pytest.fixture(scope="module")
def bad_wav(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("bad") / "broken.wav"
    path.write_bytes(b"RIFF\x00\x00not really a wave file")
    return str(path)


@pytest.fixture(scope="module")
def model_dir(tiny_checkpoint) -> str:
    return tiny_checkpoint.path


@pytest.fixture(scope="module")
def model(model_dir: str):
    from llamafactory_kimi_audio.models.modeling_kimi_audio import KimiAudioForCausalLM

    return KimiAudioForCausalLM.from_pretrained(model_dir).eval()


@pytest.fixture(scope="module")
def processor(model_dir: str):
    from llamafactory_kimi_audio.models.processing_kimi_audio import KimiAudioProcessor

    return KimiAudioProcessor.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def encoders(model_dir: str):
    return load_audio_encoders(model_dir, "cpu")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory, model_dir: str, wavs: list[str], encoders):
    root = str(tmp_path_factory.mktemp("cache"))
    result = precompute(model_dir, wavs, PrecomputeOptions(cache_dir=root, batch_size=2, **QUIET), encoders=encoders)
    assert (result.computed, result.skipped, result.failed) == (3, 0, 0)
    return result


def _entry(cache, audio: str, root: str | None = None) -> dict[str, torch.Tensor]:
    store = FeatureCache(root or cache.cache_dir, cache.identity)
    codes, rows = store.read(store.find(clip_key(audio)), audio)
    return {"codes": codes, "rows": rows}


def _damage(root: str, identity: str, audios: list[str]) -> list[str]:
    """The payload of the first clip cut short (a copy that stopped), the second's bytes garbled (a disk error);
    returns the shard file that holds them."""
    store = FeatureCache(root, identity)
    shard = ""
    for n, audio in enumerate(audios):
        at = store.find(clip_key(audio))
        record, shard = store.index.records[at], store.index.shard_path(at)
        offset = int(record["offset"]) + int(record["length"]) - 16
        with open(shard, "r+b") as fh:
            if n == 0 and offset + 16 == os.path.getsize(shard):
                fh.truncate(offset)
            else:
                fh.seek(offset)
                fh.write(b"\xff" * 8)
    return [shard] * len(audios)


def _cached_batch(cache, audios: list[str]) -> dict[str, torch.Tensor]:
    entries = [_entry(cache, audio) for audio in audios]
    return {
        "audio_codes": torch.cat([e["codes"] for e in entries]),
        "whisper_features": torch.cat([e["rows"] for e in entries]),
    }


def test_entries_equal_online_features(cache, wavs, model, processor) -> None:
    for audio in wavs:
        wave = load_audio(audio)
        raw = processor.audio_inputs([wave])
        online_codes = model.audio_codes_from_features(raw["semantic_input_features"], raw["semantic_frame_mask"])
        online_rows = model.whisper_rows(raw["audio_input_features"], raw["audio_chunk_tokens"])
        entry = _entry(cache, audio)
        assert entry["codes"].dtype == torch.int64 and entry["rows"].dtype == torch.float32
        assert torch.equal(entry["codes"], online_codes)
        assert torch.equal(entry["rows"], online_rows)  # bit for bit
        # frame_inputs: what the model fuses, from raw audio vs from the cache
        ids = processor.asr_inputs([wave], [None])["input_ids"]
        is_frame = ids == processor.tokenizer.convert_tokens_to_ids(st.AUDIO_PLACEHOLDER)
        n = int(is_frame.sum())
        codes_raw, rows_raw = model.frame_inputs(ids, is_frame, n, raw)
        codes_cached, rows_cached = model.frame_inputs(ids, is_frame, n, _cached_batch(cache, [audio]))
        assert torch.equal(codes_raw, codes_cached) and torch.equal(rows_cached, rows_raw)


def test_batches_split_per_audio_across_30s_chunks(encoders, model) -> None:
    waves = [_clip(30.5, 500, seed=1), _clip(0.9, 700, seed=2)]
    encoded = encoders.encode(waves)
    for wave, (codes, rows) in zip(waves, encoded):
        raw = encoders.processor.audio_inputs([wave])
        assert torch.equal(
            codes, model.audio_codes_from_features(raw["semantic_input_features"], raw["semantic_frame_mask"])
        )
        torch.testing.assert_close(rows, model.whisper_rows(raw["audio_input_features"], raw["audio_chunk_tokens"]))
    assert [c.shape[0] for c, _ in encoded] == [382, 12]  # (L - 1) // 1280 + 1 per 30 s chunk: 375 + 7


def test_forward_with_cache_equals_raw_audio(cache, wavs, model, processor) -> None:
    waves = [load_audio(audio) for audio in wavs]
    batch = processor.asr_inputs(waves, [None] * len(waves), padding_side="right")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    with torch.no_grad():
        raw = model(**batch, labels=labels).loss
        cached = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            labels=labels,
            **_cached_batch(cache, wavs),
        ).loss
    assert torch.isfinite(raw)
    torch.testing.assert_close(cached, raw, rtol=1e-5, atol=1e-6)


def test_second_run_skips_everything(cache, model_dir, wavs, encoders) -> None:
    options = PrecomputeOptions(cache_dir=cache.cache_dir, **QUIET)
    again = precompute(model_dir, [*wavs, wavs[0]], options, encoders=encoders)
    assert (again.computed, again.skipped, again.failed) == (0, 3, 0)  # a path listed twice counts once


def test_interrupted_run_leaves_only_complete_entries(tmp_path: Path, model_dir, wavs, encoders, monkeypatch) -> None:
    from llamafactory_kimi_audio.data.features import cache_store

    real_write, calls = cache_store._write_all, []

    def write_then_die(fd, data):
        calls.append(fd)
        if len(calls) == 3:  # the second payload: half of it on disk, then the user hits Ctrl-C
            real_write(fd, data[: len(data) // 2])
            raise KeyboardInterrupt
        return real_write(fd, data)

    monkeypatch.setattr(cache_store, "_write_all", write_then_die)
    options = PrecomputeOptions(cache_dir=str(tmp_path), batch_size=1, **QUIET)
    with pytest.raises(KeyboardInterrupt):
        precompute(model_dir, wavs, options, encoders=encoders)
    monkeypatch.setattr(cache_store, "_write_all", real_write)
    store = FeatureCache(str(tmp_path), encoder_identity(model_dir))
    assert len(store.index) == 1  # the half-written payload has no index record
    resumed = precompute(model_dir, wavs, options, encoders=encoders)
    assert (resumed.computed, resumed.skipped, resumed.failed) == (2, 1, 0)
    store.refresh()
    assert len(store.index) == 3 and all(store.read(at, "x")[1] is not None for at in store.index)


def test_bad_audio_is_reported_and_counted(tmp_path: Path, model_dir, wavs, bad_wav, encoders) -> None:
    lines: list[str] = []
    options = PrecomputeOptions(cache_dir=str(tmp_path), **QUIET)
    result = precompute(model_dir, [wavs[0], bad_wav, wavs[1]], options, encoders=encoders, report=lines.append)
    assert (result.computed, result.skipped, result.failed) == (2, 0, 1)
    assert len(lines) == 1 and bad_wav in lines[0]
    strict = PrecomputeOptions(cache_dir=str(tmp_path / "strict"), strict=True, **QUIET)
    with pytest.raises(AudioError, match="broken.wav"):
        precompute(model_dir, [bad_wav, wavs[0]], strict, encoders=encoders)


def test_plugin_serves_cached_tensors(cache, wavs, processor, monkeypatch) -> None:
    import llamafactory.data.mm_plugin  # noqa: F401  (LLaMA-Factory first, as in training)

    from llamafactory_kimi_audio.integration.mm_plugin import KimiAudioPlugin

    plugin = KimiAudioPlugin(image_token=None, video_token=None, audio_token=st.AUDIO_PLACEHOLDER)
    n = len(wavs)
    monkeypatch.setenv(CACHE_ENV, cache.cache_dir)
    settings.reload()  # settings are read once per process
    got = plugin.get_mm_inputs([], [], list(wavs), [0] * n, [0] * n, [1] * n, [[]] * n, processor)
    expected = _cached_batch(cache, wavs)
    assert set(got) == {"audio_codes", "whisper_features"}  # no write-through in this process: no meta
    assert torch.equal(got["audio_codes"], expected["audio_codes"])
    assert torch.equal(got["whisper_features"], expected["whisper_features"])
    monkeypatch.delenv(CACHE_ENV)
    settings.reload()
    assert "audio_input_features" in plugin.get_mm_inputs(
        [], [], list(wavs), [0] * n, [0] * n, [1] * n, [[]] * n, processor
    )


def _dataset(folder: Path, audios: list[str]) -> Path:
    rows = [
        {
            "messages": [{"role": "user", "content": "<audio>"}, {"role": "assistant", "content": "x"}],
            "audios": [os.path.relpath(a, folder) if i % 2 else a],
        }
        for i, a in enumerate(audios)
    ]
    (folder / "asr.json").write_text(json.dumps(rows))
    info = {
        "asr": {
            "file_name": "asr.json",
            "formatting": "sharegpt",
            "columns": {"messages": "messages", "audios": "audios"},
        }
    }
    (folder / "dataset_info.json").write_text(json.dumps(info))
    return folder / "asr.json"


def test_dataset_reading_resolves_relative_paths(tmp_path: Path, wavs) -> None:
    data = _dataset(tmp_path, [*wavs, wavs[0]])
    assert collect_audio_paths([data_file(str(data))]).paths == wavs
    assert collect_audio_paths(dataset_files(str(tmp_path), ["asr"])).paths == wavs


def test_cli_summary_failures_and_exit_code(tmp_path: Path, model_dir, wavs, bad_wav, capsys) -> None:
    data = _dataset(tmp_path, [*wavs, bad_wav])
    cache_dir = tmp_path / "cache"
    argv = [
        "precompute",
        "--model",
        model_dir,
        "--data",
        str(data),
        "--cache",
        str(cache_dir),
        "--device",
        "cpu",
        "--no-progress",
    ]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert "3 computed, 0 skipped (already cached), 1 failed" in out
    assert f"export {CACHE_ENV}={cache_dir}" in out
    assert "broken.wav" in err and len([line for line in err.splitlines() if "broken.wav" in line]) == 1
    by_name = ["precompute", "--model", model_dir, "--dataset-dir", str(tmp_path), "--dataset", "asr", *argv[5:]]
    assert main(by_name) == 2
    assert "0 computed, 3 skipped (already cached), 1 failed" in capsys.readouterr().out
    assert main([*argv, "--strict"]) == 2
    assert "broken.wav" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- bad cache entries, bad files
def test_bad_cache_entry_stops_training_with_one_line(tmp_path: Path, cache, wavs, processor, monkeypatch) -> None:
    import shutil

    import llamafactory.data.mm_plugin  # noqa: F401  (LLaMA-Factory first, as in training)

    from llamafactory_kimi_audio.data.features.feature_cache import CacheEntryError
    from llamafactory_kimi_audio.errors import InputError
    from llamafactory_kimi_audio.integration.mm_plugin import KimiAudioPlugin

    root = str(tmp_path / "cache")
    shutil.copytree(cache.cache_dir, root)
    entries = _damage(root, cache.identity, wavs[:2])
    plugin = KimiAudioPlugin(image_token=None, video_token=None, audio_token=st.AUDIO_PLACEHOLDER)
    monkeypatch.setenv(CACHE_ENV, root)
    settings.reload()
    for entry, audio in zip(entries, wavs):
        with pytest.raises(CacheEntryError) as info:
            plugin.get_mm_inputs([], [], [audio], [0], [0], [1], [[]], processor)
        message = str(info.value)
        assert message.startswith(f"{audio}: damaged feature-cache entry in {entry} at byte ") and "\n" not in message
        assert "checksum mismatch" in message
        assert message.endswith("re-run `kimi-audio-lf precompute` on the dataset (it rewrites bad entries)")
        assert isinstance(info.value, InputError)
    monkeypatch.delenv(CACHE_ENV)
    settings.reload()


def test_rerun_rewrites_bad_entries(tmp_path: Path, cache, model_dir, wavs, encoders) -> None:
    import shutil

    root = str(tmp_path / "cache")
    shutil.copytree(cache.cache_dir, root)
    _damage(root, cache.identity, wavs[:2])
    lines: list[str] = []
    options = PrecomputeOptions(cache_dir=root, **QUIET)
    again = precompute(model_dir, wavs, options, encoders=encoders, report=lines.append)
    assert (again.computed, again.repaired, again.skipped, again.failed) == (2, 2, 1, 0)
    assert "2 computed (2 replacing damaged entries), 1 skipped" in again.summary()
    assert sorted(line.split(" (")[0] for line in lines) == sorted(
        f"precompute: rewriting the feature-cache entry of {audio}" for audio in wavs[:2]
    )
    assert all("checksum mismatch" in line for line in lines)
    for audio in wavs:
        rewritten, original = _entry(cache, audio, root), _entry(cache, audio)
        assert all(torch.equal(rewritten[key], original[key]) for key in ("codes", "rows"))


def test_missing_and_truncated_audio_are_one_line_each(tmp_path: Path, model_dir, wavs, capsys) -> None:
    cut = tmp_path / "cut.wav"
    sf.write(cut, _clip(0.5, 300), 16000, subtype="PCM_16")
    with open(cut, "r+b") as fh:
        fh.truncate(44 + 2 * 4000)
    missing = str(tmp_path / "gone.wav")
    data = _dataset(tmp_path, [wavs[0], missing, str(cut)])
    argv = ["precompute", "--model", model_dir, "--data", str(data), "--cache", str(tmp_path / "c"), "--no-progress"]
    assert main([*argv, "--device", "cpu"]) == 2
    out, err = capsys.readouterr()
    assert "1 computed, 0 skipped (already cached), 2 failed" in out and "Errno" not in err
    assert f"precompute: skipped {missing}: audio file not found; fix the path in the dataset" in err
    assert f"precompute: skipped {cut}: truncated audio: the WAV header declares 8000 frames" in err
    assert main([*argv, "--device", "cpu", "--strict"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("kimi-audio-lf precompute: error: ") and "Errno" not in err[0]


def test_wrong_model_directory_is_a_model_error(tmp_path: Path, wavs, capsys) -> None:
    data = _dataset(tmp_path, wavs[:1])
    argv = ["precompute", "--model", str(tmp_path / "nope"), "--data", str(data), "--device", "cpu", "--no-progress"]
    assert main([*argv, "--cache", str(tmp_path / "c")]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"kimi-audio-lf precompute: error: {tmp_path / 'nope'}: cannot load")


def test_missing_dataset_files_name_the_fix(tmp_path: Path, model_dir, capsys) -> None:
    base = ["precompute", "--model", model_dir, "--device", "cpu", "--no-progress"]
    cases = [
        (["--data", str(tmp_path / "none.json")], f"{tmp_path / 'none.json'}: dataset file not found; check the path"),
        (["--dataset", "asr", "--dataset-dir", str(tmp_path / "nodir")], "not found; pass --dataset-dir"),
    ]
    (tmp_path / "set").mkdir()
    (tmp_path / "set" / "dataset_info.json").write_text(json.dumps({"asr": {"file_name": "gone.json"}}))
    cases.append((["--dataset", "asr", "--dataset-dir", str(tmp_path / "set")], "fix the file_name of 'asr' in "))
    for extra, expected in cases:
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0] and "Errno" not in err[0], err


# ------------------------------------------------------------------------------------- storage modes vs online path
def _frame_inputs(model, processor, audio: str, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    ids = processor.asr_inputs([load_audio(audio)], [None])["input_ids"]
    is_frame = ids == processor.tokenizer.convert_tokens_to_ids(st.AUDIO_PLACEHOLDER)
    return model.frame_inputs(ids, is_frame, int(is_frame.sum()), inputs)


def test_bf16_rows_equal_what_bf16_training_consumes(tmp_path: Path, model_dir, wavs, model, processor) -> None:
    import copy

    options = PrecomputeOptions(cache_dir=str(tmp_path), batch_size=1, rows_dtype="bfloat16", **QUIET)
    result = precompute(model_dir, wavs, options, encoders=load_audio_encoders(model_dir, "cpu", "bfloat16"))
    bf16_model = copy.deepcopy(model).to(torch.bfloat16)
    for audio in wavs:
        entry = _entry(result, audio)
        raw = processor.audio_inputs([load_audio(audio)])
        assert entry["rows"].dtype == torch.bfloat16
        assert torch.equal(
            entry["rows"], bf16_model.whisper_rows(raw["audio_input_features"], raw["audio_chunk_tokens"])
        )
        online = _frame_inputs(bf16_model, processor, audio, raw)
        cached = _frame_inputs(
            bf16_model, processor, audio, {"audio_codes": entry["codes"], "whisper_features": entry["rows"]}
        )
        assert all(torch.equal(a, b) for a, b in zip(online, cached))


def test_codes_only_mode_equals_online_path(
    tmp_path: Path, model_dir, wavs, model, processor, encoders, monkeypatch
) -> None:
    import llamafactory.data.mm_plugin  # noqa: F401  (LLaMA-Factory first, as in training)

    from llamafactory_kimi_audio.integration.mm_plugin import KimiAudioPlugin

    result = precompute(
        model_dir, wavs, PrecomputeOptions(cache_dir=str(tmp_path), mode="codes", **QUIET), encoders=encoders
    )
    entries = [_entry(result, audio) for audio in wavs]
    assert all(e["rows"] is None for e in entries)
    payload = sum(p.stat().st_size for p in tmp_path.rglob("*.bin"))
    assert payload < 2000 + 300 * len(wavs)  # headers + 2 bytes per 80 ms frame: no Whisper rows
    plugin = KimiAudioPlugin(image_token=None, video_token=None, audio_token=st.AUDIO_PLACEHOLDER)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    settings.reload()
    try:
        for audio in wavs:
            got = plugin.get_mm_inputs([], [], [audio], [0], [0], [1], [[]], processor)
            assert {"audio_codes", "audio_input_features", "audio_chunk_tokens"} <= set(got)
            assert "semantic_input_features" not in got and "whisper_features" not in got
            online = _frame_inputs(model, processor, audio, processor.audio_inputs([load_audio(audio)]))
            assert all(torch.equal(a, b) for a, b in zip(online, _frame_inputs(model, processor, audio, got)))
    finally:
        monkeypatch.delenv(CACHE_ENV)
        settings.reload()


def test_missing_audio_with_a_cache_is_one_line(tmp_path: Path, cache, processor, monkeypatch) -> None:
    import llamafactory.data.mm_plugin  # noqa: F401  (LLaMA-Factory first, as in training)

    from llamafactory_kimi_audio.integration.mm_plugin import KimiAudioPlugin

    plugin = KimiAudioPlugin(image_token=None, video_token=None, audio_token=st.AUDIO_PLACEHOLDER)
    gone = str(tmp_path / "gone.wav")
    monkeypatch.setenv(CACHE_ENV, cache.cache_dir)
    settings.reload()
    try:
        with pytest.raises(AudioError, match=f"^{gone}: audio file not found"):
            plugin.get_mm_inputs([], [], [gone], [0], [0], [1], [[]], processor)
    finally:
        monkeypatch.delenv(CACHE_ENV)
        settings.reload()


def test_segments_get_their_own_entries_equal_to_online(tmp_path: Path, model_dir, wavs, encoders, model, processor):
    """Two spans of one file (``PATH#t=B,E``) are two entries, each equal to the online features of its span, and
    `cache stats` counts neither as an orphan."""
    from llamafactory_kimi_audio.data.features.cache_admin import scan

    segments = [f"{wavs[1]}#t=0.1,0.9", f"{wavs[1]}#t=1.0,1.8"]
    root = str(tmp_path / "cache")
    result = precompute(
        model_dir, segments, PrecomputeOptions(cache_dir=root, batch_size=2, **QUIET), encoders=encoders
    )
    assert (result.computed, result.failed) == (2, 0)
    keys = [clip_key(s) for s in segments]
    assert keys[0].digest != keys[1].digest and keys[0].size == keys[1].size
    for segment in segments:
        wave = load_audio(segment)
        assert 0.75 * 16000 < wave.size < 0.85 * 16000  # the span, not the whole 1.9 s file
        raw = processor.audio_inputs([wave])
        entry = _entry(result, segment, root)
        assert torch.equal(
            entry["codes"], model.audio_codes_from_features(raw["semantic_input_features"], raw["semantic_frame_mask"])
        )
        assert torch.equal(entry["rows"], model.whisper_rows(raw["audio_input_features"], raw["audio_chunk_tokens"]))
    report = scan(root, result.identity)
    assert (report.entries, report.orphans) == (2, [])
