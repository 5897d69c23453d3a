"""Environment and checkpoint checks behind ``kimi-audio-lf doctor``: each is a ``Check`` with a fix for failures.

The integration is checked where it matters, in a *fresh* interpreter of this environment (``sys.executable``): the
start-up hook must have registered the template and applied the named patches before any user code runs.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from . import DISABLE_ENV

REQUIREMENTS = {  # distribution -> supported versions (= pyproject.toml's dependencies)
    "torch": ">=2.4",
    "transformers": ">=4.55.0,<=5.6.0,!=4.57.0",
    "peft": ">=0.18.0,<0.19",
    "llamafactory": "==0.9.5",
}
MIN_PYTHON = (3, 11)
PTH_FILE = "llamafactory_kimi_audio.pth"
TEMPLATE = "kimi_audio"
KIMI_MODEL_TYPE = "moonshot_kimia"
CONFIG_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "kimia_token_offset",
    "kimia_media_begin",
    "kimia_media_end",
    "kimia_adaptor_input_dim",
)
DOWNLOAD_FIX = (
    "download the checkpoint again: huggingface-cli download moonshotai/Kimi-Audio-7B-Instruct --local-dir DIR"
)
PROBE_MARK = "@@kimi-audio-doctor@@"
PROBE = f"""
import json
import llamafactory_kimi_audio._startup as s
started = s.is_installed()
import llamafactory.data.template as t
template = {TEMPLATE!r} in t.TEMPLATES
import llamafactory.model.loader, llamafactory.train.sft.workflow
from llamafactory_kimi_audio.integration.patches import all_patches
print({PROBE_MARK!r} + json.dumps(dict(
    finder=started, template=template, applied=list(s.applied_hooks()), failed=s.failed_hooks(),
    registered=s.registered_hooks(), patches={{p.name: p.applied for p in all_patches()}},
)))
"""


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True


def all_required_ok(checks: list[Check]) -> bool:
    return all(c.ok for c in checks if c.required)


def run_checks(model_dir: str | None = None) -> list[Check]:
    """Every check: versions, start-up hook and patches (fresh interpreter), the checkpoint, GPU and tools."""
    checks = [python_check(), *version_checks(), pth_check(), opt_out_check(), *integration_checks()]
    if model_dir is not None:
        checks += checkpoint_checks(model_dir)
    return checks + [*gpu_checks(), espeak_check()]


# ----------------------------------------------------------------------------------------------- versions
def python_check() -> Check:
    version = ".".join(map(str, sys.version_info[:3]))
    ok = sys.version_info[:2] >= MIN_PYTHON
    return Check("python", ok, version, "" if ok else f"use Python >= {'.'.join(map(str, MIN_PYTHON))}")


def version_checks() -> list[Check]:
    return [version_check(dist, spec) for dist, spec in REQUIREMENTS.items()]


def version_check(dist: str, spec: str) -> Check:
    from importlib.metadata import PackageNotFoundError, version

    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version

    fix = f'pip install "{dist}{spec}"'
    try:
        installed = version(dist)
    except PackageNotFoundError:
        return Check(dist, False, f"not installed (supported: {spec})", fix)
    try:
        ok = SpecifierSet(spec).contains(Version(installed), prereleases=True)
    except InvalidVersion:
        ok = False
    return Check(dist, ok, f"{installed} (supported: {spec})", "" if ok else fix)


# -------------------------------------------------------------------------------------------- integration
def site_dirs() -> list[str]:
    dirs = list(getattr(site, "getsitepackages", list)())
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    import sysconfig

    dirs.append(sysconfig.get_paths()["purelib"])
    return list(dict.fromkeys(os.path.abspath(d) for d in dirs))


def pth_check() -> Check:
    fix = "reinstall the package (pip install -e <repo> or pip install --force-reinstall llamafactory-kimi-audio)"
    for directory in site_dirs():
        path = os.path.join(directory, PTH_FILE)
        if os.path.isfile(path):
            with open(path, encoding="utf-8", errors="replace") as f:
                hooked = "_startup" in f.read()
            return Check(
                "startup hook (.pth)",
                hooked,
                path if hooked else f"{path} does not call _startup",
                "" if hooked else fix,
            )
    return Check("startup hook (.pth)", False, f"{PTH_FILE} not found in {', '.join(site_dirs())}", fix)


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes")


def opt_out_check() -> Check:
    if _env_true(DISABLE_ENV):
        value = os.environ[DISABLE_ENV]
        return Check(
            "opt-out variable",
            False,
            f"{DISABLE_ENV}={value}: the integration is off in every interpreter",
            f"unset {DISABLE_ENV}",
        )
    return Check("opt-out variable", True, f"{DISABLE_ENV} not set")


_probe_cache: dict[tuple[str, ...], dict[str, Any]] = {}


def probe_fresh_interpreter(timeout: float = 300.0) -> dict[str, Any]:
    """Import LLaMA-Factory in a new ``sys.executable`` and report the hooks, template and patches it ends up with.

    Returns the probe's JSON, or ``{"error": "..."}`` when the interpreter fails. Cached per process and environment.
    """
    key = (sys.executable, os.environ.get(DISABLE_ENV, ""), os.environ.get("PYTHONPATH", ""))
    if key not in _probe_cache:
        _probe_cache[key] = _run_probe(timeout)
    return _probe_cache[key]


def _run_probe(timeout: float) -> dict[str, Any]:
    try:
        done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as err:
        return {"error": f"{type(err).__name__}: {err}"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(PROBE_MARK):
            return json.loads(line[len(PROBE_MARK) :])
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    return {"error": lines[-1] if lines else f"exit status {done.returncode}"}


def integration_checks(probe: Callable[[], dict[str, Any]] = probe_fresh_interpreter) -> list[Check]:
    """Hooks + template active in a fresh interpreter, and the state of every named patch there."""
    from .integration.patches import all_patches

    names = [patch.name for patch in all_patches()]
    if _env_true(DISABLE_ENV):  # the .pth and install() both return at once: nothing to probe
        detail = f"off: {DISABLE_ENV} is set, so no hook runs and the template is not registered"
        return [
            Check("integration active", False, detail, f"unset {DISABLE_ENV}"),
            Check("patches", False, f"not applied (opted out): {', '.join(names)}", f"unset {DISABLE_ENV}"),
        ]
    state = probe()
    if "error" in state:
        fix = "run `python -c 'import llamafactory.data.template'` to see the error; check the versions above"
        return [
            Check("integration active", False, f"a fresh interpreter failed: {state['error']}", fix),
            Check("patches", False, f"unknown: {', '.join(names)}", fix),
        ]
    return [_active_check(state), *(_patch_check(patch, state) for patch in all_patches())]


def _active_check(state: dict[str, Any]) -> Check:
    expected = _declared_hooks()
    applied, failed = set(state["applied"]), state["failed"]
    missing = sorted(set(expected) - applied)
    ok = state["finder"] and state["template"] and not failed and not missing
    if ok:
        return Check("integration active", True, f"template {TEMPLATE!r}; hooks {', '.join(state['applied'])}")
    problems = [] if state["finder"] else ["the start-up finder is not installed"]
    problems += [] if state["template"] else [f"template {TEMPLATE!r} missing"]
    problems += [f"hook {name} failed ({error})" for name, error in failed.items()]
    problems += [f"hooks not applied: {', '.join(missing)}"] if missing else []
    fix = "see the .pth check above; reinstall the package; LLAMAFACTORY_KIMI_AUDIO_STRICT=1 shows hook tracebacks"
    return Check("integration active", False, "; ".join(problems), fix)


def _declared_hooks() -> list[str]:
    from importlib.metadata import entry_points

    from ._startup import GROUP

    return [ep.name for ep in entry_points(group=GROUP) if ep.value.startswith("llamafactory_kimi_audio.")]


def _patch_check(patch: Any, state: dict[str, Any]) -> Check:
    applied = bool(state["patches"].get(patch.name))
    detail = "applied" if applied else f"NOT applied ({patch.why})"
    if applied:
        return Check(f"patch {patch.name}", True, detail)
    fix = f"{patch.owner}.{patch.attribute} changed or its hook failed; check the versions above"
    return Check(f"patch {patch.name}", False, detail, fix)


# --------------------------------------------------------------------------------------------- checkpoint
def checkpoint_checks(model_dir: str) -> list[Check]:
    """Files, config fields, audio sub-models and special-token ids of a Kimi-Audio checkpoint directory."""
    if not os.path.isdir(model_dir):
        return [Check("model: directory", False, f"{model_dir}: not a directory", DOWNLOAD_FIX)]
    config, config_checks = _config_checks(model_dir)
    tokenizer_files = _tokenizer_files_check(model_dir)
    checks = [*config_checks, _weights_check(model_dir), tokenizer_files]
    checks += [_whisper_check(model_dir, config), _glm_check(model_dir)]
    ids_ok = tokenizer_files.ok and all(c.ok for c in config_checks)
    return checks + [_special_ids_check(model_dir, config, ok=ids_ok)]


def _config_checks(model_dir: str) -> tuple[dict[str, Any] | None, list[Check]]:
    path = os.path.join(model_dir, "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError) as err:
        return None, [Check("model: config.json", False, f"{path}: {type(err).__name__}: {err}", DOWNLOAD_FIX)]
    model_type = config.get("model_type")
    type_ok = model_type == KIMI_MODEL_TYPE
    first = Check(
        "model: config.json",
        type_ok,
        f"model_type {model_type!r}" + ("" if type_ok else f", expected {KIMI_MODEL_TYPE!r}"),
        "" if type_ok else f"point --model at a Kimi-Audio checkpoint (model_type {KIMI_MODEL_TYPE!r})",
    )
    missing = [k for k in CONFIG_FIELDS if k not in config]
    if config.get("rope_theta") is None and (config.get("rope_parameters") or {}).get("rope_theta") is None:
        missing.insert(0, "rope_theta")
    fields = Check(
        "model: config fields",
        not missing,
        f"missing {', '.join(missing)}" if missing else f"rope_theta {_rope_theta(config)}, required fields present",
        f"restore {path} from the original download (rope_theta is never guessed)" if missing else "",
    )
    return (config if type_ok else None), [first, fields]


def _rope_theta(config: dict[str, Any]) -> Any:
    return config.get("rope_theta") or (config.get("rope_parameters") or {}).get("rope_theta")


def _weights_check(model_dir: str) -> Check:
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.isfile(index):
        try:
            with open(index, encoding="utf-8") as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
        except (OSError, ValueError, KeyError) as err:
            return Check("model: weights", False, f"{index}: unreadable ({err})", DOWNLOAD_FIX)
        missing = [s for s in shards if not os.path.isfile(os.path.join(model_dir, s))]
        detail = (
            f"missing shards {', '.join(missing[:3])}" if missing else f"{len(shards)} shard(s) listed in the index"
        )
        return Check("model: weights", not missing, detail, DOWNLOAD_FIX if missing else "")
    if os.path.isfile(os.path.join(model_dir, "model.safetensors")):
        return Check("model: weights", True, "model.safetensors")
    return Check("model: weights", False, "neither model.safetensors.index.json nor model.safetensors", DOWNLOAD_FIX)


def _missing(directory: str, names: tuple[str, ...]) -> list[str]:
    return [n for n in names if not os.path.isfile(os.path.join(directory, n))]


def _tokenizer_files_check(model_dir: str) -> Check:
    missing = _missing(model_dir, ("tiktoken.model", "tokenizer_config.json"))
    detail = f"missing {', '.join(missing)}" if missing else "tiktoken.model, tokenizer_config.json"
    return Check("model: tokenizer files", not missing, detail, DOWNLOAD_FIX if missing else "")


def _whisper_check(model_dir: str, config: dict[str, Any] | None) -> Check:
    from .models.configuration_kimi_audio import WHISPER_SUBDIR

    name, directory = f"model: {WHISPER_SUBDIR}/", os.path.join(model_dir, WHISPER_SUBDIR)
    missing = _missing(directory, ("config.json", "model.safetensors"))
    if missing:
        return Check(
            name,
            False,
            f"{directory}: missing {', '.join(missing)}",
            f"{DOWNLOAD_FIX} (the Whisper encoder lives in {WHISPER_SUBDIR}/)",
        )
    with open(os.path.join(directory, "config.json"), encoding="utf-8") as f:
        whisper = json.load(f)
    problems = [] if whisper.get("num_mel_bins") == 128 else [f"num_mel_bins {whisper.get('num_mel_bins')} != 128"]
    adaptor = (config or {}).get("kimia_adaptor_input_dim")
    if adaptor is not None and 4 * int(whisper.get("d_model", 0)) != adaptor:
        problems.append(f"4 x d_model {whisper.get('d_model')} != kimia_adaptor_input_dim {adaptor}")
    detail = "; ".join(problems) or f"config.json + model.safetensors (d_model {whisper.get('d_model')})"
    return Check(
        name, not problems, detail, f"{DOWNLOAD_FIX} (this Whisper does not match the model)" if problems else ""
    )


def _glm_check(model_dir: str) -> Check:
    from .models.configuration_kimi_audio import SEMANTIC_SUBDIR, SEMANTIC_TOKENIZER_ENV, find_semantic_tokenizer

    fix = (
        f"huggingface-cli download THUDM/glm-4-voice-tokenizer --local-dir {os.path.join(model_dir, SEMANTIC_SUBDIR)} "
        f"(or set {SEMANTIC_TOKENIZER_ENV})"
    )
    found = find_semantic_tokenizer(model_dir)
    if found is None:
        return Check(
            f"model: {SEMANTIC_SUBDIR}/", False, "GLM-4-Voice tokenizer not found next to the checkpoint", fix
        )
    missing = _missing(found, ("model.safetensors",))
    return Check(
        f"model: {SEMANTIC_SUBDIR}/",
        not missing,
        f"{found}" + (" has no model.safetensors" if missing else ""),
        fix if missing else "",
    )


def _special_ids_check(model_dir: str, config: dict[str, Any] | None, ok: bool) -> Check:
    name = "model: special token ids"
    if not ok or config is None:
        return Check(
            name, False, "not checked: config.json or the tokenizer files are broken", "see the failures above"
        )
    from .models.special_tokens import MEDIA_BEGIN, MEDIA_END, NUM_SPECIAL_TOKENS
    from .models.tokenization_kimi_audio import KimiAudioTokenizer

    try:
        tokenizer = KimiAudioTokenizer.from_pretrained(model_dir)
    except Exception as err:  # any tokenizer failure is a checkpoint problem to report, not a doctor crash
        return Check(name, False, f"tokenizer does not load: {type(err).__name__}: {err}", DOWNLOAD_FIX)
    num_base = tokenizer.num_base_tokens
    expected = {
        "kimia_media_begin": tokenizer.convert_tokens_to_ids(MEDIA_BEGIN),
        "kimia_media_end": tokenizer.convert_tokens_to_ids(MEDIA_END),
        "kimia_token_offset": num_base + NUM_SPECIAL_TOKENS,
    }
    wrong = [f"{key} {config.get(key)} != {value}" for key, value in expected.items() if config.get(key) != value]
    detail = (
        "; ".join(wrong)
        or f"media {expected['kimia_media_begin']}/{expected['kimia_media_end']}, offset {num_base} + 421"
    )
    fix = "config.json and tiktoken.model come from different checkpoints; download both from the same release"
    return Check(name, not wrong, detail, fix if wrong else "")


# ------------------------------------------------------------------------------------------------- system
def gpu_checks() -> list[Check]:
    import torch

    fix = "install a CUDA build of torch and check CUDA_VISIBLE_DEVICES (CPU runs only the tiny demo)"
    if not torch.cuda.is_available():
        return [
            Check("GPU", False, "no CUDA device visible to torch", fix, required=False),
            Check("bf16", False, "needs a CUDA GPU", "use an Ampere or newer GPU", required=False),
        ]
    names = sorted({torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())})
    bf16 = torch.cuda.is_bf16_supported()
    return [
        Check("GPU", True, f"{torch.cuda.device_count()} x {', '.join(names)}", required=False),
        Check(
            "bf16",
            bf16,
            "supported" if bf16 else "not supported by this GPU",
            "" if bf16 else "train in fp16 (fp16: true) or use an Ampere or newer GPU",
            required=False,
        ),
    ]


def espeak_check() -> Check:
    found = shutil.which("espeak-ng") or shutil.which("espeak")
    fix = "apt-get install espeak-ng (kimi-audio-lf synth falls back to tone words without it)"
    return Check(
        "espeak-ng",
        bool(found),
        found or "not on PATH (only the demo corpus needs it)",
        "" if found else fix,
        required=False,
    )


def as_json(checks: list[Check]) -> dict[str, Any]:
    return {"ok": all_required_ok(checks), "checks": [asdict(c) for c in checks]}
