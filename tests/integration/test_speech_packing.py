"""Speech output with LLaMA-Factory's ``packing`` + ``neat_packing``: ASR and speech-output utterances packed in one
row give the loss of the same utterances in an ordinary padded batch (spec §6.6), for both loss reductions."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
from lf_pipeline import load_tiny, packed_and_plain_batches, sft_columns
from llamafactory.hparams import DataArguments

CUTOFF = 256
# (user content, assistant content, seconds of audio): ASR, TTS, spoken reply (question + answer audio)
SAMPLES = [
    ("<audio>", "one two", (0.8,)),
    ("say three", "three<audio>", (0.9,)),
    ("<audio>", "four<audio>", (0.5, 1.0)),
]


@pytest.fixture(scope="module")
def setup(tiny_checkpoint, tmp_path_factory):
    directory = tmp_path_factory.mktemp("speech_packing")
    rng = np.random.default_rng(0)
    audios = []
    for index, (_, _, seconds) in enumerate(SAMPLES):
        paths = []
        for part, length in enumerate(seconds):
            paths.append(str(directory / f"s{index}_{part}.wav"))
            sf.write(paths[-1], (0.1 * rng.standard_normal(int(length * 16000))).astype(np.float32), 16000)
        audios.append(paths)
    data_args = DataArguments(template="kimi_audio", cutoff_len=CUTOFF, packing=True, neat_packing=True)
    tokenizer_module, template, model = load_tiny(tiny_checkpoint.path, data_args)
    return dict(audios=audios, tm=tokenizer_module, data_args=data_args, template=template, model=model)


def batches(setup) -> tuple[dict, dict]:
    users, answers, _ = zip(*SAMPLES)
    return packed_and_plain_batches(setup, sft_columns(list(users), list(answers), setup["audios"]))


@pytest.mark.parametrize("reduction", ["sample", "token"])
def test_packed_speech_and_asr_give_the_loss_of_separate_utterances(setup, reduction, monkeypatch):
    packed, plain = batches(setup)
    assert packed["input_ids"].shape[0] == 1 and plain["input_ids"].shape[0] == len(SAMPLES)
    monkeypatch.setattr(setup["model"].config, "loss_reduction", reduction)
    with torch.no_grad():
        packed_loss, plain_loss = setup["model"](**packed).loss, setup["model"](**plain).loss
    torch.testing.assert_close(packed_loss, plain_loss, rtol=1e-4, atol=1e-5)
