"""Fast greedy evaluation (``models/fast_generation.py``, ``eval/transcribe.py``) against ``model.generate`` on the
tiny checkpoint: same tokens, same output length, transcripts back in input order, progress lines in logs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from llamafactory_kimi_audio.eval.transcribe import Generation, load_for_inference, transcribe
from llamafactory_kimi_audio.models.fast_generation import FastGreedy

SECONDS = (0.5, 1.3, 2.0, 0.9)


@pytest.fixture(scope="module")
def loaded(tiny_checkpoint):
    return load_for_inference(str(tiny_checkpoint.path), device="cpu")


def waves(seconds=SECONDS, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(0.1 * rng.standard_normal(int(16000 * s))).astype(np.float32) for s in seconds]


def reference(model, inputs: dict, max_new_tokens: int) -> torch.Tensor:
    """transformers' own decoding loop (the model's generate would route plain greedy calls on CUDA)."""
    return model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens, fast_greedy=False)


def with_eos(model, extra: list[int]):
    """The generation config with more EOS ids (a random tiny model rarely emits the real one)."""
    config = model.generation_config
    old = config.eos_token_id
    config.eos_token_id = [*([old] if isinstance(old, int) else old), *extra]
    return old


def test_static_cache_decoding_equals_generate_token_for_token(loaded) -> None:
    model, processor = loaded
    fast = FastGreedy(model, "static")
    for seconds, seed in ((SECONDS, 0), ((1.0, 1.1), 1), (SECONDS[::-1], 2)):  # reuses the cache of a bucket
        inputs = processor.asr_inputs(waves(seconds, seed), ["transcribe"] * len(seconds))
        expected = reference(model, inputs, 12)
        got = fast(max_new_tokens=12, **inputs)
        assert got.shape == expected.shape and torch.equal(got, expected)
    assert len(fast.states) < 3  # batches of similar length share a preallocated cache


def test_eos_pad_and_early_stop_match_generate(loaded) -> None:
    """Rows that stop early get pad tokens; when all rows stop, the output is as short as generate's."""
    model, processor = loaded
    inputs = processor.asr_inputs(waves(), ["transcribe"] * len(SECONDS))
    plain = reference(model, inputs, 20)[:, inputs["input_ids"].shape[1] :]
    old = model.generation_config.eos_token_id
    try:
        with_eos(model, [int(plain[0, 2])])  # one row stops at step 3, others later or never
        some = reference(model, inputs, 20)
        assert torch.equal(FastGreedy(model, "static")(max_new_tokens=20, **inputs), some)
        model.generation_config.eos_token_id = old
        with_eos(model, sorted({int(t) for t in plain[:, :2].flatten()}))  # every row stops within 2 steps
        short = reference(model, inputs, 20)
        assert short.shape[1] <= inputs["input_ids"].shape[1] + 2
        assert torch.equal(FastGreedy(model, "static")(max_new_tokens=20, **inputs), short)
    finally:
        model.generation_config.eos_token_id = old


def test_graph_mode_needs_cuda_and_penalty_needs_generate(loaded, tmp_path: Path) -> None:
    model, processor = loaded
    inputs = processor.asr_inputs(waves()[:1], ["transcribe"])
    with pytest.raises(ValueError, match="needs a CUDA device"):
        FastGreedy(model, "graph")(max_new_tokens=2, **inputs)
    path = tmp_path / "a.wav"
    sf.write(path, waves()[0], 16000)
    with pytest.raises(ValueError, match="--repetition-penalty needs --decode generate"):
        transcribe(model, processor, [str(path)], ["t"], Generation(1, 1.2, 2, "static"), progress=False)
    with pytest.raises(ValueError, match="--decode graph needs a CUDA device"):
        transcribe(model, processor, [str(path)], ["t"], Generation(1, 1.0, 2, "graph"), progress=False)


def test_transcripts_in_input_order_equal_generate(loaded, tmp_path: Path) -> None:
    """Length-sorted batches, prefetched inputs and the fast decoder give generate's transcripts, in input order."""
    model, processor = loaded
    paths = []
    for i, wave in enumerate(waves((2.0, 0.4, 1.5, 0.8, 1.1), seed=3)):
        paths.append(str(tmp_path / f"{i}.wav"))
        sf.write(paths[-1], wave, 16000)
    instructions = ["transcribe"] * len(paths)
    slow = transcribe(model, processor, paths, instructions, Generation(1, 1.0, 8, "generate"), progress=False)
    fast = transcribe(model, processor, paths, instructions, Generation(2, 1.0, 8, "auto"), progress=False)
    assert fast == slow
    one_by_one = [transcribe(model, processor, [p], ["transcribe"], Generation(1, 1.0, 8), False)[0] for p in paths]
    assert fast == one_by_one


def test_progress_lines_when_output_is_not_a_terminal(tiny_checkpoint, tmp_path: Path) -> None:
    (tmp_path / "wavs").mkdir()
    rows = []
    for i, wave in enumerate(waves()):
        sf.write(tmp_path / "wavs" / f"{i}.wav", wave, 16000)
        messages = [{"role": "user", "content": "<audio>转写"}, {"role": "assistant", "content": "你好"}]
        rows.append({"id": str(i), "messages": messages, "audios": [f"wavs/{i}.wav"]})
    (tmp_path / "test.json").write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    args = ["--model", tiny_checkpoint.path, "--data", tmp_path / "test.json", "--out", tmp_path / "ev"]
    command = [sys.executable, "-m", "llamafactory_kimi_audio.cli", "evaluate", *map(str, args)]
    command += ["--batch-size", "1", "--max-new-tokens", "3", "--no-plot", "--device", "cpu"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, env={**os.environ})
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("transcribe: ")]
    assert lines[0].startswith("transcribe: 1/4 utterances, ") and lines[-1].startswith("transcribe: 4/4 utterances")
    assert all(" utt/s, ETA " in line for line in lines)
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text(encoding="utf-8"))
    assert summary["generation"]["decode"] == "auto" and summary["n"] == 4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU (the lead runs this on the H200)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_graph_decoding_equals_generate(tiny_checkpoint, dtype) -> None:
    """fp32: the replayed graph gives generate's tokens exactly. bf16: exactly the eager static step's (same
    kernels); against generate (other SDPA kernels, whose bf16 rounding already changes with the batch's padding)
    nearly all tokens."""
    model, processor = load_for_inference(str(tiny_checkpoint.path), device="cuda")
    model = model.to(dtype)
    graphed, static = FastGreedy(model, "graph"), FastGreedy(model, "static")
    agree = total = 0
    for seconds, seed in ((SECONDS, 0), ((1.0, 1.1, 0.7, 0.6), 1), ((0.5,), 2)):
        inputs = processor.asr_inputs(waves(seconds, seed), ["transcribe"] * len(seconds))
        inputs = {k: v.to("cuda") for k, v in inputs.items()}
        expected = reference(model, inputs, 16)
        got = graphed(max_new_tokens=16, **inputs)
        assert torch.equal(got, static(max_new_tokens=16, **inputs))
        assert torch.equal(model.generate(**inputs, do_sample=False, max_new_tokens=16), got)  # routed: graph
        if dtype == torch.float32:
            assert torch.equal(got, expected)
        elif got.shape == expected.shape:
            agree, total = agree + int((got == expected).sum()), total + got.numel()
    assert graphed.graphs and set(model.__dict__["_fast_greedy_decoders"]) == {"graph"}
    if dtype == torch.bfloat16:
        assert total and agree / total > 0.9


def lf_predict_kwargs(model) -> dict:
    """What LLaMA-Factory's ``do_predict`` passes to ``generate`` with ``do_sample: false`` (generating_args + ids)."""
    config = model.generation_config
    eos = config.eos_token_id
    return dict(
        do_sample=False,
        temperature=0.95,
        top_p=0.7,
        top_k=50,
        num_beams=1,
        max_new_tokens=10,
        repetition_penalty=1.0,
        length_penalty=1.0,
        eos_token_id=[*([eos] if isinstance(eos, int) else eos)],
        pad_token_id=config.pad_token_id,
        synced_gpus=False,
    )


def test_generate_routes_plain_greedy_calls_and_keeps_the_tokens(loaded) -> None:
    """``generate`` itself (the do_predict path) takes the static-cache decoder for plain greedy calls only."""
    model, processor = loaded
    inputs = processor.asr_inputs(waves(), ["transcribe"] * len(SECONDS))
    kwargs = lf_predict_kwargs(model)
    expected = model.generate(**inputs, **kwargs, fast_greedy=False)
    model.__dict__.pop("_fast_greedy_decoders", None)
    assert torch.equal(model.generate(**inputs, **kwargs, fast_greedy="static"), expected)
    decoder = model.__dict__["_fast_greedy_decoders"]["static"]
    assert decoder.states  # it really ran
    decoder.states.clear()
    sampled = model.generate(**inputs, **{**kwargs, "do_sample": True}, fast_greedy="static")
    penalised = model.generate(**inputs, **{**kwargs, "repetition_penalty": 1.3}, fast_greedy="static")
    assert not decoder.states  # sampling and penalties stay with transformers' loop
    assert sampled.shape[0] == penalised.shape[0] == expected.shape[0]
    model.generate(**inputs, **kwargs)  # CPU default: transformers' loop (the graphs are CUDA-only)
    assert not decoder.states and set(model.__dict__["_fast_greedy_decoders"]) == {"static"}


def test_llamafactory_keeps_the_models_own_generate(tiny_checkpoint) -> None:
    """LLaMA-Factory's ``patch_model`` (every ``do_predict``) binds transformers' ``GenerationMixin.generate`` on a
    model instance whose ``generate`` is not a ``*GenerationMixin`` function; Kimi-Audio's must survive it, or
    ``do_predict`` would never reach the fast greedy decoder."""
    from llamafactory.hparams import ModelArguments
    from llamafactory.model.patcher import patch_model
    from transformers import AutoTokenizer

    from llamafactory_kimi_audio.models.modeling_kimi_audio import KimiAudioForCausalLM

    model = KimiAudioForCausalLM.from_pretrained(tiny_checkpoint.path)
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint.path, trust_remote_code=True)
    args = ModelArguments(model_name_or_path=tiny_checkpoint.path, trust_remote_code=True)
    patch_model(model, tokenizer, args, is_trainable=False, add_valuehead=False)
    assert "generate" not in model.__dict__
    assert model.generate.__func__ is KimiAudioForCausalLM.generate


def test_single_query_attention_equals_repeated_kv_sdpa() -> None:
    """A decode step's grouped-query attention without the 7x K/V copy gives transformers' SDPA result."""
    from transformers.integrations.sdpa_attention import repeat_kv

    from llamafactory_kimi_audio.models.attention import single_query_attention

    generator = torch.Generator().manual_seed(0)
    q = torch.randn(3, 28, 1, 16, generator=generator)
    k, v = (torch.randn(3, 4, 40, 16, generator=generator) for _ in range(2))
    allowed = torch.rand(3, 40, generator=generator) > 0.3
    allowed[:, 0] = True
    bias = torch.zeros(3, 1, 1, 40).masked_fill(~allowed[:, None, None], torch.finfo(torch.float32).min)
    expected = torch.nn.functional.scaled_dot_product_attention(q, repeat_kv(k, 7), repeat_kv(v, 7), attn_mask=bias)
    got = single_query_attention(q, k, v, bias, 7)
    torch.testing.assert_close(got, expected.transpose(1, 2), rtol=1e-5, atol=1e-6)


def test_decode_step_has_no_host_sync(loaded) -> None:
    """What CUDA-graph capture needs, checked on CPU: the step traces as one graph, without a break for a
    data-dependent branch (``bool(tensor)``, ``.item()``, ``.tolist()``: each would be a host sync on CUDA)."""
    from llamafactory_kimi_audio.models.fast_generation import decode_step

    model, processor = loaded
    fast = FastGreedy(model, "static")
    fast(max_new_tokens=2, **processor.asr_inputs(waves(), ["transcribe"] * len(SECONDS)))
    state = next(iter(fast.states.values()))
    with torch.no_grad():
        explained = torch._dynamo.explain(decode_step)(model, state)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
