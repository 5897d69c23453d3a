"""The native detokenizer against the hand-written references of ``detokenizer_reference``: the Kaiser filter,
Snake and the anti-aliased activation, a BigVGAN resblock and the whole vocoder, and codes to wave through the
streaming flow-matching loop (one final chunk; look-ahead + prefix; a Hamming cross-fade chunk).
"""

from __future__ import annotations

import os

import pytest
import torch
from detokenizer_reference import (
    VOCAB,
    raw,
    ref_activation,
    ref_detokenize,
    ref_kaiser_filter,
    ref_resblock,
    ref_snake,
    ref_vocoder,
)

from llamafactory_kimi_audio.models.detokenizer import load_detokenizer
from llamafactory_kimi_audio.models.detokenizer.bigvgan import AntiAliasedActivation, Snake, kaiser_sinc_filter
from llamafactory_kimi_audio.models.detokenizer.loading import load_vocoder


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


def test_vocoder_resblock_and_whole_generator_match_reference(tiny_detokenizer):
    import json

    state = {k: v.float() for k, v in raw(tiny_detokenizer, "vocoder")["generator"].items()}
    h = json.load(open(os.path.join(tiny_detokenizer, "vocoder", "config.json")))
    vocoder = load_vocoder(os.path.join(tiny_detokenizer, "vocoder")).eval()
    x = torch.randn(1, 16, 21)
    k, d = h["resblock_kernel_sizes"][0], h["resblock_dilation_sizes"][0]
    with torch.no_grad():
        torch.testing.assert_close(vocoder.resblocks[0](x), ref_resblock(state, "resblocks.0", x, k, d),
                                   rtol=1e-4, atol=1e-5)  # fmt: skip
        mel = torch.randn(9, 80) - 4
        wave = vocoder.decode_mel(mel)
    assert wave.shape == (1, 9 * 480)
    torch.testing.assert_close(wave, ref_vocoder(state, h, mel), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("num_codes", [7, 55, 95])
def test_codes_to_wave_matches_reference_of_the_streaming_algorithm(tiny_detokenizer, num_codes):
    """7 codes: one final chunk; 55: look-ahead + prefix + final concat; 95: adds a Hamming cross-fade chunk."""
    detok = load_detokenizer(tiny_detokenizer, device="cpu")
    codes = torch.randint(0, VOCAB, (num_codes,), generator=torch.Generator().manual_seed(num_codes)).tolist()
    wave = detok(codes, generator=torch.Generator().manual_seed(11))
    assert wave.dtype == torch.float32 and wave.shape == (num_codes * 1920,)  # 24000 / 12.5 samples per code
    assert detok.samples_per_code == 1920 and detok.sampling_rate == 24000
    expected = ref_detokenize(tiny_detokenizer, codes, seed=11)
    torch.testing.assert_close(wave, expected, rtol=1e-5, atol=5e-6)
    assert wave.std() > 1e-3  # a real signal, not silence
