"""Two GPUs through the stock launcher: ``FORCE_TORCHRUN=1 NPROC_PER_NODE=2 llamafactory-cli train <yaml>``.

A full-size Kimi-Audio with random weights is saved once in the official layout (LM shards, ``whisper-large-v3/``,
``glm-4-voice-tokenizer/``) so every run loads it with ``from_pretrained`` exactly like a real checkpoint (ZeRO-3
included). Runs, a few steps each on the same synthetic clips (raw audio: Whisper + GLM-4-Voice online), in order:

  lora_1gpu      one GPU, micro-batch 4 × gradient accumulation 2 (the reference for step-1 loss and scaling)
  lora_ddp       2 GPUs DDP, micro-batch 4
  lora_z2        2 GPUs DeepSpeed ZeRO-2 (examples/deepspeed/ds_z2_config.json)
  lora_z3        2 GPUs ZeRO-3 (ds_z3_config.json)
  full_z3        full fine-tuning (LM + adaptor) with ZeRO-3
  full_z3_offload  the same with optimizer + parameters offloaded to the CPU (ds_z3_offload_config.json)
  qlora_recipe   one GPU, examples/kimi_qlora.yaml as shipped (4-bit bitsandbytes on from_pretrained), not by default

Shuffling is off, so step 1 sees the same 8 samples everywhere; LoRA's B = 0 at start, so every run's step-1 loss is
the loss of the same base model on the same batch and must match the one-GPU run. Per-step times and tokens come from
the benchmark timing hook (an entry point of the package's own ``llamafactory_extensions`` group, active in every
torchrun rank when ``KIMI_BENCH_TIMING_DIR`` is set; ``python benchmarks/common.py install-hooks SITE``).

    python benchmarks/bench_dist.py --tiny      # CPU: 1 process, then 2 gloo ranks (DeepSpeed cases skipped)
    python benchmarks/bench_dist.py --out dist.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DS = REPO / "examples" / "deepspeed"
CASES: dict[str, dict[str, Any]] = {
    "lora_1gpu": dict(gpus=1, ft="lora"),
    "lora_ddp": dict(gpus=2, ft="lora"),
    "lora_z2": dict(gpus=2, ft="lora", ds="ds_z2_config.json"),
    "lora_z3": dict(gpus=2, ft="lora", ds="ds_z3_config.json"),
    "full_z3": dict(gpus=2, ft="full", ds="ds_z3_config.json"),
    "full_z3_offload": dict(gpus=2, ft="full", ds="ds_z3_offload_config.json"),
    "qlora_recipe": dict(gpus=1, ft="lora", recipe="kimi_qlora.yaml"),
}


def save_random_checkpoint(bench_dir: str, ckpt_dir: str, tiny: bool) -> str:
    """The random full-size model saved in the official layout (tokenizer + audio dirs copied from ``bench_dir``)."""
    if os.path.isfile(os.path.join(ckpt_dir, "bench_ready")):
        return ckpt_dir
    if tiny:
        shutil.copytree(bench_dir, ckpt_dir, dirs_exist_ok=True)  # the tiny checkpoint already holds weights
        return ckpt_dir
    import torch

    from llamafactory_kimi_audio.models.configuration_kimi_audio import KimiAudioConfig
    from llamafactory_kimi_audio.models.modeling_kimi_audio import KimiAudioForCausalLM

    t0 = time.perf_counter()
    config = KimiAudioConfig.from_pretrained(bench_dir)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = KimiAudioForCausalLM._from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(ckpt_dir, max_shard_size="5GB")
    for name in ("tiktoken.model", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(os.path.join(bench_dir, name), ckpt_dir)
    del model
    torch.cuda.empty_cache()
    open(os.path.join(ckpt_dir, "bench_ready"), "w").close()
    print(f"[dist] random checkpoint saved in {time.perf_counter() - t0:.0f}s", flush=True)
    return ckpt_dir


def recipe_config(name: str, spec: dict[str, Any], ckpt: str, data: str, work: str, a) -> dict:
    """A shipped ``examples/`` recipe as is, pointed at the random checkpoint and the corpus for ``a.steps`` steps."""
    import yaml

    config = yaml.safe_load((REPO / "examples" / spec["recipe"]).read_text(encoding="utf-8"))
    config.update(
        model_name_or_path=ckpt, dataset="bench_asr", dataset_dir=data, output_dir=os.path.join(work, "out", name),
        max_steps=a.steps, logging_steps=1, save_strategy="no", disable_shuffling=True, seed=0,
    )  # fmt: skip
    return config


def train_config(name: str, spec: dict[str, Any], ckpt: str, data: str, tokenized: str, work: str, a) -> dict:
    if spec.get("recipe"):
        return recipe_config(name, spec, ckpt, data, work, a)
    config = {
        "model_name_or_path": ckpt,
        "trust_remote_code": True,
        "stage": "sft",
        "do_train": True,
        "finetuning_type": spec["ft"],
        "dataset": "bench_asr",
        "dataset_dir": data,
        "template": "kimi_audio",
        "cutoff_len": 1024,
        "tokenized_path": tokenized,
        "preprocessing_num_workers": 4,
        "dataloader_num_workers": 2,
        "disable_shuffling": True,
        "output_dir": os.path.join(work, "out", name),
        "overwrite_output_dir": True,
        "per_device_train_batch_size": a.micro_batch,
        "gradient_accumulation_steps": 2 if spec["gpus"] == 1 else 1,
        "learning_rate": 1.0e-5 if spec["ft"] == "full" else 1.0e-4,
        "lr_scheduler_type": "constant",
        "max_steps": a.steps,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "seed": 0,
        "ddp_timeout": 1800,
    }
    if spec["ft"] == "lora":
        config.update(lora_target="all", lora_rank=16, lora_alpha=32, lora_dropout=0.0)
    else:
        config.update(freeze_multi_modal_projector=False)
    if spec.get("ds"):
        config["deepspeed"] = str(DS / spec["ds"])
    if a.tiny:
        config.update(use_cpu=True, bf16=False, dataloader_num_workers=0)
        if spec["gpus"] > 1:
            config["ddp_backend"] = "gloo"
    else:
        config["bf16"] = True
    return config


def run(name: str, spec: dict[str, Any], paths: dict[str, str], a) -> dict[str, Any]:
    work = paths["work"]
    timing = os.path.join(work, "timing", name)
    shutil.rmtree(timing, ignore_errors=True)
    os.makedirs(timing)
    config = train_config(name, spec, paths["ckpt"], paths["data"], paths["tokenized"], work, a)
    config_path = os.path.join(work, f"{name}.yaml")  # JSON is YAML; LLaMA-Factory 0.9.5 fails on *.json paths
    with open(config_path, "w", encoding="utf-8") as f:
        json.dump(config, f, indent=1)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **{common.TIMING_ENV: timing})
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # torchrun of this Python
    env.pop("KIMI_AUDIO_FEATURE_CACHE", None)  # raw audio: Whisper and GLM-4-Voice run in every rank
    if spec["gpus"] > 1:
        env.update(FORCE_TORCHRUN="1", NPROC_PER_NODE=str(spec["gpus"]))
    elif not a.tiny:
        env.setdefault("CUDA_VISIBLE_DEVICES", "0")
    cli = str(Path(sys.executable).with_name("llamafactory-cli"))
    log_path = os.path.join(a.logs, f"{name}.log")
    t0 = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        try:
            proc = subprocess.run([cli, "train", config_path], env=env, stdout=log, stderr=subprocess.STDOUT,
                                  timeout=a.timeout, cwd=work)  # fmt: skip
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    wall = time.perf_counter() - t0
    row: dict[str, Any] = {"case": name, "rc": rc, "wall_s": wall, "gpus": spec["gpus"], "ft": spec["ft"]}
    text = Path(log_path).read_text(encoding="utf-8", errors="replace")
    row["find_unused_error"] = "find_unused_parameters" in text and "Expected to have finished reduction" in text
    state_file = Path(config["output_dir"]) / "trainer_state.json"
    if state_file.is_file():
        losses = [e["loss"] for e in json.loads(state_file.read_text())["log_history"] if "loss" in e]
        row["losses"] = losses
    ranks = sorted(Path(timing).glob("rank*.json"))
    if ranks:
        from llamafactory_kimi_audio.models.configuration_kimi_audio import KimiAudioConfig

        shapes = common.Shapes.of(KimiAudioConfig.from_pretrained(paths["ckpt"]))
        per_rank = []
        for path in ranks:
            record = json.loads(path.read_text())
            steps = [common.StepRecord(**s) for s in record["steps"]]
            per_rank.append(
                common.summarise(name, steps, shapes, a.warmup, record["peak_bytes"], spec["ft"] == "full")
            )
        row["step_s_median"] = max(r["step_s_median"] for r in per_rank)
        row["tokens_per_s_per_gpu"] = sum(r["tokens_per_s"] for r in per_rank) / len(per_rank)
        row["mfu"] = sum(r["mfu"] for r in per_rank) / len(per_rank)
        row["peak_mem_gib"] = max(r["peak_mem_gib"] for r in per_rank)
        row["tokens_per_step_per_gpu"] = sum(r["tokens_per_step"] for r in per_rank) / len(per_rank)
    if rc != 0:
        row["log_tail"] = text[-1500:]
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--cases", default=",".join(c for c in CASES if c != "qlora_recipe"))
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--samples", type=int, default=None, help="corpus size (default 400, tiny 32)")
    parser.add_argument("--timeout", type=int, default=420, help="seconds per run")
    parser.add_argument("--budget", type=int, default=0, help="skip remaining runs after this many seconds (0: no)")
    parser.add_argument("--work", default=os.environ.get("BENCH_WORK", "/tmp/kimi_bench"))
    parser.add_argument("--logs", default=None, help="folder for the per-run logs (default WORK/logs)")
    parser.add_argument("--prepare-only", action="store_true")
    parser.add_argument("--out", default=None)
    a = parser.parse_args(argv)
    preset = "tiny" if a.tiny else "full"
    a.samples = a.samples or (32 if a.tiny else 400)
    work = os.path.abspath(a.work)
    a.logs = os.path.abspath(a.logs or os.path.join(work, "logs"))
    os.makedirs(a.logs, exist_ok=True)
    started = time.perf_counter()
    bench_dir = common.make_kimi_dir(os.path.join(work, f"kimi-{preset}"), preset, "cpu" if a.tiny else "cuda")
    paths = {
        "work": work,
        "ckpt": save_random_checkpoint(bench_dir, os.path.join(work, f"kimi-{preset}-saved"), a.tiny),
        "data": common.make_corpus(os.path.join(work, "data"), a.samples),
        "tokenized": os.path.join(work, f"tokenized-dist-{preset}-{a.samples}"),
    }
    if a.prepare_only:
        return 0
    names = [c for c in a.cases.split(",") if c]
    if a.tiny:
        names = [n for n in names if "ds" not in CASES[n]]  # DeepSpeed needs GPUs
    rows = []
    for name in names:
        if a.budget and time.perf_counter() - started > a.budget:
            rows.append({"case": name, "rc": "skipped (time budget)"})
            continue
        print(f"[dist] ===== {name}", flush=True)
        row = run(name, CASES[name], paths, a)
        rows.append(row)
        print("[dist] " + json.dumps({k: v for k, v in row.items() if k != "log_tail"}), flush=True)
        if row.get("log_tail"):
            print(row["log_tail"], flush=True)
        if a.out:
            with open(a.out, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
    reference = next((r for r in rows if r["case"] == "lora_1gpu" and r.get("losses")), None)
    print("| case | rc | step-1 loss | Δ vs 1 GPU | step s | tokens/s/GPU | scaling/GPU | MFU | peak GiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        loss = r.get("losses", [None])[0]
        delta = loss - reference["losses"][0] if (loss is not None and reference) else None
        scale = (
            r["tokens_per_s_per_gpu"] / reference["tokens_per_s_per_gpu"]
            if reference and "tokens_per_s_per_gpu" in r and "tokens_per_s_per_gpu" in reference
            else None
        )
        fmt = lambda v, f: "" if v is None else format(v, f)  # noqa: E731
        print(
            f"| {r['case']} | {r['rc']} | {fmt(loss, '.4f')} | {fmt(delta, '+.4f')} | "
            f"{fmt(r.get('step_s_median'), '.2f')} | {fmt(r.get('tokens_per_s_per_gpu'), '.0f')} | "
            f"{fmt(scale, '.2f')} | "
            f"{fmt(r.get('mfu') and 100 * r['mfu'], '.1f')} | {fmt(r.get('peak_mem_gib'), '.1f')} |"
        )
    return 0 if all(r["rc"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
