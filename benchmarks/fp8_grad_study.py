"""Why FP8 (``fp8: true``) step-1 LoRA gradients differ from bf16's on the RANDOM full-size checkpoint (issue 28).

A cut-down Kimi-Audio with the real widths (hidden 3584, 28 heads / 4 KV heads, MLP 18944) and ``--layers`` decoder
layers, random weights exactly as the benchmarks' full-size model gets them (``from_config`` → ``_init_weights``:
every Linear and the embeddings N(0, 0.02), norms 1, biases 0; Whisper rows from the random feature cache: N(0, 1)),
LoRA as ``examples/kimi_lora_80gb.yaml`` (r 16, alpha 32, every decoder projection, PEFT's init: B = 0), a batch of
ASR utterances laid out as the benchmark corpus (instruction, 5–15 s of audio frames at 12.5 Hz, ~2.5 words/s of
labelled transcript). The text vocabulary is cut to ``--base-tokens`` (the random head's softmax is near-uniform
either way) so that the model fits a small CPU.

It prints, for the bf16 run (autocast bf16, bf16 base weights, fp32 LoRA, as the GPU recipe):

1. per projection kind: the input's per-token amax / rms, the share of its energy in the mean token (``common``:
   ‖mean_t x_t‖² / mean_t ‖x_t‖²; near 1 = every token is nearly the same vector) and the FP8 output error, relative
   to the whole output (``rel``) and to its token-varying part (``rel_var`` = ‖e‖ / ‖y − mean_t y‖);
2. the step-1 LoRA gradient cosine against bf16 of every variant, overall, per layer and per projection kind:
   ``fp32`` (bf16's own distance from exact), ``fp8`` (the package's FrozenFloat8Linear), ``fp8_fwd`` (FP8 forward,
   bf16 input gradients), and remedies (emulated math; see ``VARIANTS``).

CPU (2 layers, 2 threads: about 2 minutes to build plus 30–60 s per variant; the FP8 math is emulated there)::

    OMP_NUM_THREADS=2 python benchmarks/fp8_grad_study.py --layers 2 --rows 2

GPU (real FP8 GEMMs for ``fp8*`` and ``keep_*``; ``noise``, ``wonly``, ``aonly``, ``block``, ``wtensor`` and ``center``
stay emulated; 28 layers in fp32 for the reference need about 30 GB, ``--no-fp32`` skips it)::

    python benchmarks/fp8_grad_study.py --device cuda --layers 28 --rows 8 --base-tokens 151643 \
        --variants fp8,fp8_fwd,fp8_exact,fp8_center,noise,wonly,aonly,center
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from llamafactory_kimi_audio.models.fp8_linear import FP8, FP8_MAX, convert_decoder_linears

NOISE = 0.038  # the relative error of one e4m3 row-wise GEMM measured here (``rel``)
KINDS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


# ------------------------------------------------------------------------------------------------ model and batch
def build_model(
    layers: int, base_tokens: int, seed: int, out_std: float | None = None, device: str = "cpu"
) -> nn.Module:
    from llamafactory_kimi_audio.models.modeling_kimi_audio import KimiAudioForCausalLM
    from llamafactory_kimi_audio.models.tiny import TINY_WHISPER, kimi_config, whisper_config

    config = kimi_config(base_tokens, "full")
    config.num_hidden_layers, config.kimia_mimo_layers = layers, 0  # ASR batches never run the MIMO branch
    config.whisper_config = whisper_config(TINY_WHISPER)  # unused: Whisper rows come in as features
    config.use_varlen_attention = False
    torch.manual_seed(seed)
    with torch.device(device):  # a GPU inits 28 layers in seconds (the benchmark builds on the GPU too)
        model = KimiAudioForCausalLM(config)  # post_init → _init_weights, as from_config on the GPU
    if out_std is not None:  # a what-if: smaller residual branches (the benchmark model has 0.02 everywhere)
        with torch.no_grad():
            for name, p in model.model.layers.named_parameters():
                if name.endswith(("o_proj.weight", "down_proj.weight")):
                    p.normal_(0.0, out_std)
    return model.eval()  # no dropout anywhere; the gradients are the training ones


def make_batch(model: nn.Module, rows: int, seed: int, device: str) -> dict[str, torch.Tensor]:
    """One ASR utterance per row (right-padded): instruction text, media_begin, frames (code ids), media_end, the
    labelled transcript and EOS; Whisper rows N(0, 1) in bf16 as the random feature cache."""
    from llamafactory_kimi_audio.models import special_tokens as st
    from llamafactory_kimi_audio.models.special_tokens import special_id

    config, g = model.config, torch.Generator().manual_seed(seed)
    text_ids = min(448, config.num_base_tokens)  # the tiny BPE's bytes + merges: what the corpus's words become
    codebook = config.kimia_audio_output_vocab - 512
    seqs, labels, frames = [], [], 0
    for _ in range(rows):
        seconds = 5 + 10 * torch.rand(1, generator=g).item()
        n_frames, n_words = round(12.5 * seconds), round(2.5 * seconds)
        prompt = torch.randint(0, text_ids, (12,), generator=g)
        codes = torch.randint(0, codebook, (n_frames,), generator=g) + config.kimia_token_offset
        answer = torch.randint(0, text_ids, (int(1.5 * n_words),), generator=g)
        eos = torch.tensor([special_id(config, st.TEXT_EOS)])
        media = [torch.tensor([special_id(config, t)]) for t in (st.MEDIA_BEGIN, st.MEDIA_END)]
        ids = torch.cat([prompt, media[0], codes, media[1], answer, eos])
        seqs.append(ids)
        labels.append(torch.cat([torch.full((ids.numel() - answer.numel() - 1,), -100), answer, eos]))
        frames += n_frames
    length = max(s.numel() for s in seqs)
    pad = special_id(config, st.PAD)
    input_ids = torch.stack([torch.cat([s, s.new_full((length - s.numel(),), pad)]) for s in seqs])
    label_t = torch.stack([torch.cat([s, s.new_full((length - s.numel(),), -100)]) for s in labels])
    mask = torch.stack([torch.arange(length) < s.numel() for s in seqs]).long()
    whisper = torch.randn(frames, config.kimia_adaptor_input_dim, generator=g).to(torch.bfloat16)
    batch = {"input_ids": input_ids, "labels": label_t, "attention_mask": mask, "whisper_features": whisper}
    return {k: v.to(device) for k, v in batch.items()}


def add_lora(model: nn.Module, seed: int) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    targets = r"model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)"
    peft_model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=targets))
    for p in peft_model.parameters():
        if p.requires_grad:
            p.data = p.data.float()  # LLaMA-Factory upcasts the trainable parameters to fp32
    return peft_model


def lora_grads(model: nn.Module, batch: dict[str, torch.Tensor], autocast: bool) -> dict[str, torch.Tensor]:
    """The step-1 LoRA gradients by name (float64, CPU), plus ``hidden.N`` (decoder layer N's output) and ``loss``."""
    model.zero_grad(set_to_none=True)
    device = batch["input_ids"].device.type
    layers = model.base_model.model.model.layers
    hidden: list[torch.Tensor] = []
    handles = [m.register_forward_hook(lambda m, a, out: hidden.append(out.detach().double().cpu())) for m in layers]
    try:
        with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
            loss = model(**batch).loss
    finally:
        for h in handles:
            h.remove()
    loss.backward()
    grads = {n: p.grad.detach().double().flatten().cpu() for n, p in model.named_parameters() if p.grad is not None}
    keep = batch["attention_mask"].reshape(-1).bool().cpu()
    grads.update({f"hidden.{i}": h.reshape(-1, h.shape[-1])[keep] for i, h in enumerate(hidden)})
    return {**grads, "loss": loss.detach().double().reshape(1).cpu()}


# --------------------------------------------------------------------------------------------- FP8 math variants
def _pow2(amax: torch.Tensor) -> torch.Tensor:
    return torch.exp2(torch.floor(torch.log2(FP8_MAX / amax.float().clamp(min=1e-12))))


def quant(t: torch.Tensor, dim: int = -1, block: int | None = None, tensorwise: bool = False) -> torch.Tensor:
    """``t`` rounded to e4m3 with power-of-two scales (per row, per ``block`` features of a row, or one for the
    tensor) and dequantised again, in fp32."""
    t = t.float()
    if tensorwise:
        scale = _pow2(t.abs().amax())
        return (t * scale).clamp(-FP8_MAX, FP8_MAX).to(FP8).float() / scale
    if block:
        rows, cols = t.shape
        blocks = t.view(rows, cols // block, block)
        scale = _pow2(blocks.abs().amax(-1, keepdim=True))
        return ((blocks * scale).clamp(-FP8_MAX, FP8_MAX).to(FP8).float() / scale).view(rows, cols)
    scale = _pow2(t.abs().amax(dim, keepdim=True))
    return (t * scale).clamp(-FP8_MAX, FP8_MAX).to(FP8).float() / scale


class EmulatedFp8Linear(nn.Module):
    """A frozen projection whose forward GEMM uses the FP8 values of a variant (emulated), its input gradient bf16.

    how: ``block`` (activation and weight scales per 128 features), ``wtensor`` (one weight scale), ``center``
    (the batch's mean token is taken out before the cast and its product added back in bf16: ``x W^T = (x − μ) W^T +
    μ W^T``)."""

    def __init__(self, linear: nn.Linear, how: str, seed: int = 0) -> None:
        super().__init__()
        self.linear, self.how = linear, how
        block = 128 if how == "block" else None
        self.noise = torch.Generator().manual_seed(seed)
        self.weight_q = quant(linear.weight.detach(), block=block, tensorwise=how == "wtensor").to(torch.bfloat16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.linear.weight
        x16 = x.to(torch.bfloat16)
        flat = x16.reshape(-1, x.shape[-1])
        if self.how == "noise":  # no FP8: the exact product plus Gaussian noise of FP8's size (3.8% per token)
            out = flat @ w.to(flat.dtype).t()
            size = out.float().pow(2).mean(-1, keepdim=True).sqrt() * NOISE
            out = out + (torch.randn(out.shape, generator=self.noise).to(out.device) * size).to(out.dtype)
        elif self.how == "center":
            mean = flat.float().mean(0, keepdim=True).to(torch.bfloat16)
            out = _Fp8Forward.apply(flat - mean, self.weight_q, w, None) + mean.float() @ w.float().t()
        elif self.how == "wonly":  # the weight's FP8 rounding only: one fixed perturbation that every token sees
            out = _Fp8Forward.apply(flat, self.weight_q, w, 0)
        elif self.how == "aonly":  # the activations' FP8 rounding only: independent per token
            out = _Fp8Forward.apply(flat, w.to(torch.bfloat16), w, None)
        else:
            out = _Fp8Forward.apply(flat, self.weight_q, w, 128 if self.how == "block" else None)
        out = out.to(torch.bfloat16).view(*x.shape[:-1], -1)
        return out if self.linear.bias is None else out + self.linear.bias.to(out.dtype)


class _Fp8Forward(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight_q: torch.Tensor, weight: torch.Tensor, block: int | None):
        ctx.save_for_backward(weight)
        x = x.float() if block == 0 else quant(x, block=block)  # block 0: the activation stays bf16
        return (x @ weight_q.float().t()).to(torch.bfloat16)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        (weight,) = ctx.saved_tensors
        return grad @ weight.to(grad.dtype), None, None, None


def base_layers(model: nn.Module) -> dict[str, nn.Linear]:
    return {n: m for n, m in model.named_modules() if n.endswith("base_layer") and ".layers." in n}


def swap(model: nn.Module, modules: dict[str, nn.Module]) -> None:
    for name, module in modules.items():
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, module)


def with_variant(model: nn.Module, variant: str, run: Callable[[], Any]) -> Any:
    """Run ``run()`` with the decoder's base layers swapped for ``variant``'s, then put the bf16 ones back."""
    originals = base_layers(model)
    if variant in ("fp8", "fp8_fwd", "fp8_bwd", "fp8_exact", "fp8_center"):
        matmuls = {"fp8_fwd": "forward", "fp8_bwd": "backward"}.get(variant, "both")
        how = {"matmuls": matmuls, "fast_accum": "off" if variant == "fp8_exact" else "forward"}
        convert_decoder_linears(model, center=variant == "fp8_center", **how)
    elif variant.startswith("keep_"):  # FP8 everywhere except the named kinds
        kept = variant[len("keep_") :].split("+")
        convert_decoder_linears(model)
        swap(model, {n: m for n, m in originals.items() if any(f".{k}." in n for k in kept)})
    elif variant != "bf16":
        swap(model, {n: EmulatedFp8Linear(m, variant, i) for i, (n, m) in enumerate(originals.items())})
    try:
        return run()
    finally:
        swap(model, originals)


VARIANTS = {
    "fp8": "the package: FrozenFloat8Linear, FP8 forward and input gradients",
    "fp8_fwd": "FP8 forward, bf16 input gradients (KIMI_AUDIO_FP8_MATMULS=forward)",
    "fp8_bwd": "bf16 forward, FP8 input gradients (KIMI_AUDIO_FP8_MATMULS=backward)",
    "fp8_exact": "the package with full-precision forward accumulation (KIMI_AUDIO_FP8_FAST_ACCUM=0; GPU only)",
    "fp8_center": "the package with KIMI_AUDIO_FP8_CENTER=1 (FP8 forward and input gradients)",
    "wtensor": "FP8 forward, one power-of-two scale per weight tensor",
    "block": "FP8 forward, scales per 128 features (activations 1x128, weights 1x128)",
    "center": "FP8 forward of x - mean_t(x) plus mean_t(x) W^T in bf16",
    "wonly": "only the weight in FP8 (row-wise), the activation kept bf16",
    "aonly": "only the activation in FP8 (row-wise), the weight kept bf16",
    "noise": "no FP8: bf16 GEMMs plus 3.8% Gaussian noise per output (FP8's error size, unbiased, independent)",
    "keep_q_proj+k_proj": "as fp8, q and k projections in bf16",
    "keep_down_proj": "as fp8, down projection in bf16",
}


# ------------------------------------------------------------------------------------------------- diagnostics
def input_stats(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    """Per projection kind (averaged over layers): the statistics of its input, and the FP8 error of its output."""
    keep = batch["attention_mask"].reshape(-1).bool()
    found: dict[str, list[dict[str, float]]] = {k: [] for k in KINDS}

    def hook(name: str) -> Callable[..., None]:
        def record(module: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            x = args[0].detach().reshape(-1, args[0].shape[-1])[keep].float()
            w = module.weight.detach().float()
            y = x.to(torch.bfloat16).float() @ w.t()
            e = quant(x) @ quant(w).t() - y
            rms = x.pow(2).mean(-1).sqrt()
            varying = y - y.mean(0, keepdim=True)
            stats = {
                "amax/rms": float((x.abs().amax(-1) / rms).median()),
                "amax/rms max": float((x.abs().amax(-1) / rms).max()),
                "common": float(x.mean(0).pow(2).sum() / x.pow(2).sum(-1).mean()),
                "rel": float(e.norm() / y.norm()),
                "rel_var": float(e.norm() / varying.norm()),
                "tok rms max/min": float(rms.max() / rms.min()),
            }
            found[name.split(".")[-2]].append(stats)

        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in base_layers(model).items()]
    try:
        with torch.no_grad(), torch.autocast(batch["input_ids"].device.type, dtype=torch.bfloat16):
            model(**batch)
    finally:
        for h in handles:
            h.remove()
    return {k: {s: sum(d[s] for d in v) / len(v) for s in v[0]} for k, v in found.items() if v}


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


def grouped(ref: dict[str, torch.Tensor], other: dict[str, torch.Tensor], key: Callable[[str], Any]):
    groups: dict[Any, list[str]] = {}
    for name in ref:
        if ref[name].abs().sum() > 0:  # lora_A: zero at step 1 (B = 0)
            groups.setdefault(key(name), []).append(name)
    return {g: cosine(torch.cat([ref[n] for n in ns]), torch.cat([other[n] for n in ns])) for g, ns in groups.items()}


def forward_errors(ref: dict[str, torch.Tensor], other: dict[str, torch.Tensor]) -> str:
    """Relative error of each decoder layer's output and of the loss."""
    layers = sorted(int(k.split(".")[1]) for k in ref if k.startswith("hidden."))
    errs = [float((other[f"hidden.{i}"] - ref[f"hidden.{i}"]).norm() / ref[f"hidden.{i}"].norm()) for i in layers]
    loss = float((other["loss"] - ref["loss"]).abs() / ref["loss"].abs())
    return "hidden err " + " ".join(f"{e:.4f}" for e in errs) + f", loss err {loss:.5f}"


def report(name: str, ref: dict[str, torch.Tensor], other: dict[str, torch.Tensor]) -> None:
    print(f"{name:22s} {forward_errors(ref, other)}")
    ref = {k: v for k, v in ref.items() if "lora_" in k}
    total = grouped(ref, other, lambda n: "all")["all"]
    layers = grouped(ref, other, lambda n: int(n.split(".layers.")[1].split(".")[0]))
    kinds = grouped(ref, other, lambda n: next(k for k in KINDS if f".{k}." in n))
    print(f"{name:22s} cos {total:.4f} | layers " + " ".join(f"{v:.4f}" for _, v in sorted(layers.items())), end="")
    print(" | " + " ".join(f"{k[:-5]} {kinds[k]:.4f}" for k in KINDS if k in kinds), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--rows", type=int, default=4, help="utterances (one per row)")
    parser.add_argument("--base-tokens", type=int, default=4096, help="text vocabulary (real: 151643)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out-std", type=float, help="what-if: init std of o_proj / down_proj (benchmark: 0.02)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated: " + ", ".join(VARIANTS))
    parser.add_argument("--no-fp32", action="store_true", help="skip the fp32 reference (bf16's own error)")
    parser.add_argument("--no-stats", action="store_true")
    a = parser.parse_args()
    start = time.time()
    model = build_model(a.layers, a.base_tokens, a.seed, a.out_std, a.device)
    model = add_lora(model, a.seed)
    batch = make_batch(model, a.rows, a.seed, a.device)
    print(
        f"{a.layers} layers, {int(batch['attention_mask'].sum())} tokens, {int((batch['labels'] >= 0).sum())} "
        f"labelled; weights: q_proj std {model.base_model.model.model.layers[0].self_attn.q_proj.weight.std():.4f}"
    )
    fp32 = None
    if not a.no_fp32:
        model.to(a.device)
        fp32 = lora_grads(model, batch, autocast=False)
    for p in model.parameters():
        if not p.requires_grad:
            p.data = p.data.to(torch.bfloat16)  # bf16 base weights (LLaMA-Factory's bf16 load)
    model.to(a.device)
    if not a.no_stats:
        print(
            f"{'input of':10s} "
            + " ".join(
                f"{s:>15s}" for s in ("amax/rms", "amax/rms max", "common", "rel", "rel_var", "tok rms max/min")
            )
        )
        for kind, stats in input_stats(model, batch).items():
            print(f"{kind:10s} " + " ".join(f"{v:15.4f}" for v in stats.values()), flush=True)
    ref = lora_grads(model, batch, autocast=True)
    print(f"bf16 reference done ({time.time() - start:.0f} s)", flush=True)
    if fp32 is not None:
        report("fp32 (bf16's error)", ref, fp32)
    for variant in filter(None, a.variants.split(",")):
        grads = with_variant(model, variant, lambda: lora_grads(model, batch, autocast=True))
        report(variant, ref, grads)
    print(f"done in {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
