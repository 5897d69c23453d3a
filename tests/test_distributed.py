"""Several processes: the stock ``FORCE_TORCHRUN=1 llamafactory-cli train`` with 2 CPU ranks (gloo) on the tiny
checkpoint, the integration active in every torchrun rank, and the DeepSpeed configs of ``examples/deepspeed``.

The GPU counterpart (DDP, ZeRO-2, ZeRO-3, full fine-tuning with ZeRO-3 on 2 × H200) is ``benchmarks/bench_dist.py``.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    from llamafactory_kimi_audio.data.convert import ConvertOptions, convert
    from llamafactory_kimi_audio.data.synth import synthesize_corpus

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


def test_lora_ddp_gloo_through_the_stock_launcher(dataset, tiny_checkpoint, tmp_path):
    output_dir = tmp_path / "lora_ddp"
    config = {
        "model_name_or_path": tiny_checkpoint.path,
        "trust_remote_code": True,
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "lora",
        "lora_target": "all",
        "dataset": "asr_train",
        "dataset_dir": str(dataset),
        "template": "kimi_audio",
        "cutoff_len": 256,
        "overwrite_cache": True,
        "preprocessing_num_workers": 1,
        "output_dir": str(output_dir),
        "overwrite_output_dir": True,
        "per_device_train_batch_size": 2,
        "learning_rate": 1.0e-3,
        "max_steps": 2,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "use_cpu": True,
        "ddp_backend": "gloo",
        "ddp_timeout": 1200,  # a rank may wait long for a starved peer on a busy machine
    }
    config_path = tmp_path / "lora_ddp.yaml"
    config_path.write_text(json.dumps(config))
    env = clean_env(FORCE_TORCHRUN="1", NPROC_PER_NODE="2")
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


@pytest.mark.parametrize("name", ["ds_z2_config.json", "ds_z3_config.json", "ds_z3_offload_config.json"])
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
