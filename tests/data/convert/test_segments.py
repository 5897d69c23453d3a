"""Segments (``PATH#t=BEGIN,END``) end to end: the span rule, reading only the span, the plugin's token count, the
LLaMA-Factory ``_find_medias`` patch, and a tiny ``llamafactory-cli train`` on converted corpora with segments."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import corpus_fixtures as cf  # noqa: E402

from llamafactory_kimi_audio.fileio.audio import load_audio, probe
from llamafactory_kimi_audio.fileio.audio_errors import SpanError
from llamafactory_kimi_audio.fileio.audio_spans import media_value, span_frames, split_fragment, split_media

CLI = str(Path(sys.executable).with_name("llamafactory-cli"))


def test_media_value_round_trips() -> None:
    value = media_value("/d/a b.opus", 20.08, 24.4)
    assert value == "/d/a b.opus#t=20.08,24.4"
    assert split_media(value) == ("/d/a b.opus", 20.08, 24.4)
    assert split_fragment("rel/x.flac#t=1.0,2.5") == ("rel/x.flac", "#t=1.0,2.5")
    assert split_media("plain.wav") == ("plain.wav", None, None)


def test_a_file_whose_name_contains_a_fragment_is_a_plain_path(tmp_path: Path) -> None:
    odd = cf.tone(tmp_path / "odd.wav#t=1,2", 0.5, fmt="WAV")
    assert split_media(str(odd)) == (str(odd), None, None)
    assert probe(str(odd)).frames == 8000


@pytest.mark.parametrize(
    ("begin", "end", "expected"),
    [
        (0.5, 1.5, (8000, 24000, False)),
        (0.00003, 1.0, (0, 16000, False)),  # int(t * sr + 0.5), Kaldi's rounding
        (1.0, 2.4, (16000, 32000, True)),  # 0.4 s past the end: cut there
    ],
)
def test_span_frames(begin: float, end: float, expected: tuple[int, int, bool]) -> None:
    assert span_frames(16000, 32000, begin, end) == expected


@pytest.mark.parametrize(
    ("begin", "end", "reason"),
    [
        (-0.1, 1.0, "negative_span"),
        (1.5, 1.0, "reversed_span"),
        (1.0, 1.0, "empty_span"),
        (1.0, 2.6, "segment_past_end"),
        (float("nan"), 1.0, "nonfinite_span"),
        (0.0, float("inf"), "nonfinite_span"),
    ],
)
def test_span_frames_refuses(begin: float, end: float, reason: str) -> None:
    with pytest.raises(SpanError) as err:
        span_frames(16000, 32000, begin, end)
    assert err.value.reason == reason


@pytest.mark.parametrize(
    ("fmt", "subtype", "suffix"),
    [("FLAC", None, ".flac"), ("OGG", "OPUS", ".opus"), ("MP3", "MPEG_LAYER_III", ".mp3")],
)
def test_span_reads_only_the_span(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt, subtype, suffix) -> None:
    path = cf.tone(tmp_path / f"long{suffix}", 12.0, 16000, fmt, subtype)
    whole = load_audio(str(path))
    monkeypatch.setattr(sf, "read", lambda *a, **k: pytest.fail("a span must not decode the whole file"))
    span = load_audio(media_value(str(path), 7.25, 9.5))
    assert span.shape == (36000,)
    np.testing.assert_allclose(span, whole[116000:152000], atol=1e-6)


def test_plugin_token_count_comes_from_the_span(tmp_path: Path) -> None:
    from llamafactory_kimi_audio.integration.mm_plugin import audio_token_count
    from llamafactory_kimi_audio.models.processing_kimi_audio import num_audio_tokens

    path = cf.tone(tmp_path / "long.wav", 40.0, 8000)
    assert audio_token_count(media_value(str(path), 10.0, 12.5)) == num_audio_tokens(40000)  # 2.5 s at 16 kHz
    assert audio_token_count(str(path)) == num_audio_tokens(640000)


def test_find_medias_patch_resolves_fragments(tmp_path: Path) -> None:
    from llamafactory.data.converter import DatasetConverter

    from llamafactory_kimi_audio.integration.wrappers import make_segment_media_paths

    cf.tone(tmp_path / "audio" / "long.wav", 5.0)

    class Attr:
        load_from = "file"

    class Args:
        media_dir = str(tmp_path)

    converter = DatasetConverter.__new__(DatasetConverter)
    converter.dataset_attr, converter.data_args = Attr(), Args()
    patched = make_segment_media_paths(DatasetConverter._find_medias)
    found = patched(converter, ["audio/long.wav#t=1.0,2.0", "audio/long.wav"])
    assert found == [f"{tmp_path}/audio/long.wav#t=1.0,2.0", f"{tmp_path}/audio/long.wav"]


@pytest.mark.slow
def test_llamafactory_train_on_every_converted_layout(tmp_path: Path, tiny_checkpoint) -> None:
    """Every layout's miniature corpus converted with relative paths (segments: Kaldi WAV/FLAC, WenetSpeech and
    GigaSpeech Opus), mixed in one run for one full epoch (every row decoded), tokenized to disk (tokenized_path),
    then trained again from the tokenized copy."""
    from llamafactory_kimi_audio.data.convert.converter import ConvertOptions, convert

    data = tmp_path / "data"
    hf = cf.hf_datasets(data / "corpora")
    sources = {
        "k": cf.kaldi_segments(data / "corpora"),
        "w": cf.wenetspeech(data / "corpora"),
        "g": cf.gigaspeech(data / "corpora"),
        "a": cf.aishell1(data / "corpora"),
        "a2": cf.aishell2(data / "corpora"),
        "l": cf.librispeech(data / "corpora"),
        "cv": cf.commonvoice(data / "corpora"),
        "hf": hf["hf_dd"],
        "pq": hf["hf_parquet"],
    }
    for name, src in sources.items():
        convert(str(src), str(data), ConvertOptions(name=name, progress=False, workers=1))
    first = json.loads((data / "k_train" / "part-00000.jsonl").read_text().splitlines()[0])
    assert first["audios"] == ["corpora/recipe/audio/rec1.wav#t=0.5,3.2"]  # relative: resolved by the patch
    datasets = "k_train,w_L,g_XL,a_train,a2_iOS_data,l_train-clean-100,cv_train,hf_train,pq_train"
    rows = 4 + 3 + 2 + 2 + 2 + 2 + 2 + 2 + 2
    config = {
        "model_name_or_path": tiny_checkpoint.path,
        "trust_remote_code": True,
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "lora",
        "lora_target": "all",
        "template": "kimi_audio",
        "dataset": datasets,
        "dataset_dir": str(data),
        "tokenized_path": str(tmp_path / "tokenized"),
        "cutoff_len": 256,
        "preprocessing_num_workers": 1,
        "per_device_train_batch_size": 4,
        "num_train_epochs": 1,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "use_cpu": True,
        "output_dir": str(tmp_path / "out"),
        "overwrite_output_dir": True,
    }
    for attempt in ("tokenize", "from_tokenized"):
        config_path = tmp_path / f"{attempt}.yaml"
        config_path.write_text(json.dumps(config))
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        proc = subprocess.run(
            [CLI, "train", str(config_path)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800
        )
        output = proc.stdout + proc.stderr
        assert proc.returncode == 0, output[-6000:]
        assert "does not exist in `media_dir`" not in output
        state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
        steps = -(-rows // 4)
        assert [entry["step"] for entry in state["log_history"] if "loss" in entry] == list(range(1, steps + 1))
    assert (tmp_path / "tokenized").is_dir()


def test_table_rows_may_be_segments(tmp_path: Path) -> None:
    """Any input format may name segments: the span is checked against its file like a corpus segment."""
    from llamafactory_kimi_audio.data.convert.converter import ConvertOptions, convert

    cf.tone(tmp_path / "long.wav", 10.0)
    rows = ["audio\ttext", "long.wav#t=1.0,2.5\thello", "long.wav#t=9.0,11.0\tpast the end", "long.wav#t=3.0,2.0\tx"]
    (tmp_path / "rows.tsv").write_text("\n".join(rows) + "\n")
    result = convert(str(tmp_path / "rows.tsv"), str(tmp_path / "out"), ConvertOptions(name="s", progress=False))
    written = json.loads((tmp_path / "out" / "s.json").read_text())
    assert [row["audios"] for row in written] == [[f"{tmp_path}/long.wav#t=1.0,2.5"]]
    assert sorted(issue.reason for issue in result.issues) == ["reversed_span", "segment_past_end"]
    assert result.durations.total == 1.5


def test_evaluate_reads_a_sharded_segment_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from llamafactory_kimi_audio.cli import main
    from llamafactory_kimi_audio.data.convert.converter import ConvertOptions, convert
    from llamafactory_kimi_audio.eval.inputs import load_test_set

    convert(str(cf.wenetspeech(tmp_path / "src")), str(tmp_path / "data"), ConvertOptions(name="w", progress=False))
    items = load_test_set(str(tmp_path / "data" / "w_L"))
    assert [(item.id, item.reference) for item in items][:2] == [
        ("Y0000000000_--5llN02F84_S00000", "怎么样这些日子住得还习惯吧"),
        ("Y0000000000_--5llN02F84_S00001", "挺好的"),
    ]
    assert items[0].audio.endswith("Y0000000000_--5llN02F84.opus#t=1.0,4.5") and os.path.isabs(items[0].audio)
    assert load_audio(items[0].audio).shape == (56000,)
    predictions = tmp_path / "pred.jsonl"
    predictions.write_text("".join(json.dumps({"id": i.id, "hyp": i.reference}) + "\n" for i in items))
    args = ["evaluate", "--predictions", str(predictions), "--data", str(tmp_path / "data" / "w_L")]
    assert main([*args, "--out", str(tmp_path / "eval")]) == 0
    assert "CER 0.00%" in capsys.readouterr().out
