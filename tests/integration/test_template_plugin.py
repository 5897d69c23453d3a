"""The ``kimi_audio`` template + ``KimiAudioPlugin`` + collator as LLaMA-Factory itself drives them (in-process, CPU).

Expected ids are written row by row from the table of the architecture spec §5.3 (single id stream: every official
position holds its audio-stream token or its text-stream token, the other stream being blank), with special ids
taken from the spec's numbering (§4) shifted onto the tiny base vocabulary and cross-checked against the tokenizer.
Nothing here calls ``models/layout.py`` to build an expectation.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pickle
import re
import subprocess
import sys

import dill
import llamafactory.data.template as T  # noqa: N812 - the name LLaMA-Factory's own tests use
import numpy as np
import pytest
import soundfile as sf
import torch
from lf_pipeline import IGNORE, conv, sft_collator, sft_feature
from lf_runs import two_at_a_time
from llamafactory.data.mm_plugin import PLUGINS, BasePlugin, Qwen2AudioPlugin, get_mm_plugin
from llamafactory.data.processor.supervised import SupervisedDatasetProcessor
from llamafactory.hparams import DataArguments, FinetuningArguments, ModelArguments
from llamafactory.model import load_model, load_tokenizer
from llamafactory.model.model_utils.misc import find_all_linear_modules
from llamafactory.model.model_utils.visual import COMPOSITE_MODELS, patch_target_modules

from llamafactory_kimi_audio import DISABLE_ENV, settings
from llamafactory_kimi_audio.errors import InputError, ModelError
from llamafactory_kimi_audio.integration.mm_plugin import KimiAudioPlugin
from llamafactory_kimi_audio.integration.template import INSTRUCTION_ENV, KimiAudioTemplate

torch.set_num_threads(min(2, torch.get_num_threads()))

OFFICIAL_BASE = 151643
SPEC = {  # spec §4: string -> official id
    "msg_end": ("<|im_msg_end|>", 151645),
    "media_begin": ("<|im_media_begin|>", 151661),
    "media_end": ("<|im_media_end|>", 151663),
    "blank": ("<|im_kimia_text_blank|>", 151666),
    "text_eos": ("<|im_kimia_text_eos|>", 151667),
    "user_start": ("<|im_kimia_user_msg_start|>", 151670),
    "assistant_start": ("<|im_kimia_assistant_msg_start|>", 151671),
    "ct": ("<|im_kimia_speech_ct_id|>", 151675),
    "pad": ("<|reserved_token_406|>", 152063),
}
DEFAULT_INSTRUCTION = "请将音频内容转换为文字。"  # official infer.py prompt (spec §7)
INSTRUCTION = "Please transcribe the spoken content into written text."
SAMPLES_PER_FRAME = 1280  # 16 kHz / 12.5 Hz


# ------------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def model_args(ckpt) -> ModelArguments:
    return ModelArguments(model_name_or_path=ckpt, trust_remote_code=True)


@pytest.fixture(scope="module")
def tokenizer_module(model_args) -> dict:
    return load_tokenizer(model_args)


@pytest.fixture(scope="module")
def tok(tokenizer_module):
    return tokenizer_module["tokenizer"]


@pytest.fixture(scope="module")
def processor(tokenizer_module):
    return tokenizer_module["processor"]


@pytest.fixture(scope="module")
def template(tok) -> T.Template:
    return T.get_template_and_fix_tokenizer(tok, DataArguments(template="kimi_audio"))


@pytest.fixture(scope="module")
def plugin(template) -> KimiAudioPlugin:
    return template.mm_plugin


@pytest.fixture(scope="module")
def ids(tok, tiny_checkpoint, plugin) -> dict[str, int]:
    out = {}
    for name, (string, official) in SPEC.items():
        out[name] = tok.convert_tokens_to_ids(string)
        assert out[name] == tiny_checkpoint.num_base_tokens + official - OFFICIAL_BASE, name
    out["ph"] = tok.convert_tokens_to_ids(plugin.audio_token)
    assert out["ph"] not in {out[name] for name in SPEC}  # a token of its own
    return out


@pytest.fixture(scope="module")
def wav_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("wavs"))


def write_wav(directory: str, name: str, sr: int, frames: int, channels: int = 1, subtype: str = "PCM_16") -> str:
    rng = np.random.default_rng(frames)
    wave = (0.3 * rng.standard_normal((frames, channels))).clip(-1, 1).astype(np.float32)
    path = os.path.join(directory, f"{name}.wav")
    sf.write(path, wave if channels > 1 else wave[:, 0], sr, subtype=subtype)
    return path


def n_frames(num_samples_16k: int) -> int:
    return (num_samples_16k - 1) // SAMPLES_PER_FRAME + 1


@pytest.fixture(scope="module")
def wav_a(wav_dir) -> tuple[str, int]:
    return write_wav(wav_dir, "a", 16000, 16000), n_frames(16000)  # 1 s: 13 frames


@pytest.fixture(scope="module")
def wav_b(wav_dir) -> tuple[str, int]:
    return write_wav(wav_dir, "b", 16000, 7 * 1280 + 1), 8  # one sample past 7 frames


def enc(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False)


def encode_sample(template, tok, processor, messages, audios, system=None):
    processed = template.mm_plugin.process_messages(messages, [], [], audios, processor)
    return processed, template.encode_multiturn(tok, processed, system)


# -------------------------------------------------------------------------------------------- registration
def test_kimi_template_and_plugin_are_registered(template, plugin):
    assert "kimi_audio" in T.TEMPLATES
    assert T.TEMPLATES["kimi_audio"] is template
    assert isinstance(template, KimiAudioTemplate)
    assert isinstance(plugin, KimiAudioPlugin)
    assert plugin.audio_token and plugin.image_token is None and plugin.video_token is None
    assert PLUGINS["kimi_audio"] is KimiAudioPlugin
    assert isinstance(get_mm_plugin("kimi_audio", audio_token=plugin.audio_token), KimiAudioPlugin)
    assert COMPOSITE_MODELS["moonshot_kimia"].vision_model_keys == ["whisper_encoder", "mimo"]


def test_tokenizer_and_processor_from_load_tokenizer(tok, processor, template):
    assert type(tok).__name__ == "KimiAudioTokenizer"
    assert "Processor" in type(processor).__name__
    assert processor.feature_extractor is not None and processor.audio_sampling_rate == 16000
    assert tok.eos_token == SPEC["text_eos"][0]  # replace_eos with the template's stop word
    assert template.get_stop_token_ids(tok) == [tok.convert_tokens_to_ids(SPEC["text_eos"][0])]


# ------------------------------------------------------------------------------------------------ layout (§5.3)
def encode_one_turn(template, tok, processor, messages, wav) -> tuple[list[int], list[int]]:
    """(prompt, response) ids of one user turn with the audio ``wav`` = (path, frames)."""
    processed = template.mm_plugin.process_messages(messages, [], [], [wav[0]], processor)
    return template.encode_oneturn(tok, processed)


def audio_span(ids, frames: int) -> list[int]:
    return [ids["media_begin"], *[ids["ph"]] * frames, ids["media_end"]]


def test_instruction_before_audio(template, tok, processor, ids, wav_a):
    prompt, response = encode_one_turn(template, tok, processor, conv(f"{INSTRUCTION}<audio>", "one two"), wav_a)
    assert prompt == [
        ids["user_start"],
        *enc(tok, INSTRUCTION),
        *audio_span(ids, wav_a[1]),
        ids["ct"],
        ids["msg_end"],
        ids["assistant_start"],
    ]
    assert response == [*enc(tok, "one two"), ids["text_eos"]]
    official_length = len(enc(tok, INSTRUCTION)) + wav_a[1] + len(enc(tok, "one two")) + 8  # L of §5.3
    assert len(prompt) + len(response) + 1 == official_length  # all but the final msg_end (nothing predicted from it)


def test_instruction_after_audio_has_no_ct(template, tok, processor, ids, wav_a):
    prompt, response = encode_one_turn(template, tok, processor, conv(f"<audio>{INSTRUCTION}", "red"), wav_a)
    assert prompt == [
        ids["user_start"],
        *audio_span(ids, wav_a[1]),
        *enc(tok, INSTRUCTION),
        ids["msg_end"],
        ids["assistant_start"],
    ]
    assert ids["ct"] not in prompt
    assert response == [*enc(tok, "red"), ids["text_eos"]]


def test_audio_only_turn_gets_the_default_instruction(template, tok, processor, ids, wav_a, monkeypatch):
    path, n = wav_a
    messages = [{"role": "user", "content": "<audio>"}, {"role": "assistant", "content": "blue"}]
    processed = template.mm_plugin.process_messages(messages, [], [], [path], processor)
    audio_part = [*audio_span(ids, n), ids["ct"]]
    prompt, _ = template.encode_oneturn(tok, processed)
    end = [ids["msg_end"], ids["assistant_start"]]
    assert prompt == [ids["user_start"], *enc(tok, DEFAULT_INSTRUCTION), *audio_part, *end]
    monkeypatch.setenv(INSTRUCTION_ENV, "Transcribe.")
    settings.reload()  # settings are read once per process
    try:
        prompt, _ = template.encode_oneturn(tok, processed)
    finally:
        monkeypatch.undo()
        settings.reload()
    assert prompt == [ids["user_start"], *enc(tok, "Transcribe."), *audio_part, *end]


def test_multi_turn_layout_and_labels(template, tok, processor, ids, wav_a, wav_b):
    (path_a, n_a), (path_b, n_b) = wav_a, wav_b
    messages = [
        {"role": "user", "content": f"{INSTRUCTION}<audio>"},
        {"role": "assistant", "content": "one two"},
        {"role": "user", "content": "<audio>"},
        {"role": "assistant", "content": "three"},
    ]
    processed, pairs = encode_sample(template, tok, processor, messages, [path_a, path_b])
    turn1 = [ids["user_start"], *enc(tok, INSTRUCTION), ids["media_begin"], *[ids["ph"]] * n_a, ids["media_end"]]
    turn1 += [ids["ct"], ids["msg_end"], ids["assistant_start"]]
    # the assistant's closing msg_end opens the next user turn (§5.2: msg_end because the role changes)
    turn2 = [ids["msg_end"], ids["user_start"], *enc(tok, DEFAULT_INSTRUCTION), ids["media_begin"]]
    turn2 += [*[ids["ph"]] * n_b, ids["media_end"], ids["ct"], ids["msg_end"], ids["assistant_start"]]
    assert pairs == [
        (turn1, [*enc(tok, "one two"), ids["text_eos"]]),
        (turn2, [*enc(tok, "three"), ids["text_eos"]]),
    ]
    # labels through LLaMA-Factory's own supervised processor: transcript + text_eos only (§5.4)
    data_args = DataArguments(template="kimi_audio", cutoff_len=1024)
    proc = SupervisedDatasetProcessor(template=template, tokenizer=tok, processor=processor, data_args=data_args)
    input_ids, labels = proc._encode_data_example(messages[:-1], messages[-1:], None, None, [], [], [path_a, path_b])
    flat = [i for pair in pairs for part in pair for i in part]
    assert input_ids == flat
    expected_labels = [IGNORE] * len(turn1) + pairs[0][1] + [IGNORE] * len(turn2) + pairs[1][1]
    assert labels == expected_labels
    labelled = [i for i in labels if i != IGNORE]
    assert labelled == [*enc(tok, "one two"), ids["text_eos"], *enc(tok, "three"), ids["text_eos"]]


def test_text_only_user_turn(template, tok, processor, ids):
    messages = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}]
    processed = template.mm_plugin.process_messages(messages, [], [], [], processor)
    assert processed == messages
    prompt, response = template.encode_oneturn(tok, processed)
    assert prompt == [ids["user_start"], *enc(tok, "hello"), ids["msg_end"], ids["assistant_start"]]
    assert response == [*enc(tok, "hi"), ids["text_eos"]]


@pytest.mark.parametrize("kind", ["supervised", "unsupervised"])
def test_cutoff_len_cutting_an_audio_span_fails_at_preprocessing(kind, template, tok, processor, wav_a):
    import llamafactory.train.sft.workflow  # noqa: F401 - the hook that installs the guard
    from llamafactory.data.processor.unsupervised import UnsupervisedDatasetProcessor

    cls = SupervisedDatasetProcessor if kind == "supervised" else UnsupervisedDatasetProcessor
    path, n = wav_a
    messages = conv("<audio>Transcribe", "one two")
    needed = 1 + (n + 2) + len(enc(tok, "Transcribe")) + 2 + len(enc(tok, "one two")) + 1
    for cutoff in (needed, needed + 5):
        data_args = DataArguments(template="kimi_audio", cutoff_len=cutoff)
        proc = cls(template=template, tokenizer=tok, processor=processor, data_args=data_args)
        input_ids, labels = proc._encode_data_example(messages[:1], messages[1:], None, None, [], [], [path])
        assert len(input_ids) + (len(labels) if kind == "unsupervised" else 0) == needed
    data_args = DataArguments(template="kimi_audio", cutoff_len=12)
    proc = cls(template=template, tokenizer=tok, processor=processor, data_args=data_args)
    with pytest.raises(ValueError, match=rf"cutoff_len=12 cuts its audio.*at least {needed}") as info:
        proc._encode_data_example(messages[:1], messages[1:], None, None, [], [], [path])
    assert path in str(info.value) and "<audio>Transcribe" in str(info.value)
    # text-only samples are truncated as LLaMA-Factory always does
    text = conv("a b c d " * 20, "ok")
    input_ids, labels = proc._encode_data_example(text[:1], text[1:], None, None, [], [], [])
    assert len(input_ids) + (len(labels) if kind == "unsupervised" else 0) <= 12


# ------------------------------------------------------------------------------------------ placeholder counts
WAV_CASES = {  # name: (sample rate, frames, channels, subtype)
    "8k": (8000, 10_403, 1, "PCM_16"),
    "44k1": (44_100, 33_961, 1, "PCM_16"),
    "48k_stereo": (48_000, 52_807, 2, "PCM_16"),
    "16k_int16_exact": (16_000, 3 * 1280, 1, "PCM_16"),
    "16k_int16_plus1": (16_000, 3 * 1280 + 1, 1, "PCM_16"),
    "22k05_float32": (22_050, 20_000, 1, "FLOAT"),
    "16k_float32": (16_000, 12_345, 1, "FLOAT"),
}


@pytest.mark.parametrize("case", list(WAV_CASES))
def test_placeholder_count_follows_the_resampled_length(case, wav_dir, plugin, processor, ids, tok):
    sr, frames, channels, subtype = WAV_CASES[case]
    path = write_wav(wav_dir, case, sr, frames, channels, subtype)
    length_16k = math.ceil(frames * 16000 / sr)  # resample_poly output length
    expected = (length_16k - 1) // 1280 + 1
    messages = [{"role": "user", "content": "<audio>"}, {"role": "assistant", "content": "x"}]
    content = plugin.process_messages(messages, [], [], [path], processor)[0]["content"]
    assert content.count(plugin.audio_token) == expected
    # the collate-time features give exactly as many frames as there are placeholders
    from llamafactory_kimi_audio.fileio.audio import load_audio

    assert len(load_audio(path)) == length_16k
    chunk_tokens = processor.audio_inputs([load_audio(path)], with_semantic=False)["audio_chunk_tokens"]
    assert int(chunk_tokens.sum()) == expected


def test_placeholder_count_for_arrays(plugin, processor):
    wave_8k = np.zeros(4001, dtype=np.float32)
    messages = [{"role": "user", "content": "<audio>"}]
    by_dict = plugin.process_messages(messages, [], [], [{"array": wave_8k, "sampling_rate": 8000}], processor)
    assert by_dict[0]["content"].count(plugin.audio_token) == (8002 - 1) // 1280 + 1
    fake = plugin.process_messages(messages, [], [], [np.zeros(1600)], processor)  # the collator's fake audio
    assert fake[0]["content"].count(plugin.audio_token) == 2


# ------------------------------------------------------------------------------------------------------ errors
def test_system_prompt_is_rejected(template, tok, processor, wav_a):
    messages = [{"role": "user", "content": "<audio>"}, {"role": "assistant", "content": "x"}]
    processed = template.mm_plugin.process_messages(messages, [], [], [wav_a[0]], processor)
    with pytest.raises(ValueError, match="no system role"):
        template.encode_oneturn(tok, processed, system="You are a helpful assistant.")
    with pytest.raises(ValueError, match="no system role"):
        dataclasses.replace(template, default_system="Be brief.").encode_multiturn(tok, processed)


@pytest.mark.parametrize("placeholders, n_audios", [(2, 1), (0, 1), (1, 2), (1, 0)])
def test_placeholder_audio_mismatch_names_the_sample(plugin, processor, wav_a, wav_b, placeholders, n_audios):
    content = "<audio>" * placeholders + "say the magic words"
    messages = [{"role": "user", "content": content}, {"role": "assistant", "content": "abracadabra"}]
    audios = [wav_a[0], wav_b[0]][:n_audios]
    with pytest.raises(InputError) as info:  # exit code 2 through the run guard
        plugin.process_messages(messages, [], [], audios, processor)
    text = str(info.value)
    assert "say the magic words" in text
    assert f"{placeholders} <audio>" in text and f"{n_audios} audio" in text
    for path in audios:
        assert path in text


def test_kimi_template_without_a_kimi_processor_says_so(plugin):
    """A non-Kimi model under template kimi_audio has no Kimi-Audio processor: say that, not LLaMA-Factory's
    "Audio feature extractor was not found"."""
    messages = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}]
    with pytest.raises(ModelError, match="template kimi_audio needs a Kimi-Audio checkpoint"):
        plugin.process_messages(messages, [], [], [], None)


# ----------------------------------------------------------------------------------------------------- collator
@pytest.fixture(scope="module")
def model(tok, model_args):
    return load_model(tok, model_args, FinetuningArguments(finetuning_type="full"), is_trainable=False)


def make_feature(template, tok, processor, messages, audios) -> dict:
    data_args = DataArguments(template="kimi_audio", cutoff_len=1024)
    proc = SupervisedDatasetProcessor(template=template, tokenizer=tok, processor=processor, data_args=data_args)
    input_ids, labels = proc._encode_data_example(messages[:-1], messages[-1:], None, None, [], [], audios)
    return sft_feature(input_ids, labels, audios or None)


def test_collator_batch_feeds_the_model(template, tok, processor, tokenizer_module, model, ids, wav_a, wav_b):
    features = [
        make_feature(template, tok, processor, conv("<audio>", "one"), [wav_a[0]]),
        make_feature(template, tok, processor, conv(f"{INSTRUCTION}<audio>", "two three"), [wav_b[0]]),
    ]
    lengths = [len(f["input_ids"]) for f in features]
    expected_ids = [list(f["input_ids"]) for f in features]
    batch = sft_collator(template, model, tokenizer_module)(features)
    width = batch["input_ids"].shape[1]
    assert width % 8 == 0 and width >= max(lengths) and width - max(lengths) < 8
    for row, (length, row_ids) in enumerate(zip(lengths, expected_ids)):  # right padding
        assert batch["input_ids"][row, :length].tolist() == row_ids
        assert batch["attention_mask"][row].tolist() == [1] * length + [0] * (width - length)
        assert set(batch["input_ids"][row, length:].tolist()) <= {ids["pad"]}
        assert set(batch["labels"][row, length:].tolist()) <= {IGNORE}
    assert "audio_input_features" in batch and batch["audio_input_features"].shape[1:] == (128, 3000)
    num_placeholders = int((batch["input_ids"] == ids["ph"]).sum())
    assert int(batch["audio_chunk_tokens"].sum()) == num_placeholders == wav_a[1] + wav_b[1]
    with torch.no_grad():
        out = model(**batch)
    assert torch.isfinite(out.loss) and out.loss.item() > 0


@pytest.mark.parametrize("side", ["right", "left"])
def test_audio_free_batch_gets_the_fake_audio(side, template, tok, processor, tokenizer_module, model, ids):
    messages = conv("hello there", "hi")
    feature = make_feature(template, tok, processor, messages, [])
    real_ids, real_labels = list(feature["input_ids"]), list(feature["labels"])
    length = len(real_ids)
    tok.padding_side = side
    try:
        batch = sft_collator(template, model, tokenizer_module)([feature])
    finally:
        tok.padding_side = "right"
    width = batch["input_ids"].shape[1]
    assert width % 8 == 0
    fake = [ids["media_begin"], ids["ph"], ids["ph"], ids["media_end"]]  # 0.1 s of silence = 2 frames
    row, mask = batch["input_ids"][0].tolist(), batch["attention_mask"][0].tolist()
    if side == "right":  # appended after the sample, then padding
        assert row[: length + 4] == real_ids + fake
        assert mask == [1] * length + [0] * (width - length)
    else:  # padding, then prepended before the sample
        assert row[width - length - 4 :] == fake + real_ids
        assert mask == [0] * (width - length) + [1] * length
    assert sorted(i for i, m in zip(batch["labels"][0].tolist(), mask) if m) == sorted(real_labels)
    assert all(label == IGNORE for label, m in zip(batch["labels"][0].tolist(), mask) if not m)
    assert batch["audio_chunk_tokens"].tolist() == [2]
    with torch.no_grad():
        out = model(**batch)
        # the fake audio is masked out: same loss as the text-only sample without it
        plain = model(
            input_ids=torch.tensor([real_ids]),
            attention_mask=torch.ones(1, length, dtype=torch.long),
            labels=torch.tensor([real_labels]),
        )
    assert torch.isfinite(out.loss)
    torch.testing.assert_close(out.loss, plain.loss, rtol=1e-4, atol=1e-5)


def test_mixed_batch_with_left_padding(template, tok, processor, tokenizer_module, model, ids, wav_a):
    """Prediction pads on the left: rows keep their ids at the end, the loss stays finite and equals right padding."""

    def features() -> list[dict]:  # the collator pops keys: a fresh list per call
        return [
            make_feature(template, tok, processor, conv("<audio>", "one"), [wav_a[0]]),
            make_feature(template, tok, processor, conv("hello", "hi"), []),
        ]

    collator = sft_collator(template, model, tokenizer_module)
    right = collator(features())
    tok.padding_side = "left"
    try:
        left = collator(features())
    finally:
        tok.padding_side = "right"
    short = len(features()[1]["input_ids"])
    assert left["input_ids"][1, -short:].tolist() == features()[1]["input_ids"]
    assert left["attention_mask"][1, :-short].sum() == 0
    with torch.no_grad():
        loss_right, loss_left = model(**right).loss, model(**left).loss
    assert torch.isfinite(loss_left)
    torch.testing.assert_close(loss_left, loss_right, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------------------- pickle
@pytest.mark.parametrize("module", [pickle, dill], ids=["pickle", "dill"])
def test_plugin_and_processor_round_trip(module, plugin, processor, tok, wav_a):
    messages = [{"role": "user", "content": "<audio>hi"}, {"role": "assistant", "content": "x"}]
    plugin2 = module.loads(module.dumps(plugin))
    assert plugin2 == plugin and type(plugin2) is type(plugin)
    processor2 = module.loads(module.dumps(processor))
    assert type(processor2) is type(processor)
    assert plugin2.process_messages(messages, [], [], [wav_a[0]], processor2) == plugin.process_messages(
        messages, [], [], [wav_a[0]], processor
    )
    text = f"{INSTRUCTION} 一 二 三"
    assert processor2.tokenizer.encode(text, add_special_tokens=False) == tok.encode(text, add_special_tokens=False)
    assert processor2.tokenizer.eos_token == tok.eos_token
    assert processor2.feature_extractor.to_dict() == processor.feature_extractor.to_dict()
    assert processor2.audio_sampling_rate == processor.audio_sampling_rate
    assert processor2.layout.asr_prompt(3, "a") == processor.layout.asr_prompt(3, "a")


def test_processor_hash_is_stable_for_the_datasets_cache(processor, plugin):
    from datasets.fingerprint import Hasher

    assert Hasher.hash(processor) == Hasher.hash(pickle.loads(pickle.dumps(processor)))
    assert Hasher.hash(plugin) == Hasher.hash(dill.loads(dill.dumps(plugin)))


# ------------------------------------------------------------------------------------------------- lora target
def test_lora_target_all_hits_only_decoder_layers(model):
    targets = find_all_linear_modules(model, freeze_vision_tower=True)
    assert sorted(targets) == sorted(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    names = patch_target_modules(model, FinetuningArguments(finetuning_type="lora", lora_target="all"), targets)
    decoder_linears = {
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name.startswith("model.layers.")
    }
    assert set(names) == decoder_linears
    assert len(names) == 7 * model.config.num_hidden_layers
    for name in names:
        assert re.fullmatch(r"model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)", name), name
    for forbidden in ("whisper_encoder", "mimo", "vq_adaptor", "lm_head"):
        assert not any(forbidden in name for name in names)


# -------------------------------------------------------------------------------- LLaMA-Factory's own behaviour
TEXT_MESSAGES = [{"role": "user", "content": "How are you"}, {"role": "assistant", "content": "I am fine!"}]


def test_lf_base_plugin_text_checks(tok):
    """LLaMA-Factory's tests/data/test_mm_plugin.py::test_base_plugin (text part), with an offline tokenizer."""
    base = get_mm_plugin(name="base")
    assert type(base) is BasePlugin
    assert base.process_messages(TEXT_MESSAGES, [], [], [], None) == TEXT_MESSAGES
    assert base.process_token_ids([0, 1, 2, 3, 4], [0, 1, 2, 3, 4], [], [], [], tok, None) == ([0, 1, 2, 3, 4],) * 2
    assert base.get_mm_inputs([], [], [], [0], [0], [0], [[1] * 1024], None) == {}


def test_lf_qwen2_audio_template_unchanged(tok):
    qwen2_audio = T.TEMPLATES["qwen2_audio"]
    assert type(qwen2_audio) is T.Template
    assert type(qwen2_audio.mm_plugin) is Qwen2AudioPlugin and qwen2_audio.mm_plugin.audio_token == "<|AUDIO|>"
    assert qwen2_audio.default_system == "You are a helpful assistant."
    prompt, response = qwen2_audio.encode_oneturn(tok, TEXT_MESSAGES)
    assert tok.decode(prompt) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHow are you<|im_end|>\n<|im_start|>assistant\n"
    )
    assert tok.decode(response) == "I am fine!<|im_end|>\n"
    assert type(T.TEMPLATES["default"].mm_plugin) is BasePlugin


PROBE = """
import json, sys
import llamafactory.data.template as T
import llamafactory.extras.constants as C
import llamafactory.model.model_utils.visual as V
from llamafactory.data.mm_plugin import PLUGINS
from llamafactory_kimi_audio.models.tokenization_kimi_audio import KimiAudioTokenizer

tok = KimiAudioTokenizer.from_pretrained(sys.argv[1])
msgs = [{"role": "user", "content": "How are you"}, {"role": "assistant", "content": "I am fine!"},
        {"role": "user", "content": "<audio>again"}, {"role": "assistant", "content": "ok"}]
names = ("qwen2_audio", "qwen2_omni", "qwen", "llama3", "default", "empty", "minicpm_o")
print(json.dumps({
    "templates": sorted(T.TEMPLATES), "plugins": sorted(PLUGINS), "composite": sorted(V.COMPOSITE_MODELS),
    "models": sorted(C.SUPPORTED_MODELS), "multimodal": sorted(C.MULTIMODAL_SUPPORTED_MODELS),
    "encoded": {name: T.TEMPLATES[name].encode_multiturn(tok, msgs, "sys") for name in names},
    "plugin_types": {name: type(T.TEMPLATES[name].mm_plugin).__name__ for name in names},
}))
"""


@pytest.mark.slow
def test_registrations_are_purely_additive(ckpt):
    """Compare LLaMA-Factory's registries with the integration on and off (one subprocess each, side by side)."""

    def probe(disabled: str) -> dict:
        command = [sys.executable, "-c", PROBE, ckpt]
        env = {**os.environ, DISABLE_ENV: disabled}
        proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])

    on, off = two_at_a_time(probe, ("0", "1"))
    assert set(on["templates"]) - set(off["templates"]) == {"kimi_audio"}
    assert set(off["templates"]) <= set(on["templates"])
    assert set(on["plugins"]) - set(off["plugins"]) == {"kimi_audio"}
    assert set(on["composite"]) - set(off["composite"]) == {"moonshot_kimia"}
    assert set(on["models"]) - set(off["models"]) == {"Kimi-Audio-7B", "Kimi-Audio-7B-Instruct"}
    assert set(off["multimodal"]) <= set(on["multimodal"])
    assert on["encoded"] == off["encoded"]
    assert on["plugin_types"] == off["plugin_types"]
