"""Speech output (issue 18) on the model: layout A, the two-stream loss, the official decoding loop.

Expectations are the hand-computable vectors of the speech-output spec (§1.4, §1.5, §6), written out row by row with
the official ids shifted onto the tiny base vocabulary; references compute embeddings, the MIMO fork and the loss
formula from the checkpoint's modules directly, never through ``split_streams`` / ``speech_loss``.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from speech_samples import asr_sample, single_stream, speech_batch
from torch import nn

from llamafactory_kimi_audio.errors import InputError, ModelError
from llamafactory_kimi_audio.models.layout import LayoutEncoder, Segment, SpeechReply, speech_marker
from llamafactory_kimi_audio.models.modeling_kimi_audio import KimiAudioForCausalLM
from llamafactory_kimi_audio.models.speech import audio_labels, text_labels

OFFICIAL_BASE = 151643
OFFICIAL = {"M": 151645, "MB": 151661, "ME": 151663, "B": 151666, "EOS": 151667, "U": 151670, "A": 151671}
OFFICIAL["CTD"], OFFICIAL["S"] = 151676, 151664  # S: the package's speech-turn surrogate (<|reserved_token_13|>)
IGNORE = -100


@pytest.fixture(scope="module")
def sym(tiny_checkpoint, native_model):
    """Official ids by name on the tiny vocabulary; ``c(j)`` is the id of GLM code j."""
    base = tiny_checkpoint.num_base_tokens
    out = {name: base + official - OFFICIAL_BASE for name, official in OFFICIAL.items()}
    out["off"] = native_model.config.kimia_token_offset
    return out


def words(tok, *texts: str) -> list[int]:
    return [tok.encode_ordinary(text)[0] for text in texts]


def example_1(tok, sym, delay: int = 6):
    """Spec §1.4 (D = 6) / generalised to D: user text (4 tokens), assistant 3 text tokens + 10 codes 100..109."""
    user, reply = words(tok, "a", "b", "c", "d"), words(tok, "e", "f", "g")
    codes = list(range(100, 110))
    s = sym
    audio = [s["U"], s["B"], s["B"], s["B"], s["B"], s["M"], s["A"]] + [s["B"]] * delay
    audio += [c + s["off"] for c in codes] + [s["M"]]
    text = [s["B"], *user, s["B"], s["B"], *reply, s["EOS"]] + [s["B"]] * (delay + len(codes) - len(reply) - 1)
    text += [s["B"]]
    audio_loss_positions = list(range(6 + delay, 6 + delay + len(codes) + 1))  # shifted m_a (spec: 12..22)
    text_loss_positions = [6, 7, 8, 9]
    return user, reply, codes, audio, text, audio_loss_positions, text_loss_positions


def shifted_positions(labels: torch.Tensor) -> list[int]:
    return [p - 1 for p in (labels[0] != IGNORE).nonzero()[:, 0].tolist()]


@pytest.mark.parametrize("delay", [6, 2])
def test_example_1_layout_a_row_by_row(native_model, native_tok, sym, delay):
    user, reply, codes, audio, text, audio_pos, text_pos = example_1(native_tok, sym, delay)
    ids, labels = single_stream(LayoutEncoder(native_tok, audio_delay=delay), native_tok, "abcd", "efg", len(codes))
    assert ids[:7] == [sym["U"], *user, sym["M"], sym["S"]] and len(ids) == 4 + len(codes) + delay + 4
    assert labels == [IGNORE] * 7 + ids[7:]
    config = native_model.config.__class__.from_dict(
        {**native_model.config.to_dict(), "kimia_mimo_audiodelaytokens": delay}
    )
    model_d = KimiAudioForCausalLM(config) if delay != 6 else native_model
    _, streams = model_d.fuse_streams(torch.tensor([ids]), audio_codes=torch.tensor(codes))
    assert streams.audio_ids[0].tolist() == audio and streams.text_ids[0].tolist() == text
    assert not streams.input_frames.any()  # assistant codes get no Whisper rows (is_continuous False)
    assert shifted_positions(audio_labels(streams, torch.tensor([labels]))) == audio_pos
    assert shifted_positions(text_labels(torch.tensor([labels]), model_d._ids)) == text_pos
    assert len(audio_pos) == len(codes) + 1 and len(text_pos) == len(reply) + 1


def test_example_2_spoken_reply(native_model, native_tok, sym):
    """Spec §1.5: user audio only (5 frames, CTD, no instruction), the reply of example 1; L = 28."""
    layout = LayoutEncoder(native_tok)
    user_audio = "<|im_media_begin|>" + "<|reserved_token_12|>" * 5 + "<|im_media_end|>"
    ids, labels = layout.conversation([("user", user_audio), ("assistant", "efg" + speech_marker(10))])
    codes = torch.tensor([7, 8, 9, 10, 11] + list(range(100, 110)))
    rows = torch.randn(15, native_model.config.kimia_adaptor_input_dim)
    _, streams = native_model.fuse_streams(torch.tensor([ids]), audio_codes=codes, whisper_features=rows)
    s, reply = sym, words(native_tok, "e", "f", "g")
    audio = [s["U"], s["MB"], *[c + s["off"] for c in range(7, 12)], s["ME"], s["CTD"], s["M"], s["A"]]
    audio += [s["B"]] * 6 + [c + s["off"] for c in range(100, 110)] + [s["M"]]
    assert len(ids) == 28 and streams.audio_ids[0].tolist() == audio
    assert streams.text_ids[0].tolist() == [s["B"]] * 11 + reply + [s["EOS"]] + [s["B"]] * 13
    assert streams.input_frames[0].nonzero()[:, 0].tolist() == [2, 3, 4, 5, 6]
    assert shifted_positions(audio_labels(streams, torch.tensor([labels]))) == list(range(16, 27))
    assert shifted_positions(text_labels(torch.tensor([labels]), native_model._ids)) == [10, 11, 12, 13]


def test_history_turn_and_prompt_follow_the_official_prompt(native_tok, sym):
    """Spec §6.3: history speech turn = layout B (no eos); the next user turn has no leading msg_end."""
    layout = LayoutEncoder(native_tok)
    history = layout.speech_turn(SpeechReply("efg", 10), history=True)
    assert history == words(native_tok, "e", "f", "g") + [sym["B"]] * 13 + [sym["M"]]
    prompt = layout.speech_prompt([Segment(audio_tokens=5)])
    assert prompt[-4:] == [sym["ME"], sym["CTD"], sym["M"], sym["A"]]
    second = layout.user_turn([Segment(audio_tokens=2)], first=True, speech_output=True)
    assert second[:2] == [sym["U"], sym["MB"]]


def test_text_longer_than_audio_is_rejected(native_tok):
    """Spec §6.4: n + 1 > D + N raises naming both counts; n + 1 = D + N puts eos on the last content row."""
    layout = LayoutEncoder(native_tok)
    text = " ".join(["x"] * 12)
    n = len(native_tok.encode_ordinary(text))
    with pytest.raises(InputError, match=rf"= {n + 1} > {n} rows"):
        layout.speech_turn(SpeechReply(text, n - 6))
    fits = layout.speech_turn(SpeechReply(text, n + 1 - 6))
    assert fits[n] == native_tok.convert_tokens_to_ids("<|im_kimia_text_eos|>") and len(fits) == n + 2
    with pytest.raises(InputError, match="0 frames"):
        layout.turns([("user", "hi"), ("assistant", "x" + speech_marker(0))])


# ---------------------------------------------------------------------------------------------------- loss
def test_zeroed_heads_give_ln_v(native_model, native_tok):
    """Spec §6.5: every logit 0 → every CE = ln V; 11 audio and 4 text targets."""
    zeroed = KimiAudioForCausalLM(native_model.config).eval()
    zeroed.load_state_dict(native_model.state_dict())
    nn.init.zeros_(zeroed.lm_head.weight)
    nn.init.zeros_(zeroed.mimo_output.weight)
    ids, labels, codes = speech_batch(native_tok)
    loss = zeroed(input_ids=ids, labels=labels, audio_codes=codes).loss
    ln_v = math.log(native_model.config.vocab_size)
    assert loss.item() == pytest.approx(ln_v * (11 / 11.0001 + 4 / 4.0001), rel=1e-6)
    real = 12.03438237580488 * (11 / 11.0001 + 4 / 4.0001)  # the spec's number for V = 168448
    assert math.log(168448) * (11 / 11.0001 + 4 / 4.0001) == pytest.approx(real, rel=1e-12)


def reference_loss(model, ids: list[int], audio: list[int], text: list[int], m_audio, m_text) -> torch.Tensor:
    """Two explicit streams → E[a] + E[x] → layers, fork after layer k → mimo_norm → mimo_output; FTL formula."""
    inner, embed = model.model, model.model.embed_tokens
    hidden = embed(torch.tensor([audio])) + embed(torch.tensor([text]))
    positions = torch.arange(len(ids))[None]
    pos = inner.rotary_emb(hidden, positions)
    fork = None
    for index, layer in enumerate(inner.layers):
        hidden = layer(hidden, pos, None, True)
        if index == model.config.kimia_mimo_transformer_from_layer_index:
            fork = hidden
    for layer in inner.mimo_layers:
        fork = layer(fork, pos, None, True)
    text_logits, audio_logits = model.lm_head(inner.norm(hidden))[0], model.mimo_output(inner.mimo_norm(fork))[0]
    a_lab, x_lab = torch.tensor(audio[1:] + [0]), torch.tensor(text[1:] + [0])
    ma, mx = torch.tensor(m_audio[1:] + [0.0]), torch.tensor(m_text[1:] + [0.0])
    audio_loss = (F.cross_entropy(audio_logits, a_lab, reduction="none") * ma).sum() / (ma.sum() + 1e-4)
    text_loss = (F.cross_entropy(text_logits, x_lab, reduction="none") * mx).sum() / (mx.sum() + 1e-4)
    return audio_loss + text_loss


def test_loss_equals_the_two_stream_reference(native_model, native_tok, sym):
    _, _, codes, audio, text, audio_pos, text_pos = example_1(native_tok, sym)
    ids, labels, code_tensor = speech_batch(native_tok)
    m_audio = [1.0 if p - 1 in audio_pos else 0.0 for p in range(len(audio))]
    m_text = [1.0 if p - 1 in text_pos else 0.0 for p in range(len(text))]
    with torch.no_grad():
        expected = reference_loss(native_model, ids[0].tolist(), audio, text, m_audio, m_text)
        got = native_model(input_ids=ids, labels=labels, audio_codes=code_tensor).loss
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


def test_asr_alone_never_runs_mimo_and_mixed_batches_average(native_model, native_tok):
    calls = []
    hook = native_model.model.mimo_layers[0].register_forward_hook(lambda *a: calls.append(1))
    try:
        asr_ids, asr_labels = asr_sample(native_tok)
        rows = torch.randn(4, native_model.config.kimia_adaptor_input_dim)
        asr_codes = torch.tensor([1, 2, 3, 4])
        with torch.no_grad():
            asr = native_model(
                input_ids=torch.tensor([asr_ids]),
                labels=torch.tensor([asr_labels]),
                audio_codes=asr_codes,
                whisper_features=rows,
            ).loss
            assert not calls
            ids, labels, codes = speech_batch(native_tok)
            speech = native_model(input_ids=ids, labels=labels, audio_codes=codes).loss
            assert calls
            length = max(len(asr_ids), ids.shape[1])
            pad = native_tok.convert_tokens_to_ids("<|reserved_token_406|>")
            batch_ids = torch.tensor([asr_ids + [pad] * (length - len(asr_ids)), ids[0].tolist()])
            batch_labels = torch.tensor([asr_labels + [IGNORE] * (length - len(asr_ids)), labels[0].tolist()])
            mask = (torch.arange(length)[None] < torch.tensor([[len(asr_ids)], [length]])).long()
            mixed = native_model(
                input_ids=batch_ids,
                attention_mask=mask,
                labels=batch_labels,
                audio_codes=torch.cat([asr_codes, codes]),
                whisper_features=rows,
            ).loss
    finally:
        hook.remove()
    assert mixed.item() == pytest.approx((asr.item() + speech.item()) / 2, rel=1e-5)


def test_gradient_routing(native_model, native_tok):
    """Audio loss only: nothing after the fork, nor norm / lm_head, gets gradient; text loss only: no MIMO grad."""
    ids, labels, codes = speech_batch(native_tok)
    fork = native_model.config.kimia_mimo_transformer_from_layer_index
    audio_only = labels.clone()
    audio_only[0, 7:11] = IGNORE  # t_0..t_2, eos: all inside the 6 delay rows
    native_model.zero_grad()
    native_model(input_ids=ids, labels=audio_only, audio_codes=codes).loss.backward()
    grads = {name: p.grad for name, p in native_model.named_parameters() if not name.startswith("whisper")}
    late = [n for n in grads if n.startswith("model.layers.") and int(n.split(".")[2]) > fork]
    assert all(grads[n] is None or not grads[n].any() for n in [*late, "lm_head.weight", "model.norm.weight"])
    assert grads["mimo_output.weight"].abs().sum() > 0 and grads["model.layers.0.mlp.up_proj.weight"].abs().sum() > 0
    text_only = labels.clone()
    text_only[0, 13:] = IGNORE
    native_model.zero_grad()
    native_model(input_ids=ids, labels=text_only, audio_codes=codes).loss.backward()
    assert native_model.mimo_output.weight.grad is None and native_model.lm_head.weight.grad.abs().sum() > 0
    native_model.zero_grad()


def test_missing_mimo_weights_fail_in_one_line(native_model, native_tok):
    ids, labels, codes = speech_batch(native_tok)
    native_model.missing_mimo_weights = ["mimo_output."]
    try:
        with pytest.raises(ModelError, match="no MIMO audio-head weights"):
            native_model(input_ids=ids, labels=labels, audio_codes=codes)
    finally:
        native_model.missing_mimo_weights = []


def test_missing_mimo_weights_are_read_from_the_checkpoint(tiny_checkpoint, tmp_path):
    import json

    from safetensors.torch import save_file

    from llamafactory_kimi_audio.models.checkpoint_io import missing_mimo_weights

    assert missing_mimo_weights(tiny_checkpoint.path) == []
    save_file(
        {"model.embed_tokens.weight": torch.zeros(2, 2), "mimo_output.weight": torch.zeros(2, 2)},
        str(tmp_path / "model.safetensors"),
    )
    assert missing_mimo_weights(str(tmp_path)) == ["model.mimo_layers.", "model.mimo_norm."]
    index = {"weight_map": {"model.layers.0.mlp.up_proj.weight": "a.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    assert missing_mimo_weights(str(tmp_path)) == ["model.mimo_layers.", "model.mimo_norm.", "mimo_output."]
