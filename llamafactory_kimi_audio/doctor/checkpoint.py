"""``kimi-audio-lf doctor --model DIR``: is this a complete Kimi-Audio checkpoint in the official layout (config
fields, LM shards, tokenizer files, ``whisper-large-v3/``, the GLM-4-Voice tokenizer, special-token ids)?"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from ..models.constants import MODEL_TYPE as KIMI_MODEL_TYPE

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
# `hf` is huggingface_hub's CLI since 0.34 (transformers >= 4.55 requires that); `huggingface-cli` no longer works
DOWNLOAD_FIX = "download the checkpoint again: hf download moonshotai/Kimi-Audio-7B-Instruct --local-dir DIR"


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True


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
    from ..models.constants import WHISPER_SUBDIR

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
    from ..models.constants import SEMANTIC_SUBDIR, SEMANTIC_TOKENIZER_ENV, find_semantic_tokenizer

    fix = (
        f"hf download THUDM/glm-4-voice-tokenizer --local-dir {os.path.join(model_dir, SEMANTIC_SUBDIR)} "
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
    from ..models.special_tokens import MEDIA_BEGIN, MEDIA_END, NUM_SPECIAL_TOKENS
    from ..models.tokenization_kimi_audio import KimiAudioTokenizer

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
