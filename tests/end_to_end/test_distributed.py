"""Several processes: the stock ``FORCE_TORCHRUN=1 llamafactory-cli train`` with 2 CPU ranks (gloo) on the tiny
checkpoint, the integration active in every torchrun rank, the DeepSpeed configs of ``examples/deepspeed`` (resolved
always; trained on 2 CPU ranks where DeepSpeed is installed), two nodes (``NNODES=2``, two launches on this host) for
training and precompute, and the 64-GPU extrapolation of ``benchmarks/bench_dist.py``.

The GPU counterpart (DDP, ZeRO-2, ZeRO-3, offload on N × H200) is ``benchmarks/bench_dist.py``.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from lf_runs import free_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# Generous on purpose: the DDP run needs ~25 s on 2 idle cores but several minutes on a loaded machine; the timeout
# only stops a hang, it never measures speed.
TIMEOUT = 1200
RANK_PROBE = """
import json, os, sys
import llamafactory.data.template as template
import llamafactory.model.loader  # noqa: F401  (hooks run on these imports)
import llamafactory.model.model_utils.visual as visual
from llamafactory_kimi_audio import _startup
out = {
    "rank": int(os.environ["RANK"]),
    "world": int(os.environ["WORLD_SIZE"]),
    "applied": sorted(_startup.applied_hooks()),
    "failed": _startup.failed_hooks(),
    "template": "kimi_audio" in template.TEMPLATES,
    "composite": "moonshot_kimia" in visual.COMPOSITE_MODELS,
}
with open(os.path.join(sys.argv[1], "rank%d.json" % out["rank"]), "w") as f:
    json.dump(out, f)
"""


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KIMI_AUDIO_", "LLAMAFACTORY_KIMI_AUDIO_"))}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    env.update(
        HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(free_port()), PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **extra,
    )  # fmt: skip
    return env


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    from llamafactory_kimi_audio.data.convert.converter import ConvertOptions, convert
    from llamafactory_kimi_audio.data.synth.corpus import synthesize_corpus

    root = tmp_path_factory.mktemp("dist_data")
    corpus = synthesize_corpus(str(root / "corpus"), n_train=8, n_test=0, backend="tones")
    convert(corpus.train_csv, str(root / "data"), ConvertOptions(name="asr_train", lang="en", progress=False))
    return root / "data"


def test_every_torchrun_rank_has_the_integration(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(RANK_PROBE)
    cmd = [
        str(BIN / "torchrun"),
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
        str(probe),
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, env=clean_env(), capture_output=True, text=True, timeout=TIMEOUT, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    from llamafactory_kimi_audio.integration.hooks import ALL_HOOKS  # noqa: F401

    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for info in ranks:
        assert info["world"] == 2 and info["failed"] == {}, info
        assert info["template"] and info["composite"], info
        # every hook whose module the probe imported ran in this rank
        for hook in ("kimi_audio_loader", "kimi_audio_template", "kimi_audio_composite", "kimi_audio_plugin"):
            assert hook in info["applied"], (hook, info)


def gloo_lora_config(checkpoint: str, dataset: Path, output_dir: Path, steps: int, **extra) -> dict:
    """A tiny LoRA run on the CPU over gloo: what the DDP and two-node launches train."""
    return {
        "model_name_or_path": checkpoint,
        "trust_remote_code": True,
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "lora",
        "lora_target": "all",
        "dataset": "asr_train",
        "dataset_dir": str(dataset),
        "template": "kimi_audio",
        "cutoff_len": 256,
        "preprocessing_num_workers": 1,
        "output_dir": str(output_dir),
        "overwrite_output_dir": True,
        "per_device_train_batch_size": 2,
        "learning_rate": 1.0e-3,
        "max_steps": steps,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "use_cpu": True,
        "ddp_backend": "gloo",
        "ddp_timeout": 1200,  # a rank may wait long for a starved peer on a busy machine
        **extra,
    }


@pytest.mark.parametrize("fp8", [False, True], ids=["bf16", "fp8_emulated"])
def test_lora_ddp_gloo_through_the_stock_launcher(dataset, tiny_checkpoint, tmp_path, fp8):
    """Two ranks; with ``fp8: true`` (FP8 math emulated on the CPU) the decoder is converted before DDP wraps the
    model, with the FP8 layers' bf16 weights left out of DDP's parameter sync by name."""
    output_dir = tmp_path / "lora_ddp"
    extra = {"fp8": True} if fp8 else {}
    config = gloo_lora_config(tiny_checkpoint.path, dataset, output_dir, 2, overwrite_cache=True, **extra)
    config_path = tmp_path / "lora_ddp.yaml"
    config_path.write_text(json.dumps(config))
    env = clean_env(FORCE_TORCHRUN="1", NPROC_PER_NODE="2", **({"KIMI_AUDIO_FP8_EMULATE": "1"} if fp8 else {}))
    proc = subprocess.run(
        [str(BIN / "llamafactory-cli"), "train", str(config_path)],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=TIMEOUT,
    )  # fmt: skip
    (tmp_path / "lora_ddp.log").write_text(proc.stdout)
    assert proc.returncode == 0, proc.stdout[-6000:]
    out = proc.stdout
    # LLaMA-Factory logs one line per rank; both are distributed ranks of a world of 2
    ranks = set(
        re.findall(r"Process rank: (\d+), world size: 2, device: cpu(?::\d+)?, distributed training: True", out)
    )
    assert ranks == {"0", "1"}, out[-4000:]
    assert "find_unused_parameters" not in out.replace("Set `ddp_find_unused_parameters` to False", "")
    state = json.loads((output_dir / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    assert (output_dir / "adapter_model.safetensors").is_file()
    converted = re.findall(r"fp8: (\d+) frozen decoder Linear layers run FP8 GEMMs", out)
    assert len(converted) == (1 if fp8 else 0) and all(int(n) > 0 for n in converted), out[-4000:]


def sft_config(tiny_checkpoint, dataset: Path, output_dir: Path, **extra) -> dict:
    """Two logged LoRA steps on the tiny checkpoint, unshuffled: every launch sees the same samples at step 1."""
    config = {
        "model_name_or_path": tiny_checkpoint.path, "trust_remote_code": True, "stage": "sft", "do_train": True,
        "finetuning_type": "lora", "lora_target": "all", "dataset": "asr_train", "dataset_dir": str(dataset),
        "template": "kimi_audio", "cutoff_len": 256, "preprocessing_num_workers": 1, "output_dir": str(output_dir),
        "overwrite_output_dir": True, "per_device_train_batch_size": 2, "learning_rate": 1.0e-3,
        "lr_scheduler_type": "constant", "max_steps": 2, "logging_steps": 1, "save_strategy": "no",
        "report_to": "none", "disable_shuffling": True, "seed": 0, "bf16": False, "ddp_timeout": 1200,
    }  # fmt: skip
    config.update(extra)
    return config


def train_losses(config: dict, env: dict[str, str], tmp_path: Path, name: str) -> list[float]:
    path = tmp_path / f"{name}.yaml"
    path.write_text(json.dumps(config))
    proc = subprocess.run([str(BIN / "llamafactory-cli"), "train", str(path)], env=env, cwd=tmp_path,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=TIMEOUT)  # fmt: skip
    (tmp_path / f"{name}.log").write_text(proc.stdout)
    assert proc.returncode == 0, proc.stdout[-6000:]
    state = json.loads((Path(config["output_dir"]) / "trainer_state.json").read_text())
    return [e["loss"] for e in state["log_history"] if "loss" in e]


@pytest.fixture(scope="module")
def one_process_losses(dataset, tiny_checkpoint, tmp_path_factory) -> list[float]:
    """The reference: one process accumulating the two micro-batches that two ranks take in one step."""
    tmp = tmp_path_factory.mktemp("one_process")
    config = sft_config(tiny_checkpoint, dataset, tmp / "out", use_cpu=True, gradient_accumulation_steps=2)
    return train_losses(config, clean_env(), tmp, "one_process")


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="DeepSpeed is not installed (optional)")
@pytest.mark.parametrize("name", ["ds_z2_overlap_config.json", "ds_z3_config.json", "ds_z3_lora_config.json"])
def test_zero_on_two_cpu_ranks_matches_one_process(name, dataset, tiny_checkpoint, one_process_losses, tmp_path):
    """The shipped DeepSpeed configs train through the stock launcher on 2 CPU ranks (DeepSpeed's CPU accelerator,
    gloo) with the step-1 loss of one process; runs where DeepSpeed is installed (optional, not a dependency)."""
    # no use_cpu: accelerate then initialises deepspeed.comm (gloo) before ZeRO-3's zero.Init reads the world size
    deepspeed = str(REPO / "examples" / "deepspeed" / name)
    config = sft_config(tiny_checkpoint, dataset, tmp_path / "out", deepspeed=deepspeed, ddp_backend="gloo")
    env = clean_env(FORCE_TORCHRUN="1", NPROC_PER_NODE="2", DS_ACCELERATOR="cpu", CUDA_VISIBLE_DEVICES="")
    losses = train_losses(config, env, tmp_path, name)
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses), losses
    assert losses[0] == pytest.approx(one_process_losses[0], rel=1e-5), (losses, one_process_losses)


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "examples" / "deepspeed").glob("*.json")))
def test_deepspeed_configs_load(name):
    """Each config parses, has the keys the HF Trainer fills ('auto') and resolves against real training arguments."""
    import torch
    from accelerate.utils.deepspeed import HfDeepSpeedConfig
    from transformers import TrainingArguments
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    class Resolver(HfDeepSpeedConfig):
        """The Trainer's "auto" resolution (HfTrainerDeepSpeedConfig's methods) on accelerate's parser: needs no
        DeepSpeed installation and leaves no global ZeRO-3 flag behind."""

        def __init__(self, config):
            super().__init__(config)
            self._dtype, self.mismatches = None, []

    for method in ("dtype", "is_auto", "fill_match", "fill_only", "trainer_config_process", "trainer_config_finalize"):
        setattr(Resolver, method, HfTrainerDeepSpeedConfig.__dict__[method])

    path = REPO / "examples" / "deepspeed" / name
    raw = json.loads(path.read_text())
    zero = raw["zero_optimization"]
    assert zero["stage"] in (2, 3)
    for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps"):
        assert raw[key] == "auto", key
    assert raw["bf16"]["enabled"] == "auto" and raw["fp16"]["enabled"] == "auto"
    assert raw.get("zero_allow_untested_optimizer") is True  # the Trainer's own AdamW is handed to DeepSpeed
    if "offload" in name:
        assert zero["offload_optimizer"]["device"] == "cpu" and zero["offload_param"]["device"] == "cpu"

    hf_config = Resolver(str(path))
    args = TrainingArguments(
        output_dir="unused", per_device_train_batch_size=4, gradient_accumulation_steps=2, bf16=False,
        use_cpu=True, report_to="none",
    )  # fmt: skip
    hf_config.trainer_config_process(args)
    model = torch.nn.Linear(8, 8)
    model.config = type("Config", (), {"hidden_size": 64, "hidden_sizes": None})()
    hf_config.trainer_config_finalize(args, model, num_training_steps=10)
    resolved = hf_config.config
    assert resolved["train_micro_batch_size_per_gpu"] == 4 and resolved["gradient_accumulation_steps"] == 2
    assert "auto" not in json.dumps(resolved), resolved
    assert hf_config.is_zero3() == (zero["stage"] == 3)


# ------------------------------------------------------------------------------------------------------ two nodes
def launch_two_nodes(node: Callable[[int], tuple[list[str], dict[str, str]]], cwd: Path, name: str) -> list[str]:
    """The two nodes' commands (``node(k)``: command and environment of node k; here both on this host) started
    together; returns both logs after both exited 0."""
    procs, logs = [], []
    for rank in (0, 1):
        command, env = node(rank)
        log = open(cwd / f"{name}_node{rank}.log", "w+", encoding="utf-8")  # noqa: SIM115 (closed below)
        procs.append(subprocess.Popen(command, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT))
        logs.append(log)
    texts = []
    try:
        for proc in procs:
            proc.wait(timeout=TIMEOUT)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        for log in logs:
            log.seek(0)
            texts.append(log.read())
            log.close()
    for rank, (proc, text) in enumerate(zip(procs, texts)):
        assert proc.returncode == 0, f"node {rank}:\n{text[-6000:]}"
    return texts


def two_node_env(**extra: str) -> dict[str, str]:
    """One launch's environment for both nodes: NPROC_PER_NODE=1, one rendezvous port, the shared HF caches."""
    return clean_env(NPROC_PER_NODE="1", **extra)


def test_two_nodes_train_through_the_stock_launcher(dataset, tiny_checkpoint, tmp_path):
    """``FORCE_TORCHRUN=1 NNODES=2 NODE_RANK=k llamafactory-cli train``: LLaMA-Factory's launcher turns these into
    ``torchrun --nnodes 2 --node_rank k --master_addr --master_port``; both nodes join one world of 2 and train the
    same steps with the same (finite) losses."""
    hooks, timing = tmp_path / "hooks", tmp_path / "timing"
    timing.mkdir()
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "common.py"), "install-hooks", str(hooks)], check=True)
    # one file system for both nodes: global rank 0 preprocesses first
    config = gloo_lora_config(tiny_checkpoint.path, dataset, tmp_path / "out", 3, data_shared_file_system=True)
    config_path = tmp_path / "two_nodes.yaml"
    config_path.write_text(json.dumps(config))
    env = two_node_env(
        FORCE_TORCHRUN="1", KIMI_BENCH_TIMING_DIR=str(timing), HF_DATASETS_CACHE=str(tmp_path / "hf_datasets"),
        PYTHONPATH=os.pathsep.join([str(hooks), os.environ.get("PYTHONPATH", "")]),
    )  # fmt: skip
    command = [str(BIN / "llamafactory-cli"), "train", str(config_path)]
    logs = launch_two_nodes(lambda k: (command, dict(env, NNODES="2", NODE_RANK=str(k))), tmp_path, "train")
    assert "Multi-node training enabled: num nodes: 2" in logs[0], logs[0][-3000:]
    for node, text in enumerate(logs):  # node k's only process is global rank k of a world of 2
        assert re.search(rf"Process rank: {node}, world size: 2, device: cpu(?::\d+)?, distributed", text), text[
            -3000:
        ]
    records = [json.loads((timing / f"rank{r}.json").read_text()) for r in range(2)]
    assert [(r["rank"], r["world"], r["node_rank"]) for r in records] == [(0, 2, 0), (1, 2, 1)]
    assert [len(r["steps"]) for r in records] == [3, 3]
    losses = records[0]["losses"]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses), losses
    assert records[1]["losses"] == losses
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    assert [e["loss"] for e in state["log_history"] if "loss" in e] == losses
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()  # written once, by global rank 0


def _cache_entries(root: Path, model: str, audios: list[str]) -> dict[str, tuple]:
    from llamafactory_kimi_audio.data.features.cache_format import clip_key
    from llamafactory_kimi_audio.data.features.feature_cache import FeatureCache, encoder_identity

    cache = FeatureCache(str(root), encoder_identity(model))
    assert len(cache.index) == len(audios), root
    return {a: cache.read(cache.find(clip_key(a)), a) for a in audios}


def test_two_nodes_precompute_equals_one_process(dataset, tiny_checkpoint, tmp_path):
    """``torchrun --nnodes 2 --node_rank k ... -m llamafactory_kimi_audio.cli precompute`` into one cache on a shared
    file system: each node writes its own shard, and together they hold exactly the one-process entries."""
    import torch

    model = tiny_checkpoint.path
    source = ["--dataset-dir", str(dataset), "--dataset", "asr_train", "--device", "cpu", "--no-progress"]
    cli = [str(BIN / "kimi-audio-lf"), "precompute", "--model", model, *source]
    one = subprocess.run([*cli, "--cache", str(tmp_path / "one")], env=clean_env(), capture_output=True, text=True,
                         timeout=TIMEOUT)  # fmt: skip
    assert one.returncode == 0, one.stdout[-3000:] + one.stderr[-3000:]
    env = two_node_env()
    launcher = [
        str(BIN / "torchrun"), "--nnodes", "2", "--nproc_per_node", "1", "--master_addr", env["MASTER_ADDR"],
        "--master_port", env["MASTER_PORT"], "-m", "llamafactory_kimi_audio.cli",
    ]  # fmt: skip
    command = [*launcher, "precompute", "--model", model, *source, "--cache", str(tmp_path / "two")]
    logs = launch_two_nodes(lambda k: ([*command[:3], "--node_rank", str(k), *command[3:]], env), tmp_path, "pre")
    assert "shard 0/2: " in logs[0] and "shard 1/2: " in logs[1], logs
    from llamafactory_kimi_audio.data.features.feature_cache import encoder_identity

    shards = sorted((tmp_path / "two" / encoder_identity(model) / "shards").glob("*.bin"))
    assert len(shards) == 2  # one writer per node
    from llamafactory_kimi_audio.data.features.dataset_audio import collect_audio_paths, dataset_files

    audios = collect_audio_paths(dataset_files(str(dataset), ["asr_train"], None)).paths
    assert len(audios) == 8
    first, second = _cache_entries(tmp_path / "one", model, audios), _cache_entries(tmp_path / "two", model, audios)
    for audio in audios:
        (codes_a, rows_a), (codes_b, rows_b) = first[audio], second[audio]
        assert torch.equal(codes_a, codes_b) and torch.equal(rows_a, rows_b), audio


# ----------------------------------------------------------------------------------------- 64-GPU extrapolation
def _bench_dist():
    sys.path.insert(0, str(REPO / "benchmarks"))
    spec = importlib.util.spec_from_file_location("bench_dist_under_test", REPO / "benchmarks" / "bench_dist.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_extrapolation_to_64_gpus_from_measured_figures(tmp_path):
    """``bench_dist.py --report`` on rows shaped as a run writes them: epoch hours follow from the one-GPU audio
    rate and each case's efficiency; the network-bound estimate never beats the measured efficiency."""
    bench = _bench_dist()
    one = {"case": "1gpu", "gpus": 1, "rc": 0, "tokens_per_s_per_gpu": 1000.0, "audio_x_per_gpu": 500.0}
    rows = [one, {"case": "ddp", "gpus": 2, "rc": 0, "tokens_per_s_per_gpu": 900.0, "audio_x_per_gpu": 450.0},
            {"case": "z3", "gpus": 8, "rc": 0, "tokens_per_s_per_gpu": 500.0, "audio_x_per_gpu": 250.0},
            {"case": "z2", "gpus": 2, "rc": 1}]  # fmt: skip
    estimates = bench.extrapolate(rows, gpus=64, hours=10_000)
    assert [e["case"] for e in estimates] == ["1gpu", "ddp", "z3"]  # a failed case has no figures
    assert estimates[0]["epoch_h_1gpu"] * 3600 * 500.0 == pytest.approx(10_000 * 3600)
    for estimate, row in zip(estimates[1:], rows[1:3]):
        eff = row["tokens_per_s_per_gpu"] / one["tokens_per_s_per_gpu"]
        assert estimate["efficiency"] == pytest.approx(eff)
        assert estimate["epoch_h"] * 64 * eff == pytest.approx(estimates[0]["epoch_h_1gpu"])
        assert estimate["efficiency_network"] < eff and estimate["epoch_h_network"] > estimate["epoch_h"]
    # more inter-node traffic per GPU than NVLink: the 2-GPU case's overhead grows more than the 8-GPU case's
    ddp, z3 = estimates[1:]
    assert (1 / ddp["efficiency_network"] - 1) / (1 / 0.9 - 1) > (1 / z3["efficiency_network"] - 1) / (1 / 0.5 - 1)
    perfect = bench.extrapolate([one, dict(rows[1], tokens_per_s_per_gpu=1000.0)])
    assert perfect[1]["efficiency_network"] == 1.0
    # profiled: only the NCCL share of the step grows with the network, not all of the loss
    profiled = bench.extrapolate([one, dict(rows[2], profile={"comm_share": 0.1})])[1]
    assert profiled["comm_from"] == "profile" and z3["comm_from"] == "loss"
    assert z3["efficiency_network"] < profiled["efficiency_network"] < z3["efficiency"]
    jsonl = tmp_path / "dist.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_dist.py"), "--report", str(jsonl)],
                          capture_output=True, text=True, timeout=TIMEOUT, env=clean_env())  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"| ddp | 2 | 0.90 | 64 | {estimates[1]['epoch_h']:.2f} |" in proc.stdout, proc.stdout
