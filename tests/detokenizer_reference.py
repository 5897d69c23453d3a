"""Hand-written references of the published detokenizer algorithm (flow-matching DiT + BigVGAN), for the
``tests/models/test_detokenizer_*.py`` modules.

The references use plain tensor ops on the raw official-layout state dicts (``speech_model.*`` and the
``weight_g`` / ``weight_v`` generator), written independently of the port: explicit attention with the committed
prefix, the torchdyn Euler grid, zero-stuffing for the transposed convolution, numpy's Kaiser window and sinc.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch
import torch.nn.functional as F

VOCAB = 64


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
