"""A Kimi-Audio recipe given as command-line flags (no YAML) gets the run guard's checks and recipe keys: the flags
are read as strings for the checks, and what the guard adds goes back as flags that LLaMA-Factory's own parser
reads to the typed values a recipe file would give."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest

from llamafactory_kimi_audio.integration.recipe_flags import added_flags, flag_value, flags_to_recipe
from llamafactory_kimi_audio.integration.run_guard import make_run_guard

DATASET_DIR = Path(__file__).resolve().parents[2] / "dataset_info"


# ------------------------------------------------------------------------------------------- reading the flags
def test_flags_read_as_argparse_reads_them():
    recipe = flags_to_recipe(
        [
            "--model-name-or-path",
            "/ckpt",
            "--template=kimi_audio",
            "--do_train",
            "--no_do_sample",
            "--learning_rate",
            "-1e-3",
            "--report_to",
            "none",
            "wandb",
            "--dataset",
            "a",
            "--dataset",
            "b,c",
            "--fp8",
        ]
    )
    assert recipe == {
        "model_name_or_path": "/ckpt",
        "template": "kimi_audio",
        "do_train": "true",
        "do_sample": "false",
        "no_do_sample": "true",
        "learning_rate": "-1e-3",
        "report_to": ["none", "wandb"],
        "dataset": "b,c",
        "fp8": "true",
    }


def test_accelerator_config_json_is_read_as_transformers_reads_it():
    assert flags_to_recipe(["--accelerator_config", '{"dispatch_batches": true}'])["accelerator_config"] == {
        "dispatch_batches": True
    }
    for text in ("accelerate.json", "{not json", " {}"):  # a file path, or text transformers itself rejects
        assert flags_to_recipe(["--accelerator_config", text])["accelerator_config"] == text


def test_added_flags_are_only_what_changed():
    recipe = {"streaming": "true", "accelerator_config": {"split_batches": True}, "do_train": "true"}
    completed = {**recipe, "accelerator_config": {"split_batches": True, "dispatch_batches": False}, "top_p": 1.0}
    assert added_flags(recipe, completed) == [
        "--accelerator_config",
        '{"split_batches": true, "dispatch_batches": false}',
        "--top_p",
        "1.0",
    ]
    assert added_flags({"do_samp": "true"}, {"do_samp": "true", "do_sample": False}) == []  # argparse's abbreviation
    assert [flag_value(v) for v in (True, False, 0.5, {"a": None})] == ["true", "false", "0.5", '{"a": null}']


# ------------------------------------------------------------------ the guard in front of LLaMA-Factory's parser
def base_flags(tiny_checkpoint, tmp_path, *more: str) -> list[str]:
    return [
        "--model_name_or_path",
        tiny_checkpoint.path,
        "--trust_remote_code",
        "--stage",
        "sft",
        "--template",
        "kimi_audio",
        "--finetuning_type",
        "lora",
        "--dataset_dir",
        str(DATASET_DIR),
        "--output_dir",
        str(tmp_path / "out"),
        "--use_cpu",
        "true",
        "--report_to",
        "none",
        *more,
    ]


def parsed_by_guard(flags: list[str]):
    """Runs the guard with LLaMA-Factory's own argument parsing as the run: what the run would have been given."""
    import llamafactory.train.tuner  # noqa: F401  (the hooks apply as in `llamafactory-cli train`)
    from llamafactory.hparams import get_train_args

    seen = []
    make_run_guard(lambda args: seen.append((args, get_train_args(args))))(flags)
    return seen[0]


def test_flags_for_prediction_get_greedy_decoding(tiny_checkpoint, tmp_path, caplog):
    flags = base_flags(
        tiny_checkpoint,
        tmp_path,
        "--do_predict",
        "--predict_with_generate",
        "true",
        "--eval_dataset",
        "kimi_audio_demo_test",
    )
    with caplog.at_level(logging.WARNING):
        args, parsed = parsed_by_guard(flags)
    assert args[: len(flags)] == flags and isinstance(args, list)  # still flags: LLaMA-Factory converts the types
    assert args[len(flags) :] == ["--do_sample", "false", "--temperature", "1.0", "--top_p", "1.0"]
    assert "added do_sample: false" in caplog.text
    generating = parsed[4]
    assert generating.do_sample is False and generating.temperature == 1.0 and generating.top_p == 1.0


def test_flags_that_ask_for_sampling_sample(tiny_checkpoint, tmp_path):
    flags = base_flags(
        tiny_checkpoint,
        tmp_path,
        *("--do_predict", "--predict_with_generate", "--eval_dataset", "kimi_audio_demo_test"),
        *("--do_sample", "--temperature", "0.7"),
    )
    args, parsed = parsed_by_guard(flags)
    assert args == flags and parsed[4].do_sample is True and parsed[4].temperature == 0.7


def test_streaming_flags_get_whole_batches_per_rank(tiny_checkpoint, tmp_path):
    config = json.dumps({"split_batches": False})
    flags = base_flags(
        tiny_checkpoint,
        tmp_path,
        *("--do_train", "--dataset", "kimi_audio_demo_train", "--streaming", "--max_steps", "2"),
        *("--accelerator_config", config),
    )
    args, parsed = parsed_by_guard(flags)
    assert args[len(flags) :] == ["--accelerator_config", '{"split_batches": false, "dispatch_batches": false}']
    accelerator = parsed[2].accelerator_config
    assert accelerator.dispatch_batches is False and accelerator.split_batches is False


@pytest.mark.parametrize(
    ("more", "code", "message"),
    [
        (
            ("--streaming", "--accelerator_config", '{"dispatch_batches": "true"}'),
            2,
            r"streaming: true with accelerator_config.dispatch_batches: true would cut",
        ),
        (("--dataset", "no_such_set"), 2, r"dataset no_such_set: not defined in .*dataset_info.json"),
        (("--use_mca", "true"), 2, r"template kimi_audio: Kimi-Audio has no Megatron-Core model"),
    ],
)
def test_bad_flags_end_in_one_line(tiny_checkpoint, tmp_path, capsys, more, code, message):
    flags = base_flags(tiny_checkpoint, tmp_path, "--do_train", "--dataset", "kimi_audio_demo_train", *more)
    with pytest.raises(SystemExit) as exit_info:
        make_run_guard(lambda args: pytest.fail("the run started"))(flags)
    assert exit_info.value.code == code
    assert re.match(rf"llamafactory-cli: {message}", capsys.readouterr().err)


def test_help_and_other_templates_are_left_alone(tiny_checkpoint, tmp_path):
    """Unchecked and unchanged: ``--help`` prints LLaMA-Factory's help, another template is not ours."""
    given = [
        base_flags(tiny_checkpoint, tmp_path, "--dataset", "no_such_set", "--help"),
        ["--template", "qwen2_audio", "--dataset", "no_such_set", "--predict_with_generate", "--streaming"],
    ]
    runs: list = []
    for flags in given:
        make_run_guard(runs.append)(flags)
    assert runs == given


def test_cpu_precision_advice_filter_sees_a_flags_recipe(monkeypatch):
    """The log filter that reads the recipe the same way (``quiet_logs.py``) knows a flags recipe's template."""
    import torch

    from llamafactory_kimi_audio.integration.quiet_logs import PRECISION_ADVICE, CpuPrecisionAdvice

    def kept(*flags: str) -> bool:
        monkeypatch.setattr("sys.argv", ["llamafactory-cli", *flags])  # as the CLI leaves it for read_args
        record = logging.LogRecord(
            "llamafactory.hparams.parser", logging.WARNING, __file__, 1, PRECISION_ADVICE, None, None
        )
        return CpuPrecisionAdvice().filter(record)

    assert kept("--template", "qwen2_audio", "--do_train")
    assert kept("--template=kimi_audio", "--do_train") is torch.cuda.is_available()


# --------------------------------------------------------------------------------- the stock CLI, flags only
@pytest.mark.slow
def test_cli_flags_recipe_is_checked_before_the_model_loads(tiny_checkpoint, tmp_path):
    """``--fp8`` on the CPU, given as flags (bare booleans, a hyphenated name): the one-line refusal, exit 4."""
    from lf_runs import COMMON, as_flags, run_cli_flags

    flags = [
        *as_flags(COMMON),
        *("--model-name-or-path", tiny_checkpoint.path, "--do_train", "--fp8", "--use_cpu"),
        *("--dataset", "kimi_audio_demo_train", "--dataset_dir", str(DATASET_DIR)),
        *("--output_dir", str(tmp_path / "out"), "--max_steps", "1"),
    ]
    rc, output = run_cli_flags("train", flags, tmp_path, "fp8_flags")
    last = output.strip().splitlines()[-1]
    assert rc == 4, output[-3000:]
    assert re.match(
        r"llamafactory-cli: fp8: true needs an NVIDIA GPU with FP8 tensor cores .*; remove fp8: true", last
    )
    assert "Traceback" not in output and not (tmp_path / "out").exists()
