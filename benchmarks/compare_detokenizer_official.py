"""Compare the native detokenizer with the official ``kimia_infer`` code on the same weights and noise.

    python benchmarks/compare_detokenizer_official.py --official-repo /path/to/Kimi-Audio \
        --torchdyn /path/to/unpacked/torchdyn-wheel --checkpoint DIR [--tiny] [--dtype bf16|fp32] [--codes 7,55,95]

The official code needs flash_attn, timm, torchdyn (and its unused imports), librosa and, in its wrapper, a compiled
CUDA kernel. Whatever is not importable is replaced by a stand-in written here: single-sequence varlen attention as
``scaled_dot_product_attention`` (non-causal, the flash default scale), timm's ``Mlp`` (fc1 -> GELU -> fc2), empty
modules for torchdyn's unused dependencies. The vocoder runs the official pure-torch anti-aliased activation (the
fused kernel computes the same function). ``--tiny`` writes a tiny random checkpoint into DIR first. The official
wrapper casts everything to bfloat16; ``--dtype fp32`` reloads the fp32 weights into the official modules.
Result on CPU (tiny weights, 7 / 55 / 95 / 250 / 300 codes): bit-identical waves in bf16 and in fp32.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import types

import torch
import torch.nn.functional as F
from torch import nn


def _stub(name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    sys.modules[name] = module
    return module


def _varlen_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0, **_):
    assert len(cu_seqlens_q) == 2 and int(cu_seqlens_k[-1]) == k.shape[0], "one sequence, keys = prefix + chunk"
    out = F.scaled_dot_product_attention(*(t.transpose(0, 1)[None] for t in (q, k, v)))
    return out[0].transpose(0, 1)


class _TimmMlp(nn.Module):
    def __init__(self, in_features, hidden_features, act_layer, drop=0.0):
        super().__init__()
        self.fc1, self.act = nn.Linear(in_features, hidden_features), act_layer()
        self.fc2 = nn.Linear(hidden_features, in_features)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def _install_stand_ins(repo: str, torchdyn: str | None) -> None:
    if torchdyn:
        sys.path.insert(0, torchdyn)
    if importlib.util.find_spec("flash_attn") is None:
        _stub("flash_attn", flash_attn_varlen_func=_varlen_attention, flash_attn_varlen_qkvpacked_func=None)
    if importlib.util.find_spec("timm") is None:
        _stub("timm"), _stub("timm.models"), _stub("timm.models.vision_transformer", Mlp=_TimmMlp)
    if importlib.util.find_spec("librosa") is None:
        _stub("librosa", load=None).filters = _stub("librosa.filters", mel=None)
    for name in ("torchcde", "torchsde", "pytorch_lightning"):
        if importlib.util.find_spec(name) is None:
            _stub(name, CubicSpline=None, natural_cubic_coeffs=None, LightningModule=nn.Module,
                  hermite_cubic_coefficients_with_backward_differences=None)  # fmt: skip
    sys.path.insert(0, repo)
    for package in ("kimia_infer", "kimia_infer.models"):  # skip their __init__ (the LLM side)
        module = types.ModuleType(package)
        module.__path__ = [os.path.join(repo, *package.split("."))]
        sys.modules[package] = module


def _official(checkpoint: str, dtype: torch.dtype):
    from kimia_infer.models.detokenizer import PrefixStreamingFlowMatchingDetokenizer
    from kimia_infer.models.detokenizer.bigvgan_wrapper import BigVGANWrapper
    from kimia_infer.models.detokenizer.semantic_fm_prefix_streaming import StreamingSemanticFMWrapper
    from kimia_infer.models.detokenizer.vocoder.bigvgan import BigVGAN
    from kimia_infer.models.detokenizer.vocoder.utils import AttrDict

    h = AttrDict(json.load(open(os.path.join(checkpoint, "vocoder", "config.json"))))
    vocoder = BigVGAN(h, False)
    generator = torch.load(os.path.join(checkpoint, "vocoder", "model.pt"), weights_only=True)["generator"]
    vocoder.load_state_dict(generator)
    flow_dir = os.path.join(checkpoint, "audio_detokenizer")
    fm = StreamingSemanticFMWrapper.from_pretrained(
        os.path.join(flow_dir, "config.yaml"), os.path.join(flow_dir, "model.pt"), torch.device("cpu"),
        max_prompt_chunk=10, use_cfg=False,
    )  # fmt: skip
    detok = PrefixStreamingFlowMatchingDetokenizer(BigVGANWrapper(vocoder, torch.device("cpu"), h), fm, 12)
    if dtype == torch.float32:  # undo the official bf16 rounding of the weights
        state = torch.load(os.path.join(flow_dir, "model.pt"), weights_only=True)["state_dict"]
        fm.speech_model.float().load_state_dict({k.replace("speech_model.", ""): v for k, v in state.items()})
        vocoder.float().load_state_dict(generator)
        fm.dtype = detok.dtype = torch.float32
    return detok


def _official_detokenize(detok, codes: torch.Tensor) -> torch.Tensor:
    """``KimiAudio.detokenize_audio`` (chunks of 30, upsample 4), on the CPU."""
    detok.clear_states()
    n = codes.shape[1]
    pieces = [detok.detokenize_streaming(codes[:, :30], is_final=n <= 30, upsample_factor=4)]
    for start in range(30, n, 30):
        pieces.append(detok.detokenize_streaming(codes[:, start : start + 30], upsample_factor=4,
                                                 is_final=start + 30 >= n))  # fmt: skip
    return torch.cat(pieces, dim=-1).float().view(-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official-repo", required=True)
    parser.add_argument("--torchdyn", help="directory holding the torchdyn package, if it is not installed")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--codes", default="7,55,95")
    args = parser.parse_args()
    _install_stand_ins(args.official_repo, args.torchdyn)
    from llamafactory_kimi_audio.models.detokenizer import load_detokenizer
    from llamafactory_kimi_audio.models.detokenizer.tiny import write_tiny_detokenizer

    if args.tiny:
        write_tiny_detokenizer(args.checkpoint, 256, seed=5)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    official = _official(args.checkpoint, dtype)
    port = load_detokenizer(args.checkpoint, device="cpu", dtype=dtype)
    vocab = port.flow_model.config.semantic_vocab_size
    for n in (int(x) for x in args.codes.split(",")):
        codes = torch.randint(0, vocab, (1, n), generator=torch.Generator().manual_seed(n))
        torch.manual_seed(123)
        expected = _official_detokenize(official, codes)
        torch.manual_seed(123)  # the port draws its noise from the same global CPU generator
        got = port(codes[0])
        diff = (expected - got).abs()
        print(f"{args.dtype} {n} codes: samples {got.numel()} / {expected.numel()}, max |diff| {diff.max():.3g}, "
              f"mean |diff| {diff.mean():.3g}, identical {torch.equal(expected, got)}")  # fmt: skip


if __name__ == "__main__":
    main()
