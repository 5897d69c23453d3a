"""Multi-GPU efficiency (issue 19): the fastest one-GPU recipe on N GPUs through the stock launcher,
``FORCE_TORCHRUN=1 NPROC_PER_NODE=N llamafactory-cli train <yaml>``, under DDP, ZeRO-2, ZeRO-3 and ZeRO-3 + offload.

Every case is ``RECIPE`` (cached features, packed rows with ``neat_packing``, compiled decoder layers through
``KIMI_AUDIO_COMPILE_POINTWISE=layers``) as shipped, pointed at a random full-size checkpoint saved in the official
layout, a synthetic corpus and a feature cache of random entries of the real shapes; only the engine and the knob a
case names change. Shuffling is off and the one-GPU reference accumulates N micro-batches, so step 1 sees the same
rows everywhere; LoRA's B = 0 at start, so every case's step-1 loss must equal the reference's.

Cases (``--cases``; ``N`` = ``--gpus``):
  1gpu            one GPU, gradient accumulation N (the reference: step-1 loss, tokens/s per GPU)
  ddp             N GPUs DDP (LLaMA-Factory sets ddp_find_unused_parameters: false for LoRA)
  ddp_bucket5 / ddp_bucket100   ddp_bucket_cap_mb 5 / 100 (default 25): more overlap / fewer all-reduces
  ddp_static      ddp_static_graph: true + ddp_find_unused_parameters: false
  ddp_eager       DDP without compiled layers
  z2              ZeRO-2 (examples/deepspeed/ds_z2_config.json)
  z2_overlap      ZeRO-2 with overlap_comm and 50 MB buckets (ds_z2_overlap_config.json)
  z3              ZeRO-3 (ds_z3_config.json)
  z3_prefetch     ZeRO-3 + overlap_comm, stage3_prefetch_bucket_size 5e8
  z3_persist      ZeRO-3 + stage3_param_persistence_threshold 1e6 (LoRA matrices and norms stay whole)
  z3_lora         both (ds_z3_lora_config.json)
  z3_eager        ZeRO-3 without compiled layers
  z3_offload      ZeRO-3 + CPU offload of parameters and optimizer (ds_z3_offload_config.json)
  full_z3 / full_z3_offload     full fine-tuning (not by default)
  qlora_recipe    one GPU, examples/kimi_qlora.yaml as shipped (not by default)

Figures per case: step-1 loss and its difference to 1gpu, the losses every rank logged (equal by construction of
the Trainer's gather: a rank that diverged or hung shows here), tokens/s and audio s/s per GPU, per-GPU efficiency
vs 1gpu against the issue's goals (DDP, ZeRO-2 >= 0.90; ZeRO-3 >= 0.75), MFU, peak memory, the share of the time
between steps (the GPU waiting for the loader or host; not in the step time); ``--profile CASE``: rank 0
profiles two steps and the share of the wall time in NCCL kernels is printed. Last, the extrapolation to 64 GPUs
(hours per epoch of a 10,000 h corpus, WenetSpeech-sized): ``extrapolate()``.

    python benchmarks/bench_dist.py --tiny      # CPU: 1 process, then 2 gloo ranks (DeepSpeed cases skipped)
    python benchmarks/bench_dist.py --gpus 8 --out dist.jsonl
    python benchmarks/bench_dist.py --report call1/dist.jsonl call2/dist.jsonl   # table + 64-GPU estimate
"""

from __future__ import annotations

import argparse
import importlib.util
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
# The fastest one-GPU recipe, run as shipped. One name to change if the recipe is renamed (e.g. a per-card recipe
# such as kimi_lora_80gb.yaml); --recipe / KIMI_BENCH_RECIPE override it.
RECIPE = "kimi_lora_80gb.yaml"
DS = REPO / "examples" / "deepspeed"
COMPILE_ENV = "KIMI_AUDIO_COMPILE_POINTWISE"
CASES: dict[str, dict[str, Any]] = {
    "1gpu": dict(gpus=1),
    "ddp": dict(),
    "ddp_bucket5": dict(args={"ddp_bucket_cap_mb": 5}),
    "ddp_bucket100": dict(args={"ddp_bucket_cap_mb": 100}),
    "ddp_static": dict(args={"ddp_static_graph": True, "ddp_find_unused_parameters": False}),
    "ddp_eager": dict(compile=False),
    "z2": dict(ds="ds_z2_config.json"),
    "z2_overlap": dict(ds="ds_z2_overlap_config.json"),
    "z3": dict(ds="ds_z3_config.json"),
    "z3_prefetch": dict(ds="ds_z3_config.json", zero={"overlap_comm": True, "stage3_prefetch_bucket_size": 5e8}),
    "z3_persist": dict(ds="ds_z3_config.json", zero={"stage3_param_persistence_threshold": 1e6}),
    "z3_lora": dict(ds="ds_z3_lora_config.json"),
    "z3_eager": dict(ds="ds_z3_config.json", compile=False),
    "z3_offload": dict(ds="ds_z3_offload_config.json"),
    "full_z3": dict(ds="ds_z3_config.json", ft="full"),
    "full_z3_offload": dict(ds="ds_z3_offload_config.json", ft="full"),
    "qlora_recipe": dict(gpus=1, recipe="kimi_qlora.yaml", compile=False),
}
DEFAULT_CASES = "1gpu,ddp,ddp_static,ddp_bucket5,ddp_bucket100,z2,z2_overlap,z3,z3_lora,z3_offload"
DROPPED_KEYS = ("eval_dataset", "eval_strategy", "eval_steps", "per_device_eval_batch_size", "plot_loss", "save_steps")


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


def recipe_path(name: str) -> Path:
    path = REPO / "examples" / name
    if not path.is_file():
        shipped = ", ".join(sorted(p.name for p in path.parent.glob("kimi_lora*.yaml")))
        raise SystemExit(f"bench_dist: recipe examples/{name} not found; set --recipe to one of: {shipped}")
    return path


def train_config(name: str, spec: dict[str, Any], paths: dict[str, str], a) -> dict[str, Any]:
    """The recipe as shipped, pointed at the bench checkpoint and corpus, for ``a.steps`` logged steps."""
    import yaml

    config = yaml.safe_load(recipe_path(spec.get("recipe", a.recipe)).read_text(encoding="utf-8"))
    for key in DROPPED_KEYS:
        config.pop(key, None)
    config.update(
        model_name_or_path=paths["ckpt"], dataset="bench_asr", dataset_dir=paths["data"],
        output_dir=os.path.join(paths["work"], "out", name), overwrite_output_dir=True, max_steps=a.steps,
        logging_steps=1, save_strategy="no", report_to="none", disable_shuffling=True, seed=0,
        lr_scheduler_type="constant", warmup_steps=0, ddp_timeout=1800,
    )  # fmt: skip
    if config.get("packing") and not spec.get("recipe"):
        config["tokenized_path"] = paths["tokenized"]  # packed once by the first case, loaded by the others
    if a.micro_batch:
        config["per_device_train_batch_size"] = a.micro_batch
    gpus = spec.get("gpus", a.gpus)
    if not spec.get("recipe"):  # the reference accumulates what N GPUs take in one step; a recipe case keeps its own
        config["gradient_accumulation_steps"] = a.gpus if gpus == 1 else 1
    config.update(spec.get("args", {}))
    if spec.get("ft") == "full":
        config.update(finetuning_type="full", freeze_multi_modal_projector=False, learning_rate=1.0e-5)
        for key in ("lora_target", "lora_rank", "lora_alpha", "lora_dropout"):
            config.pop(key, None)
    if spec.get("ds"):
        config["deepspeed"] = deepspeed_config(name, spec, paths["work"])
    if a.tiny:
        # DeepSpeed's CPU accelerator: without use_cpu, so that accelerate initialises deepspeed.comm (gloo) before
        # ZeRO-3's zero.Init reads the world size
        config.update(use_cpu=not spec.get("ds"), bf16=False, dataloader_num_workers=0, preprocessing_num_workers=1)
        if gpus > 1:
            config["ddp_backend"] = "gloo"
    return config


def deepspeed_config(name: str, spec: dict[str, Any], work: str) -> str:
    """The shipped config, or a copy with the case's ``zero`` keys changed (the knob under test)."""
    path = DS / spec["ds"]
    if not spec.get("zero"):
        return str(path)
    config = json.loads(path.read_text(encoding="utf-8"))
    config["zero_optimization"].update(spec["zero"])
    variant = os.path.join(work, f"ds_{name}.json")
    with open(variant, "w", encoding="utf-8") as f:
        json.dump(config, f, indent=1)
    return variant


def run_env(name: str, spec: dict[str, Any], paths: dict[str, str], timing: str, a) -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.update({common.TIMING_ENV: timing, common.AUDIO_ID_ENV: str(paths["audio_id"])})
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # torchrun of this Python
    env["PYTHONPATH"] = os.pathsep.join(p for p in (paths["hooks"], env.get("PYTHONPATH")) if p)
    env["KIMI_AUDIO_FEATURE_CACHE"] = paths["cache"]
    env["KIMI_AUDIO_CACHE_STRICT"] = "1"  # a clip missing from the cache stops the case (never encoded online)
    env.pop(COMPILE_ENV, None)
    if spec.get("compile", True) and (a.compile or not a.tiny):
        env[COMPILE_ENV] = "layers"
    env.pop(common.PROFILE_ENV, None)
    if name in a.profile.split(","):
        env[common.PROFILE_ENV] = os.path.join(a.profile_dir, name)
        env[common.PROFILE_STEP_ENV] = str(max(1, a.steps - 2))  # the last two steps (left out of the figures)
    gpus = spec.get("gpus", a.gpus)
    if a.tiny:
        env["OMP_NUM_THREADS"] = "1"  # one core per rank, for the 1-process reference too
    if gpus > 1:
        env.update(FORCE_TORCHRUN="1", NPROC_PER_NODE=str(gpus))
    elif not a.tiny:
        env.setdefault("CUDA_VISIBLE_DEVICES", "0")
    return env


def run(name: str, spec: dict[str, Any], paths: dict[str, str], a) -> dict[str, Any]:
    timing = os.path.join(paths["work"], "timing", name)
    shutil.rmtree(timing, ignore_errors=True)
    os.makedirs(timing)
    config = train_config(name, spec, paths, a)
    config_path = os.path.join(paths["work"], f"{name}.yaml")  # JSON is YAML; LLaMA-Factory 0.9.5 fails on *.json
    with open(config_path, "w", encoding="utf-8") as f:
        json.dump(config, f, indent=1)
    cli = str(Path(sys.executable).with_name("llamafactory-cli"))
    log_path = os.path.join(a.logs, f"{name}.log")
    t0 = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        try:
            proc = subprocess.run([cli, "train", config_path], env=run_env(name, spec, paths, timing, a), stdout=log,
                                  stderr=subprocess.STDOUT, timeout=a.timeout, cwd=paths["work"])  # fmt: skip
            rc: Any = proc.returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    gpus = spec.get("gpus", a.gpus)
    row: dict[str, Any] = {"case": name, "rc": rc, "wall_s": time.perf_counter() - t0, "gpus": gpus}
    row.update(engine=Path(spec["ds"]).stem if spec.get("ds") else ("ddp" if gpus > 1 else "single"))
    text = Path(log_path).read_text(encoding="utf-8", errors="replace")
    state_file = Path(config["output_dir"]) / "trainer_state.json"
    if state_file.is_file():
        row["losses"] = [e["loss"] for e in json.loads(state_file.read_text())["log_history"] if "loss" in e]
    profiled = name in a.profile.split(",")  # its last two steps are profiled on rank 0: left out everywhere
    row.update(rank_figures(timing, paths["ckpt"], spec.get("ft") == "full", a.warmup, 2 if profiled else 0))
    comm = Path(a.profile_dir, name, "comm.json")
    if profiled and comm.is_file():
        row["profile"] = json.loads(comm.read_text())
    if rc != 0:
        row["log_tail"] = text[-2000:]
    return row


def rank_figures(timing: str, ckpt: str, full_ft: bool, warmup: int, drop_last: int = 0) -> dict[str, Any]:
    """Per-GPU means over the ranks' timing records (steps ``warmup`` .. the last ``drop_last`` ones left out); the
    step time is the slowest rank's."""
    records = [json.loads(p.read_text()) for p in sorted(Path(timing).glob("rank*.json"))]
    if not records or not all(r["steps"] for r in records):
        return {"ranks": len(records)}
    from llamafactory_kimi_audio.models.configuration_kimi_audio import KimiAudioConfig

    shapes = common.Shapes.of(KimiAudioConfig.from_pretrained(ckpt))
    per_rank = []
    for record in records:
        steps = [common.StepRecord(**s) for s in record["steps"]][: len(record["steps"]) - drop_last]
        summary = common.summarise("rank", steps, shapes, warmup, record["peak_bytes"], full_ft)
        measured = steps[warmup:] or steps
        seconds, gaps = sum(s.seconds for s in measured), sum(s.gap_before for s in measured)
        summary["audio_x"] = sum(s.audio_frames for s in measured) * AUDIO_FRAME_S / seconds
        summary["stall_share"] = gaps / (seconds + gaps)  # between steps: the loader and the host, not the GPU
        per_rank.append(summary)
    mean = lambda key: sum(r[key] for r in per_rank) / len(per_rank)  # noqa: E731
    return {
        "ranks": len(records),
        "rank_losses": {str(r["rank"]): r["losses"] for r in records},
        "rank_steps": {str(r["rank"]): len(r["steps"]) for r in records},
        "step_s_median": max(r["step_s_median"] for r in per_rank),
        "tokens_per_s_per_gpu": mean("tokens_per_s"),
        "audio_x_per_gpu": mean("audio_x"),
        "tokens_per_step_per_gpu": mean("tokens_per_step"),
        "mfu": mean("mfu"),
        "stall_share": max(r["stall_share"] for r in per_rank),
        "peak_mem_gib": max(r["peak_mem_gib"] for r in per_rank),
    }


AUDIO_FRAME_S = 0.08  # one audio placeholder token per 80 ms of audio (12.5 Hz)


def prepare(a) -> dict[str, Any]:
    """Checkpoint, corpus, feature cache of random entries, benchmark hooks: everything a case needs, once."""
    from llamafactory_kimi_audio.models.configuration_kimi_audio import KimiAudioConfig
    from llamafactory_kimi_audio.models.special_tokens import AUDIO_PLACEHOLDER, special_id

    preset = "tiny" if a.tiny else "full"
    work = os.path.abspath(a.work)
    bench_dir = common.make_kimi_dir(os.path.join(work, f"kimi-{preset}"), preset, "cpu" if a.tiny else "cuda")
    ckpt = save_random_checkpoint(bench_dir, os.path.join(work, f"kimi-{preset}-saved"), a.tiny)
    data = common.make_corpus(os.path.join(work, "data_dist"), a.samples)  # its own: other benches use 400 clips
    cache = os.path.join(work, f"feature_cache_dist_{preset}")
    common.fill_random_feature_cache(cache, ckpt, common.corpus_audio_paths(data))
    hooks = os.path.join(work, "hooks")
    common.install_gpu_init_hook(hooks)
    tokenized = os.path.join(work, f"tokenized-dist-{preset}-{a.samples}-{Path(a.recipe).stem}")
    return dict(work=work, ckpt=ckpt, data=data, cache=cache, hooks=hooks, tokenized=tokenized,
                audio_id=special_id(KimiAudioConfig.from_pretrained(ckpt), AUDIO_PLACEHOLDER))  # fmt: skip


# ------------------------------------------------------------------------------------------------------ report
GOALS = {"ddp": 0.90, "ds_z2": 0.90, "ds_z3": 0.75}  # issue 19: per-GPU tokens/s vs one GPU, by engine prefix
CORPUS_HOURS = 10_000  # WenetSpeech-sized
GPUS_PER_NODE = 8
INTRA_NODE_GBPS = 450.0  # NVLink (H100/H200 HGX): ~450 GB/s per GPU each way
INTER_NODE_GBPS = 50.0  # one 400 Gb/s InfiniBand NIC per GPU


def efficiency(row: dict[str, Any], reference: dict[str, Any] | None) -> float | None:
    if not reference or "tokens_per_s_per_gpu" not in row or "tokens_per_s_per_gpu" not in reference:
        return None
    return row["tokens_per_s_per_gpu"] / reference["tokens_per_s_per_gpu"]


def goal(row: dict[str, Any]) -> float | None:
    return next((v for k, v in GOALS.items() if str(row.get("engine", "")).startswith(k)), None)


def ranks_agree(row: dict[str, Any]) -> bool | None:
    """Every rank ran the same number of steps and logged the same losses (all finite)."""
    losses, steps = row.get("rank_losses"), row.get("rank_steps")
    if not losses or len(losses) != row.get("gpus"):
        return None
    first = next(iter(losses.values()))
    finite = all(v == v and abs(v) != float("inf") for v in first)
    return finite and all(v == first for v in losses.values()) and len(set(steps.values())) == 1


def print_table(rows: list[dict[str, Any]]) -> None:
    reference = next((r for r in rows if r["case"] == "1gpu" and r.get("losses")), None)
    fmt = lambda v, f: "" if v is None else format(v, f)  # noqa: E731
    print("| case | GPUs | rc | step-1 loss | Δ vs 1 GPU | ranks agree | step s | tokens/s/GPU | audio s/s/GPU "
          "| per-GPU vs 1 GPU | goal | MFU | peak GiB | NCCL share | between steps |")  # fmt: skip
    print("|" + "---|" * 15)
    for r in rows:
        loss = (r.get("losses") or [None])[0]
        delta = loss - reference["losses"][0] if loss is not None and reference else None
        mfu, comm, stall = r.get("mfu"), r.get("profile", {}).get("comm_share"), r.get("stall_share")
        print(
            f"| {r['case']} | {r.get('gpus', '')} | {r['rc']} | {fmt(loss, '.4f')} | {fmt(delta, '+.4f')} | "
            f"{fmt(ranks_agree(r), '')} | {fmt(r.get('step_s_median'), '.3f')} | "
            f"{fmt(r.get('tokens_per_s_per_gpu'), '.0f')} | {fmt(r.get('audio_x_per_gpu'), '.0f')} | "
            f"{fmt(efficiency(r, reference), '.2f')} | {fmt(goal(r), '.2f')} | {fmt(mfu and 100 * mfu, '.1f')} | "
            f"{fmt(r.get('peak_mem_gib'), '.1f')} | {fmt(comm and 100 * comm, '.1f')} | "
            f"{fmt(stall and 100 * stall, '.1f')} |"
        )


def ring_cost(gpus: int) -> float:
    """Seconds per byte of a ring all-reduce / all-gather per GPU, relative: traffic 2(G-1)/G over the slowest link."""
    bandwidth = INTRA_NODE_GBPS if gpus <= GPUS_PER_NODE else INTER_NODE_GBPS
    return 2 * (gpus - 1) / gpus / bandwidth


def extrapolate(rows: list[dict[str, Any]], gpus: int = 64, hours: float = CORPUS_HOURS) -> list[dict[str, Any]]:
    """Hours to train one epoch of ``hours`` of audio on ``gpus`` GPUs, per multi-GPU case, from the one-GPU audio
    seconds per second and the case's per-GPU efficiency measured on N GPUs, two ways:

    - the measured efficiency holds (best case: what one node shows carries over);
    - network-bound (worst case): per unit of work a GPU spends 1/eff of the one-GPU time, of which C is communication:
      the profiled NCCL share of the step when the case was profiled, else all of the loss (1/eff - 1). C grows with
      the ring traffic per GPU, 2(G-1)/G, over the slowest link (NVLink inside a node, InfiniBand between nodes) and
      is assumed not to overlap compute."""
    reference = next((r for r in rows if r["case"] == "1gpu" and r.get("audio_x_per_gpu")), None)
    if reference is None:
        return []
    one_gpu_x = reference["audio_x_per_gpu"]
    out = [{"case": "1gpu", "gpus": 1, "efficiency": 1.0, "epoch_h_1gpu": hours / one_gpu_x}]
    for row in rows:
        eff = efficiency(row, reference)
        if eff is None or row.get("gpus", 1) < 2:
            continue
        measured = min(eff, 1.0)
        time_n = 1 / measured  # per unit of work, one GPU's time = 1
        share = row.get("profile", {}).get("comm_share")
        comm = share * time_n if share is not None else time_n - 1
        network = 1 / (time_n + comm * (ring_cost(gpus) / ring_cost(row["gpus"]) - 1))
        out.append({
            "case": row["case"], "measured_gpus": row["gpus"], "efficiency": eff, "gpus": gpus,
            "epoch_h": hours / (one_gpu_x * gpus * measured), "comm_from": "profile" if share is not None else "loss",
            "efficiency_network": network, "epoch_h_network": hours / (one_gpu_x * gpus * network),
        })  # fmt: skip
    return out


def print_extrapolation(estimates: list[dict[str, Any]], hours: float = CORPUS_HOURS) -> None:
    if not estimates:
        print("[dist] no extrapolation: the 1gpu case has no audio figures")
        return
    base = estimates[0]
    print(f"\nOne epoch of {hours:,.0f} h of audio: 1 GPU {base['epoch_h_1gpu']:,.1f} h "
          f"({hours / base['epoch_h_1gpu']:,.0f} audio s per s). Links: NVLink {INTRA_NODE_GBPS:.0f} GB/s, "
          f"InfiniBand {INTER_NODE_GBPS:.0f} GB/s per GPU, {GPUS_PER_NODE} GPUs per node.")  # fmt: skip
    print("| case | measured on | per-GPU efficiency | GPUs | epoch h (efficiency holds) | efficiency, network-bound "
          "| epoch h (network-bound) | communication from |")  # fmt: skip
    print("|" + "---|" * 8)
    for e in estimates[1:]:
        print(f"| {e['case']} | {e['measured_gpus']} | {e['efficiency']:.2f} | {e['gpus']} | {e['epoch_h']:.2f} | "
              f"{e['efficiency_network']:.2f} | {e['epoch_h_network']:.2f} | {e['comm_from']} |")  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="CPU, tiny checkpoint, gloo; DeepSpeed cases skipped")
    parser.add_argument("--gpus", type=int, default=None, help="GPUs of the multi-GPU cases (default: all; tiny 2)")
    parser.add_argument("--cases", default=DEFAULT_CASES, help=f"comma-separated, of: {', '.join(CASES)}")
    parser.add_argument("--recipe", default=os.environ.get("KIMI_BENCH_RECIPE", RECIPE), help="examples/ recipe")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per case (default 12, tiny 4)")
    parser.add_argument("--warmup", type=int, default=None, help="steps left out (default 4: compile; tiny 1)")
    parser.add_argument("--micro-batch", type=int, default=None, help="rows per GPU (default: the recipe's; tiny 1)")
    parser.add_argument("--compile", action="store_true", help="--tiny: compile the layers on the CPU too (slow)")
    parser.add_argument("--samples", type=int, default=None, help="clips (default: enough rows for every step)")
    parser.add_argument("--profile", default="", help="cases whose rank 0 profiles its last two steps")
    parser.add_argument("--profile-dir", default=None, help="default WORK/profiles")
    parser.add_argument("--timeout", type=int, default=540, help="seconds per case")
    parser.add_argument("--budget", type=int, default=0, help="skip remaining cases after this many seconds (0: no)")
    parser.add_argument("--work", default=os.environ.get("BENCH_WORK", "/tmp/kimi_bench"))
    parser.add_argument("--logs", default=None, help="folder for the per-case logs (default WORK/logs)")
    parser.add_argument("--prepare-only", action="store_true")
    parser.add_argument("--out", default=None, help="append one JSON line per case")
    parser.add_argument(
        "--report",
        "--extrapolate",
        nargs="+",
        metavar="JSONL",
        help="run nothing: the table and the 64-GPU estimate from saved --out files (concatenated)",
    )
    a = parser.parse_args(argv)
    if a.gpus is None:
        a.gpus = 2 if a.tiny else _device_count()
    a.steps = a.steps or (4 if a.tiny else 12)
    a.warmup = a.warmup if a.warmup is not None else (1 if a.tiny else 4)
    a.micro_batch = a.micro_batch or (1 if a.tiny else None)
    # ~7 clips of 5-15 s per packed 1,024-token row; 8 rows per GPU unless --micro-batch: no step wraps an epoch
    a.samples = a.samples or 8 * a.gpus * (a.micro_batch or 8) * a.steps
    a.work = os.path.abspath(a.work)
    a.logs = os.path.abspath(a.logs or os.path.join(a.work, "logs"))
    a.profile_dir = os.path.abspath(a.profile_dir or os.path.join(a.work, "profiles"))
    return a


def _device_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.device_count() > 1 else 2


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.report:
        rows = [json.loads(line) for path in a.report for line in Path(path).read_text().splitlines() if line.strip()]
        print_table(rows)
        print_extrapolation(extrapolate(rows))
        return 0
    names = [c for c in a.cases.split(",") if c]
    if unknown := [n for n in names if n not in CASES]:
        raise SystemExit(f"bench_dist: unknown case(s) {unknown}; known: {', '.join(CASES)}")
    os.makedirs(a.logs, exist_ok=True)
    started = time.perf_counter()
    paths = prepare(a)
    if a.prepare_only:
        return 0
    if a.tiny and importlib.util.find_spec("deepspeed") is None:
        names = [n for n in names if "ds" not in CASES[n]]  # no DeepSpeed here (its CPU accelerator runs on gloo)
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
    print_table(rows)
    print_extrapolation(extrapolate(rows))
    return 0 if all(r["rc"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
