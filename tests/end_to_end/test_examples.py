"""Every recipe in ``examples/`` is accepted by LLaMA-Factory's own argument parser (catches renamed or misspelled
keys in the real-model recipes, which CI cannot train). Hardware-only settings are neutralised for the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
DATASET_DIR = Path(__file__).resolve().parents[2] / "dataset_info"
CPU_OVERRIDES = {"bf16": False, "use_cpu": True, "quantization_bit": None, "deepspeed": None}


def recipe(name: str, tiny_checkpoint, tmp_path) -> dict:
    args = yaml.safe_load((EXAMPLES / name).read_text(encoding="utf-8"))
    args.update({k: v for k, v in CPU_OVERRIDES.items() if k in args})
    args = {k: v for k, v in args.items() if v is not None}
    args["model_name_or_path"] = tiny_checkpoint.path
    if "adapter_name_or_path" in args:
        args.pop("adapter_name_or_path")
    for key, demo in (("dataset", "kimi_audio_demo_train"), ("eval_dataset", "kimi_audio_demo_test")):
        if key in args:
            args[key] = demo
    args["dataset_dir"] = str(DATASET_DIR)
    for key in ("output_dir", "export_dir"):
        if key in args:
            args[key] = str(tmp_path / key)
    return args


@pytest.mark.parametrize(
    "name",
    [
        "kimi_lora.yaml",
        "kimi_qlora.yaml",
        "kimi_lora_48gb.yaml",
        "kimi_lora_80gb.yaml",
        "kimi_lora_141gb.yaml",
        "kimi_lora_ds_z3.yaml",
        "kimi_full_ds_z3.yaml",
        "kimi_predict.yaml",
    ],
)
def test_training_recipes_parse(name, tiny_checkpoint, tmp_path) -> None:
    import llamafactory.train.tuner  # noqa: F401  (as `llamafactory-cli train` does: the SFT hooks apply first)
    from llamafactory.hparams import get_train_args

    model_args, data_args, training_args, finetuning_args, _ = get_train_args(recipe(name, tiny_checkpoint, tmp_path))
    assert data_args.template == "kimi_audio"
    assert finetuning_args.finetuning_type in ("lora", "full")
    if finetuning_args.finetuning_type == "lora" and training_args.do_train:
        assert finetuning_args.lora_target == ["all"]
    if data_args.packing:  # packed rows must keep utterances apart (block-diagonal mask)
        assert data_args.neat_packing
    if training_args.do_train:  # an integer number of steps: warmup_ratio is deprecated on transformers 5
        assert isinstance(training_args.warmup_steps, int) and training_args.warmup_steps > 0
        assert not getattr(training_args, "warmup_ratio", None)


def test_recipes_say_the_keys_a_kimi_run_needs() -> None:
    """What the run guard would otherwise add with a notice (integration/recipe_keys.py) is in the shipped recipes."""
    for path in sorted(EXAMPLES.glob("*.yaml")):
        args = yaml.safe_load(path.read_text(encoding="utf-8"))
        if args.get("predict_with_generate"):
            assert args.get("do_sample") is False, path.name
        if args.get("streaming"):
            assert args.get("accelerator_config", {}).get("dispatch_batches") is False, path.name
    lines = (EXAMPLES / "kimi_lora.yaml").read_text(encoding="utf-8").splitlines()
    streaming = yaml.safe_load("\n".join(line[2:] for line in lines if line.startswith(("# streaming", "# accel"))))
    assert streaming["streaming"] is True and streaming["accelerator_config"] == {"dispatch_batches": False}


def test_no_recipe_uses_deprecated_keys() -> None:
    from llamafactory_kimi_audio.demo import demo_recipe

    for path in sorted(EXAMPLES.glob("*.yaml")):
        args = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert not {"warmup_ratio", "torch_dtype"} & set(args), path.name
    demo = demo_recipe("out", max_steps=600)
    assert not {"warmup_ratio", "torch_dtype"} & set(demo) and demo["warmup_steps"] == 60  # as examples/tiny_demo.yaml


def test_tiny_demo_header_names_the_directories_it_uses() -> None:
    text = (EXAMPLES / "tiny_demo.yaml").read_text(encoding="utf-8")
    args = yaml.safe_load(text)
    header = "".join(line for line in text.splitlines() if line.startswith("#"))
    assert f"make-tiny {args['model_name_or_path']}`" in header
    assert args["dataset_dir"].startswith("demo_out/") and "demo_out/" in header


def test_merge_recipe_parses(tiny_checkpoint, tmp_path) -> None:
    from llamafactory.hparams import get_infer_args

    model_args, data_args, finetuning_args, _ = get_infer_args(recipe("kimi_merge.yaml", tiny_checkpoint, tmp_path))
    assert data_args.template == "kimi_audio" and model_args.export_dir


def test_deepspeed_configs_are_json() -> None:
    for path in sorted((EXAMPLES / "deepspeed").glob("*.json")):
        config = json.loads(path.read_text(encoding="utf-8"))
        assert config["zero_optimization"]["stage"] in (2, 3), path.name


CARD_RECIPES = ("kimi_lora.yaml", "kimi_qlora.yaml", *(f"kimi_lora_{size}gb.yaml" for size in (48, 80, 141)))


def test_every_card_recipe_is_in_the_readme_table_and_packs() -> None:
    readme = (EXAMPLES.parent / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index("### Which recipe for which card") :]
    table = table[: table.index("\n\n", table.index("| card |"))]
    listed = {line.split("`examples/")[1].split("`")[0] for line in table.splitlines() if "`examples/" in line}
    assert listed == set(CARD_RECIPES) | {p.name for p in EXAMPLES.glob("kimi_lora_*gb.yaml")}
    for name in CARD_RECIPES:  # packed rows that keep utterances apart, no dropout copy, no per-step NaN sync
        args = yaml.safe_load((EXAMPLES / name).read_text(encoding="utf-8"))
        assert args["packing"] and args["neat_packing"] and args["lora_dropout"] == 0.0, name
        assert args["logging_nan_inf_filter"] is False, name


@pytest.mark.slow
def test_the_default_recipe_trains_as_shipped(tiny_checkpoint, tmp_path) -> None:
    """``llamafactory-cli train examples/kimi_lora.yaml`` (CPU overrides, two steps): packed rows with gradient
    checkpointing train through the stock CLI, and the compile / parking defaults stay out of a CPU run."""
    from lf_runs import check_ok, logged_losses, run_cli

    args = recipe("kimi_lora.yaml", tiny_checkpoint, tmp_path)
    for key in ("eval_dataset", "eval_strategy", "eval_steps", "per_device_eval_batch_size"):
        args.pop(key)
    args.update(max_steps=2, logging_steps=1, save_strategy="no", preprocessing_num_workers=1)
    args.update(dataloader_num_workers=0)
    rc, output = run_cli("train", args, tmp_path, "default_recipe")
    check_ok(rc, output)
    assert len(logged_losses(Path(args["output_dir"]))) == 2
    assert "kept in host memory" not in output  # nothing to park on a CPU


def _quickstart() -> str:
    readme = (EXAMPLES.parent / "README.md").read_text(encoding="utf-8")
    start = readme.index("## Real model quickstart")
    return readme[start : readme.index("\n## ", start + 1)]


def test_quickstart_steps_create_what_later_steps_use() -> None:
    """README quickstart as written (issue 29): the split writes the test set step 4 evaluates, the recipes' headers
    suggest the same split, and every --baseline is the --out of an earlier command."""
    from llamafactory_kimi_audio.data.convert.splits import parse_split

    quickstart = _quickstart()
    (split,) = {line.split("--split ")[1].split()[0] for line in quickstart.splitlines() if "--split " in line}
    name = quickstart.split("--name ")[1].split()[0]
    assert len(parse_split(split)) == 3 and parse_split(split)[2] > 0, split  # a test set is written
    for path in EXAMPLES.glob("*.yaml"):
        header = "".join(line for line in path.read_text(encoding="utf-8").splitlines() if line.startswith("#"))
        if "--split " in header:
            assert header.split("--split ")[1].split("`")[0] == split, path.name
    commands = quickstart.replace("\\\n", " ").splitlines()
    created: set[str] = set()
    for line in commands:
        words = line.split()
        if "kimi-audio-lf" in words and "evaluate" in words:
            assert words[words.index("--data") + 1] == f"data/{name}_test.json", line
            if "--baseline" in words:
                assert words[words.index("--baseline") + 1] in created, f"no earlier step writes it: {line}"
            created.add(words[words.index("--out") + 1])
    assert created, "the quickstart evaluates nothing"


def test_demo_help_and_readme_give_the_same_time() -> None:
    from llamafactory_kimi_audio.cli.demo import DURATION, HELP

    readme = " ".join((EXAMPLES.parent / "README.md").read_text(encoding="utf-8").split())
    assert DURATION in HELP and DURATION in readme
