"""``generate`` against the greedy loop of spec §7 with full recomputation (tiny checkpoint, CPU): with and
without a KV cache on left-padded ASR prompts, per-sample stopping at EOS, transcripts decoded as the spec says, and
a multi-token step on top of a KV cache (chunked prefill) against a full forward.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch
from spec_reference import (
    INSTRUCTION,
    SR,
    frames,
    official_streams,
    qwen2_reference,
    reference_embeddings,
    reference_logits,
    reference_whisper_rows,
    speechy,
)


@pytest.fixture(scope="module")
def glm(ckpt):
    from llamafactory_kimi_audio.models.glm4_voice import load_glm4_voice_tokenizer

    return load_glm4_voice_tokenizer(os.path.join(ckpt, "glm-4-voice-tokenizer"))


def reference_greedy(text_ref, state, config, ids, prompt_streams, rows, steps: int, eos: int) -> list[int]:
    """Spec §7: prefill, then feed text stream = argmax (full vocabulary), audio stream = blank; full recompute."""
    audio, text, cont, _ = prompt_streams
    embeds = reference_embeddings(state, config, ids, audio, text, cont, rows)
    embed = state["model.embed_tokens.weight"]
    out: list[int] = []
    for _ in range(steps):
        logits = reference_logits(text_ref, embeds)[-1]
        top2 = logits.topk(2).values
        assert float(top2[0] - top2[1]) > 1e-5, "near tie: the comparison would not be meaningful"
        token = int(logits.argmax())
        out.append(token)
        if token == eos:
            break
        embeds = torch.cat([embeds, (embed[ids.blank] + embed[token])[None]])
    return out + [ids.pad] * (steps - len(out))


def reference_transcript(tik, ids, generated: list[int]) -> str:
    """Cut at text_eos, drop audio ids (spec §7) and Kimi specials, tiktoken-decode."""
    generated = generated[: generated.index(ids.text_eos)] if ids.text_eos in generated else generated
    return tik.decode_bytes([t for t in generated if t < ids.num_base]).decode("utf-8", errors="replace").strip()


@pytest.fixture(scope="module")
def generation_case(model, processor, ids, tik, whisper_ref, glm):
    """Two left-padded ASR prompts and a copy of the model whose embeddings are scaled up (x50): random weights then
    decode varied tokens — base text, Kimi specials and audio ids — instead of repeating one token."""
    gen_model = copy.deepcopy(model)
    with torch.no_grad():
        gen_model.model.embed_tokens.weight.mul_(50.0)
        for layer in gen_model.model.layers:  # louder residual branches: the 0.02-std tiny weights otherwise
            layer.self_attn.o_proj.weight.mul_(5.0)  # let the embedding dominate and decode no base-text token
            layer.mlp.down_proj.weight.mul_(5.0)
    n = gen_model.config.num_hidden_layers
    gen_ref = qwen2_reference(
        gen_model, [f"model.layers.{i}" for i in range(n)], "model.norm.weight", "lm_head.weight"
    )
    waves = [speechy(int(0.5 * SR), seed=21), speechy(int(1.25 * SR), seed=22)]
    instructions = [INSTRUCTION, None]
    batch = processor.asr_inputs(waves, instructions, padding_side="left")
    prompts = []
    for wave, instruction in zip(waves, instructions):
        codes = glm.tokenize([wave])[0].tolist()
        assert len(codes) == frames(len(wave))
        streams = official_streams(ids, tik.encode_ordinary(instruction) if instruction else [], codes)
        prompts.append((streams, reference_whisper_rows(whisper_ref, wave)))
    # The same prompts with encoder outputs precomputed, so that decoding without a cache does not re-encode audio.
    with torch.no_grad():
        rows = gen_model.whisper_rows(batch["audio_input_features"], batch["audio_chunk_tokens"])
        codes = gen_model.audio_codes_from_features(batch["semantic_input_features"], batch["semantic_frame_mask"])
    light = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    light.update(whisper_features=rows, audio_codes=codes)
    return gen_model, gen_ref, batch, light, prompts


def test_generate_cache_nocache_and_reference_loop_agree(processor, ids, tik, generation_case):
    gen_model, gen_ref, batch, light, prompts = generation_case
    state = gen_model.state_dict()
    steps = 8
    prompt_len = batch["input_ids"].shape[1]
    config = gen_model.generation_config
    assert config.eos_token_id == ids.text_eos and config.pad_token_id == ids.pad and config.do_sample is False
    with torch.no_grad():
        cached = gen_model.generate(**batch, max_new_tokens=steps, do_sample=False)
        uncached = gen_model.generate(**light, max_new_tokens=steps, do_sample=False, use_cache=False)
    assert cached.shape == (2, prompt_len + steps)
    assert torch.equal(cached[:, :prompt_len], batch["input_ids"])
    for row, (streams, rows) in enumerate(prompts):
        valid = batch["attention_mask"][row].bool()
        # the processor's prompt is the spec's inference prompt (rows 0 .. assistant start) in one stream
        audio, text, cont, _ = streams
        single = torch.where(
            audio == ids.blank, text, torch.where(cont, torch.full_like(audio, ids.placeholder), audio)
        )
        assert batch["input_ids"][row][valid].tolist() == single.tolist()
        expected = reference_greedy(gen_ref, state, gen_model.config, ids, streams, rows, steps, ids.text_eos)
        assert cached[row, prompt_len:].tolist() == expected
    new = cached[:, prompt_len:]
    # The case is discriminative: several distinct tokens, including an audio id that, fed back without a KV cache,
    # must still go to the text stream (spec §7) rather than be taken for an audio frame.
    assert len(set(new.flatten().tolist())) > 4 and bool((new >= ids.offset).any())
    assert torch.equal(cached, uncached)
    transcripts = processor.decode_transcripts(new)
    assert transcripts == [reference_transcript(tik, ids, new[r].tolist()) for r in range(2)]
    assert any(transcripts)


def test_generate_stops_each_sample_at_its_eos(ids, generation_case):
    """Make the token the first sample emits at step 3 the EOS: that row stops and is padded, the other continues."""
    gen_model, gen_ref, _, light, prompts = generation_case
    state = gen_model.state_dict()
    steps = 8
    free = [reference_greedy(gen_ref, state, gen_model.config, ids, s, r, steps, -1) for s, r in prompts]
    eos = free[0][2]
    cuts = [tokens.index(eos) + 1 if eos in tokens else steps for tokens in free]
    expected = [tokens[:cut] + [ids.pad] * (steps - cut) for tokens, cut in zip(free, cuts)]
    assert min(cuts) < max(cuts)  # rows finish at different steps
    with torch.no_grad():
        for use_cache in (True, False):
            out = gen_model.generate(
                **light, max_new_tokens=steps, do_sample=False, eos_token_id=eos, use_cache=use_cache
            )
            new = out[:, light["input_ids"].shape[1] :].tolist()
            assert len(new[0]) == max(cuts), use_cache  # generation ends when every row has finished
            assert new == [row[: max(cuts)] for row in expected], use_cache


def test_cached_chunked_prefill_equals_full_forward(model, layout, waves, audio_case):
    """A multi-token step on top of a KV cache (attention bias path with past_len > 0) equals a full forward."""
    input_ids = torch.tensor([layout.asr_prompt(frames(len(waves[0])), INSTRUCTION)])
    extra = torch.tensor([[5, 17, 42, 9]])
    audio = audio_case["singles"][0]
    with torch.no_grad():
        full = model(input_ids=torch.cat([input_ids, extra], 1), **audio).logits[0, -4:]
        prefix = model(input_ids=input_ids, use_cache=True, **audio)
        step = model(input_ids=extra, past_key_values=prefix.past_key_values, use_cache=True, text_only=True).logits[0]
    torch.testing.assert_close(step, full, rtol=0, atol=1e-5)
