"""The feature cache with speech-output targets, through the stock ``llamafactory-cli train`` (CPU, tiny checkpoint):
write-through stores spoken-reply batches (question clips with their Whisper rows, answer clips codes-only, since the
model never listens to a target), epoch 2 reads every clip from the cache, and a batch collated from the cache has the
loss of the online batch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from cache_samples import cache_counts
from lf_runs import check_ok, run_cli, train_config

from llamafactory_kimi_audio.data.convert.dataset_files import dataset_info_entry
from llamafactory_kimi_audio.data.features.cache_format import clip_key
from llamafactory_kimi_audio.data.features.feature_cache import FeatureCache, encoder_identity
from llamafactory_kimi_audio.data.features.precompute import PrecomputeOptions, precompute

pytestmark = pytest.mark.slow
ANSWERS = ("abc", "efg", "hij", "klm")


def write_spoken_reply_set(directory: Path) -> list[tuple[str, str]]:
    """4 rows: a question clip (6 frames) -> a spoken answer clip (10 frames); returns (question, answer) paths."""
    rows, pairs = [], []
    for index, text in enumerate(ANSWERS):
        rng = np.random.default_rng(index)
        question, answer = directory / f"q{index}.wav", directory / f"a{index}.wav"
        sf.write(question, (0.3 * rng.standard_normal(6 * 1280)).astype(np.float32), 16000)
        sf.write(answer, (0.3 * rng.standard_normal(10 * 1280)).astype(np.float32), 16000)
        pairs.append((str(question), str(answer)))
        messages = [{"role": "user", "content": "<audio>"}, {"role": "assistant", "content": f"{text}<audio>"}]
        rows.append({"messages": messages, "audios": [str(question), str(answer)]})
    (directory / "reply.json").write_text(json.dumps(rows))
    entry = dataset_info_entry("reply.json")  # what kimi-audio-lf convert writes
    (directory / "dataset_info.json").write_text(json.dumps({"reply": entry}))
    return pairs


@pytest.fixture(scope="module")
def run(tiny_checkpoint, tmp_path_factory) -> tuple[Path, Path, list[tuple[str, str]], str]:
    workdir = tmp_path_factory.mktemp("speech_cache")
    pairs = write_spoken_reply_set(workdir)
    cache = workdir / "cache"
    config = train_config(
        tiny_checkpoint.path, workdir, workdir / "out", finetuning_type="lora", lora_target="all", max_steps=4
    )  # 4 rows, batch 2: two epochs
    config.update(dataset="reply", dataloader_num_workers=2)  # workers of epoch 2 re-read the index
    rc, output = run_cli("train", config, workdir, "reply", env={"KIMI_AUDIO_FEATURE_CACHE": str(cache)})
    check_ok(rc, output)
    return workdir, cache, pairs, output


def test_speech_batches_are_stored_and_hit(run, tiny_checkpoint) -> None:
    workdir, cache, pairs, output = run
    assert cache_counts(output) == (8, 8, 8)  # epoch 1: 4 questions + 4 answers stored; epoch 2: 8 hits
    audios = [path for pair in pairs for path in pair]
    reference = precompute(
        tiny_checkpoint.path, audios, PrecomputeOptions(cache_dir=str(workdir / "pre"), progress=False)
    )
    written = FeatureCache(str(cache), encoder_identity(tiny_checkpoint.path))
    expected = FeatureCache(str(workdir / "pre"), reference.identity)
    for question, answer in pairs:
        codes, rows = written.read(written.find(clip_key(question)), question)
        want_codes, want_rows = expected.read(expected.find(clip_key(question)), question)
        assert torch.equal(codes, want_codes) and torch.equal(rows, want_rows)
        codes, rows = written.read(written.find(clip_key(answer)), answer)
        assert rows is None  # a target: codes only
        assert torch.equal(codes, expected.read(expected.find(clip_key(answer)), answer)[0])


def test_cached_speech_batch_has_the_online_loss(run, tiny_checkpoint, monkeypatch) -> None:
    from lf_pipeline import conv, encode, load_tiny, sft_collator

    from llamafactory_kimi_audio import settings

    workdir, cache, pairs, _ = run
    module, template, model = load_tiny(tiny_checkpoint.path)
    tok = module["tokenizer"]
    collator = sft_collator(template, model, module, pad_to_multiple_of=None)
    features = []
    for (question, answer), text in zip(pairs[:2], ANSWERS):
        ids, labels = encode(template, tok, module["processor"], conv("<audio>", f"{text}<audio>"), [question, answer])
        features.append(
            {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels, "audios": [question, answer]}
        )
    online = collator([dict(f) for f in features])
    monkeypatch.setenv("KIMI_AUDIO_FEATURE_CACHE", str(cache))
    settings.reload()
    try:
        cached = collator([dict(f) for f in features])
    finally:
        monkeypatch.delenv("KIMI_AUDIO_FEATURE_CACHE")
        settings.reload()
    assert "audio_codes" in cached and "semantic_input_features" not in cached  # read from the cache
    assert cached["whisper_features"].shape[0] == 2 * 6  # the rows of the two questions only
    with torch.no_grad():
        torch.testing.assert_close(model(**cached).loss, model(**online).loss, rtol=1e-6, atol=1e-6)
