"""The patch table: every row applies, re-applies as a no-op, reverts to the identical original; incompatible
versions or signatures give one warning (never a TypeError mid-run); hooks and triggers are the same list."""

from __future__ import annotations

import dataclasses
import importlib
import inspect

import llamafactory.api.app  # noqa: F401 - the triggers: the start-up hook applies the table
import llamafactory.model.loader  # noqa: F401
import llamafactory.train.sft.workflow  # noqa: F401
import llamafactory.train.tuner  # noqa: F401
import pytest

from llamafactory_kimi_audio import patching, settings
from llamafactory_kimi_audio.errors import EnvironmentProblem
from llamafactory_kimi_audio.integration import importers, patches
from llamafactory_kimi_audio.integration.hooks import ALL_HOOKS, DEFERRED
from llamafactory_kimi_audio.integration.patches import (
    OPT_OUT_NOTICE,
    PATCHES,
    apply_patches,
    patch_rows,
    revert_all,
)


def stored(patch: patching.Patch) -> object:
    """What the owner holds in its own ``__dict__`` (absent = inherited)."""
    return patch.resolve_owner().__dict__.get(patch.attribute, "<inherited>")


@pytest.fixture
def pristine():
    """Every row reverted for the test, and re-applied afterwards as the start-up hook left them."""
    applied_before = {patch.name for patch in PATCHES if patch.applied}
    revert_all()
    yield
    revert_all()
    apply_patches(patch for patch in PATCHES if patch.name in applied_before)


def test_every_row_is_applied_by_the_hooks():
    import llamafactory.webui.chatter  # noqa: F401  (deferred triggers: their hooks come from the constants hook)
    import llamafactory.webui.runner  # noqa: F401

    assert [row["name"] for row in patch_rows() if not row["applied"]] == ["opt_out_notice"]
    assert {hook.module for hook in ALL_HOOKS} | set(DEFERRED) == set(patches.triggers())
    assert not {hook.module for hook in ALL_HOOKS} & set(DEFERRED)
    assert len({patch.name for patch in PATCHES}) == len(PATCHES)


@pytest.mark.parametrize("patch", [*PATCHES, OPT_OUT_NOTICE], ids=lambda patch: patch.name)
def test_apply_twice_revert_gives_back_the_original(pristine, patch):
    original = stored(patch)
    assert not patch.applied and patch.problem() is None, patch.problem()
    assert patch.apply() is True and patch.applied
    replaced = stored(patch)
    assert replaced is not original
    assert patch.apply() is False and stored(patch) is replaced  # the second apply is a no-op
    assert patch.revert() is True and not patch.applied
    assert stored(patch) is original
    assert patch.revert() is False


def test_revert_all_undoes_every_row(pristine):
    assert apply_patches(PATCHES) == [patch.name for patch in PATCHES]
    assert sorted(revert_all()) == sorted(patch.name for patch in PATCHES)
    assert not any(row["applied"] for row in patch_rows())


def test_wrappers_keep_the_wrapped_signatures():
    for patch in PATCHES:
        if patch.parameters and not patch.wrap_classmethod:
            wrapper = patch._current()
            params = tuple(inspect.signature(wrapper, follow_wrapped=False).parameters)
            assert params[: len(patch.parameters)] == patch.parameters, patch.name


def test_changed_signature_skips_the_row_with_one_warning(pristine, capsys):
    row = next(patch for patch in PATCHES if patch.name == "segment_media_paths")
    changed = dataclasses.replace(row, parameters=("self", "model", "batch"))
    original = stored(row)
    assert apply_patches([changed]) == []
    assert stored(row) is original and not row.applied
    (line,) = capsys.readouterr().err.splitlines()
    assert "skipped patch segment_media_paths" in line and "no longer takes (self, model, batch)" in line
    assert "KIMI_AUDIO_DISABLE=1" in line


def test_unsupported_version_is_one_warning_naming_both(pristine, capsys, monkeypatch):
    monkeypatch.setitem(patching.SUPPORTED_VERSIONS, "transformers", ">=99.0")
    monkeypatch.setattr(patches, "_warned", set())
    row = next(patch for patch in PATCHES if patch.name == "nonfinite_guard.check")
    assert apply_patches([row]) == ["nonfinite_guard.check"]  # same signature: applied, with the warning
    row.revert()
    assert apply_patches([row]) == ["nonfinite_guard.check"]
    (line,) = capsys.readouterr().err.splitlines()  # once per process
    installed = patching.installed_version("transformers")
    assert f"transformers {installed} is installed, the patches are written for >=99.0" in line
    assert "KIMI_AUDIO_DISABLE=1" in line


def test_strict_mode_raises_an_environment_problem(pristine, monkeypatch):
    monkeypatch.setenv("KIMI_AUDIO_STRICT", "1")
    settings.reload()
    row = next(patch for patch in PATCHES if patch.name == "official_auto_map")
    try:
        with pytest.raises(EnvironmentProblem, match="no longer takes"):
            apply_patches([dataclasses.replace(row, parameters=("cfg",))])
    finally:
        monkeypatch.undo()
        settings.reload()
    assert not row.applied


SPEED_AND_DTYPE_CHILD = """\
import json, logging, sys, traceback
from transformers.utils import logging as hf_logging

culprits = []


class Record(logging.Handler):
    def emit(self, record):
        if "torch_dtype" in record.getMessage():  # the first frame outside transformers and logging caused it
            frames = [f.filename for f in traceback.extract_stack()[:-1]]
            outside = [f for f in frames if "/transformers/" not in f and "/logging/" not in f]
            culprits.append(outside[-1])


hf_logging.get_logger("transformers").addHandler(Record())
logging.Logger.warning_once = logging.Logger.warning  # every access, not the first one only
from llamafactory.hparams import FinetuningArguments, ModelArguments
from llamafactory.model import load_model, load_tokenizer

args = ModelArguments(model_name_or_path=sys.argv[1], trust_remote_code=True)
model = load_model(load_tokenizer(args)["tokenizer"], args, FinetuningArguments(finetuning_type="lora"), True)
config = model.get_base_model().config
print(json.dumps({"varlen": config.use_varlen_attention, "compile": config.compile_pointwise, "culprits": culprits}))
"""


def test_loader_sets_the_speed_switches_without_torch_dtype_notices(tiny_checkpoint):
    """The settings become config attributes before the model is built; neither LLaMA-Factory's read of
    ``config.torch_dtype`` nor its ``from_pretrained(torch_dtype=...)`` reaches the user as a deprecation on 5.x."""
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("KIMI_AUDIO_", "LLAMAFACTORY_KIMI_AUDIO_"))}
    env.update(KIMI_AUDIO_VARLEN_ATTENTION="0", KIMI_AUDIO_COMPILE_POINTWISE="off", HF_HUB_OFFLINE="1")
    done = subprocess.run(
        [sys.executable, "-c", SPEED_AND_DTYPE_CHILD, tiny_checkpoint.path],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["varlen"] is False and out["compile"] == "off"
    ours_or_llamafactory = [c for c in out["culprits"] if "/llamafactory" in c and "/models/" not in c]
    assert ours_or_llamafactory == [], out["culprits"]


def test_readme_lists_every_row():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index("| patch | applied when this is imported |") :].split("\n\n")[0]
    for patch in PATCHES:
        family = patch.name.split(".")[0]
        assert f"`{patch.name}`" in table or f"`{family}.*`" in table or f"`{family}`" in table, patch.name
        assert f"`{patch.trigger}`" in table, patch.trigger


def test_cpu_precision_advice_is_dropped_only_for_kimi_recipes_without_cuda(tmp_path, monkeypatch):
    """LLaMA-Factory's "We recommend enable mixed precision training." does not apply to a CPU kimi_audio run (fp32 on
    purpose); any other recipe, or a machine with a GPU, keeps it."""
    import logging

    import torch

    from llamafactory_kimi_audio.integration.quiet_logs import PRECISION_ADVICE, CpuPrecisionAdvice

    def kept(message: str, template: str) -> bool:
        recipe = tmp_path / f"{template}.yaml"
        recipe.write_text(f"template: {template}\nmodel_name_or_path: x\n")
        monkeypatch.setattr("sys.argv", ["llamafactory-cli", str(recipe)])  # as the CLI leaves it for read_args
        record = logging.LogRecord("llamafactory.hparams.parser", logging.WARNING, __file__, 1, message, None, None)
        return CpuPrecisionAdvice().filter(record)

    assert kept(PRECISION_ADVICE, "qwen") and kept("another warning", "kimi_audio")
    assert kept(PRECISION_ADVICE, "kimi_audio") is torch.cuda.is_available()


def installed_llamafactory() -> dict[str, importers.Module]:
    from pathlib import Path

    import llamafactory

    return importers.scan(Path(llamafactory.__file__).parent)


def test_every_importer_of_a_patched_name_is_covered():
    """Scans the installed LLaMA-Factory: every module that imports a patched name (from-import, re-export or
    attribute use) gets the replacement, because each row patches where the name is defined, when that module runs."""
    modules = installed_llamafactory()
    assert list(importers.uncovered([*PATCHES, OPT_OUT_NOTICE], modules, "llamafactory")) == []
    found = importers.importers(modules, "llamafactory.train.sft.metric", "ComputeSimilarity")
    assert {"llamafactory.train.sft.workflow", "llamafactory.train.hyper_parallel.workflow"} <= found
    for patch in PATCHES:
        module, _, cls = patch.owner.partition(":")
        if cls or patch.distribution != "llamafactory":
            continue
        replacement = stored(patch)
        for name in importers.importers(modules, module, patch.attribute):
            if (imported := import_unless_optional(name)) is None:
                continue
            bound = vars(imported)  # a function-level import or `X.NAME` binds nothing here
            assert bound.get(patch.attribute, replacement) is replacement, (patch.name, name)


def import_unless_optional(name: str):
    """The module, or ``None`` where it needs a package LLaMA-Factory does not require (main's hyper-parallel
    workflow imports ``hyper_parallel`` at the top; 0.9.5's does not)."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if (err.name or "").split(".")[0] in ("llamafactory", "llamafactory_kimi_audio"):
            raise
        return None


def test_hyper_parallel_sft_scores_cer(pristine):
    """A late activation (rows applied after the importers bound the original) rebinds those importers too, and a
    revert gives every importer the original back."""
    hyper = import_unless_optional("llamafactory.train.hyper_parallel.workflow")
    if hyper is None:
        pytest.skip("this LLaMA-Factory's hyper-parallel workflow needs the hyper_parallel package")
    import llamafactory.train.sft.metric as metric
    import llamafactory.train.sft.workflow as sft

    row = next(patch for patch in PATCHES if patch.name == "asr_metrics")
    original = metric.ComputeSimilarity
    assert hyper.ComputeSimilarity is original and sft.ComputeSimilarity is original  # reverted by the fixture
    assert apply_patches([row]) == ["asr_metrics"]
    assert hyper.ComputeSimilarity is metric.ComputeSimilarity is sft.ComputeSimilarity is not original
    row.revert()
    assert hyper.ComputeSimilarity is original and sft.ComputeSimilarity is original


FAKE_TREE = {
    "__init__.py": "from .defs import helper\n",
    "defs.py": "def helper():\n    return 1\n\n\nclass Base:\n    def run(self):\n        return 1\n",
    "user.py": "from .defs import helper\n",
}


def fake_rows():
    return [
        patching.Patch("helper_row", "fakelf.user", owner="fakelf.user", attribute="helper", make_replacement=id),
        patching.Patch("run_row", "fakelf.defs", owner="fakelf.defs:Base", attribute="run", make_replacement=id),
    ]


def write_tree(root, files: dict[str, str]):
    for name, text in files.items():
        path = root / "fakelf" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return importers.scan(root / "fakelf")


@pytest.mark.parametrize(
    "new_file, gap",
    [
        ("api/late.py", "from ..defs import helper\n"),
        ("attr.py", "import fakelf.defs\n\n\ndef f():\n    return fakelf.defs.helper()\n"),
        ("alias.py", "from . import defs as d\n\n\ndef f():\n    return d.helper()\n"),
        ("reexport.py", "from fakelf import helper\n"),
        ("inside.py", "def f():\n    from .defs import helper\n\n    return helper()\n"),
        ("sub.py", "from .defs import Base\n\n\nclass Mine(Base):\n    def run(self):\n        return 2\n"),
    ],
)
def test_the_scanner_finds_a_new_importer(tmp_path, new_file, gap):
    """The table of a fake package covers its one importer; each new way of importing the name is a gap."""
    rows = fake_rows()
    # the re-exporting __init__ is an importer too: cover it with a row of its own, as `user` is
    rows.append(dataclasses.replace(rows[0], name="helper_row_init", trigger="fakelf", owner="fakelf"))
    assert list(importers.uncovered(rows, write_tree(tmp_path, FAKE_TREE), "fakelf")) == []
    gaps = [str(g) for g in importers.uncovered(rows, write_tree(tmp_path, {new_file: gap}), "fakelf")]
    new_module = "fakelf." + new_file.removesuffix(".py").replace("/", ".")
    assert gaps and all(new_module in gap for gap in gaps), gaps  # one gap per row that patches the name


def test_patching_the_definer_covers_new_importers(tmp_path):
    rows = [dataclasses.replace(fake_rows()[0], trigger="fakelf.defs", owner="fakelf.defs")]
    modules = write_tree(tmp_path, {**FAKE_TREE, "late.py": "from .defs import helper\n"})
    assert list(importers.uncovered(rows, modules, "fakelf")) == []
    late_trigger = [dataclasses.replace(rows[0], trigger="fakelf.user")]
    (gap,) = importers.uncovered(late_trigger, modules, "fakelf")
    assert "applied when fakelf.user is imported" in str(gap)


def test_an_override_that_calls_super_is_covered(tmp_path):
    """LLaMA-Factory main's HyperParallelTrainer overrides ``__init__`` and ``create_optimizer`` of the patched
    CustomSeq2SeqTrainer but calls ``super()`` first: the patched method still runs, so it is no gap."""
    extending = "from .defs import Base\n\n\nclass Mine(Base):\n    def run(self):\n        return super().run() + 1\n"
    rows = fake_rows()[1:]
    assert list(importers.uncovered(rows, write_tree(tmp_path, {**FAKE_TREE, "sub.py": extending}), "fakelf")) == []
    other = extending.replace("super().run()", "super().other()")
    (gap,) = importers.uncovered(rows, write_tree(tmp_path, {"sub.py": other}), "fakelf")
    assert "fakelf.sub:Mine subclasses Base and overrides run" in str(gap)
