"""BigVGAN vocoder of Kimi-Audio's detokenizer: 80-bin mel at 50 Hz -> 24 kHz waveform.

Names follow the official BigVGAN generator state dict (``conv_pre``, ``ups.I.0``, ``resblocks.J.convs1.K``,
``resblocks.J.activations.M.act.alpha`` / ``.upsample.filter`` / ``.downsample.lowpass.filter``, ``activation_post``,
``conv_post``). Weight-normalised convolutions are stored here already folded (``weight = g * v / ||v||``); the loader
folds the official ``weight_g`` / ``weight_v`` pairs. The anti-aliased activation is the official pure-torch path
(x2 kaiser-sinc upsampling, snake, x2 low-pass downsampling); the official wrapper runs the same math as a fused CUDA
kernel.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def kaiser_sinc_filter(cutoff: float, half_width: float, kernel_size: int) -> torch.Tensor:
    """Kaiser-windowed sinc low-pass [1, 1, K], normalised to sum 1 (the official ``kaiser_sinc_filter1d``)."""
    half = kernel_size // 2
    attenuation = 2.285 * (half - 1) * math.pi * (4 * half_width) + 7.95
    if attenuation > 50.0:
        beta = 0.1102 * (attenuation - 8.7)
    elif attenuation >= 21.0:
        beta = 0.5842 * (attenuation - 21) ** 0.4 + 0.07886 * (attenuation - 21.0)
    else:
        beta = 0.0
    window = torch.kaiser_window(kernel_size, beta=beta, periodic=False)
    if kernel_size % 2 == 0:
        time = torch.arange(-half, half) + 0.5
    else:
        time = torch.arange(kernel_size) - half
    taps = 2 * cutoff * window * torch.sinc(2 * cutoff * time)
    return (taps / taps.sum()).view(1, 1, kernel_size)


class Snake(nn.Module):
    """x + 1/b * sin^2(a x), a = alpha, b = beta (snakebeta) or alpha (snake); exp() of both when logscale."""

    def __init__(self, channels: int, beta: bool, logscale: bool) -> None:
        super().__init__()
        self.logscale = logscale
        self.alpha = nn.Parameter(torch.zeros(channels) if logscale else torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels) if logscale else torch.ones(channels)) if beta else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = self.alpha[None, :, None]
        beta = alpha if self.beta is None else self.beta[None, :, None]
        if self.logscale:
            alpha, beta = torch.exp(alpha), torch.exp(beta)
        return x + (1.0 / (beta + 1e-9)) * torch.sin(x * alpha).pow(2)


class UpSample(nn.Module):
    def __init__(self, ratio: int = 2, kernel_size: int = 12) -> None:
        super().__init__()
        self.ratio, self.pad = ratio, kernel_size // ratio - 1
        self.crop_left = self.pad * ratio + (kernel_size - ratio) // 2
        self.crop_right = self.pad * ratio + (kernel_size - ratio + 1) // 2
        self.register_buffer("filter", kaiser_sinc_filter(0.5 / ratio, 0.6 / ratio, kernel_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[1]
        x = F.pad(x, (self.pad, self.pad), mode="replicate")
        x = self.ratio * F.conv_transpose1d(
            x, self.filter.expand(channels, -1, -1), stride=self.ratio, groups=channels
        )
        return x[..., self.crop_left : -self.crop_right]


class LowPass(nn.Module):
    def __init__(self, ratio: int = 2, kernel_size: int = 12) -> None:
        super().__init__()
        self.stride = ratio
        self.pad_left, self.pad_right = kernel_size // 2 - int(kernel_size % 2 == 0), kernel_size // 2
        self.register_buffer("filter", kaiser_sinc_filter(0.5 / ratio, 0.6 / ratio, kernel_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[1]
        x = F.pad(x, (self.pad_left, self.pad_right), mode="replicate")
        return F.conv1d(x, self.filter.expand(channels, -1, -1), stride=self.stride, groups=channels)


class DownSample(nn.Module):
    def __init__(self, ratio: int = 2, kernel_size: int = 12) -> None:
        super().__init__()
        self.lowpass = LowPass(ratio, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lowpass(x)


class AntiAliasedActivation(nn.Module):
    """The official ``Activation1d``: upsample x2, snake, downsample x2."""

    def __init__(self, act: Snake) -> None:
        super().__init__()
        self.act, self.upsample, self.downsample = act, UpSample(), DownSample()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(self.act(self.upsample(x)))


def same_padding(kernel_size: int, dilation: int) -> int:
    return (kernel_size * dilation - dilation) // 2


class AMPBlock1(nn.Module):
    """Per dilation d: x += conv_1(act(conv_d(act(x)))); activations alternate (before conv_d, before conv_1)."""

    def __init__(self, channels: int, kernel_size: int, dilations: list[int], h: dict[str, Any]) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, dilation=d, padding=same_padding(kernel_size, d))
            for d in dilations
        )
        self.convs2 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, padding=same_padding(kernel_size, 1)) for _ in dilations
        )
        self.activations = nn.ModuleList(
            AntiAliasedActivation(make_snake(channels, h)) for _ in range(2 * len(dilations))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for index, (conv1, conv2) in enumerate(zip(self.convs1, self.convs2)):
            inner = conv1(self.activations[2 * index](x))
            x = x + conv2(self.activations[2 * index + 1](inner))
        return x


def make_snake(channels: int, h: dict[str, Any]) -> Snake:
    if h["activation"] not in ("snake", "snakebeta"):
        raise ValueError(f"vocoder config activation {h['activation']!r}: expected 'snake' or 'snakebeta'")
    return Snake(channels, beta=h["activation"] == "snakebeta", logscale=bool(h["snake_logscale"]))


class BigVGAN(nn.Module):
    """conv_pre -> [transposed-conv upsample -> mean of AMP resblocks] x N -> activation -> conv_post -> tanh."""

    def __init__(self, h: dict[str, Any]) -> None:
        super().__init__()
        if str(h["resblock"]) != "1":
            raise ValueError(f"vocoder config resblock {h['resblock']!r}: only '1' (AMPBlock1) is supported")
        self.h = dict(h)
        base = h["upsample_initial_channel"]
        self.conv_pre = nn.Conv1d(h["num_mels"], base, 7, 1, padding=3)
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        for i, (rate, kernel) in enumerate(zip(h["upsample_rates"], h["upsample_kernel_sizes"])):
            channels = base // (2 ** (i + 1))
            up = nn.ConvTranspose1d(base // (2**i), channels, kernel, rate, padding=(kernel - rate) // 2)
            self.ups.append(nn.ModuleList([up]))
            for size, dilations in zip(h["resblock_kernel_sizes"], h["resblock_dilation_sizes"]):
                self.resblocks.append(AMPBlock1(channels, size, dilations, h))
        self.num_kernels = len(h["resblock_kernel_sizes"])
        self.activation_post = AntiAliasedActivation(make_snake(channels, h))
        self.conv_post = nn.Conv1d(channels, 1, 7, 1, padding=3, bias=h.get("use_bias_at_final", True))
        self.use_tanh = h.get("use_tanh_at_final", True)

    @property
    def hop_length(self) -> int:
        return math.prod(self.h["upsample_rates"])

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """mel [B, num_mels, T] -> wave [B, 1, T * hop]."""
        x = self.conv_pre(mel)
        for i, up in enumerate(self.ups):
            x = up[0](x)
            blocks = self.resblocks[i * self.num_kernels : (i + 1) * self.num_kernels]
            total = blocks[0](x)
            for block in blocks[1:]:
                total = total + block(x)
            x = total / self.num_kernels
        x = self.conv_post(self.activation_post(x))
        return torch.tanh(x) if self.use_tanh else torch.clamp(x, -1.0, 1.0)

    def decode_mel(self, mel: torch.Tensor) -> torch.Tensor:
        """mel [T, num_mels] -> wave [1, T * hop] (the official ``BigVGANWrapper.decode_mel``)."""
        return self(mel.transpose(0, 1).unsqueeze(0)).squeeze(0)
