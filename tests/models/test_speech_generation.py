"""The official two-stream decoding loop (speech-output spec §3, vectors §6.9, §6.10, §6.12) on the tiny model.

``official_loop`` below is a hand-written transcription of ``kimia_infer``'s ``_generate_loop`` with full
recomputation (no KV cache): both streams are kept as lists and embedded as ``E[audio] + E[text]`` at every step.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from llamafactory_kimi_audio.models.layout import LayoutEncoder, Segment

OFFICIAL_BASE = 151643


@pytest.fixture(scope="module")
def sym(tiny_checkpoint, native_model):
    base = tiny_checkpoint.num_base_tokens
    names = {"M": 151645, "ME": 151663, "B": 151666, "EOS": 151667, "U": 151670, "A": 151671}
    return {**{k: base + v - OFFICIAL_BASE for k, v in names.items()}, "off": native_model.config.kimia_token_offset}


def tts_prompt(tok, sym) -> tuple[list[int], list[int], list[int]]:
    """Rows 0-6 of spec example 1 (user text of 4 tokens, then the assistant role row): ids, audio, text streams."""
    user = [tok.encode_ordinary(c)[0] for c in "abcd"]
    prompt = LayoutEncoder(tok).speech_prompt([Segment(text="abcd")])
    assert prompt == [sym["U"], *user, sym["M"], sym["A"]]
    audio = [sym["U"], sym["B"], sym["B"], sym["B"], sym["B"], sym["M"], sym["A"]]
    text = [sym["B"], *user, sym["B"], sym["B"]]
    return prompt, audio, text


@torch.no_grad()
def official_loop(model, audio: list[int], text: list[int], sym, steps: int, delay: int):
    """kimia.py ``_generate_loop`` (output_type "both", greedy), recomputing the whole sequence at every step."""
    audio, text = list(audio), list(text)
    text_out, audio_out, text_done, valid_text, valid_audio, logits = [], [], False, 0, 0, []
    embed = model.get_input_embeddings()
    for i in range(steps):
        embeds = embed(torch.tensor([audio])) + embed(torch.tensor([text]))
        out = model(inputs_embeds=embeds, return_audio_logits=True)
        logits.append((out.logits[0, -1], out.audio_logits[0, -1]))
        next_text, next_audio = int(out.logits[0, -1].argmax()), int(out.audio_logits[0, -1].argmax())
        if text_done:
            next_text = sym["B"]
        elif next_text == sym["EOS"]:
            text_done = True
        else:
            valid_text += 1
        if i < delay:
            next_audio = sym["B"]
        else:
            valid_audio += 1
        text_out.append(next_text)
        audio_out.append(next_audio)
        if next_audio in (sym["M"], sym["ME"]):
            break
        audio.append(next_audio)
        text.append(next_text)
    kept = audio_out[delay : delay + valid_audio]
    return text_out[:valid_text], [a - sym["off"] for a in kept if a >= sym["off"]], logits


def test_greedy_equals_the_official_loop_and_cached_logits_match(native_model, native_tok, sym):
    prompt, audio, text = tts_prompt(native_tok, sym)
    steps = 14
    expected_text, expected_codes, expected_logits = official_loop(native_model, audio, text, sym, steps, 6)
    got = native_model.generate_speech(torch.tensor([prompt]), max_new_tokens=steps)
    assert got.text_ids == expected_text and got.codes == expected_codes
    # spec §6.10: the cached loop's logits equal a full forward over prompt + fed rows, at every step
    fed_audio = audio + [a for a, _ in got.fed_rows]
    fed_text = text + [t for _, t in got.fed_rows]
    embed = native_model.get_input_embeddings()
    with torch.no_grad():
        full = native_model(
            inputs_embeds=embed(torch.tensor([fed_audio])) + embed(torch.tensor([fed_text])), return_audio_logits=True
        )
    for step, (text_logits, audio_logits) in enumerate(expected_logits[: len(got.fed_rows) + 1]):
        position = len(prompt) - 1 + step
        torch.testing.assert_close(full.logits[0, position], text_logits, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(full.audio_logits[0, position], audio_logits, rtol=1e-4, atol=1e-5)


class ScriptedHead(nn.Module):
    """Returns logits whose argmax is the next id of a script (one call per decoding step)."""

    def __init__(self, script: list[int], vocab: int) -> None:
        super().__init__()
        self.script, self.vocab, self.calls = script, vocab, 0

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        token = self.script[min(self.calls, len(self.script) - 1)]
        self.calls += 1
        return torch.zeros(*hidden.shape[:-1], self.vocab).index_fill_(-1, torch.tensor([token]), 10.0)


def scripted_run(model, prompt, text_script, audio_script, output_type="both"):
    vocab = model.config.vocab_size
    heads = model.lm_head, model.mimo_output
    model.lm_head, model.mimo_output = ScriptedHead(text_script, vocab), ScriptedHead(audio_script, vocab)
    try:
        result = model.generate_speech(torch.tensor([prompt]), output_type=output_type, max_new_tokens=60)
        return result, model.lm_head.calls
    finally:
        model.lm_head, model.mimo_output = heads


def test_scripted_heads_reproduce_example_1(native_model, native_tok, sym):
    """Spec §6.9: 17 forward calls, fed rows = example 1's rows 7-22, codes 100..109, text e f g."""
    prompt, _, _ = tts_prompt(native_tok, sym)
    reply = [native_tok.encode_ordinary(c)[0] for c in "efg"]
    codes = [sym["off"] + c for c in range(100, 110)]
    text_script = [*reply, sym["EOS"]] + [reply[0]] * 40  # the head keeps talking after eos: fed as blank
    audio_script = [sym["off"] + 5] * 6 + codes + [sym["M"]]
    result, calls = scripted_run(native_model, prompt, text_script, audio_script)
    assert calls == 17 and result.codes == list(range(100, 110)) and result.text_ids == reply
    rows_audio = [sym["B"]] * 6 + codes
    rows_text = [*reply, sym["EOS"]] + [sym["B"]] * 12
    assert result.fed_rows == list(zip(rows_audio, rows_text))
    assert result.audio_tokens == [*codes, sym["M"]]


def test_scripted_variants(native_model, native_tok, sym):
    prompt, _, _ = tts_prompt(native_tok, sym)
    reply = [native_tok.encode_ordinary(c)[0] for c in "efg"]
    codes = [sym["off"] + c for c in range(100, 110)]
    text_script = [*reply, sym["EOS"]] + [reply[0]] * 40
    # a blank from the audio head at step 8: fed back and counted, never a code
    with_blank = [0] * 6 + codes[:2] + [sym["B"]] + codes[2:] + [sym["M"]]
    result, _ = scripted_run(native_model, prompt, text_script, with_blank)
    assert result.codes == list(range(100, 110)) and (sym["B"], sym["B"]) in result.fed_rows[8:9]
    # the audio end right after the delay: no codes
    result, calls = scripted_run(native_model, prompt, text_script, [0] * 6 + [sym["ME"]])
    assert result.codes == [] and calls == 7
    # the text never ends: it is cut when the audio ends
    result, _ = scripted_run(native_model, prompt, reply * 20, [0] * 6 + codes + [sym["M"]])
    assert len(result.text_ids) == 17 and result.codes == list(range(100, 110))
    # "text" mode: the audio stream is blank at every step, decoding stops at text_eos
    result, calls = scripted_run(native_model, prompt, text_script, codes, output_type="text")
    assert calls == 4 and result.text_ids == reply and result.codes == []
    assert all(audio == sym["B"] for audio, _ in result.fed_rows)


def test_a_top_k_beyond_the_head_size_samples_from_every_code():
    from llamafactory_kimi_audio.models.speech_generation import HeadSampling

    logits = torch.tensor([0.0, 1.0, 0.0])
    generator = torch.Generator().manual_seed(0)
    drawn = {HeadSampling(temperature=1.0, top_k=1000).sample(logits, [], generator) for _ in range(200)}
    assert drawn == {0, 1, 2}
