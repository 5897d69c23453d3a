"""``kimi-audio-lf doctor``: green on a good environment + tiny checkpoint, the specific ✗ line for a broken
checkpoint (exit 4), the opt-out variable reported. The fresh-interpreter probe runs once per test session."""

from __future__ import annotations

import json
import os
import shutil
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from llamafactory_kimi_audio import DISABLE_ENV, patching, settings
from llamafactory_kimi_audio.cli import main
from llamafactory_kimi_audio.doctor import checks as doctor
from llamafactory_kimi_audio.integration.patches import all_patches

REPO = Path(__file__).resolve().parents[2]


def _by_name(checks: list[doctor.Check]) -> dict[str, doctor.Check]:
    return {check.name: check for check in checks}


@pytest.fixture(autouse=True)
def _no_opt_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DISABLE_ENV, raising=False)
    settings.reload()


def test_all_green_on_tiny_checkpoint(tiny_checkpoint, capsys) -> None:
    checks = doctor.run_checks(tiny_checkpoint.path)
    failed = [c for c in checks if c.required and not c.ok]
    assert not failed, failed
    names = _by_name(checks)
    assert {
        "python",
        "torch",
        "transformers",
        "peft",
        "llamafactory",
        "startup hook (.pth)",
        "opt-out variable",
        "integration active",
        "model: special token ids",
        "GPU",
        "bf16",
        "packed-row attention",
        "espeak-ng",
    } <= set(names)
    assert all(f"patch {p.name}" in names for p in all_patches())
    assert {f"setting {name}" for name in settings.BY_NAME} <= set(names)
    assert names["setting KIMI_AUDIO_DISABLE"].detail.startswith("False: ")
    assert "kimi_audio_template" in names["integration active"].detail
    assert main(["doctor", "--model", tiny_checkpoint.path]) == 0
    out, err = capsys.readouterr()
    assert "doctor: the fresh interpreter" in err and "doctor: checking the checkpoint" in err  # progress (cached)
    assert "✓ model: whisper-large-v3/" in out and out.rstrip().splitlines()[-1].startswith(
        "all required checks passed"
    )
    assert main(["doctor", "--model", tiny_checkpoint.path, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True and {"name", "ok", "detail", "fix", "required"} <= set(report["checks"][0])


def _delete_whisper(model: Path) -> None:
    shutil.rmtree(model / "whisper-large-v3")


def _edit_config(**changes: object):
    def edit(model: Path) -> None:
        config = json.loads((model / "config.json").read_text())
        for key, value in changes.items():
            config.pop(key) if value is None else config.__setitem__(key, value)
        (model / "config.json").write_text(json.dumps(config))

    return edit


@pytest.mark.parametrize(
    ("breakage", "line", "detail"),
    [
        (_delete_whisper, "✗ model: whisper-large-v3/", "missing config.json, model.safetensors"),
        (_edit_config(model_type="qwen2"), "✗ model: config.json", "expected 'moonshot_kimia'"),
        (_edit_config(rope_theta=None), "✗ model: config fields", "missing rope_theta"),
        (_edit_config(kimia_media_begin=7), "✗ model: special token ids", "kimia_media_begin 7 !="),
    ],
    ids=["no-whisper", "model-type", "no-rope-theta", "special-ids"],
)
def test_broken_checkpoint_fails_with_the_specific_line(
    tiny_checkpoint, tmp_path, capsys, breakage, line, detail
) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_checkpoint.path, model)
    breakage(model)
    assert main(["doctor", "--model", str(model)]) == 4
    out = capsys.readouterr().out.splitlines()
    bad = [i for i, text in enumerate(out) if text.startswith("✗")]
    assert len(bad) == 1 + ("special" not in line and "whisper" not in line), out  # + "special ids not checked"
    first = out[bad[0]]
    assert first.startswith(line) and detail in first
    assert out[bad[0] + 1].strip().startswith("fix: ")
    assert "required check(s) failed" in out[-1]


def test_opt_out_is_reported(monkeypatch, capsys) -> None:
    monkeypatch.setenv(DISABLE_ENV, "1")
    assert main(["doctor", "--json"]) == 4
    checks = _by_name([doctor.Check(**c) for c in json.loads(capsys.readouterr().out)["checks"]])
    assert not checks["opt-out variable"].ok and f"{DISABLE_ENV}=1" in checks["opt-out variable"].detail
    assert checks["opt-out variable"].fix == f"unset {DISABLE_ENV}"
    assert not checks["integration active"].ok and "off" in checks["integration active"].detail


def test_failed_hook_and_patch_in_the_fresh_interpreter() -> None:
    patches = [p.name for p in all_patches()]
    state = {
        "finder": True,
        "template": False,
        "applied": ["kimi_audio_models"],
        "registered": {},
        "failed": {"kimi_audio_template": "ImportError: boom"},
        "patches": {n: n != patches[0] for n in patches},
    }
    checks = _by_name(doctor.integration_checks(probe=lambda: state))
    active = checks["integration active"]
    assert not active.ok and "template 'kimi_audio' missing" in active.detail and "ImportError: boom" in active.detail
    assert not checks[f"patch {patches[0]}"].ok and checks[f"patch {patches[0]}"].fix
    assert all(checks[f"patch {name}"].ok for name in patches[1:])
    crashed = _by_name(doctor.integration_checks(probe=lambda: {"error": "ModuleNotFoundError: llamafactory"}))
    assert "ModuleNotFoundError" in crashed["integration active"].detail


def test_version_ranges_match_pyproject() -> None:
    deps = [Requirement(d) for d in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]]
    declared = {r.name: r.specifier for r in deps}
    for dist, spec in patching.SUPPORTED_VERSIONS.items():
        assert declared[dist] == Requirement(f"{dist}{spec}").specifier, dist


def test_version_check_outside_the_range() -> None:
    check = doctor.version_check("transformers", "==4.57.0")
    assert not check.ok and check.fix == 'pip install "transformers==4.57.0"'
    missing = doctor.version_check("surely-not-installed-dist", ">=1")
    assert not missing.ok and "not installed" in missing.detail


def test_version_check_in_the_range_but_not_verified() -> None:
    installed = patching.installed_version("transformers")
    check = doctor.version_check("transformers", f">={installed}", verified=f"!={installed}")
    note = f"; verified with !={installed} only, patch signatures are checked at start-up)"
    assert check.ok and check.detail == f"{installed} (supported: >={installed}{note}"
    assert doctor.version_check("transformers", f">={installed}", verified=f"=={installed}").detail == (
        f"{installed} (supported: >={installed})"
    )


def test_missing_model_dir(tmp_path) -> None:
    checks = doctor.checkpoint_checks(os.fspath(tmp_path / "nope"))
    assert len(checks) == 1 and not checks[0].ok


def test_packed_row_attention_needs_the_kernel_cuda_and_the_setting(monkeypatch) -> None:
    import torch

    from llamafactory_kimi_audio import settings
    from llamafactory_kimi_audio.models import packed_attention

    available = packed_attention.varlen_attn is not None and torch.cuda.is_available()
    check = doctor.packed_attention_check()
    assert check.ok is available and not check.required
    if packed_attention.varlen_attn is not None and not torch.cuda.is_available():
        assert "no CUDA device" in check.detail and "dense mask" in check.detail  # never a ✓ without CUDA
    monkeypatch.setenv("KIMI_AUDIO_VARLEN_ATTENTION", "0")
    settings.reload()
    check = doctor.packed_attention_check()
    assert not check.ok and (packed_attention.varlen_attn is None or "KIMI_AUDIO_VARLEN_ATTENTION=0" in check.detail)
    monkeypatch.setattr(packed_attention, "varlen_attn", None)
    check = doctor.packed_attention_check()
    assert not check.ok and not check.required and "torch >= 2.9" in check.fix and "dense mask" in check.detail
    monkeypatch.undo()
    settings.reload()


def test_no_gpu_advice_depends_on_the_torch_build() -> None:
    import torch

    detail, fix = doctor._no_gpu("12.4")
    assert "CUDA 12.4 build but sees no GPU" in detail and "nvidia-smi" in fix and "install" not in fix
    detail, fix = doctor._no_gpu(None)
    assert "CPU-only build" in detail and "install a CUDA build of torch" in fix
    if not torch.cuda.is_available():
        checks = _by_name(doctor.gpu_checks())
        gpu = checks["GPU"]
        assert not gpu.ok and not gpu.required
        assert not checks["bf16"].fix  # no GPU: nothing to buy for bf16 here, the GPU line says what to do
        assert ("install a CUDA build" in gpu.fix) is (torch.version.cuda is None)


def test_doctor_says_what_compile_auto_becomes_here(monkeypatch):
    from llamafactory_kimi_audio import settings
    from llamafactory_kimi_audio.doctor import checks as doctor
    from llamafactory_kimi_audio.integration import speed

    monkeypatch.setattr(speed, "compile_pays", lambda model_args: True)
    check = doctor.compiled_layers_check()
    assert check.ok and "auto → layers" in check.detail
    monkeypatch.setattr(speed, "compile_pays", lambda model_args: False)
    check = doctor.compiled_layers_check()
    assert not check.ok and "auto → off" in check.detail
    monkeypatch.setenv("KIMI_AUDIO_COMPILE_POINTWISE", "off")
    settings.reload()
    try:
        check = doctor.compiled_layers_check()
        assert not check.ok and "=off → off" in check.detail and not check.fix
    finally:
        monkeypatch.delenv("KIMI_AUDIO_COMPILE_POINTWISE")
        settings.reload()


def test_compile_advice_names_the_real_reason():
    """Without a GPU, Triton is never the missing piece (issue 29: `pip install triton` while it was installed)."""
    for build in ("13.0", None):
        reason, fix = doctor.why_not_compiled(cuda=False, cuda_build=build, has_triton=True)
        assert "GPU" in reason and not fix
    assert "CPU-only" in doctor.why_not_compiled(cuda=False, cuda_build=None, has_triton=False)[0]
    reason, fix = doctor.why_not_compiled(cuda=True, cuda_build="13.0", has_triton=False)
    assert "Triton" in reason and "pip install triton" in fix


def test_download_hints_use_the_hf_cli():
    """``huggingface-cli`` exits 1 with the huggingface_hub that transformers 5 resolves; ``hf download`` works."""
    from llamafactory_kimi_audio.doctor import checkpoint as doctor_checkpoint

    assert doctor_checkpoint.DOWNLOAD_FIX.split(": ", 1)[1].startswith("hf download moonshotai/")
    glm = doctor_checkpoint._glm_check(os.fspath(REPO / "no-such-model"))
    assert not glm.ok and glm.fix.startswith("hf download THUDM/glm-4-voice-tokenizer --local-dir ")


@pytest.mark.slow
def test_doctor_cli_on_this_machine_shows_progress_and_no_triton_advice_without_a_gpu(tiny_checkpoint) -> None:
    """The real command in a fresh process: progress on stderr while it waits, the table on stdout; on a machine
    without a GPU the compiled-layers line gives the GPU as the reason, never `pip install triton`."""
    import subprocess
    import sys

    import torch

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(
        [sys.executable, "-m", "llamafactory_kimi_audio.cli", "doctor", "--model", tiny_checkpoint.path],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "doctor: starting a fresh interpreter" in done.stderr
    assert done.stdout.rstrip().splitlines()[-1].startswith("all required checks passed")
    line = next(text for text in done.stdout.splitlines() if "compiled decoder layers" in text)
    if not torch.cuda.is_available():
        assert "no GPU" in line or "no CUDA GPU" in line, line
        assert "pip install triton" not in done.stdout
