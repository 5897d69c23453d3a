"""Load the official detokenizer directories of a Kimi-Audio checkpoint by parameter name.

``<checkpoint>/audio_detokenizer/{config.yaml, model.pt}``: the flow-matching DiT; ``model.pt`` holds
``{"state_dict": {...}}`` whose ``speech_model.*`` entries are the DiT (the official loader keeps the keys that
contain ``speech_model`` and strips ``speech_model.``). ``<checkpoint>/vocoder/{config.json, model.pt}``: BigVGAN;
``model.pt`` holds ``{"generator": {...}}`` with weight-normalised convolutions (``weight_g`` / ``weight_v``).
Both are loaded strictly, as the official loader does: a missing, unexpected or mis-shaped key is a one-line error.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch

from ...errors import ModelError
from .bigvgan import BigVGAN
from .flow_model import DiTConfig, FlowDiT
from .streaming import Detokenizer, MelNorm, StreamingSettings

FLOW_SUBDIR, VOCODER_SUBDIR = "audio_detokenizer", "vocoder"
FLOW_FILES, VOCODER_FILES = ("config.yaml", "model.pt"), ("config.json", "model.pt")


def has_detokenizer(checkpoint: str | os.PathLike) -> bool:
    """True when both official directories are present with their config and weights."""
    return all(
        os.path.isfile(os.path.join(checkpoint, sub, name))
        for sub, names in ((FLOW_SUBDIR, FLOW_FILES), (VOCODER_SUBDIR, VOCODER_FILES))
        for name in names
    )


def load_detokenizer(
    checkpoint: str | os.PathLike,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    settings: StreamingSettings | None = None,
) -> Detokenizer:
    """The native detokenizer of a checkpoint directory (the official one runs in bfloat16 on a GPU)."""
    flow, mel_norm = load_flow_model(os.path.join(checkpoint, FLOW_SUBDIR))
    vocoder = load_vocoder(os.path.join(checkpoint, VOCODER_SUBDIR))
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    flow.to(device=device, dtype=dtype).eval()
    vocoder.to(device=device, dtype=dtype).eval()
    return Detokenizer(flow, vocoder, mel_norm, settings)


def load_flow_model(directory: str | os.PathLike) -> tuple[FlowDiT, MelNorm]:
    config_path, weights_path = (os.path.join(directory, name) for name in FLOW_FILES)
    config = _read_config(config_path, json_format=False)
    try:
        dit = DiTConfig.from_yaml_dict(config["model"]["dit"])
        mel_norm = MelNorm(bool(config["normalize_mel"]), config["mel_mean"], config["mel_std"])
    except (KeyError, TypeError) as error:
        raise ModelError(f"{config_path}: no {error} entry; expected the official model.dit / mel_* fields") from None
    checkpoint = _torch_load(weights_path)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise ModelError(f"{weights_path}: expected a dict with a 'state_dict' entry (the official layout)")
    state = {k.replace("speech_model.", ""): v for k, v in checkpoint["state_dict"].items() if "speech_model" in k}
    model = FlowDiT(dit)
    load_strict(model, state, weights_path)
    return model, mel_norm


def load_vocoder(directory: str | os.PathLike) -> BigVGAN:
    config_path, weights_path = (os.path.join(directory, name) for name in VOCODER_FILES)
    config = _read_config(config_path, json_format=True)
    checkpoint = _torch_load(weights_path)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("generator"), dict):
        raise ModelError(f"{weights_path}: expected a dict with a 'generator' entry (the official layout)")
    try:
        model = BigVGAN(config)
    except KeyError as error:
        raise ModelError(f"{config_path}: no {error} entry; expected the official BigVGAN fields") from None
    except ValueError as error:
        raise ModelError(f"{config_path}: {error}") from None
    load_strict(model, fold_weight_norm(checkpoint["generator"]), weights_path)
    return model


def fold_weight_norm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``X.weight_g`` + ``X.weight_v`` -> ``X.weight = g * v / ||v||`` (norm over all dims but 0, as weight_norm)."""
    folded = {k: v for k, v in state.items() if not k.endswith((".weight_g", ".weight_v"))}
    for key in state:
        if not key.endswith(".weight_v"):
            continue
        stem = key[: -len("_v")]
        v, g = state[key].float(), state.get(f"{stem}_g")
        if g is None:
            folded[f"{stem}_g"] = None  # reported as missing below
            continue
        norm = v.reshape(v.shape[0], -1).norm(dim=1).reshape(-1, *([1] * (v.dim() - 1)))
        folded[stem] = (g.float() * v / norm).to(state[key].dtype)
    for key in state:
        if key.endswith(".weight_g") and f"{key[:-2]}_v" not in state:
            folded[f"{key[:-2]}_v"] = None
    return folded


def load_strict(model: torch.nn.Module, state: dict[str, Any], path: str) -> None:
    """Copy every parameter/buffer by name; any missing, unexpected or mis-shaped key -> one-line ModelError."""
    own = model.state_dict()
    missing = sorted(k for k in own if state.get(k) is None)
    unexpected = sorted(k for k in state if k not in own)
    wrong = sorted(
        f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}"
        for k in own
        if state.get(k) is not None and tuple(state[k].shape) != tuple(own[k].shape)
    )
    problems = [
        f"{label} {_listing(names)}"
        for label, names in (("missing keys", missing), ("unexpected keys", unexpected), ("mis-shaped", wrong))
        if names
    ]
    if problems:
        raise ModelError(f"{path}: {'; '.join(problems)} (is it the official Kimi-Audio detokenizer/vocoder file?)")
    with torch.no_grad():
        for key, tensor in own.items():
            tensor.copy_(state[key])


def _listing(names: list[str], shown: int = 5) -> str:
    more = f" ... ({len(names)} in all)" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def _read_config(path: str, json_format: bool) -> dict[str, Any]:
    if not os.path.isfile(path):
        raise ModelError(f"{path}: not found; the checkpoint has no native-detokenizer files there")
    import yaml

    with open(path, encoding="utf-8") as handle:
        try:
            config = json.load(handle) if json_format else yaml.safe_load(handle)
        except (ValueError, yaml.YAMLError) as error:
            raise ModelError(f"{path}: unreadable config ({error})") from None
    if not isinstance(config, dict):
        raise ModelError(f"{path}: expected a mapping of settings, got {type(config).__name__}")
    return config


def _torch_load(path: str) -> Any:
    if not os.path.isfile(path):
        raise ModelError(f"{path}: not found; the checkpoint has no native-detokenizer files there")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # corrupt or non-tensor pickle: name the file
        raise ModelError(f"{path}: cannot be read as a torch checkpoint ({type(error).__name__}: {error})") from None
