"""Loading the detokenizer (``audio_detokenizer/`` + ``vocoder/``): weights found under their official names, and
one-line errors naming the file and the key or config entry for a missing or mis-shaped tensor, a bad flow config,
and codes outside the semantic vocabulary.
"""

from __future__ import annotations

import os

import pytest
import torch
from detokenizer_reference import VOCAB, raw, ref_weight

from llamafactory_kimi_audio.errors import ModelError
from llamafactory_kimi_audio.models.detokenizer import load_detokenizer
from llamafactory_kimi_audio.models.detokenizer.tiny import write_tiny_detokenizer


def test_loading_round_trips_by_official_names(tiny_detokenizer):
    detok = load_detokenizer(tiny_detokenizer, device="cpu")
    flow = raw(tiny_detokenizer, "audio_detokenizer")["state_dict"]
    for key, value in detok.flow_model.state_dict().items():
        torch.testing.assert_close(value, flow[f"speech_model.{key}"])
    gen = raw(tiny_detokenizer, "vocoder")["generator"]
    torch.testing.assert_close(detok.vocoder.conv_pre.weight, ref_weight(gen, "conv_pre"))
    torch.testing.assert_close(
        detok.vocoder.resblocks[0].activations[1].act.beta, gen["resblocks.0.activations.1.act.beta"]
    )


def _rewrite(path, key, edit):
    blob = torch.load(path, weights_only=True)
    edit(blob[key])
    torch.save(blob, path)


@pytest.mark.parametrize(
    ("sub", "key", "name", "edit", "message"),
    [
        (
            "audio_detokenizer",
            "state_dict",
            "speech_model.blocks.1.attn.qkv.weight",
            "drop",
            "missing keys blocks.1.attn.qkv.weight",
        ),
        (
            "audio_detokenizer",
            "state_dict",
            "speech_model.input_linear.weight",
            "shape",
            "mis-shaped input_linear.weight",
        ),
        ("vocoder", "generator", "ups.1.0.weight_g", "drop", "missing keys ups.1.0.weight_g"),
        ("vocoder", "generator", "conv_post.weight_v", "shape", "mis-shaped conv_post.weight_v"),
    ],
)
def test_bad_key_is_a_one_line_error_naming_file_and_key(tmp_path, sub, key, name, edit, message):
    write_tiny_detokenizer(str(tmp_path), VOCAB)
    path = os.path.join(tmp_path, sub, "model.pt")

    def change(state):
        if edit == "drop":
            del state[name]
        else:
            state[name] = torch.zeros(3, 2)

    _rewrite(path, key, change)
    with pytest.raises(ModelError) as info:
        load_detokenizer(str(tmp_path), device="cpu")
    text = str(info.value)
    assert "\n" not in text and text.startswith(path) and message in text


def test_codes_outside_the_semantic_vocabulary_are_refused(tiny_detokenizer):
    from llamafactory_kimi_audio.errors import InputError

    with pytest.raises(InputError, match=r"\[0, 64\)"):
        load_detokenizer(tiny_detokenizer, device="cpu")([1, 2, VOCAB])


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("    max_seq_len: 4096\n", "", "no 'model.dit.max_seq_len' entry"),
        ('"rope_base": 10000.0, ', "", "no 'rope_base' entry"),
        ('"vanilla_mlp"', '"conv1d_conv1d"', "only 'vanilla_mlp'"),
    ],
)
def test_bad_flow_config_is_a_one_line_error(tmp_path, old, new, message):
    write_tiny_detokenizer(str(tmp_path), VOCAB)
    path = tmp_path / "audio_detokenizer" / "config.yaml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    with pytest.raises(ModelError) as info:
        load_detokenizer(str(tmp_path), device="cpu")
    assert "\n" not in str(info.value) and str(info.value).startswith(str(path)) and message in str(info.value)
