"""Bad input to the stock ``llamafactory-cli train`` of a Kimi-Audio recipe: bad data, a bad recipe or a wrong model
ends with the documented exit code and one line naming the file, sample or setting and the fix. Each case is its own
fresh ``llamafactory-cli train`` run on the tiny checkpoint (see ``test_llamafactory_cli.py`` for the good runs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from lf_runs import run_cli_each, train_config, variant_dataset

pytestmark = pytest.mark.slow


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
