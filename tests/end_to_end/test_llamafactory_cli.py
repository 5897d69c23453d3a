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
    make_asr_dataset,
    run_cli,
    run_cli_each,
    train_config,
    two_at_a_time,
    variant_dataset,
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
def ckpt(tiny_checkpoint) -> str:
    return tiny_checkpoint.path


@pytest.fixture(scope="module")
def tiny_params(ckpt) -> dict[str, int]:
    from llamafactory_kimi_audio.models.modeling_kimi_audio import KimiAudioForCausalLM

    model = KimiAudioForCausalLM.from_pretrained(ckpt)
    return {name: param.numel() for name, param in model.named_parameters()}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("lf_cli")


@pytest.fixture(scope="module")
def dataset(workdir) -> Path:
    return make_asr_dataset(workdir)


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


def broken_audio_dataset(dataset: Path) -> str:
    """``asr_train`` with its first audio replaced by a corrupt WAV file, as a new dataset_info.json entry."""
    broken = dataset / "broken.wav"
    broken.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    records = json.loads((dataset / "asr_train.json").read_text(encoding="utf-8"))
    records[0]["audios"] = [str(broken)]
    (dataset / "asr_broken.json").write_text(json.dumps(records), encoding="utf-8")
    info = json.loads((dataset / "dataset_info.json").read_text(encoding="utf-8"))
    info["asr_broken"] = {**info["asr_train"], "file_name": "asr_broken.json"}
    (dataset / "dataset_info.json").write_text(json.dumps(info), encoding="utf-8")
    return str(broken)


def truncated_flac(dataset: Path) -> str:
    """A FLAC file whose header is intact (the placeholder count is read from it) but whose frames are cut off: it
    fails only when decoded, i.e. in the collator, inside a DataLoader worker when dataloader_num_workers > 0."""
    import numpy as np
    import soundfile as sf

    path = dataset / "truncated.flac"
    sf.write(str(path), (np.random.default_rng(0).standard_normal(16000) * 0.1).astype(np.float32), 16000)
    path.write_bytes(path.read_bytes()[:200])
    return str(path)


def truncated_wav(dataset: Path) -> str:
    """A copy of the first training WAV with half of its samples cut off; the header still declares all of them."""
    import soundfile as sf

    records = json.loads((dataset / "asr_train.json").read_text(encoding="utf-8"))
    source = Path(records[0]["audios"][0])
    source = source if source.is_absolute() else dataset / source
    raw = source.read_bytes()
    start = raw.index(b"data") + 8  # the samples follow the data chunk's id and its size
    frames = sf.info(str(source)).frames
    frame_bytes = int.from_bytes(raw[start - 4 : start], "little") // frames
    path = dataset / "truncated.wav"
    path.write_bytes(raw[: start + frames // 2 * frame_bytes])
    return str(path)


def bad_input_case(problem: str, ckpt: str, dataset: Path, workdir: Path) -> tuple[dict, int, list[str]]:
    """(recipe overrides, exit code, parts of the one line) for each bad input."""
    if problem == "broken_audio":
        return {"dataset": "asr_broken"}, 2, [broken_audio_dataset(dataset), "re-encode it"]
    if problem == "cutoff_cuts_audio":
        return {"cutoff_len": 12}, 2, ["cutoff_len=12 cuts its audio", "raise cutoff_len"]
    if problem == "streaming_dispatches_batches":
        overrides = {"streaming": True, "accelerator_config": {"dispatch_batches": True}}
        return overrides, 2, ["dispatch_batches: true", "set accelerator_config: {dispatch_batches: false}"]
    if problem == "placeholders":
        variant_dataset(dataset, "asr_placeholders", lambda row: row["messages"][0].update(content="<audio><audio>"))
        return {"dataset": "asr_placeholders"}, 2, ["2 <audio> placeholder(s) but 1 audio file(s)", "exactly one"]
    if problem == "truncated_wav":
        path = truncated_wav(dataset)
        variant_dataset(dataset, "asr_truncated_wav", lambda row: row.update(audios=[path]))
        return {"dataset": "asr_truncated_wav"}, 2, [f"{path}: truncated audio", "declares"]
    if problem == "worker_error":
        path = truncated_flac(dataset)
        variant_dataset(dataset, "asr_truncated", lambda row: row.update(audios=[path]))
        return {"dataset": "asr_truncated", "dataloader_num_workers": 2}, 2, [path, "re-encode it"]
    if problem in STOCK_LAYER_PROBLEMS:
        return stock_layer_case(problem, ckpt, dataset, workdir)
    if problem == "wrong_model_path":
        missing = str(workdir / "no_such_model")
        return {"model_name_or_path": missing}, 3, [missing, "no such directory", "model_name_or_path"]
    if problem == "unknown_hub_id":  # HF_HUB_OFFLINE=1 in run_cli: the hub client cannot find it
        return {"model_name_or_path": "moonshotai/no-such-kimi"}, 3, ["moonshotai/no-such-kimi", "model_name_or_path"]
    if problem == "relative_model_path_elsewhere":  # the README's models/Kimi-Audio-7B-Instruct, run from another cwd
        relative = "models/Kimi-Audio-7B-Instruct"
        return {"model_name_or_path": relative}, 3, [relative, f"no folder {workdir / relative}", "runs in"]
    if problem == "adapter_path_elsewhere":  # the README's saves/kimi-audio-lora, run from another cwd
        relative = "saves/kimi-audio-lora"
        return {"adapter_name_or_path": relative}, 3, [f"adapter_name_or_path {relative}: not found", "runs in"]
    # a non-Kimi model with the kimi_audio template
    other = workdir / "qwen2_model"
    other.mkdir(exist_ok=True)
    (other / "config.json").write_text(json.dumps({"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]}))
    return {"model_name_or_path": str(other)}, 3, ["template kimi_audio needs a Kimi-Audio checkpoint", "qwen2"]


STOCK_LAYER_PROBLEMS = (
    "missing_dataset_file",
    "truncated_dataset_json",
    "undefined_dataset",
    "output_dir_under_file",
    "pickled_weights",
)


def pickled_checkpoint(ckpt: str, workdir: Path) -> Path:
    """The tiny checkpoint with its safetensors shards replaced by a pickled ``pytorch_model.bin`` that holds a
    numpy array: torch's ``weights_only`` load refuses it."""
    import shutil

    import numpy as np
    from safetensors.torch import load_file

    target = workdir / "pickled_model"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(ckpt, target)
    state = {}
    for shard in sorted(target.glob("*.safetensors")):
        state.update(load_file(str(shard)))
        shard.unlink()
    (target / "model.safetensors.index.json").unlink(missing_ok=True)
    torch.save({**state, "extra": np.zeros(3)}, target / "pytorch_model.bin")
    return target


def stock_layer_case(problem: str, ckpt: str, dataset: Path, workdir: Path) -> tuple[dict, int, list[str]]:
    """Problems LLaMA-Factory or the OS would report with a traceback; the run guard's pre-flight names them."""
    if problem == "missing_dataset_file":
        variant_dataset(dataset, "asr_gone", lambda row: None)
        (dataset / "asr_gone.json").unlink()
        return {"dataset": "asr_gone"}, 2, ["dataset asr_gone", str(dataset / "asr_gone.json"), "not found"]
    if problem == "truncated_dataset_json":
        variant_dataset(dataset, "asr_cut", lambda row: None)
        path = dataset / "asr_cut.json"
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        return {"dataset": "asr_cut"}, 2, ["dataset asr_cut", str(path), "cut short", "convert the data again"]
    if problem == "undefined_dataset":
        return {"eval_dataset": "asr_nope"}, 2, ["dataset asr_nope", "not defined in", "dataset_info.json"]
    if problem == "output_dir_under_file":
        blocker = workdir / "a_file"
        blocker.write_text("not a folder")
        output_dir = blocker / "run"
        return {"output_dir": str(output_dir)}, 2, [f"output_dir {output_dir}", f"{blocker} is a file"]
    model = pickled_checkpoint(ckpt, workdir)
    expected = [str(model / "pytorch_model.bin"), "pickled weights", "safetensors"]
    return {"model_name_or_path": str(model)}, 3, expected


BAD_INPUTS = (
    *STOCK_LAYER_PROBLEMS,
    "broken_audio",
    "cutoff_cuts_audio",
    "streaming_dispatches_batches",
    "placeholders",
    "truncated_wav",
    "worker_error",
    "wrong_model_path",
    "unknown_hub_id",
    "relative_model_path_elsewhere",
    "adapter_path_elsewhere",
    "non_kimi_model",
)


@pytest.fixture(scope="module")
def bad_input_runs(ckpt, dataset, workdir) -> dict[str, tuple[int, list[str], int, str]]:
    """problem -> (expected exit code, expected parts of the one line, exit code, log) of one ``llamafactory-cli
    train`` each. The cases are written one after another (several edit dataset_info.json), then run two at a time."""
    cases = {problem: bad_input_case(problem, ckpt, dataset, workdir) for problem in BAD_INPUTS}
    configs = {
        problem: {**train_config(ckpt, dataset, workdir / problem, finetuning_type="lora"), **overrides}
        for problem, (overrides, _, _) in cases.items()
    }
    runs = run_cli_each("train", configs, workdir)
    return {problem: (exit_code, expected, *runs[problem]) for problem, (_, exit_code, expected) in cases.items()}


@pytest.mark.parametrize("problem", BAD_INPUTS)
def test_bad_input_ends_with_one_line(problem, bad_input_runs):
    """Bad data, a bad recipe or a wrong model: the documented exit code and one line naming the file, sample or
    setting and the fix; no traceback (also none from a DataLoader worker) and no hub client frames."""
    exit_code, expected, rc, output = bad_input_runs[problem]
    assert rc == exit_code, output[-3000:]
    assert "Traceback" not in output and "DataLoader worker" not in output, output[-3000:]
    last = output.strip().splitlines()[-1]
    assert last.startswith("llamafactory-cli: ") and all(part in last for part in expected), last


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
