"""Speech output with LLaMA-Factory's ``packing`` + ``neat_packing``: ASR and speech-output utterances packed in one
row give the loss of the same utterances in an ordinary padded batch (spec §6.6), for both loss reductions."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
from llamafactory.data import get_template_and_fix_tokenizer
from llamafactory.data.collator import SFTDataCollatorWith4DAttentionMask
from llamafactory.data.processor.supervised import PackedSupervisedDatasetProcessor, SupervisedDatasetProcessor
from llamafactory.hparams import DataArguments, FinetuningArguments, ModelArguments
from llamafactory.model import load_model, load_tokenizer

IGNORE = -100
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
    model_args = ModelArguments(model_name_or_path=tiny_checkpoint.path, trust_remote_code=True)
    tokenizer_module = load_tokenizer(model_args)
    data_args = DataArguments(template="kimi_audio", cutoff_len=CUTOFF, packing=True, neat_packing=True)
    template = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
    model = load_model(tokenizer_module["tokenizer"], model_args, FinetuningArguments(finetuning_type="full"))
    return dict(audios=audios, tm=tokenizer_module, data_args=data_args, template=template, model=model.eval())


def examples(audios: list[list[str]]) -> dict[str, list]:
    return {
        "_prompt": [[{"role": "user", "content": user}] for user, _, _ in SAMPLES],
        "_response": [[{"role": "assistant", "content": answer}] for _, answer, _ in SAMPLES],
        "_system": ["" for _ in SAMPLES],
        "_tools": ["" for _ in SAMPLES],
        "_images": [None for _ in SAMPLES],
        "_videos": [None for _ in SAMPLES],
        "_audios": audios,
    }


def batches(setup) -> tuple[dict, dict]:
    kwargs = dict(template=setup["template"], tokenizer=setup["tm"]["tokenizer"], processor=setup["tm"]["processor"])
    out = []
    for processor, block_diag in (
        (PackedSupervisedDatasetProcessor(data_args=setup["data_args"], **kwargs), True),
        (
            SupervisedDatasetProcessor(data_args=DataArguments(template="kimi_audio", cutoff_len=CUTOFF), **kwargs),
            False,
        ),
    ):
        columns = processor.preprocess_dataset(examples(setup["audios"]))
        rows = [dict(zip(columns, values)) for values in zip(*columns.values())]
        for row in rows:
            row.pop("packing_params", None)
        collator = SFTDataCollatorWith4DAttentionMask(
            template=setup["template"],
            model=setup["model"],
            pad_to_multiple_of=8,
            label_pad_token_id=IGNORE,
            block_diag_attn=block_diag,
            attn_implementation="sdpa",
            compute_dtype=torch.float32,
            **setup["tm"],
        )
        out.append(collator(rows))
    return out[0], out[1]


@pytest.mark.parametrize("reduction", ["sample", "token"])
def test_packed_speech_and_asr_give_the_loss_of_separate_utterances(setup, reduction, monkeypatch):
    packed, plain = batches(setup)
    assert packed["input_ids"].shape[0] == 1 and plain["input_ids"].shape[0] == len(SAMPLES)
    monkeypatch.setattr(setup["model"].config, "loss_reduction", reduction)
    with torch.no_grad():
        packed_loss, plain_loss = setup["model"](**packed).loss, setup["model"](**plain).loss
    torch.testing.assert_close(packed_loss, plain_loss, rtol=1e-4, atol=1e-5)
