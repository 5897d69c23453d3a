"""The stock ``llamafactory-cli`` on a tiny Kimi-Audio checkpoint: train (LoRA / freeze / full), predict, export.

Every run is a fresh interpreter, so the integration comes from the start-up hook alone; the last test turns the hook
off and expects LLaMA-Factory's own "template does not exist" error. Runs are kept tiny (8 training utterances,
≤ 3 steps, CPU) and share one checkpoint, one dataset and one LoRA run.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
from pathlib import Path

import pytest
import torch
from lf_runs import (
    COMMON,
    check_ok,
    logged_losses,
    run_cli,
    run_cli_each,
    train_config,
    two_at_a_time,
)
from safetensors import safe_open

from llamafactory_kimi_audio import DISABLE_ENV

pytestmark = pytest.mark.slow

DECODER_PROJ = r"model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)"


# ------------------------------------------------------------------------------------------------------ helpers
def trainable_params(output: str) -> tuple[int, int]:
    match = re.search(r"trainable params: ([\d,]+) \|\| all params: ([\d,]+)", output)
    assert match, "no 'trainable params' line in the log"
    return int(match.group(1).replace(",", "")), int(match.group(2).replace(",", ""))


def safetensors_keys(directory: Path) -> dict[str, list[str]]:
    """file name -> tensor names, for single-file and sharded checkpoints."""
    index = directory / "model.safetensors.index.json"
    files = (
        sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else ["model.safetensors"]
    )
    out = {}
    for name in files:
        with safe_open(str(directory / name), "pt") as f:
            out[name] = list(f.keys())
    return out


# ----------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tiny_params(ckpt) -> dict[str, int]:
    from llamafactory_kimi_audio.models.modeling_kimi_audio import KimiAudioForCausalLM

    model = KimiAudioForCausalLM.from_pretrained(ckpt)
    return {name: param.numel() for name, param in model.named_parameters()}


@pytest.fixture(scope="module")
def train_runs(ckpt, dataset, workdir) -> dict[str, tuple[int, str]]:
    """The module's four training runs (LoRA, packed LoRA, freeze, full), each its own ``llamafactory-cli train``,
    two at a time; every output dir is ``workdir / <name>``."""
    configs = {
        "lora": train_config(ckpt, dataset, workdir / "lora", finetuning_type="lora", lora_target="all"),
        "packed": train_config(
            ckpt,
            dataset,
            workdir / "packed",
            finetuning_type="lora",
            packing=True,
            neat_packing=True,
            cutoff_len=512,
            per_device_train_batch_size=1,
            max_steps=2,
        ),
        "freeze": train_config(ckpt, dataset, workdir / "freeze", finetuning_type="freeze", max_steps=2),
        "full": train_config(
            ckpt, dataset, workdir / "full", finetuning_type="full", freeze_multi_modal_projector=False, max_steps=2
        ),
    }
    return run_cli_each("train", configs, workdir)


@pytest.fixture(scope="module")
def lora_run(train_runs, workdir) -> tuple[Path, str]:
    rc, output = train_runs["lora"]
    check_ok(rc, output)
    return workdir / "lora", output


# --------------------------------------------------------------------------------------------------------- train
def test_lora_train(lora_run, tiny_params):
    output_dir, output = lora_run
    logged_losses(output_dir)
    # quiet logs (issue 29): the checkpoint's configs agree with the tokenizer, and a CPU fp32 run of a kimi_audio
    # recipe is not told to enable mixed precision
    assert "The tokenizer has new PAD/BOS/EOS tokens" not in output
    assert "We recommend enable mixed precision training." not in output or torch.cuda.is_available()
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer_config.json", "tiktoken.model"):
        assert (output_dir / name).is_file(), name
    adapter_config = json.loads((output_dir / "adapter_config.json").read_text())
    assert adapter_config["peft_type"] == "LORA" and not adapter_config["modules_to_save"]
    targets = set(adapter_config["target_modules"])
    decoder_linears = {
        name.rsplit(".", 1)[0] for name in tiny_params if re.fullmatch(DECODER_PROJ + r"\.weight", name)
    }
    assert targets == decoder_linears  # all 7 projections of every decoder layer, nothing else
    with safe_open(str(output_dir / "adapter_model.safetensors"), "pt") as f:
        adapter = {key: f.get_slice(key).get_shape() for key in f.keys()}
    pattern = r"base_model\.model\." + DECODER_PROJ + r"\.lora_[AB]\.weight"
    assert adapter and all(re.fullmatch(pattern, key) for key in adapter), sorted(adapter)[:5]
    trainable, total = trainable_params(output)
    assert trainable == sum(math.prod(shape) for shape in adapter.values())
    assert total == sum(tiny_params.values()) + trainable


def test_packed_lora_train(train_runs, workdir):
    """``packing`` + ``neat_packing`` through the CLI: rows of several utterances train, the adapter is saved."""
    output_dir = workdir / "packed"
    check_ok(*train_runs["packed"])
    logged_losses(output_dir)
    assert (output_dir / "adapter_model.safetensors").is_file()


def test_freeze_train(train_runs, workdir, tiny_params):
    output_dir = workdir / "freeze"
    rc, output = train_runs["freeze"]
    check_ok(rc, output)
    logged_losses(output_dir)
    last_two = tuple(f"model.layers.{i}." for i in range(2, 4))  # freeze_trainable_layers defaults to 2 (of 4)
    expected = sum(n for name, n in tiny_params.items() if name.startswith(last_two))
    assert trainable_params(output) == (expected, sum(tiny_params.values()))


def test_full_train(train_runs, ckpt, workdir, tiny_params):
    output_dir = workdir / "full"
    rc, output = train_runs["full"]
    check_ok(rc, output)
    logged_losses(output_dir)
    frozen = ("whisper_encoder.", "model.mimo_layers.", "model.mimo_norm.", "mimo_output.")  # vq_adaptor trains here
    expected = sum(n for name, n in tiny_params.items() if not name.startswith(frozen))
    assert trainable_params(output) == (expected, sum(tiny_params.values()))
    # the saved model keeps the official auto_map and ships no copy of this package's sources
    config_json = json.loads((output_dir / "config.json").read_text())
    base_config = json.loads((Path(ckpt) / "config.json").read_text())
    assert config_json["auto_map"] == base_config["auto_map"]
    assert not list(output_dir.glob("*.py"))


# ------------------------------------------------------------------------------------------------------ predict
def test_predict_reports_cer_and_wer(ckpt, dataset, workdir, lora_run):
    output_dir = workdir / "predict"
    config = {
        **COMMON,
        "model_name_or_path": ckpt,
        "adapter_name_or_path": str(lora_run[0]),
        "finetuning_type": "lora",
        "do_predict": True,
        "predict_with_generate": True,
        "eval_dataset": "asr_test",
        "dataset_dir": str(dataset),
        "output_dir": str(output_dir),
        "per_device_eval_batch_size": 2,
        "max_new_tokens": 8,
    }
    rc, output = run_cli("train", config, workdir, "predict")
    check_ok(rc, output)
    assert "added do_sample: false" in output  # the recipe leaves do_sample out: greedy, said in one line
    assert "generation flags are not valid" not in output  # no sampling settings passed to greedy decoding
    for name in ("predict_results.json", "all_results.json"):
        metrics = json.loads((output_dir / name).read_text())
        assert "predict_cer" in metrics and "predict_wer" in metrics, metrics
        assert all(math.isfinite(metrics[key]) for key in ("predict_cer", "predict_wer"))
        assert not [key for key in metrics if "bleu" in key or "rouge" in key], metrics
    rows = [json.loads(line) for line in (output_dir / "generated_predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all({"prompt", "predict", "label"} <= set(row) for row in rows)
    expected = sorted(item["messages"][1]["content"] for item in json.loads((dataset / "asr_test.json").read_text()))
    assert sorted(row["label"] for row in rows) == expected


# ------------------------------------------------------------------------------------------------------- export
WRONG_EXPORT_PATHS = ("model", "adapter", "adapter_without_config")


@pytest.fixture(scope="module")
def export_runs(ckpt, workdir, lora_run) -> dict[str, tuple[int, str]]:
    """name -> (exit code, log) of ``llamafactory-cli export`` of the LoRA run, two runs at a time: ``export`` as the
    README's kimi_merge.yaml, ``export_<wrong>`` with that path wrong (WRONG_EXPORT_PATHS)."""
    configs = {}
    for wrong in (None, *WRONG_EXPORT_PATHS):
        name = f"export_{wrong}" if wrong else "export"
        config = {
            "model_name_or_path": "models/Kimi-Audio-7B-Instruct" if wrong == "model" else ckpt,
            "adapter_name_or_path": str(lora_run[0]),
            "template": "kimi_audio",
            "finetuning_type": "lora",
            "trust_remote_code": True,
            "export_dir": str(workdir / name),
        }
        if wrong == "adapter":
            config["adapter_name_or_path"] = "./saves/kimi-audio-lora"
        if wrong == "adapter_without_config":
            config["adapter_name_or_path"] = ckpt  # the base model folder: no adapter_config.json
        configs[name] = config
    return run_cli_each("export", configs, workdir)


@pytest.fixture(scope="module")
def exported(export_runs, workdir) -> Path:
    check_ok(*export_runs["export"])
    return workdir / "export"


@pytest.mark.parametrize("wrong", WRONG_EXPORT_PATHS)
def test_export_with_a_wrong_path_ends_with_one_line(ckpt, workdir, export_runs, wrong):
    """The README's kimi_merge.yaml run from another directory, or pointed at a folder that is no LoRA output."""
    rc, output = export_runs[f"export_{wrong}"]
    assert rc == 3 and "Traceback" not in output, output[-3000:]
    last = output.strip().splitlines()[-1]
    expected = {
        "model": "model_name_or_path models/Kimi-Audio-7B-Instruct: ",
        "adapter": f"adapter_name_or_path ./saves/kimi-audio-lora: no such directory (no folder {workdir}/saves/",
        "adapter_without_config": f"adapter_name_or_path {ckpt}: no adapter_config.json there; set adapter_name",
    }[wrong]
    assert last.startswith("llamafactory-cli: ") and expected in last, last
    assert not (workdir / f"export_{wrong}").exists()


@pytest.fixture(scope="module")
def refused_runs(ckpt, dataset, workdir) -> dict[str, tuple[int, str]]:
    """Two runs that stop before any work, side by side: the README's api.yaml from another directory
    (``api_elsewhere``) and a LoRA recipe with the hook off (``disabled``, see ``opt_out_recipe``)."""
    api = {"model_name_or_path": "saves/kimi-audio-merged", "template": "kimi_audio", "trust_remote_code": True}
    jobs = {
        "api_elsewhere": ("api", api, {"API_PORT": "0"}),
        "disabled": ("train", opt_out_recipe(ckpt, dataset, workdir), {DISABLE_ENV: "1"}),
    }
    runs = two_at_a_time(lambda name: run_cli(jobs[name][0], jobs[name][1], workdir, name, jobs[name][2]), jobs)
    return dict(zip(jobs, runs))


def test_api_with_a_relative_model_path_from_elsewhere_ends_with_one_line(workdir, refused_runs):
    """The README's api.yaml (model_name_or_path: saves/kimi-audio-merged) started from another directory."""
    rc, output = refused_runs["api_elsewhere"]
    assert rc == 3 and "Traceback" not in output, output[-3000:]
    last = output.strip().splitlines()[-1]
    assert last.startswith("llamafactory-cli: model_name_or_path saves/kimi-audio-merged: "), last
    assert f"no folder {workdir / 'saves/kimi-audio-merged'}" in last, last


def test_export_has_the_official_layout(exported, ckpt):
    config = json.loads((exported / "config.json").read_text())
    base_config = json.loads((Path(ckpt) / "config.json").read_text())
    assert config["model_type"] == "moonshot_kimia"
    assert config["architectures"] == ["MoonshotKimiaForCausalLM"]
    assert config["auto_map"] == base_config["auto_map"]
    assert not list(exported.glob("*.py")), "the export must not carry copies of this package's modules"
    keys = [key for names in safetensors_keys(exported).values() for key in names]
    assert "mimo_output.weight" in keys and "lm_head.weight" in keys
    assert not [key for key in keys if "lora_" in key or key.startswith(("base_model.", "whisper_encoder."))]
    with safe_open(str(exported / "whisper-large-v3" / "model.safetensors"), "pt") as f:
        whisper_keys = list(f.keys())
        with safe_open(str(Path(ckpt) / "whisper-large-v3" / "model.safetensors"), "pt") as base:
            for key in whisper_keys:
                torch.testing.assert_close(f.get_tensor(key), base.get_tensor(key))
    assert whisper_keys and all(key.startswith("model.encoder.") for key in whisper_keys)
    for name in ("tiktoken.model", "tokenizer_config.json", "whisper-large-v3/preprocessor_config.json"):
        assert (exported / name).is_file(), name
    assert (exported / "glm-4-voice-tokenizer" / "model.safetensors").is_file()
    tokenizer_config = json.loads((exported / "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] == "TikTokenTokenizer"


def test_export_reloads_with_the_merged_weights(exported, ckpt, lora_run, dataset):
    from peft import PeftModel

    from llamafactory_kimi_audio.fileio.audio import load_audio
    from llamafactory_kimi_audio.models.modeling_kimi_audio import KimiAudioForCausalLM
    from llamafactory_kimi_audio.models.processing_kimi_audio import KimiAudioProcessor

    sample = json.loads((dataset / "asr_test.json").read_text())[0]
    audio = os.path.join(str(dataset), sample["audios"][0])
    processor = KimiAudioProcessor.from_pretrained(str(exported))
    batch = processor.asr_inputs([load_audio(audio)], ["Please transcribe the spoken content into written text."])
    with torch.no_grad():
        reloaded = KimiAudioForCausalLM.from_pretrained(str(exported)).eval()
        base = KimiAudioForCausalLM.from_pretrained(ckpt).eval()
        base_logits = base(**batch).logits
        merged = PeftModel.from_pretrained(base, str(lora_run[0])).merge_and_unload().eval()
        expected = merged(**batch).logits
        got = reloaded(**batch).logits
    assert not torch.allclose(base_logits, expected), "the LoRA adapter changed nothing"
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def plain_reloads(exported, workdir) -> dict[bool, subprocess.CompletedProcess]:
    """trust_remote_code -> the fresh interpreter of ``native_reload`` on the export; the two side by side."""
    from native_reload import start_child

    trusts = (False, True)
    runs = two_at_a_time(lambda trust: start_child(str(exported), workdir / f"resaved_{trust}", trust), trusts)
    return dict(zip(trusts, runs))


@pytest.mark.parametrize("trust", [False, True])
def test_export_reloads_in_plain_transformers(plain_reloads, trust):
    """README "Use from Python": a fresh interpreter without LLaMA-Factory loads the exported directory through
    ``use_native_auto_classes()`` (with and without trust_remote_code), runs it, saves it and loads it again."""
    from native_reload import child_output

    out, stderr = child_output(plain_reloads[trust])
    assert out["classes"] == [
        "KimiAudioConfig",
        "KimiAudioForCausalLM",
        "KimiAudioTokenizer",
        "KimiAudioProcessor",
        "KimiAudioForCausalLM",
    ]
    assert out["same_logits"] and out["remote_code"] == [] and not out["llamafactory"]
    assert "model_type" not in stderr


# ------------------------------------------------------------------------------------------------------ opt-out
REMOTE_TOKENIZER = '''"""Stand-in for the Hub's tokenization_kimia.py (real checkpoints ship it, tiny ones do not)."""
from llamafactory_kimi_audio.models.tokenization_kimi_audio import KimiAudioTokenizer as TikTokenTokenizer  # noqa
'''


def opt_out_recipe(ckpt: str, dataset: Path, workdir: Path) -> dict:
    """The LoRA recipe on the tiny checkpoint plus the remote tokenizer file the real one has."""
    remote = workdir / "tiny_remote_code"
    remote.mkdir()
    for item in Path(ckpt).iterdir():
        (remote / item.name).symlink_to(item)
    (remote / "tokenization_kimia.py").write_text(REMOTE_TOKENIZER)
    return train_config(str(remote), dataset, workdir / "disabled", finetuning_type="lora", lora_target="all")


def test_opt_out_leaves_stock_llamafactory(workdir, refused_runs):
    """With the hook off, the same recipe fails in stock LLaMA-Factory (the template comes from the hook); the only
    hook left names the opt-out variable instead of that traceback."""
    rc, output = refused_runs["disabled"]
    assert rc == 4, output[-4000:]
    assert "Traceback" not in output, output[-4000:]
    last = output.strip().splitlines()[-1]
    assert last.startswith("llamafactory-cli: ") and f"{DISABLE_ENV}=1" in last and f"unset {DISABLE_ENV}" in last
    assert not (workdir / "disabled" / "trainer_state.json").exists()
