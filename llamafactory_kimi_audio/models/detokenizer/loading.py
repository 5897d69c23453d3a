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
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    flow, mel_norm = load_flow_model(os.path.join(checkpoint, FLOW_SUBDIR))
    flow.to(device=device, dtype=dtype).eval()
    vocoder = load_vocoder(os.path.join(checkpoint, VOCODER_SUBDIR), device, dtype).eval()
    return Detokenizer(flow, vocoder, mel_norm, settings)


def load_flow_model(directory: str | os.PathLike) -> tuple[FlowDiT, MelNorm]:
    config_path, weights_path = (os.path.join(directory, name) for name in FLOW_FILES)
    config = _read_config(config_path, json_format=False)
    try:
        model = FlowDiT(DiTConfig.from_yaml_dict(config["model"]["dit"]))  # KeyError also for rope_params fields
        mel_norm = MelNorm(bool(config["normalize_mel"]), config["mel_mean"], config["mel_std"])
    except (KeyError, TypeError) as error:
        raise ModelError(f"{config_path}: no {error} entry; expected the official model.dit / mel_* fields") from None
    except ValueError as error:
        raise ModelError(f"{config_path}: {error}") from None
    checkpoint = _torch_load(weights_path)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise ModelError(f"{weights_path}: expected a dict with a 'state_dict' entry (the official layout)")
    state = {k.replace("speech_model.", ""): v for k, v in checkpoint["state_dict"].items() if "speech_model" in k}
    check_keys(state, {k: tuple(v.shape) for k, v in model.state_dict().items()}, weights_path)
    copy_state(model, state)
    return model, mel_norm


def load_vocoder(
    directory: str | os.PathLike, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> BigVGAN:
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
    check_keys(checkpoint["generator"], official_vocoder_shapes(model), weights_path)
    model.to(device=device, dtype=dtype)
    copy_state(model, fold_weight_norm(checkpoint["generator"], dtype, device))
    return model


def official_vocoder_shapes(model: BigVGAN) -> dict[str, tuple[int, ...]]:
    """The official generator's names and shapes: each convolution weight as a ``weight_g`` / ``weight_v`` pair."""
    normed = {
        f"{name}.weight"
        for name, module in model.named_modules()
        if isinstance(module, (torch.nn.Conv1d, torch.nn.ConvTranspose1d))
    }
    shapes: dict[str, tuple[int, ...]] = {}
    for key, tensor in model.state_dict().items():
        if key in normed:
            shapes[f"{key}_g"] = (tensor.shape[0],) + (1,) * (tensor.dim() - 1)
            shapes[f"{key}_v"] = tuple(tensor.shape)
        else:
            shapes[key] = tuple(tensor.shape)
    return shapes


def fold_weight_norm(
    state: dict[str, torch.Tensor], dtype: torch.dtype, device: torch.device | str = "cpu"
) -> dict[str, torch.Tensor]:
    """``X.weight_g`` + ``X.weight_v`` -> ``X.weight = g * v / ||v||`` (norm over all dims but 0).

    Folded with the same kernel, dtype and device as the official ``weight_norm`` hook computes it at every forward
    (the official casts g and v to bfloat16 first), so the folded weights equal the official effective weights."""
    folded = {k: v for k, v in state.items() if not k.endswith((".weight_g", ".weight_v"))}
    for key, v in state.items():
        if key.endswith(".weight_v"):
            stem = key[: -len("_v")]
            g = state[f"{stem}_g"].to(device=device, dtype=dtype)
            folded[stem] = torch._weight_norm(v.to(device=device, dtype=dtype), g, 0)
    return folded


def check_keys(state: dict[str, Any], shapes: dict[str, tuple[int, ...]], path: str) -> None:
    """Every expected name present with its shape, nothing else (strict, as the official loaders): else one line."""
    missing = sorted(k for k in shapes if k not in state)
    unexpected = sorted(k for k in state if k not in shapes)
    wrong = sorted(
        f"{k} {tuple(state[k].shape)} != {shapes[k]}"
        for k in shapes
        if k in state and tuple(getattr(state[k], "shape", ())) != shapes[k]
    )
    problems = [
        f"{label} {_listing(names)}"
        for label, names in (("missing keys", missing), ("unexpected keys", unexpected), ("mis-shaped", wrong))
        if names
    ]
    if problems:
        raise ModelError(f"{path}: {'; '.join(problems)} (is it the official Kimi-Audio detokenizer/vocoder file?)")


def copy_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for key, tensor in model.state_dict().items():
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
        try:  # memory-mapped: the real audio_detokenizer/model.pt also carries entries that are not the DiT
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # legacy (non-zip) serialisation cannot be mapped
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # corrupt or non-tensor pickle: name the file
        raise ModelError(f"{path}: cannot be read as a torch checkpoint ({type(error).__name__}: {error})") from None
