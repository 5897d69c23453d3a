"""Speech output through LLaMA-Factory's own template, plugin, dataset processor and collator (tiny checkpoint, CPU).

An ``<audio>`` in an assistant turn is the target audio. Expected ids are the single-stream encoding of the
speech-output spec §5 for examples 1 and 2 (official ids shifted onto the tiny base vocabulary).
"""

from __future__ import annotations

import os

import llamafactory.data.template as T  # noqa: N812
import numpy as np
import pytest
import soundfile as sf
import torch
from lf_pipeline import IGNORE, conv, encode, sft_collator, sft_feature
from llamafactory.hparams import DataArguments, FinetuningArguments, ModelArguments
from llamafactory.model import load_model, load_tokenizer

from llamafactory_kimi_audio.fileio.audio_errors import AudioError

OFFICIAL_BASE = 151643
OFFICIAL = {"M": 151645, "MB": 151661, "ME": 151663, "B": 151666, "EOS": 151667, "U": 151670, "A": 151671}
OFFICIAL.update({"CT": 151675, "CTD": 151676, "S": 151664, "PH": 151662})


@pytest.fixture(scope="module")
def tokenizer_module(tiny_checkpoint) -> dict:
    return load_tokenizer(ModelArguments(model_name_or_path=tiny_checkpoint.path, trust_remote_code=True))


@pytest.fixture(scope="module")
def tok(tokenizer_module):
    return tokenizer_module["tokenizer"]


@pytest.fixture(scope="module")
def template(tok):
    return T.get_template_and_fix_tokenizer(tok, DataArguments(template="kimi_audio"))


@pytest.fixture(scope="module")
def sym(tiny_checkpoint) -> dict[str, int]:
    return {k: tiny_checkpoint.num_base_tokens + v - OFFICIAL_BASE for k, v in OFFICIAL.items()}


@pytest.fixture(scope="module")
def model(tiny_checkpoint, tok):
    args = ModelArguments(model_name_or_path=tiny_checkpoint.path, trust_remote_code=True)
    return load_model(tok, args, FinetuningArguments(finetuning_type="full"), is_trainable=False)


def wav(directory, name: str, frames: int) -> str:
    path = os.path.join(directory, f"{name}.wav")
    rng = np.random.default_rng(frames)
    sf.write(path, (0.3 * rng.standard_normal(frames * 1280)).clip(-1, 1).astype(np.float32), 16000)
    return path


def test_tts_sample_is_spec_example_1(template, tok, tokenizer_module, sym, tmp_path):
    target = wav(tmp_path, "target", 10)
    ids, labels = encode(template, tok, tokenizer_module["processor"], conv("abcd", "<audio>efg"), [target])
    user, reply = tok.encode_ordinary("abcd"), tok.encode_ordinary("efg")
    expected = [sym["U"], *user, sym["M"], sym["S"], *reply, sym["EOS"]] + [sym["B"]] * 12 + [sym["M"]]
    assert len(user) == 4 and len(reply) == 3  # the tiny vocabulary has no merges for these
    assert ids == expected and len(ids) == 24
    assert labels == [IGNORE] * 7 + expected[7:]


def test_spoken_reply_gets_ctd_and_no_instruction(template, tok, tokenizer_module, sym, tmp_path):
    question, answer = wav(tmp_path, "q", 5), wav(tmp_path, "a", 10)
    ids, _ = encode(template, tok, tokenizer_module["processor"], conv("<audio>", "efg<audio>"), [question, answer])
    head = [sym["U"], sym["MB"], *[sym["PH"]] * 5, sym["ME"], sym["CTD"], sym["M"], sym["S"]]
    assert ids[:11] == head and len(ids) == 28
    asr_ids, _ = encode(template, tok, tokenizer_module["processor"], conv("<audio>", "efg"), [question])
    assert sym["CT"] in asr_ids and sym["CTD"] not in asr_ids  # ASR layout unchanged (ct, default instruction)


def test_missing_or_corrupt_target_audio_names_the_file(template, tok, tokenizer_module, tmp_path):
    missing = str(tmp_path / "nope.wav")
    with pytest.raises(AudioError, match="nope.wav: audio file not found"):
        encode(template, tok, tokenizer_module["processor"], conv("say it", "<audio>ok"), [missing])
    corrupt = tmp_path / "bad.wav"
    corrupt.write_bytes(b"RIFF0000WAVEjunk")
    with pytest.raises(AudioError, match="bad.wav"):
        encode(template, tok, tokenizer_module["processor"], conv("say it", "<audio>ok"), [str(corrupt)])


def test_cutoff_len_cutting_the_target_audio_fails_with_the_needed_length(template, tok, tokenizer_module, tmp_path):
    target = wav(tmp_path, "long", 30)
    messages = conv("abcd", "<audio>efg")
    needed = 7 + 30 + 6 + 1
    assert len(encode(template, tok, tokenizer_module["processor"], messages, [target], needed)[0]) == needed
    with pytest.raises(ValueError, match=rf"cutoff_len=30 cuts its audio.*at least {needed}") as info:
        encode(template, tok, tokenizer_module["processor"], messages, [target], cutoff_len=30)
    assert "long.wav" in str(info.value)


def test_mixed_asr_and_speech_batch_through_the_collator(template, tok, tokenizer_module, model, tmp_path):
    processor = tokenizer_module["processor"]
    clip, target = wav(tmp_path, "clip", 6), wav(tmp_path, "tgt", 12)
    features = []
    for messages, audios in ((conv("<audio>", "one"), [clip]), (conv("say efg", "<audio>efg"), [target])):
        ids, labels = encode(template, tok, processor, messages, audios)
        features.append(sft_feature(ids, labels, audios))
    collator = sft_collator(template, model, tokenizer_module)
    copies = [dict(f) for f in features]  # the collator pops keys
    batch = collator([dict(f) for f in features])
    calls = []
    hook = model.model.mimo_layers[0].register_forward_hook(lambda *a: calls.append(1))
    try:
        with torch.no_grad():
            mixed = model(**batch).loss
            singles = [model(**collator([f])).loss for f in copies]
    finally:
        hook.remove()
    assert calls == [1, 1]  # the mixed batch and the speech sample; never the ASR sample alone
    torch.testing.assert_close(mixed, (singles[0] + singles[1]) / 2, rtol=1e-4, atol=1e-5)


def test_target_audio_gets_no_whisper_features_and_the_loss_is_unchanged(
    template, tok, tokenizer_module, model, tmp_path
):
    """Assistant audio is a target: the collator computes its codes only; the loss equals the one computed with
    Whisper features of every clip (which the model never used for the target)."""
    from llamafactory_kimi_audio.fileio.audio import load_audio

    processor = tokenizer_module["processor"]
    clip, target = wav(tmp_path, "clip", 6), wav(tmp_path, "tgt", 12)
    collator = sft_collator(template, model, tokenizer_module)
    cases = {
        "spoken reply": (conv("<audio>", "efg<audio>"), [clip, target]),
        "tts": (conv("say efg", "<audio>efg"), [target]),
    }
    for name, (messages, audios) in cases.items():
        ids, labels = encode(template, tok, processor, messages, audios)
        feature = sft_feature(ids, labels, audios)
        batch = collator([feature])
        inputs = audios[:-1]  # the question audio, if any
        if inputs:
            assert batch["audio_chunk_tokens"].tolist() == [6], name  # the question's frames only
            assert batch["audio_input_features"].shape[0] == 1, name
        else:
            assert "audio_input_features" not in batch and "audio_chunk_tokens" not in batch, name
        everything = processor.audio_inputs([load_audio(a) for a in audios])  # the old inputs: log-mels of all
        old = {**batch, **everything}
        with torch.no_grad():
            torch.testing.assert_close(model(**batch).loss, model(**old).loss, rtol=0, atol=0, msg=name)


def test_lora_target_mimo_is_opt_in(model):
    from llamafactory.model.adapter import patch_target_modules
    from llamafactory.model.model_utils.misc import find_all_linear_modules

    args = FinetuningArguments(finetuning_type="lora", lora_target="all")
    plain = patch_target_modules(model, args, find_all_linear_modules(model, True))
    assert not any("mimo" in name for name in plain)
    with_mimo = patch_target_modules(model, FinetuningArguments(finetuning_type="lora"), ["all", "mimo"])
    mimo = [name for name in with_mimo if "mimo" in name]
    assert sorted(set(with_mimo) - set(mimo)) == sorted(plain)
    assert len(mimo) == 7 * model.config.kimia_mimo_layers and all(n.startswith("model.mimo_layers.") for n in mimo)
    assert not any("whisper" in name for name in with_mimo)


def test_chat_backend_answers_with_text(tiny_checkpoint, tmp_path):
    """The Web UI chat (LLaMA-Factory's ChatModel, HF backend) runs the official "text" mode: a text answer."""
    from llamafactory.chat import ChatModel

    chat = ChatModel(
        {
            "model_name_or_path": tiny_checkpoint.path,
            "template": "kimi_audio",
            "trust_remote_code": True,
            "max_new_tokens": 8,
            "do_sample": False,
            "infer_backend": "huggingface",
        }
    )
    question = wav(tmp_path, "question", 6)
    messages = [{"role": "user", "content": "<audio>"}]
    responses = chat.chat(messages, audios=[question])
    assert len(responses) == 1 and isinstance(responses[0].response_text, str)
    assert 0 < responses[0].response_length <= 8
