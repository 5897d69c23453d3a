"""``llamafactory-cli train`` ends a Kimi-Audio run with one line (the problem and its fix) and a documented exit code.

The guard wraps ``llamafactory.train.tuner.run_exp`` (a row of the patch table). Before the run it checks what a
Kimi-Audio recipe (``template: kimi_audio``) needs of ``model_name_or_path``, its dataset files and its
``output_dir`` (``preflight.py``) and adds the recipe keys such a run needs where the recipe lacks them
(``recipe_keys.py``), for a recipe file and for one given as command-line flags alike (``recipe_flags.py``); during
the run it turns the package's errors (``errors.KimiAudioError`` and the data / audio errors) into
``llamafactory-cli: <message>`` and ``exit_code``, including errors raised in DataLoader workers, whose message
torch wraps in the worker's traceback. ``KIMI_AUDIO_DEBUG=1`` keeps the traceback. Anything else is a bug and keeps
its traceback. ``llamafactory-cli export`` and ``api`` get the same (``make_cli_guard``, rows of their own): the model
and adapter paths are checked before the model loads.
"""

from __future__ import annotations

import functools
import os
import pickle
import sys
from typing import Any

from .. import settings
from ..errors import EXIT_BAD_INPUT, EnvironmentProblem, InputError, KimiAudioError, ModelError
from ..fileio.audio_errors import AudioError
from ..fileio.textio import DataError
from .fp8 import check_fp8_recipe
from .preflight import check_recipe_files
from .recipe_flags import added_flags, flags_to_recipe, wants_help
from .recipe_keys import complete_recipe
from .registration import MODEL_GROUPS, TEMPLATE_NAME

ONE_LINE_ERRORS = (KimiAudioError, AudioError, DataError)
_HUB_HINTS = ("huggingface.co", "not a valid model identifier", "Repository Not Found")
_FIX_MODEL = "set model_name_or_path to a Kimi-Audio checkpoint (moonshotai/Kimi-Audio-7B-Instruct or a local copy)"
_FIX_ADAPTER = "set adapter_name_or_path to the output_dir of a LoRA run (the folder with adapter_config.json)"
_NO_ADAPTER = (
    "Can't find 'adapter_config.json' at "  # peft's ValueError for a path that is neither a folder nor on the Hub
)


def unwrap_worker_message(message: str) -> str:
    """The original message of an error re-raised from a DataLoader worker (torch prepends the worker traceback)."""
    if not (message.startswith("Caught ") and "Original Traceback" in message):
        return message
    last = [line for line in message.splitlines() if line.strip()][-1].strip()
    name, sep, text = last.partition(": ")
    return text if sep and " " not in name else last


def _read_args(args: Any) -> dict[str, Any] | list[str] | None:
    """The recipe as LLaMA-Factory reads it: a dict (a YAML / JSON file) or the command-line flags (a list)."""
    try:
        from llamafactory.hparams.parser import read_args

        return read_args(args)
    except Exception:  # LLaMA-Factory reports its own argument errors
        return None


def _recipe(args: Any) -> dict[str, Any] | None:
    """The recipe of ``run_exp(args)`` as a dict for the checks (None: LLaMA-Factory cannot read it)."""
    return as_recipe(_read_args(args))


def as_recipe(read: Any) -> dict[str, Any] | None:
    """A recipe file's dict, or the flags read as strings (``recipe_flags.py``)."""
    if isinstance(read, dict):
        return read
    if isinstance(read, list) and not wants_help(read):
        return flags_to_recipe(read)
    return None


def _completed_args(read: dict[str, Any] | list[str], recipe: dict[str, Any]) -> dict[str, Any] | list[str]:
    """What LLaMA-Factory parses: the completed dict, or the flags with the added keys appended as flags."""
    completed = complete_recipe(recipe)
    return completed if isinstance(read, dict) else [*read, *added_flags(recipe, completed)]


def _looks_local(path: str) -> bool:
    return os.path.isabs(path) or path.startswith((".", "~")) or path.count("/") != 1 or os.path.exists(path)


def check_kimi_recipe(recipe: dict[str, Any]) -> None:
    """A ``kimi_audio`` recipe needs a Kimi-Audio checkpoint (an existing directory that holds one, or a Hub id) and,
    where it names adapters, LoRA output folders (train, export and api alike)."""
    _check_model_path(str(recipe.get("model_name_or_path") or ""))
    check_adapters(recipe)


def check_before_load(recipe: dict[str, Any], *, with_llamafactory: bool = True) -> None:
    """The run guard's checks of a ``kimi_audio`` training recipe, in order, before the slow model load.
    ``with_llamafactory=False``: only those that need neither torch nor LLaMA-Factory (the early check's, for a
    recipe where the trainer and fp8 checks surely pass)."""
    check_kimi_recipe(recipe)
    if with_llamafactory:
        check_trainer(recipe)
        check_fp8_recipe(recipe)
    check_recipe_files(recipe)  # dataset files and output_dir


def check_trainer(recipe: dict[str, Any]) -> None:
    """A ``kimi_audio`` training run needs LLaMA-Factory's own trainers: its Megatron-Core workflow (``USE_MCA=1``)
    converts models Kimi-Audio is not."""
    from llamafactory.extras.misc import is_env_enabled

    from .recipe_keys import recipe_true

    if is_env_enabled("USE_MCA") or recipe_true(recipe.get("use_mca", False)):
        raise InputError(
            f"template {TEMPLATE_NAME}: Kimi-Audio has no Megatron-Core model (USE_MCA=1 / use_mca: true); unset "
            "USE_MCA to train with LLaMA-Factory's own trainer (DeepSpeed or DDP for several GPUs)"
        )


def _check_model_path(path: str) -> None:
    from ..models.auto import is_kimi_audio_checkpoint, read_config_json

    if not path or path in MODEL_GROUPS.values():
        return
    if os.path.isdir(path):
        if not is_kimi_audio_checkpoint(path):
            model_type = (read_config_json(path) or {}).get("model_type", "no config.json")
            raise ModelError(
                f"template {TEMPLATE_NAME} needs a Kimi-Audio checkpoint, but model_name_or_path {path} is not one "
                f"(model_type: {model_type}); {_FIX_MODEL}, or use this model's own template"
            )
    elif _looks_local(path):
        raise ModelError(f"model_name_or_path {path}: no such directory; {_FIX_MODEL}")


def check_adapters(recipe: dict[str, Any]) -> None:
    """Each of ``adapter_name_or_path`` (comma-separated) is a LoRA output folder, checked before the model loads."""
    for path in filter(None, (p.strip() for p in str(recipe.get("adapter_name_or_path") or "").split(","))):
        if os.path.isdir(path):
            if not os.path.isfile(os.path.join(path, "adapter_config.json")):
                raise ModelError(f"adapter_name_or_path {path}: no adapter_config.json there; {_FIX_ADAPTER}")
        elif _looks_local(path):
            raise ModelError(f"adapter_name_or_path {path}: no such directory{_relative_note(path)}; {_FIX_ADAPTER}")


def one_line(err: BaseException, recipe: dict[str, Any] | None) -> tuple[str, int] | None:
    """(message, exit code) for the errors that end a run with one line; None keeps the traceback (a bug)."""
    if isinstance(err, ONE_LINE_ERRORS):
        return unwrap_worker_message(str(err)), getattr(err, "exit_code", EXIT_BAD_INPUT)
    pickled = next((e for e in _chain(err) if isinstance(e, pickle.UnpicklingError)), None)
    if recipe is not None and pickled is not None:  # an adapter's pickled .bin (the model's is a ModelError already)
        from ..models.checkpoint_io import pickled_weights_error

        adapter = str(recipe.get("adapter_name_or_path") or recipe.get("model_name_or_path") or "").split(",")[0]
        return str(pickled_weights_error(adapter, pickled)), ModelError.exit_code
    no_adapter = next((e for e in _chain(err) if isinstance(e, ValueError) and _NO_ADAPTER in str(e)), None)
    if recipe is not None and no_adapter is not None:  # a Hub-id-like relative path (saves/kimi-audio-lora)
        path = str(no_adapter).split(_NO_ADAPTER, 1)[1].strip("'")
        return f"adapter_name_or_path {path}: not found{_relative_note(path)}; {_FIX_ADAPTER}", ModelError.exit_code
    hub_error = next((e for e in _chain(err) if any(hint in str(e) for hint in _HUB_HINTS)), None)
    if recipe is not None and isinstance(err, OSError) and hub_error is not None:
        first = " ".join(str(hub_error).strip().splitlines()[0].split())  # the hub client's first sentence
        path = str(recipe.get("model_name_or_path"))
        return f"model_name_or_path {path}: {first}{_relative_note(path)}; {_FIX_MODEL}", ModelError.exit_code
    return None


def _relative_note(path: str) -> str:
    """For a relative path that is not there (``models/Kimi-Audio-7B-Instruct`` run from another directory): where it
    was looked for, since the hub client's message alone suggests a network problem."""
    if os.path.isabs(path) or os.path.exists(path):
        return ""
    where = os.path.abspath(path)
    return f" (no folder {where}: a relative path resolves against the directory llamafactory-cli runs in)"


def _chain(err: BaseException | None):
    """``err`` and its causes (LLaMA-Factory re-raises hub errors as ``OSError("Failed to load tokenizer.")``)."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def _close_progress_bars() -> None:
    """Close open tqdm bars first: one closed at exit would redraw itself after our line."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())):
        bar.close()


def print_one_line(message: str) -> None:
    _close_progress_bars()
    print(f"llamafactory-cli: {message}", file=sys.stderr, flush=True)


def make_run_guard(original):
    @functools.wraps(original)
    def run_exp(args: Any = None, *more: Any, **kwargs: Any):
        read = _read_args(args)
        recipe = as_recipe(read)
        kimi_recipe = recipe is not None and recipe.get("template") == TEMPLATE_NAME
        try:
            if kimi_recipe:
                check_before_load(recipe)
                args = _completed_args(read, recipe)  # the keys a Kimi-Audio run needs, where the recipe lacks them
            return original(args, *more, **kwargs)
        except Exception as err:
            _end_with_one_line(err, recipe if kimi_recipe else None)
            raise

    return run_exp


def make_cli_guard(original):
    """``llamafactory-cli export`` / ``api`` of a Kimi-Audio recipe (``export_model``, ``run_api``): the model and
    adapter paths are checked before the model loads, and a failure ends with one line as a training run does. Only
    the CLI's call (no arguments): the Web UI exports in its own process, passing a dict, and shows the error
    itself; a SystemExit there would end it."""

    @functools.wraps(original)
    def guarded(*args: Any, **kwargs: Any):
        if any(arg is not None for arg in (*args, *kwargs.values())):
            return original(*args, **kwargs)
        recipe = _recipe(None)
        kimi_recipe = recipe is not None and recipe.get("template") == TEMPLATE_NAME
        try:
            if kimi_recipe:
                check_kimi_recipe(recipe)
            return original(*args, **kwargs)
        except Exception as err:
            _end_with_one_line(err, recipe if kimi_recipe else None)
            raise

    return guarded


def _end_with_one_line(err: Exception, recipe: dict[str, Any] | None) -> None:
    """Print the one line of ``err`` and exit with its code; returns (the caller re-raises) for a bug or with
    ``KIMI_AUDIO_DEBUG``."""
    line = one_line(err, recipe)
    if line is None or settings.enabled("KIMI_AUDIO_DEBUG"):
        return
    print_one_line(line[0])
    raise SystemExit(line[1]) from None


def make_opt_out_notice(original):
    """With ``KIMI_AUDIO_DISABLE`` set, a ``kimi_audio`` recipe fails inside stock LLaMA-Factory (no template, remote
    code): say which variable turned the integration off instead of that traceback."""

    @functools.wraps(original)
    def run_exp(args: Any = None, *more: Any, **kwargs: Any):
        try:
            return original(args, *more, **kwargs)
        except Exception:
            recipe = _recipe(args)
            if recipe is None or recipe.get("template") != TEMPLATE_NAME or settings.enabled("KIMI_AUDIO_DEBUG"):
                raise
            raw, variable = settings.raw_value("KIMI_AUDIO_DISABLE")
            print_one_line(
                f"this recipe uses template {TEMPLATE_NAME}, but {variable}={raw} turns the Kimi-Audio integration "
                f"off (no template, plugin or native model); unset {variable} to train it"
            )
            raise SystemExit(EnvironmentProblem.exit_code) from None

    return run_exp
