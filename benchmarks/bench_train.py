"""LoRA training throughput of the full-size Kimi-Audio through LLaMA-Factory, next to a text-only Qwen2-7B.

Every case is a real ``llamafactory.train.tuner.run_exp`` (the function ``llamafactory-cli train`` calls) with
``train_from_scratch: true`` (random weights from ``from_config``, built directly on the GPU), the ``kimi_audio``
template and plugin, LLaMA-Factory's collator, trainer and PEFT LoRA (``lora_target: all``), ``max_steps`` steps on a
synthetic corpus of 5–15 s clips. A callback times every optimizer step (CUDA-synchronised) and counts its tokens.

    python benchmarks/bench_train.py --tiny                 # CPU, tiny checkpoint, seconds
    python benchmarks/bench_train.py --out results.jsonl    # GPU 0, full size

Cases (``--cases`` picks some):
  kimi_cached_mb8_ckpt   recipe defaults: micro-batch 8, gradient checkpointing on, features from the precompute cache
  kimi_cached_mb8        the same without gradient checkpointing
  kimi_cached_mb8_group  + ``train_sampling_strategy: group_by_length``
  kimi_cached_mb16_group micro-batch 16
  qwen_text_mb8 / qwen_text_mb8_group / qwen_text_mb16_group
                         text-only Qwen2-7B shape (vocab 152064) on the same token stream (audio positions → text ids)
  kimi_raw_mb8           raw audio online: Whisper-large-v3 (30 s padding) + GLM-4-Voice on the GPU every step
  kimi_cached_mb1        our path at batch 1 (for the official contrast)
  kimi_official_mb1      official semantics: Whisper online (codes precomputed), MIMO branch + audio head computed,
                         text + audio cross-entropy over all positions in fp32, batch 1
  kimi_qlora_mb8         bitsandbytes NF4 (double quant) decoder + MIMO linears, LoRA on top, gradient checkpointing
  kimi_cached_mb8_group_v0  attention as before this benchmark's changes: a materialised [B,1,L,L] bias for any padded
                         batch (SDPA's memory-efficient kernel) and K/V expanded 7x for GQA
  kimi_cached_mb8_group_nogqa  the new attention without ``enable_gqa``; *_mb16_group_v0 / _nogqa the same at 16
  kimi_cached_mb32_group / qwen_text_mb32_group  micro-batch 32
  kimi_cached_mb32_group_nodrop  the same with lora_dropout 0 (PEFT then skips a dropout copy of every LoRA input)
  kimi_packed1024_mb4[_nodrop]  packing + neat_packing into 1,024-token rows (block-diagonal attention), micro-batch 4
  *_unfused              PEFT's own LoRA forward instead of the package's fused one (models/fused_lora.py)
  qwen_*_fused           the text-only baseline with the package's fused LoRA forward too (it is model-agnostic):
                         Kimi vs these measures Kimi's own cost; Kimi vs the plain qwen_* cases what a user sees
  kimi_cached_mb48_group_nodrop  micro-batch 48
  *_compiled             KIMI_AUDIO_COMPILE_POINTWISE=1: RMSNorm / RoPE / SwiGLU fused by torch.compile
  *_layers               KIMI_AUDIO_COMPILE_POINTWISE=layers: whole decoder layers compiled
  kimi_packed2048_* / kimi_packed1024_mb8_*  twice the tokens per step (2,048-token rows, or 8 rows)
  *_nanfilter            the HF Trainer's default ``logging_nan_inf_filter: true`` (a device sync after every backward;
                         the recipes and the other cases turn it off)
  *_nonblocking          ``accelerator_config: {non_blocking: true}``: batches copied to the GPU without a sync
  *_dense                KIMI_AUDIO_VARLEN_ATTENTION=0: packed rows through SDPA with the dense [B,1,L,L] block mask
                         instead of one variable-length FlashAttention sequence per utterance
  *_codesonly            a codes-only feature cache: GLM-4-Voice codes cached, Whisper-large-v3 run online every step
  *_ckpt                 gradient checkpointing on (packed rows: the candidates for a 24 GB default recipe)
  *_walkcount            the model's parameter count walked every step as before (not counted once per phase)
  recipe_*               a shipped recipe as is (examples/kimi_lora.yaml = recipe_24gb, kimi_qlora.yaml,
                         kimi_lora_{48,80,141}gb.yaml), on the random model and the cached corpus; not in the default
                         list. recipe_24gb_unparked / _eager: the default recipe with KIMI_AUDIO_PARK_IDLE=0 /
                         KIMI_AUDIO_COMPILE_POINTWISE=off. recipe_*_fp8: the same with ``fp8: true`` (issue 28; on the
                         CPU with --tiny the FP8 math is emulated); with --grad-dir and --log-every 1 each is compared
                         with its bf16 twin of the same round (tokens/s, step-1 gradient cosine, loss gaps)
                         recipe_*gb[_fp8]_ungrouped: the same with KIMI_AUDIO_GROUPED_LORA=0 (one LoRA-A matmul
                         per projection instead of one for q/k/v and one for gate/up, models/grouped_lora.py); run
                         with its grouped twin and --repeat for interleaved pairs (their throughput ratio is printed)
                         recipe_*gb[_fp8]_addmm: the LoRA B product as an out-of-place addmm in the compiled layers
                         too (the form before fused_lora.add_lora_product), against its twin in the same way
  kimi_speech_mb8[_mimo] speech output (issue 18): the corpus as TTS samples (the transcript spoken with the clip as
                         the target: codes only, MIMO branch + audio head run), vs kimi_cached_mb8 (ASR, same clips,
                         similar tokens per sample); LoRA ``all`` (MIMO frozen) or ``all,mimo``; MFU omits MIMO FLOPs
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import fp8_numerics  # noqa: E402

from llamafactory_kimi_audio import settings  # noqa: E402

KIMI_CASES = {  # in priority order (a --budget cut drops the last ones)
    "kimi_cached_mb8_group": dict(bs=8, group=True),
    "qwen_text_mb8_group": dict(bs=8, group=True, text=True),
    "kimi_cached_mb8_ckpt": dict(bs=8, ckpt=True),
    "kimi_raw_mb8": dict(bs=8, mode="raw"),
    "kimi_official_mb1": dict(bs=1, mode="official"),
    "kimi_cached_mb1": dict(bs=1),
    "kimi_qlora_mb8": dict(bs=8, qlora=True, ckpt=True),
    "kimi_cached_mb8": dict(bs=8),
    "qwen_text_mb8": dict(bs=8, text=True),
    "kimi_cached_mb8_group_v0": dict(bs=8, group=True, attention="v0"),
    "kimi_cached_mb16_group": dict(bs=16, group=True),
    "qwen_text_mb16_group": dict(bs=16, group=True, text=True),
    "kimi_cached_mb8_group_nogqa": dict(bs=8, group=True, attention="nogqa"),
    "kimi_cached_mb16_group_v0": dict(bs=16, group=True, attention="v0"),
    "kimi_cached_mb16_group_nogqa": dict(bs=16, group=True, attention="nogqa"),
    "kimi_cached_mb32_group": dict(bs=32, group=True),
    "qwen_text_mb32_group": dict(bs=32, group=True, text=True),
    "qwen_text_mb8_group_fused": dict(bs=8, group=True, text=True, fused=True),
    "qwen_text_mb32_group_fused": dict(bs=32, group=True, text=True, fused=True),
    "kimi_cached_mb32_group_nodrop": dict(bs=32, group=True, lora_dropout=0.0),
    "kimi_packed1024_mb4": dict(bs=4, packing=1024),
    "kimi_cached_mb32_group_nodrop_unfused": dict(bs=32, group=True, lora_dropout=0.0, unfused=True),
    "kimi_cached_mb32_group_unfused": dict(bs=32, group=True, unfused=True),
    "kimi_cached_mb48_group_nodrop": dict(bs=48, group=True, lora_dropout=0.0),
    "kimi_cached_mb8_ckpt_unfused": dict(bs=8, ckpt=True, unfused=True),
    "kimi_cached_mb32_group_nodrop_compiled": dict(bs=32, group=True, lora_dropout=0.0, compile=True),
    "kimi_packed1024_mb4_nodrop_compiled": dict(bs=4, packing=1024, lora_dropout=0.0, compile=True),
    "kimi_cached_mb8_ckpt_compiled": dict(bs=8, ckpt=True, compile=True),
    "kimi_cached_mb32_group_nodrop_layers": dict(bs=32, group=True, lora_dropout=0.0, compile="layers"),
    "kimi_packed1024_mb4_nodrop_layers": dict(bs=4, packing=1024, lora_dropout=0.0, compile="layers"),
    "kimi_packed1024_mb4_nodrop": dict(bs=4, packing=1024, lora_dropout=0.0),
    "kimi_packed1024_mb8_nodrop_layers": dict(bs=8, packing=1024, lora_dropout=0.0, compile="layers"),
    "kimi_packed2048_mb4_nodrop_layers": dict(bs=4, packing=2048, lora_dropout=0.0, compile="layers"),
    "kimi_packed1024_mb4_nodrop_layers_nanfilter": dict(
        bs=4, packing=1024, lora_dropout=0.0, compile="layers", nan_filter=True
    ),
    "kimi_packed1024_mb4_nodrop_layers_nonblocking": dict(
        bs=4, packing=1024, lora_dropout=0.0, compile="layers", non_blocking=True
    ),
    "kimi_packed1024_mb4_nodrop_layers_dense": dict(
        bs=4, packing=1024, lora_dropout=0.0, compile="layers", dense=True
    ),
    "kimi_packed1024_mb8_nodrop_layers_dense": dict(
        bs=8, packing=1024, lora_dropout=0.0, compile="layers", dense=True
    ),
    "kimi_packed1024_mb4_nodrop_layers_codesonly": dict(
        bs=4, packing=1024, lora_dropout=0.0, compile="layers", codes_only=True
    ),
    "kimi_packed1024_mb4_nodrop_ckpt": dict(bs=4, packing=1024, lora_dropout=0.0, ckpt=True),
    "kimi_packed1024_mb4_nodrop_ckpt_layers": dict(bs=4, packing=1024, lora_dropout=0.0, ckpt=True, compile="layers"),
    "kimi_packed1024_mb8_nodrop_ckpt_layers": dict(bs=8, packing=1024, lora_dropout=0.0, ckpt=True, compile="layers"),
    "kimi_packed1024_mb8_nodrop_ckpt": dict(bs=8, packing=1024, lora_dropout=0.0, ckpt=True),
    # the honest baseline (issue 21): text-only Qwen2 packed the same way, same fused LoRA forward, compiled layers;
    # both sides through SDPA with the dense block mask (the variable-length kernel is wired into Kimi's attention)
    "qwen_packed1024_mb4_nodrop_ckpt_layers_dense_fused": dict(
        bs=4, packing=1024, lora_dropout=0.0, ckpt=True, compile="layers", text=True, fused=True
    ),
    "kimi_packed1024_mb4_nodrop_ckpt_layers_dense": dict(
        bs=4, packing=1024, lora_dropout=0.0, ckpt=True, compile="layers", dense=True
    ),
    "qwen_packed1024_mb8_nodrop_layers_dense_fused": dict(
        bs=8, packing=1024, lora_dropout=0.0, compile="layers", text=True, fused=True
    ),
    "kimi_packed1024_mb4_nodrop_layers_walkcount": dict(
        bs=4, packing=1024, lora_dropout=0.0, compile="layers", walk_count=True
    ),
    "kimi_speech_mb8": dict(bs=8, dataset="bench_tts"),
    "kimi_speech_mb8_mimo": dict(bs=8, dataset="bench_tts", lora_target="all,mimo"),
}
# The shipped recipes as they are (examples/*.yaml: batch, packing, checkpointing, compile auto, parking), only pointed
# at the random full-size model, the corpus and the feature cache. QLoRA: the bench quantises after from_config (as
# kimi_qlora_mb8) and keeps the layers uncompiled, as compile auto does for a quantised recipe.
RECIPE_CASES = {
    "recipe_24gb": dict(recipe="kimi_lora.yaml"),
    "recipe_24gb_qlora": dict(recipe="kimi_qlora.yaml", qlora=True, compile="off"),
    "recipe_48gb": dict(recipe="kimi_lora_48gb.yaml"),
    "recipe_80gb": dict(recipe="kimi_lora_80gb.yaml"),
    "recipe_80gb_eager": dict(recipe="kimi_lora_80gb.yaml", compile="off"),  # bf16's own gradient noise (issue 28)
    "recipe_141gb": dict(recipe="kimi_lora_141gb.yaml"),
    "recipe_24gb_unparked": dict(recipe="kimi_lora.yaml", unparked=True),  # KIMI_AUDIO_PARK_IDLE=0
    "recipe_24gb_eager": dict(recipe="kimi_lora.yaml", compile="off"),
}
# fp8: true (issue 28) on the same recipes; fp8_numerics compares each with its bf16 twin of the same round
RECIPE_CASES.update({f"{n}_fp8": dict(spec, fp8=True) for n, spec in list(RECIPE_CASES.items()) if "qlora" not in n})
# FP8 variants (settings.py): input gradients in bf16 (forward-only FP8), full-precision forward accumulation, fast
# accumulation of the gradient GEMMs too, nothing parked, the batch's mean token kept out of the FP8 rounding
FP8_VARIANTS = {
    "bf16grad": {"KIMI_AUDIO_FP8_MATMULS": "forward"},  # FP8 forward only
    "fp8bwd": {"KIMI_AUDIO_FP8_MATMULS": "backward"},  # FP8 input gradients only
    "exactacc": {"KIMI_AUDIO_FP8_FAST_ACCUM": "off"},
    "fastgrad": {"KIMI_AUDIO_FP8_FAST_ACCUM": "all"},  # the input-gradient GEMMs in the fast mode too (the default)
    "fwdacc": {"KIMI_AUDIO_FP8_FAST_ACCUM": "forward"},  # fast accumulation in the forward GEMMs only (as torchao)
    "unparked": {"KIMI_AUDIO_PARK_IDLE": "0"},  # the bf16 weights (and MIMO, Whisper) stay on the GPU
    "center": {"KIMI_AUDIO_FP8_CENTER": "1"},  # the mean token's product in bf16 (fp8_grad_study.py)
}
RECIPE_CASES.update(
    {
        f"{n}_fp8_{v}": dict(spec, fp8=True, env=env)
        for n, spec in list(RECIPE_CASES.items())
        if n.endswith("gb")
        for v, env in FP8_VARIANTS.items()
    }
)
# grouped LoRA A off (KIMI_AUDIO_GROUPED_LORA=0, models/grouped_lora.py): q/k/v and gate/up one LoRA-A matmul each
GROUPED_OFF = {"KIMI_AUDIO_GROUPED_LORA": "0"}
RECIPE_CASES.update(
    {
        f"{n}_ungrouped": dict(spec, env={**spec.get("env", {}), **GROUPED_OFF})
        for n, spec in list(RECIPE_CASES.items())
        if re.fullmatch(r"recipe_\d+gb(_fp8)?", n)
    }
)
# the LoRA B product as one out-of-place addmm inside the compiled layers too (before session 10's change: cuBLAS
# copies each base output first), to measure fused_lora.add_lora_product against it in interleaved pairs
RECIPE_CASES.update(
    {
        f"{n}_addmm": dict(spec, lora_addmm=True)
        for n, spec in list(RECIPE_CASES.items())
        if re.fullmatch(r"recipe_\d+gb(_fp8)?", n)
    }
)
KIMI_CASES.update(RECIPE_CASES)
DEFAULT_CASES = [name for name in KIMI_CASES if name not in RECIPE_CASES]
PROFILED_STEPS = 2
COMPILE_ENV = "KIMI_AUDIO_COMPILE_POINTWISE"  # settings.py; the integration sets config.compile_pointwise from it
VARLEN_ENV = "KIMI_AUDIO_VARLEN_ATTENTION"  # settings.py; the integration sets config.use_varlen_attention
PARK_ENV = "KIMI_AUDIO_PARK_IDLE"  # settings.py; the park_idle_weights patch row reads it at train begin
FP8_EMULATE_ENV = "KIMI_AUDIO_FP8_EMULATE"  # settings.py; tests only: fp8: true with the FP8 math emulated
REPO = Path(__file__).resolve().parents[1]


def recipe_args(model_dir: str, data_dir: str, out_dir: str, spec: dict[str, Any], a) -> dict[str, Any]:
    """A shipped recipe pointed at the benchmark's model, corpus and step count; nothing that affects speed changes."""
    import yaml

    args = yaml.safe_load((REPO / "examples" / spec["recipe"]).read_text(encoding="utf-8"))
    evaluation = ("eval_dataset", "eval_strategy", "eval_steps", "per_device_eval_batch_size")
    quantisation = ("quantization_bit", "quantization_method", "double_quantization")
    for key in (*evaluation, *quantisation):
        args.pop(key, None)  # no eval split; QLoRA quantises after from_config (qlora_models)
    args.update(
        model_name_or_path=model_dir, train_from_scratch=True, dataset="bench_asr", dataset_dir=data_dir,
        output_dir=out_dir, max_steps=a.steps, logging_steps=a.log_every or max(1, a.steps // 4), save_strategy="no",
        seed=0,
        preprocessing_num_workers=a.workers, dataloader_num_workers=a.workers if not a.tiny else 0, plot_loss=False,
    )  # fmt: skip
    if spec.get("fp8"):
        args["fp8"] = True
    if a.tiny:
        args.update(use_cpu=True, bf16=False)
    return args


def lf_args(model_dir: str, data_dir: str, out_dir: str, tokenized: str, spec: dict[str, Any], a) -> dict[str, Any]:
    if spec.get("recipe"):
        return recipe_args(model_dir, data_dir, out_dir, spec, a)
    text = spec.get("text", False)
    args = {
        "model_name_or_path": model_dir,
        "train_from_scratch": True,
        "trust_remote_code": True,
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "lora",
        "lora_target": spec.get("lora_target", "all"),
        "lora_rank": 16,
        "lora_alpha": 32,
        "lora_dropout": spec.get("lora_dropout", 0.05),
        "dataset": spec.get("dataset", "bench_asr"),
        "dataset_dir": data_dir,
        "template": "qwen" if text else "kimi_audio",
        "cutoff_len": 1024,
        "tokenized_path": tokenized,
        "preprocessing_num_workers": a.workers,
        "dataloader_num_workers": a.workers if not a.tiny else 0,
        "output_dir": out_dir,
        "overwrite_output_dir": True,
        "per_device_train_batch_size": spec["bs"],
        "gradient_accumulation_steps": 1,
        "learning_rate": 1.0e-4,
        "lr_scheduler_type": "constant",
        "max_steps": a.steps,
        "logging_steps": max(1, a.steps // 4),
        "save_strategy": "no",
        "report_to": "none",
        "seed": 0,
        "disable_gradient_checkpointing": not spec.get("ckpt", False),
        # as the recipes: no NaN check of every step's loss, a device sync that drains the GPU's queue each step
        "logging_nan_inf_filter": spec.get("nan_filter", False),
    }
    if spec.get("non_blocking"):  # accelerate copies each (pinned) batch to the GPU without waiting for the GPU
        args["accelerator_config"] = {"non_blocking": True}
    if spec.get("group"):
        args["train_sampling_strategy"] = "group_by_length"
    if spec.get("packing"):  # LLaMA-Factory packs (neat_packing: block-diagonal attention) while tokenizing
        packed = f"{tokenized}-packed{spec['packing']}" if tokenized else None  # saved once, by prepare()
        args.update(packing=True, neat_packing=True, cutoff_len=spec["packing"], tokenized_path=packed)
    if a.tiny:
        args.update(use_cpu=True, bf16=False)
    else:
        args.update(bf16=True)
    return args


# ----------------------------------------------------------------------------------- case-specific model changes
class Patched:
    """Undo list for the in-process monkeypatches a case needs."""

    def __init__(self) -> None:
        self._undo: list[tuple[Any, str, Any]] = []

    def set(self, owner: Any, name: str, value: Any) -> None:
        self._undo.append((owner, name, owner.__dict__[name] if name in owner.__dict__ else None))
        setattr(owner, name, value)

    def restore(self) -> None:
        for owner, name, value in reversed(self._undo):
            if value is None:
                delattr(owner, name)
            else:
                setattr(owner, name, value)
        self._undo.clear()


def official_semantics(patched: Patched) -> None:
    """Forward as the official ``finetune.py``: MIMO branch + audio head on every position, text logits on every
    position, fp32 cross-entropy for both heads (audio mask all False for ASR, so the audio loss is 0 but paid)."""
    import torch
    import torch.nn.functional as F

    from llamafactory_kimi_audio.models.modeling_kimi_audio import KimiAudioForCausalLM

    original = KimiAudioForCausalLM.forward

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
        kwargs.pop("return_audio_logits", None)
        out = original(self, input_ids=input_ids, attention_mask=attention_mask, return_audio_logits=True, **kwargs)
        if labels is None:
            return out
        shift = labels[:, 1:]
        mask = shift != -100

        def per_sample_ce(logits, targets, weight):
            ce = F.cross_entropy(
                logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                targets.reshape(-1).clamp(min=0),
                reduction="none",
            ).view_as(targets)
            return ((ce * weight).sum(1) / (weight.sum(1) + 1e-4)).mean()

        text_loss = per_sample_ce(out.logits, shift, mask)
        audio_loss = per_sample_ce(out.audio_logits, torch.zeros_like(shift), torch.zeros_like(mask))
        out.loss = text_loss + audio_loss
        return out

    patched.set(KimiAudioForCausalLM, "forward", forward)

    from llamafactory_kimi_audio.data.features.collate_inputs import audio_model_inputs
    from llamafactory_kimi_audio.integration.mm_plugin import KimiAudioPlugin

    def get_mm_inputs(self, images, videos, audios, imglens, vidlens, audlens, batch_ids, processor):
        """Official data path: semantic codes extracted offline (here: the cache), Whisper run online (30 s pad)."""
        from llamafactory_kimi_audio.fileio.audio import load_audio

        if not audios:
            return {}
        cached = audio_model_inputs(audios, processor)
        raw = processor.audio_inputs([load_audio(a, 16000) for a in audios], with_semantic=False)
        return {"audio_codes": cached["audio_codes"], **raw}

    patched.set(KimiAudioPlugin, "get_mm_inputs", get_mm_inputs)


def attention_v0(patched: Patched) -> None:
    """The model's attention before the right-padding / GQA changes (for the A/B figure)."""
    from llamafactory_kimi_audio.models import masks
    from llamafactory_kimi_audio.models import modeling_kimi_audio as m

    patched.set(m, "attention_bias", masks.padding_bias)  # attention_bias without the 4-D and right-padding paths
    no_sdpa_gqa(patched)


def no_sdpa_gqa(patched: Patched) -> None:
    """SDPA with K/V heads repeated to the query heads (transformers' sdpa_attention_forward decides GQA here)."""
    from transformers.integrations import sdpa_attention

    patched.set(sdpa_attention, "use_gqa_in_sdpa", lambda attention_mask, key: False)


def qlora_models(patched: Patched) -> None:
    """Quantise the decoder + MIMO linears to bitsandbytes NF4 (double quant, bf16 compute/storage) right after
    ``from_config`` — what ``quantization_bit: 4`` does on ``from_pretrained``, which ``train_from_scratch`` skips."""
    import torch
    import transformers

    auto = transformers.AutoModelForCausalLM
    built = auto.from_config.__func__

    def from_config(cls, config, *args, **kwargs):
        import bitsandbytes as bnb

        model = built(cls, config, *args, **kwargs)
        targets = [
            (name, module)
            for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and (".layers." in name) and not name.startswith("whisper")
        ]
        for name, linear in targets:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            q = bnb.nn.Linear4bit(
                linear.in_features, linear.out_features, bias=linear.bias is not None, compute_dtype=torch.bfloat16,
                compress_statistics=True, quant_type="nf4", quant_storage=torch.bfloat16, device="meta",
            )  # fmt: skip
            q.weight = bnb.nn.Params4bit(
                linear.weight.data, requires_grad=False, compress_statistics=True, quant_type="nf4",
                quant_storage=torch.bfloat16,
            ).to(linear.weight.device)  # fmt: skip
            if linear.bias is not None:
                q.bias = torch.nn.Parameter(linear.bias.data, requires_grad=False)
            setattr(parent, child, q)
            del linear
        gc.collect()
        torch.cuda.empty_cache()
        model.is_loaded_in_4bit = True
        return model

    patched.set(auto, "from_config", classmethod(from_config))


# -------------------------------------------------------------------------------------------------- the runner
def placeholder_token_id(model_dir: str) -> int:
    from llamafactory_kimi_audio.models.configuration_kimi_audio import KimiAudioConfig
    from llamafactory_kimi_audio.models.special_tokens import AUDIO_PLACEHOLDER, special_id

    return special_id(KimiAudioConfig.from_pretrained(model_dir), AUDIO_PLACEHOLDER)


def fused_lora_callback():
    """Give a non-Kimi model the package's fused LoRA forward at train begin (the loader installs it on Kimi only)."""
    from transformers import TrainerCallback

    from llamafactory_kimi_audio.models.fused_lora import install_fused_lora

    class FusedLora(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            print(f"[bench] fused LoRA forward on {install_fused_lora(model)} layers", flush=True)

    return FusedLora()


def compiled_layers_callback():
    """Give a non-Kimi model the package's compiled decoder layers (``compile_pointwise=layers``: each layer one
    graph, dynamic shapes) at train begin; the Kimi model compiles its own from the config switch."""
    from transformers import TrainerCallback

    class CompiledLayers(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            layers = [m for name, m in model.named_modules() if re.search(r"(^|\.)layers\.\d+$", name)]
            for layer in layers:
                layer.compile(dynamic=True)
            print(f"[bench] compiled {len(layers)} decoder layers", flush=True)

    return CompiledLayers()


def forget_compiled() -> None:
    """Each case builds a new model: drop the compiled layers (and dynamo's caches, whose recompile limit counts across
    cases) so that one case's compilation cannot turn the next one's into silent eager fallbacks."""
    import torch

    from llamafactory_kimi_audio.models import pointwise

    pointwise._compiled.clear()
    torch._dynamo.reset()


def make_tts_set(data_dir: str, asr_tokenized: str) -> str:
    """The ``bench_asr`` corpus as text -> speech samples ``bench_tts`` (dataset_info entry added); returns the
    tokenized path of that dataset. The spoken text is the transcript cut to ~1 word/s, so that it fits the rows
    of its audio (n + 1 <= 6 + N on every tokenizer, byte-level tiny one included)."""
    from llamafactory_kimi_audio.data.convert.speech_tasks import TTS_INSTRUCTION, tts_row

    with open(os.path.join(data_dir, "bench_asr.json"), encoding="utf-8") as f:
        asr = json.load(f)
    rows = []
    for row in asr:
        words = row["messages"][1]["content"].split()
        seconds = len(words) / 2.5  # make_corpus writes ~2.5 words per second of audio
        text = " ".join(words[: max(1, int(seconds))])
        rows.append(tts_row(row["id"], text, row["audios"][0], TTS_INSTRUCTION["en"]))
    with open(os.path.join(data_dir, "bench_tts.json"), "w", encoding="utf-8") as f:
        json.dump(rows, f)
    info_path = os.path.join(data_dir, "dataset_info.json")
    with open(info_path, encoding="utf-8") as f:
        info = json.load(f)
    info["bench_tts"] = {**info["bench_asr"], "file_name": "bench_tts.json"}
    with open(info_path, "w", encoding="utf-8") as f:
        json.dump(info, f, indent=2)
    return asr_tokenized + "-tts"


def run_case(name: str, spec: dict[str, Any], paths: dict[str, str], a) -> dict[str, Any]:
    import torch
    from llamafactory.train.tuner import run_exp

    from llamafactory_kimi_audio.models.configuration_kimi_audio import KimiAudioConfig

    text = spec.get("text", False)
    mode = spec.get("mode", "cached")
    model_dir = paths["qwen"] if text else paths["kimi"]
    tokenized = paths["qwen_tok"] if text else paths["kimi_tok"]
    if spec.get("dataset") == "bench_tts":
        tokenized = make_tts_set(paths["data"], paths["kimi_tok"])
    os.environ.pop("KIMI_AUDIO_FEATURE_CACHE", None)
    if mode in ("cached", "official"):
        os.environ["KIMI_AUDIO_FEATURE_CACHE"] = paths["cache"]
    if spec.get("codes_only"):
        codes_root = paths["cache"] + "_codes"
        audio_paths = common.corpus_audio_paths(paths["data"])
        common.fill_random_feature_cache(codes_root, paths["kimi"], audio_paths, with_rows=False)
        os.environ["KIMI_AUDIO_FEATURE_CACHE"] = codes_root
    settings.reload()  # settings are read once per process; this run changed the environment
    patched = Patched()
    if mode == "official":
        official_semantics(patched)
    if spec.get("qlora"):
        qlora_models(patched)
    if spec.get("attention") == "v0":
        attention_v0(patched)
    if spec.get("unfused"):  # PEFT's own LoRA forward (the package's fused_lora patch then installs nothing)
        from llamafactory_kimi_audio.models import fused_lora

        patched.set(fused_lora, "install_fused_lora", lambda model, **kwargs: 0)
    if spec.get("lora_addmm"):
        lora_addmm_everywhere(patched)
    if spec.get("walk_count"):  # transformers' own num_parameters: a walk over every module, every step
        from transformers import PreTrainedModel

        from llamafactory_kimi_audio.models.modeling_kimi_audio import KimiAudioForCausalLM

        patched.set(KimiAudioForCausalLM, "num_parameters", PreTrainedModel.num_parameters)
    if spec.get("attention") == "nogqa":
        no_sdpa_gqa(patched)
    callback = common.make_callback(None if text else placeholder_token_id(paths["kimi"]))
    callbacks = [callback]
    if spec.get("fused"):
        callbacks.append(fused_lora_callback())
    if text and spec.get("compile") == "layers":
        callbacks.append(compiled_layers_callback())
    profiled = name in a.profile.split(",")
    if profiled:  # the last two steps, left out of the figures (the profiler slows them down)
        callbacks.append(common.make_profiler_callback(os.path.join(a.profile_dir, name), a.steps - PROFILED_STEPS))
    args = lf_args(model_dir, paths["data"], os.path.join(paths["work"], "out", name), tokenized, spec, a)
    os.environ.pop(COMPILE_ENV, None)  # recipes: as shipped (auto); other cases: eager unless named
    if spec.get("compile") or not spec.get("recipe"):
        os.environ[COMPILE_ENV] = {True: "on", None: "off"}.get(spec.get("compile"), spec.get("compile"))
    if spec.get("dense"):
        os.environ[VARLEN_ENV] = "0"
    if spec.get("unparked"):
        os.environ[PARK_ENV] = "0"
    os.environ.update(spec.get("env", {}))
    if spec.get("fp8") and a.tiny:  # CPU: the FP8 math emulated (the integration refuses fp8 there otherwise)
        os.environ[FP8_EMULATE_ENV] = "1"
    grad_path = os.path.join(a.grad_dir, f"{name}-{a.round}.pt") if a.grad_dir and spec.get("recipe") else None
    grads, losses = fp8_numerics.callbacks(grad_path)
    callbacks += [grads, losses]
    settings.reload()  # the integration reads the switches (and the cache dir) into the model config per process
    started = time.perf_counter()
    try:
        run_exp(args=args, callbacks=callbacks)
    finally:
        patched.restore()
        os.environ.pop(COMPILE_ENV, None)
        os.environ.pop(VARLEN_ENV, None)
        os.environ.pop(PARK_ENV, None)
        os.environ.pop(FP8_EMULATE_ENV, None)
        for key in spec.get("env", {}):
            os.environ.pop(key, None)
        os.environ.pop("ACCELERATE_MIXED_PRECISION", None)  # LLaMA-Factory sets it for fp8: true; later cases read it
        settings.reload()
        forget_compiled()
    wall = time.perf_counter() - started
    kimi = KimiAudioConfig.from_pretrained(paths["kimi"])
    shapes = common.Shapes.of(kimi)
    if text:
        shapes = common.Shapes(**{**shapes.__dict__, "vocab": kimi.kimia_text_output_vocab})
    steps = callback.state.steps[: -PROFILED_STEPS if profiled else None]
    extra = 0.0
    if mode in ("raw", "official") and steps:
        # one 30 s chunk per clip (all clips < 30 s): the frozen Whisper forward, not counted in MFU
        extra = common.whisper_flops(shapes, len(steps[-1].lengths))
    result = common.summarise(name, steps, shapes, a.warmup, callback.state.peak_bytes, extra_flops_per_step=extra)
    result.update(wall_s=wall, spec=spec, losses=losses.losses)
    memory = callback.state
    result.update(load_peak_gib=memory.load_peak_bytes / 2**30, peak_reserved_gib=memory.peak_reserved_bytes / 2**30)
    del callback
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return result


def prepare(a, cases: list[str]) -> dict[str, str]:
    """Model dirs, corpus, random feature cache, and the two tokenized datasets (Kimi through LF, then text-only)."""
    from llamafactory.train.tuner import run_exp

    preset = "tiny" if a.tiny else "full"
    work = os.path.abspath(a.work)
    paths = {
        "work": work,
        "kimi": os.path.join(work, f"kimi-{preset}"),
        "qwen": os.path.join(work, f"qwen2-{preset}"),
        "data": os.path.join(work, "data"),
        "cache": os.path.join(work, "feature_cache"),
        "kimi_tok": os.path.join(work, f"tokenized-kimi-{preset}-{a.samples}"),
        "qwen_tok": os.path.join(work, f"tokenized-qwen-{preset}-{a.samples}"),
    }
    t0 = time.perf_counter()
    common.make_kimi_dir(paths["kimi"], preset, device="cpu" if a.tiny else "cuda")
    common.make_corpus(paths["data"], a.samples)
    common.fill_random_feature_cache(paths["cache"], paths["kimi"], common.corpus_audio_paths(paths["data"]))
    print(f"[bench] model dir + corpus + cache: {time.perf_counter() - t0:.1f}s", flush=True)
    if not os.path.isdir(paths["kimi_tok"]):
        # one LLaMA-Factory pass that tokenizes (and saves) the dataset: 1 step at batch 1, not measured
        spec = dict(bs=1)
        args = lf_args(paths["kimi"], paths["data"], os.path.join(work, "out", "tokenize"), paths["kimi_tok"], spec, a)
        args["max_steps"] = 1
        os.environ["KIMI_AUDIO_FEATURE_CACHE"] = paths["cache"]
        settings.reload()
        t0 = time.perf_counter()
        run_exp(args=args)
        print(f"[bench] tokenize + 1 warm-up step: {time.perf_counter() - t0:.1f}s", flush=True)
    from llamafactory_kimi_audio.models.configuration_kimi_audio import KimiAudioConfig

    base = KimiAudioConfig.from_pretrained(paths["kimi"]).num_base_tokens
    common.make_qwen_dir(paths["qwen"], preset, paths["kimi"])
    common.make_text_only_tokenized(paths["kimi_tok"], paths["qwen_tok"], base)
    for length in sorted({KIMI_CASES[n]["packing"] for n in cases if KIMI_CASES[n].get("packing")}):
        packed = f"{paths['kimi_tok']}-packed{length}"
        if not os.path.isdir(packed):  # Kimi and text-only packed cases read the same rows
            spec = dict(bs=1, packing=length)
            args = lf_args(
                paths["kimi"], paths["data"], os.path.join(work, "out", "tokenize"), paths["kimi_tok"], spec, a
            )
            run_exp(args=dict(args, max_steps=1))
        common.make_text_only_tokenized(packed, f"{paths['qwen_tok']}-packed{length}", base)
    return paths


RATIO_PAIRS = (
    ("kimi_packed1024_mb4_nodrop_ckpt_layers_dense", "qwen_packed1024_mb4_nodrop_ckpt_layers_dense_fused"),
    ("kimi_packed1024_mb8_nodrop_layers_dense", "qwen_packed1024_mb8_nodrop_layers_dense_fused"),
    ("kimi_cached_mb8", "qwen_text_mb8"),
    ("kimi_cached_mb8_group", "qwen_text_mb8_group"),
    ("kimi_cached_mb8_group", "qwen_text_mb8_group_fused"),
    ("kimi_cached_mb8_group_v0", "qwen_text_mb8_group"),
    ("kimi_cached_mb16_group", "qwen_text_mb16_group"),
    ("kimi_cached_mb32_group", "qwen_text_mb32_group"),
    ("kimi_cached_mb32_group", "qwen_text_mb32_group_fused"),
    ("kimi_speech_mb8", "kimi_cached_mb8"),  # speech output vs ASR on the same clips
    ("kimi_speech_mb8_mimo", "kimi_cached_mb8"),
    *((f"recipe_{size}{fp8}", f"recipe_{size}{fp8}_ungrouped") for size in ("24gb", "80gb") for fp8 in ("", "_fp8")),
    *((f"recipe_{size}{fp8}", f"recipe_{size}{fp8}_addmm") for size in ("24gb", "80gb") for fp8 in ("", "_fp8")),
)


def lora_addmm_everywhere(patched: Any) -> None:
    """``*_addmm`` cases: the LoRA B product is one ``addmm`` in compiled layers too (the eager form)."""
    from llamafactory_kimi_audio.models import fused_lora, grouped_lora

    patched.set(fused_lora, "add_lora_product", fused_lora.add_lora_product_addmm)
    patched.set(grouped_lora, "add_lora_product", fused_lora.add_lora_product_addmm)


def print_ratios(rows: list[dict[str, Any]]) -> None:
    """Tokens/s ratios of the RATIO_PAIRS (Kimi / text-only, grouped / ungrouped) per round (cases of one round ran
    next to each other), with the median and spread."""
    by_round: dict[tuple[str, int], float] = {
        (r["case"], r.get("round", 0)): r["tokens_per_s"] for r in rows if "error" not in r
    }
    for kimi, qwen in RATIO_PAIRS:
        rounds = sorted(n for case, n in by_round if case == kimi and (qwen, n) in by_round)
        ratios = [by_round[kimi, n] / by_round[qwen, n] for n in rounds]
        if ratios:
            listed = ", ".join(f"{x:.3f}" for x in ratios)
            print(
                f"throughput ratio {kimi} / {qwen}: median {statistics.median(ratios):.3f}, "
                f"range {min(ratios):.3f}-{max(ratios):.3f} over {len(ratios)} interleaved pair(s) [{listed}]"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="CPU run on the tiny checkpoint (seconds)")
    parser.add_argument("--cases", default=",".join(DEFAULT_CASES))
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per case (default 24, tiny 4)")
    parser.add_argument("--warmup", type=int, default=None, help="steps left out of the figures (default 4, tiny 1)")
    parser.add_argument("--samples", type=int, default=None, help="corpus size (default 400, tiny 32)")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--work", default=os.environ.get("BENCH_WORK", "/tmp/kimi_bench"))
    parser.add_argument("--out", default=None, help="append one JSON line per case")
    parser.add_argument("--budget", type=int, default=0, help="skip the remaining cases after this many seconds")
    parser.add_argument("--repeat", type=int, default=1, help="run the case list this many times, interleaved")
    parser.add_argument("--profile", default="", help="cases to profile (torch.profiler, their last 2 steps)")
    parser.add_argument("--profile-dir", default="profiles", help="where the profiles go (one folder per case)")
    parser.add_argument("--log-every", type=int, default=0, help="recipe cases: logging_steps (default steps/4)")
    parser.add_argument("--grad-dir", default="", help="recipe cases: save step-1 gradients here (fp8 vs bf16)")
    parser.add_argument("--loss-after", type=int, default=0, help="fp8 vs bf16 loss gaps after this step")
    a = parser.parse_args(argv)
    a.steps = a.steps or (4 if a.tiny else 24)
    a.warmup = a.warmup if a.warmup is not None else (1 if a.tiny else 4)
    a.samples = a.samples or (32 if a.tiny else 400)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ[COMPILE_ENV] = "off"  # the tokenizing passes of prepare(); each case sets its own
    common.build_on_gpu(not a.tiny)
    names = [c for c in a.cases.split(",") if c]
    paths = prepare(a, names)
    rows = []
    started = time.perf_counter()
    for round_no, name in [(r, n) for r in range(a.repeat) for n in names]:
        spec = KIMI_CASES[name]
        if a.budget and time.perf_counter() - started > a.budget:
            rows.append({"case": name, "error": "skipped (time budget)"})
            continue
        print(f"[bench] ===== {name} {spec}", flush=True)
        a.round = round_no
        try:
            row = run_case(name, spec, paths, a)
            row["round"] = round_no
        except Exception as exc:  # one failing case must not lose the others' figures
            traceback.print_exc()
            row = {"case": name, "error": f"{type(exc).__name__}: {exc}"}
        rows.append(row)
        print("[bench] " + json.dumps(row), flush=True)
        if a.out:
            with open(a.out, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
    print(common.format_table(rows))
    print_ratios(rows)
    fp8_numerics.print_comparison(rows, a.grad_dir, a.loss_after)
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
