"""Fixtures shared by the integration tests: the tiny checkpoint as LLaMA-Factory's ``load_tokenizer`` gives it
(tokenizer, processor), the ``kimi_audio`` template and plugin, the special ids of ``template_spec`` checked against
the tokenizer, and two short WAV files."""

from __future__ import annotations

import llamafactory.data.template as T  # noqa: N812 - the name LLaMA-Factory's own tests use
import pytest
import torch
from llamafactory.hparams import DataArguments, ModelArguments
from llamafactory.model import load_tokenizer
from template_spec import OFFICIAL_BASE, SPEC, n_frames, write_wav

from llamafactory_kimi_audio.integration.mm_plugin import KimiAudioPlugin

torch.set_num_threads(min(2, torch.get_num_threads()))


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


@pytest.fixture(scope="module")
def wav_a(wav_dir) -> tuple[str, int]:
    return write_wav(wav_dir, "a", 16000, 16000), n_frames(16000)  # 1 s: 13 frames


@pytest.fixture(scope="module")
def wav_b(wav_dir) -> tuple[str, int]:
    return write_wav(wav_dir, "b", 16000, 7 * 1280 + 1), 8  # one sample past 7 frames
