"""Native detokenizer (flow-matching DiT + BigVGAN) vs hand-written references of the published algorithm.

The references below use plain tensor ops on the raw official-layout state dicts (``speech_model.*`` and the
``weight_g`` / ``weight_v`` generator), written independently of the port: explicit attention with the committed
prefix, the torchdyn Euler grid, zero-stuffing for the transposed convolution, numpy's Kaiser window and sinc.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lf_runs import two_at_a_time

from llamafactory_kimi_audio.errors import ModelError
from llamafactory_kimi_audio.models.detokenizer import load_detokenizer
from llamafactory_kimi_audio.models.detokenizer.bigvgan import AntiAliasedActivation, Snake, kaiser_sinc_filter
from llamafactory_kimi_audio.models.detokenizer.loading import load_vocoder
from llamafactory_kimi_audio.models.detokenizer.tiny import write_tiny_detokenizer

VOCAB = 64


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.set_num_threads(1)  # tiny tensors: threads only contend on a shared machine
    directory = str(tmp_path_factory.mktemp("detok"))
    write_tiny_detokenizer(directory, VOCAB, seed=3)
    return directory


def raw(checkpoint, sub):
    return torch.load(os.path.join(checkpoint, sub, "model.pt"), map_location="cpu", weights_only=True)


# ---------------------------------------------------------------- vocoder references


def ref_kaiser_filter(cutoff, half_width, size):
    half = size // 2
    a = 2.285 * (half - 1) * math.pi * 4 * half_width + 7.95
    beta = 0.1102 * (a - 8.7) if a > 50 else (0.5842 * (a - 21) ** 0.4 + 0.07886 * (a - 21) if a >= 21 else 0.0)
    time = np.arange(-half, half) + 0.5 if size % 2 == 0 else np.arange(size) - half
    taps = 2 * cutoff * np.kaiser(size, beta) * np.sinc(2 * cutoff * time)
    return torch.tensor(taps / taps.sum(), dtype=torch.float32)


def ref_snake(x, alpha, beta, logscale=True):
    a, b = (torch.exp(p) if logscale else p for p in (alpha, beta))
    return x + torch.sin(a[None, :, None] * x) ** 2 / (b[None, :, None] + 1e-9)


def ref_transposed_conv(x, taps, stride):
    """Depthwise conv_transpose1d written as zero-stuffing + a full correlation with the flipped taps."""
    batch, channels, length = x.shape
    stuffed = torch.zeros(batch, channels, (length - 1) * stride + 1)
    stuffed[..., ::stride] = x
    k = taps.numel()
    padded = F.pad(stuffed, (k - 1, k - 1))
    windows = padded.unfold(-1, k, 1)  # [B, C, L', k]
    return (windows * taps.flip(0)).sum(-1)


def ref_activation(x, alpha, beta, up_taps, down_taps):
    """Anti-aliased snake: replicate-pad 5, x2 upsample (x2 gain), crop 15/15, snake, pad (5, 6), lowpass stride 2."""
    up = 2 * ref_transposed_conv(F.pad(x, (5, 5), mode="replicate"), up_taps, 2)[..., 15:-15]
    y = ref_snake(up, alpha, beta)
    y = F.pad(y, (5, 6), mode="replicate").unfold(-1, 12, 2)
    return (y * down_taps).sum(-1)


def ref_weight(state, name):
    g, v = state[f"{name}.weight_g"], state[f"{name}.weight_v"]
    rows = torch.stack([row.norm() for row in v])
    return v * (g.reshape(-1) / rows).reshape(-1, *([1] * (v.dim() - 1)))


def ref_act(state, prefix, x):
    return ref_activation(
        x,
        state[f"{prefix}.act.alpha"],
        state[f"{prefix}.act.beta"],
        ref_kaiser_filter(0.25, 0.3, 12),
        ref_kaiser_filter(0.25, 0.3, 12),
    )


def ref_resblock(state, prefix, x, kernel, dilations):
    for i, d in enumerate(dilations):
        y = ref_act(state, f"{prefix}.activations.{2 * i}", x)
        y = F.conv1d(y, ref_weight(state, f"{prefix}.convs1.{i}"), state[f"{prefix}.convs1.{i}.bias"],
                     padding=d * (kernel - 1) // 2, dilation=d)  # fmt: skip
        y = ref_act(state, f"{prefix}.activations.{2 * i + 1}", y)
        y = F.conv1d(y, ref_weight(state, f"{prefix}.convs2.{i}"), state[f"{prefix}.convs2.{i}.bias"],
                     padding=(kernel - 1) // 2)  # fmt: skip
        x = x + y
    return x


def ref_vocoder(state, h, mel):
    """mel [T, 80] -> wave [1, T * 480], the published BigVGAN generator."""
    x = F.conv1d(mel.T[None], ref_weight(state, "conv_pre"), state["conv_pre.bias"], padding=3)
    blocks = list(zip(h["resblock_kernel_sizes"], h["resblock_dilation_sizes"]))
    for i, (rate, kernel) in enumerate(zip(h["upsample_rates"], h["upsample_kernel_sizes"])):
        x = F.conv_transpose1d(x, ref_weight(state, f"ups.{i}.0"), state[f"ups.{i}.0.bias"], stride=rate,
                               padding=(kernel - rate) // 2)  # fmt: skip
        outs = [ref_resblock(state, f"resblocks.{i * len(blocks) + j}", x, k, d) for j, (k, d) in enumerate(blocks)]
        x = sum(outs) / len(blocks)
    x = ref_act(state, "activation_post", x)
    x = F.conv1d(x, ref_weight(state, "conv_post"), state.get("conv_post.bias"), padding=3)
    return torch.tanh(x)[0]


def test_kaiser_filter_and_snake_match_reference():
    for cutoff, width, size in ((0.25, 0.3, 12), (0.25, 0.3, 13), (0.1, 0.05, 8)):
        torch.testing.assert_close(
            kaiser_sinc_filter(cutoff, width, size).view(-1), ref_kaiser_filter(cutoff, width, size)
        )
    snake = Snake(5, beta=True, logscale=True)
    with torch.no_grad():
        snake.alpha.normal_(), snake.beta.normal_()
    x = torch.randn(2, 5, 17)
    torch.testing.assert_close(snake(x), ref_snake(x, snake.alpha, snake.beta), rtol=1e-6, atol=1e-6)


def test_anti_aliased_activation_matches_reference():
    act = AntiAliasedActivation(Snake(4, beta=True, logscale=True))
    with torch.no_grad():
        act.act.alpha.normal_(0, 0.3), act.act.beta.normal_(0, 0.3)
    x = torch.randn(1, 4, 33)
    taps = ref_kaiser_filter(0.25, 0.3, 12)
    expected = ref_activation(x, act.act.alpha, act.act.beta, taps, taps)
    assert act(x).shape == x.shape
    torch.testing.assert_close(act(x), expected, rtol=1e-5, atol=1e-5)


def test_vocoder_resblock_and_whole_generator_match_reference(checkpoint):
    import json

    state = {k: v.float() for k, v in raw(checkpoint, "vocoder")["generator"].items()}
    h = json.load(open(os.path.join(checkpoint, "vocoder", "config.json")))
    vocoder = load_vocoder(os.path.join(checkpoint, "vocoder")).eval()
    x = torch.randn(1, 16, 21)
    k, d = h["resblock_kernel_sizes"][0], h["resblock_dilation_sizes"][0]
    with torch.no_grad():
        torch.testing.assert_close(vocoder.resblocks[0](x), ref_resblock(state, "resblocks.0", x, k, d),
                                   rtol=1e-4, atol=1e-5)  # fmt: skip
        mel = torch.randn(9, 80) - 4
        wave = vocoder.decode_mel(mel)
    assert wave.shape == (1, 9 * 480)
    torch.testing.assert_close(wave, ref_vocoder(state, h, mel), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- flow-matching references


def ref_rope(x, positions, params):
    """Rotate each adjacent pair (x[2i], x[2i+1]) of every head by angle pos / interp * base^(-2i/D)."""
    d = x.shape[-1]
    inv = 1.0 / params["rope_base"] ** (torch.arange(0, d, 2).float() / d)
    angle = torch.tensor(positions, dtype=torch.float32)[:, None] / params["rope_interpolation_factor"] * inv
    cos, sin = torch.cos(angle)[:, None, :], torch.sin(angle)[:, None, :]
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2)


def ref_dit(state, cfg, x, tokens, step, positions, prefix):
    """One DiT velocity; ``prefix``: per-layer committed (k, v) [T', H, D] or None. Returns (v, new (k, v))."""
    s = {k.replace("speech_model.", ""): v.float() for k, v in state.items()}
    lin = lambda h, name: h @ s[f"{name}.weight"].T + s[f"{name}.bias"]  # noqa: E731
    dim, heads = cfg["hidden_size"], cfg["num_heads"]
    half = 128
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    t_feat = torch.cat([torch.cos(step * freqs), torch.sin(step * freqs)])
    t_emb = lin(F.silu(lin(t_feat, "t_embedder.mlp.0")), "t_embedder.mlp.2")
    c = t_emb + s["semantic_token_embedding.weight"][tokens]  # [T, dim]
    table = torch.zeros(4097 + len(tokens), dim)
    half_d = dim // 2
    rate = torch.exp(torch.arange(half_d) * -(math.log(10000) / (half_d - 1)))
    angle = torch.arange(table.shape[0])[:, None] * rate[None]
    table = torch.cat([torch.sin(angle), torch.cos(angle)], 1)
    table[0] = 0
    rows = [p if positions[0] == 0 else i + 1 for i, p in enumerate(positions)]  # the official make_positions
    h = lin(x, "input_linear") + table[rows]
    ln = lambda v: (v - v.mean(-1, keepdim=True)) / torch.sqrt(v.var(-1, unbiased=False, keepdim=True) + 1e-6)  # noqa: E731
    new_prefix = []
    for layer in range(cfg["depth"]):
        b = f"blocks.{layer}"
        mods = lin(F.silu(c), f"{b}.adaLN_modulation.1").chunk(6, dim=-1)
        a = ln(h) * (1 + mods[1]) + mods[0]
        q, k, v = lin(a, f"{b}.attn.qkv").view(len(tokens), 3, heads, dim // heads).unbind(1)
        if cfg.get("use_rope"):
            q, k = ref_rope(q, positions, cfg["rope_params"]), ref_rope(k, positions, cfg["rope_params"])
        if prefix is not None:
            k, v = torch.cat([prefix[layer][0], k]), torch.cat([prefix[layer][1], v])
        new_prefix.append((k, v))
        scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(dim // heads)
        att = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v).reshape(len(tokens), dim)
        h = h + mods[2] * lin(att, f"{b}.attn.proj")
        m = ln(h) * (1 + mods[4]) + mods[3]
        h = h + mods[5] * lin(F.gelu(lin(m, f"{b}.mlp.fc1"), approximate="tanh"), f"{b}.mlp.fc2")
    shift, scale = lin(F.silu(c), "final_layer.adaLN_modulation.1").chunk(2, dim=-1)
    return lin(ln(h) * (1 + scale) + shift, "final_layer.linear"), new_prefix


def ref_detokenize(checkpoint, codes, seed):
    """The published streaming loop (KimiAudio.detokenize_audio + PrefixStreamingFlowMatchingDetokenizer)."""
    import json

    import yaml

    state = raw(checkpoint, "audio_detokenizer")["state_dict"]
    cfg = yaml.safe_load(open(os.path.join(checkpoint, "audio_detokenizer", "config.yaml")))
    voc = {k: v.float() for k, v in raw(checkpoint, "vocoder")["generator"].items()}
    h = json.load(open(os.path.join(checkpoint, "vocoder", "config.json")))
    gen = torch.Generator().manual_seed(seed)
    chunks = [codes[:30]] + [codes[i : i + 30] for i in range(30, len(codes), 30)]
    position, prefix, left, pre_mel, pre_wav, out = 0, None, None, None, None, []
    grid = torch.linspace(0, 1, 30)
    for n, chunk in enumerate(chunks):
        final = n == len(chunks) - 1
        tokens = torch.tensor(chunk).repeat_interleave(4)
        tokens = tokens if left is None else torch.cat([left, tokens])
        x = torch.randn(len(tokens), 80, generator=gen)
        positions = list(range(position, position + len(tokens)))
        t = grid[0]
        for i in range(1, 30):
            dt = grid[i] - t
            x = x + dt * ref_dit(state, cfg["model"]["dit"], x, tokens, float(int(t * 1000)), positions, prefix)[0]
            t = t + dt
        keep = len(tokens) if final else len(tokens) - 48
        x, left = x[:keep], tokens[-48:]
        _, prefix = ref_dit(state, cfg["model"]["dit"], x, tokens[:keep], 999.0, positions[:keep], prefix)
        position += keep
        mel = x * cfg["mel_std"] + cfg["mel_mean"]
        if pre_mel is None:
            wav = ref_vocoder(voc, h, mel)
            if final:
                out.append(wav)
                break
            half = 480 * keep // 2
            out.append(wav[:, :half])
            pre_wav, pre_mel = wav[:, -half:], mel[keep - keep // 2 :]
            continue
        wav = ref_vocoder(voc, h, torch.cat([pre_mel, mel]))
        if final:
            out.append(wav)
            break
        ready = 2 * pre_wav.shape[1] if wav.shape[1] > 2 * pre_wav.shape[1] else wav.shape[1] // 2
        win, fade = torch.hamming_window(ready), ready // 2
        first = wav[:, :ready].clone()
        first[:, :fade] = pre_wav[:, :fade] * win[ready - fade :] + first[:, :fade] * win[:fade]
        out.append(first)
        rest = wav.shape[1] - ready
        pre_wav, pre_mel = wav[:, ready:], mel[keep - rest // 480 :]
    return torch.cat(out, dim=-1)[0]


@pytest.mark.parametrize("num_codes", [7, 55, 95])
def test_codes_to_wave_matches_reference_of_the_streaming_algorithm(checkpoint, num_codes):
    """7 codes: one final chunk; 55: look-ahead + prefix + final concat; 95: adds a Hamming cross-fade chunk."""
    detok = load_detokenizer(checkpoint, device="cpu")
    codes = torch.randint(0, VOCAB, (num_codes,), generator=torch.Generator().manual_seed(num_codes)).tolist()
    wave = detok(codes, generator=torch.Generator().manual_seed(11))
    assert wave.dtype == torch.float32 and wave.shape == (num_codes * 1920,)  # 24000 / 12.5 samples per code
    assert detok.samples_per_code == 1920 and detok.sampling_rate == 24000
    expected = ref_detokenize(checkpoint, codes, seed=11)
    torch.testing.assert_close(wave, expected, rtol=1e-5, atol=5e-6)
    assert wave.std() > 1e-3  # a real signal, not silence


def test_loading_round_trips_by_official_names(checkpoint):
    detok = load_detokenizer(checkpoint, device="cpu")
    flow = raw(checkpoint, "audio_detokenizer")["state_dict"]
    for key, value in detok.flow_model.state_dict().items():
        torch.testing.assert_close(value, flow[f"speech_model.{key}"])
    gen = raw(checkpoint, "vocoder")["generator"]
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


# ---------------------------------------------------------------- CLI: make-tiny --detokenizer, respond -> .wav


def _cli(*args):
    import subprocess
    import sys

    bin_dir = os.path.dirname(sys.executable)
    command = [os.path.join(bin_dir, "kimi-audio-lf"), *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
def test_respond_writes_the_native_detokenizer_wave(tmp_path):
    import json

    import soundfile as sf

    model = tmp_path / "tiny"
    _cli("make-tiny", str(model), "--detokenizer")
    assert os.path.isfile(model / "audio_detokenizer" / "config.yaml") and os.path.isfile(
        model / "vocoder" / "model.pt"
    )
    # sampling (the random tiny model answers greedily with blanks only); top-k within the tiny vocabulary
    flags = ["--text", "hello there", "--max-new-tokens", "60", "--device", "cpu", "--audio-temperature", "1.0",
             "--audio-top-k", "1000", "--seed", "0"]  # fmt: skip
    # a budget inside the 6 forced blank audio steps: no wav, and the console says why and what to change
    short = ["--text", "hello there", "--max-new-tokens", "5", "--device", "cpu"]
    without_vocoder = tmp_path / "tiny_without_vocoder"  # without the detokenizer: codes only, as before
    without_vocoder.mkdir()
    for item in model.iterdir():
        if item.name != "vocoder":
            (without_vocoder / item.name).symlink_to(item)
    _, out, _ = two_at_a_time(  # three independent answers, two at a time
        lambda directory, name, more: _cli("respond", str(directory), "--out", str(tmp_path / name), *more),
        (model, model, without_vocoder),
        ("a", "short", "b"),
        (flags, short, flags),
    )
    record = json.loads((tmp_path / "a.json").read_text())
    assert record["num_codes"] > 0 and record["wav"] == f"{tmp_path / 'a'}.wav"
    wave, rate = sf.read(record["wav"], dtype="float32")
    assert rate == 24000 and wave.shape == (record["num_codes"] * 1920,)
    expected = load_detokenizer(str(model), device="cpu")(record["codes"], generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(wave, expected.numpy(), atol=1.5 / 32768)  # PCM_16 rounding

    assert json.loads((tmp_path / "short.json").read_text())["num_codes"] == 0
    assert not (tmp_path / "short.wav").exists()
    assert f"no {tmp_path / 'short'}.wav: the budget of 5 decoding steps ended before the audio started" in out
    assert "6 forced blank audio steps" in out and "raise --max-new-tokens" in out

    assert json.loads((tmp_path / "b.json").read_text())["wav"] is None and not (tmp_path / "b.wav").exists()


def test_respond_says_why_an_answer_has_no_audio():
    """Each way a spoken answer ends without (all of) its audio has its own line; a complete answer has none."""
    from types import SimpleNamespace

    from llamafactory_kimi_audio.cli.respond import audio_note
    from llamafactory_kimi_audio.models.speech_generation import SpeechOutput

    ids = SimpleNamespace(delay=6, msg_end=2, media_end=3, offset=100)

    def answer(audio: list[int], steps: int) -> SpeechOutput:
        codes = [token - ids.offset for token in audio if token >= ids.offset]
        return SpeechOutput([], codes, audio, [(0, 0)] * steps)

    assert "ended before the audio started" in audio_note(answer([], 5), ids)
    assert "before the audio end: the answer is cut" in audio_note(answer([101, 102], 8), ids)
    assert audio_note(answer([101, 102, ids.msg_end], 8), ids) is None
    assert "does not speak this answer" in audio_note(answer([ids.msg_end], 6), ids)
    silent = audio_note(answer([7, 8, 9], 9), ids)
    assert "in 3 steps after the 6 forced blanks the audio head gave no speech code" in silent
    assert "budget of 9 decoding steps ran out" in silent


def test_respond_escapes_control_characters_of_the_answer():
    from llamafactory_kimi_audio.cli.respond import console_text

    shown = console_text("ok\x1b[31mred\x07\r\u202eé三")
    assert shown.isprintable() and "é三" in shown and "\\x1b" in shown and "\\u202e" in shown


def test_codes_outside_the_semantic_vocabulary_are_refused(checkpoint):
    from llamafactory_kimi_audio.errors import InputError

    with pytest.raises(InputError, match=r"\[0, 64\)"):
        load_detokenizer(checkpoint, device="cpu")([1, 2, VOCAB])


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


# ---------------------------------------------------------------- evaluate: ASR round trip of the generated audio


@pytest.fixture(scope="module")
def tiny_speaker(tmp_path_factory):
    from llamafactory_kimi_audio.eval.transcribe import load_for_inference
    from llamafactory_kimi_audio.models.tiny import make_tiny_checkpoint

    directory = str(tmp_path_factory.mktemp("tiny_speaker"))
    make_tiny_checkpoint(directory, detokenizer=True)
    model, processor = load_for_inference(directory, None, "cpu")
    return directory, model, processor


def test_round_trip_transcribes_the_detokenized_answers(tiny_speaker, tmp_path):
    import soundfile as sf

    from llamafactory_kimi_audio.eval.speech_eval import SpeechItem
    from llamafactory_kimi_audio.eval.speech_roundtrip import round_trip
    from llamafactory_kimi_audio.eval.transcribe import Generation, transcribe
    from llamafactory_kimi_audio.models.special_tokens import DEFAULT_INSTRUCTION

    _, model, processor = tiny_speaker
    items = [SpeechItem(u, "say it", None, "unused.wav", text) for u, text in (("a/1", "hello there"), ("b", "bye"))]
    codes = [torch.randint(0, 256, (40,), generator=torch.Generator().manual_seed(1)).tolist(), []]
    trip = round_trip(model, processor, items, codes, str(tmp_path), "standard", "auto", progress=False)
    assert trip.wavs[1] is None and trip.hyps[1] == ""  # no codes: nothing to hear
    wave, rate = sf.read(trip.wavs[0], dtype="float32")
    assert os.path.dirname(trip.wavs[0]) == str(tmp_path / "speech_wav") and rate == 24000
    assert wave.shape == (40 * 1920,)
    direct = transcribe(model, processor, [trip.wavs[0]], [DEFAULT_INSTRUCTION["en"]], Generation(), progress=False)
    assert trip.hyps[0] == direct[0]
    assert trip.report.n == 2 and trip.to_dict()["metric"] == "asr_round_trip"
    rows = {row.id: row for row in trip.report.utterances}
    assert rows["a/1"].hyp == direct[0] and rows["a/1"].audio == trip.wavs[0]
    assert rows["b"].hyp == "" and rows["b"].hits == 0 and rows["b"].deletions == rows["b"].ref_len  # all missed


def test_evaluate_adds_the_round_trip_only_with_a_detokenizer(tiny_speaker, tmp_path):
    import json
    import shutil

    import soundfile as sf

    from llamafactory_kimi_audio.eval.evaluation import evaluate

    directory, model, processor = tiny_speaker
    rng = np.random.default_rng(0)
    sf.write(tmp_path / "a.wav", (0.1 * rng.standard_normal(16000)).astype(np.float32), 16000)
    row = {"messages": [{"role": "user", "content": "say hi"}, {"role": "assistant", "content": "hi<audio>"}],
           "audios": ["a.wav"]}  # fmt: skip
    data = tmp_path / "set.json"
    data.write_text(json.dumps([row, {**row, "id": "two"}]))
    result = evaluate(str(data), model=model, processor=processor, out_dir=str(tmp_path / "out"), progress=False)
    block = result.summary["speech"]["round_trip"]
    assert block["metric"] == "asr_round_trip" and block["n"] == 2
    lines = (tmp_path / "out" / "speech_utterances.jsonl").read_text().splitlines()
    assert all("round_trip_hyp" in json.loads(line) for line in lines) and len(lines) == 2
    assert "round-trip" in (tmp_path / "out" / "report.md").read_text()
    cli_out = str(tmp_path / "cli")
    printed = _cli("evaluate", "--model", directory, "--data", str(data), "--out", cli_out, "--device", "cpu")
    cer = json.loads((tmp_path / "cli" / "summary.json").read_text())["speech"]["round_trip"]["cer"]
    assert f"round-trip CER {100 * cer:.2f}%" in printed and "no detokenizer" not in printed

    shutil.rmtree(os.path.join(directory, "vocoder"))
    result = evaluate(str(data), model=model, processor=processor, out_dir=str(tmp_path / "out2"), progress=False)
    assert "round_trip" not in result.summary["speech"]
    assert "no ASR round trip" in (tmp_path / "out2" / "report.md").read_text()
