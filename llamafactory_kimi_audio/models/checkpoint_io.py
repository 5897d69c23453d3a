"""Loading and saving in the official Kimi-Audio directory layout.

The LM shards hold ``model.*``, ``lm_head`` and ``mimo_output`` only; the frozen Whisper encoder lives in
``whisper-large-v3/`` (a full Whisper file), the GLM-4-Voice tokenizer in ``glm-4-voice-tokenizer/``, and the
official remote-code ``*.py`` files stay next to the config. ``OfficialLayoutMixin`` gives ``KimiAudioForCausalLM``
that layout on top of ``PreTrainedModel`` (transformers 4.55–5.6, DeepSpeed ZeRO-3 included).
"""

from __future__ import annotations

import glob
import os
import pickle
import re
import shutil
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from transformers import GenerationConfig

from ..errors import ModelError
from ..versions import TRANSFORMERS_MAJOR
from .configuration_kimi_audio import KimiAudioConfig
from .constants import SEMANTIC_SUBDIR, WHISPER_SUBDIR
from .special_tokens import BOS, PAD, SPECIAL_TOKENS, TEXT_EOS, special_id
from .whisper_encoder import read_whisper_encoder_state, save_whisper_dir

WHISPER_KEYS = "whisper_encoder."


def pickled_weights_error(directory: str, err: BaseException) -> ModelError:
    """torch refused a pickled weights file (``weights_only``): name the files and the safe fix (exit 3)."""
    files = sorted(glob.glob(os.path.join(directory, "*.bin")) + glob.glob(os.path.join(directory, "*.pt")))
    shown = ", ".join(files[:3]) or directory
    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
    reason = f"it pickles {found.group(1)}, not only tensors" if found else "weights_only refusal"
    return ModelError(
        f"{shown}: pickled weights that torch refuses to load safely ({reason}); use the checkpoint's safetensors "
        "release, or convert this one to safetensors where you trust its source"
    )


class OfficialLayoutMixin:
    """``from_pretrained`` / ``save_pretrained`` / ``load_state_dict`` of the official layout (mixed in first)."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *args: Any, **kwargs: Any):
        path = os.fspath(pretrained_model_name_or_path)
        config = kwargs.pop("config", None)
        if not isinstance(config, KimiAudioConfig):
            config = KimiAudioConfig.from_pretrained(path)
        elif config.whisper_config is None:
            config.attach_audio_dirs(path)
        kwargs.pop("trust_remote_code", None)
        try:
            model = super().from_pretrained(path, *args, config=config, **kwargs)
        except pickle.UnpicklingError as err:  # torch's weights_only refusal of a pickled .bin
            raise pickled_weights_error(path, err) from err
        loaded = model[0] if isinstance(model, tuple) else model
        dtype = loaded.get_input_embeddings().weight.dtype
        # 4.x upcasts _keep_in_fp32_modules for every quantised load, 5.x for fp16 loads only: do as 5.x does
        if TRANSFORMERS_MAJOR < 5 and loaded.whisper_encoder is not None and dtype != torch.float16:
            loaded.whisper_encoder.to(dtype)
        loaded.load_whisper_encoder(path)
        loaded.missing_mimo_weights = missing_mimo_weights(path)
        loaded.generation_config = default_generation_config(loaded.config, path)
        align_token_ids(loaded.config, loaded.generation_config)
        return model

    def _move_missing_keys_from_meta_to_cpu(self, *args: Any, **kwargs: Any) -> Any:
        """transformers 4.x only (every 4.55–4.57 load calls it): the Whisper encoder is not in the LM shards, so 4.x
        would leave it on the meta device, and a device_map dispatch (LLaMA-Factory's ``{"": device}``, bitsandbytes'
        own) would fail on it. Give it CPU storage first; its weights are read from ``whisper-large-v3/`` right after
        loading."""
        result = super()._move_missing_keys_from_meta_to_cpu(*args, **kwargs)
        if self.whisper_encoder is not None and any(p.is_meta for p in self.whisper_encoder.parameters()):
            self.whisper_encoder.to_empty(device="cpu")
        return result

    def load_whisper_encoder(self, model_dir: str) -> None:
        weights = os.path.join(model_dir, WHISPER_SUBDIR, "model.safetensors")
        if self.whisper_encoder is None or not os.path.isfile(weights):
            return
        state = read_whisper_encoder_state(weights, self.whisper_encoder.state_dict())
        if any(hasattr(p, "ds_id") for p in self.whisper_encoder.parameters()):
            load_into_zero3_partitions(self.whisper_encoder, state)  # from_pretrained under DeepSpeed ZeRO-3
            return
        param = next(self.whisper_encoder.parameters())
        self.whisper_encoder.load_state_dict(
            {k: v.to(device=param.device, dtype=param.dtype) for k, v in state.items()}
        )
        self.whisper_encoder.requires_grad_(False)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """A state dict without any ``whisper_encoder.*`` key is an LM checkpoint of the official layout (every
        save, Trainer checkpoints included). It leaves the frozen encoder as loaded and does not report the encoder's
        keys missing, so resuming is quiet; anything else is loaded as usual."""
        if self.whisper_encoder is None or any(key.startswith(WHISPER_KEYS) for key in state_dict):
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        missing = [key for key in result.missing_keys if not key.startswith(WHISPER_KEYS)]
        if strict and (missing or result.unexpected_keys):
            raise RuntimeError(
                f"Error(s) in loading state_dict for {type(self).__name__}: missing keys {missing}, "
                f"unexpected keys {result.unexpected_keys}"
            )
        return type(result)(missing, result.unexpected_keys)

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, state_dict=None, **kwargs: Any):
        """Official layout: LM shards without the Whisper encoder, ``whisper-large-v3/`` and the GLM-4-Voice dir."""
        save_directory = os.fspath(save_directory)
        state_dict = state_dict if state_dict is not None else self.state_dict()
        lm_state = {k: v for k, v in state_dict.items() if not k.startswith(WHISPER_KEYS)}
        super().save_pretrained(save_directory, *args, state_dict=lm_state, **kwargs)
        if self.whisper_encoder is not None:
            whisper_state = {k[len(WHISPER_KEYS) :]: v for k, v in state_dict.items() if k.startswith(WHISPER_KEYS)}
            save_whisper_dir(os.path.join(save_directory, WHISPER_SUBDIR), whisper_state, self.config.whisper_config)
        source = self.config.semantic_tokenizer_path
        target = os.path.join(save_directory, SEMANTIC_SUBDIR)
        if source and os.path.isdir(source) and os.path.abspath(source) != os.path.abspath(target):
            shutil.copytree(source, target, dirs_exist_ok=True)
        copy_remote_code(getattr(self.config, "_name_or_path", None), save_directory)
        copy_speech_dirs(getattr(self.config, "_name_or_path", None), save_directory)

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """Counted once per training phase. The HF Trainer asks after every optimizer step (for its ``total_flos``
        log), and the count walks every module: ~4,000 once LoRA wraps the 7B, ~10 ms of host time per step while the
        GPU waits. Modules and trainable flags are set before ``train()``, which starts a new count."""
        if not self.training:
            return super().num_parameters(only_trainable=only_trainable, exclude_embeddings=exclude_embeddings)
        counts = self.__dict__.setdefault("_training_parameter_counts", {})
        key = (only_trainable, exclude_embeddings)
        if key not in counts:
            counts[key] = super().num_parameters(only_trainable=only_trainable, exclude_embeddings=exclude_embeddings)
        return counts[key]

    def train(self, mode: bool = True):
        self.__dict__.pop("_training_parameter_counts", None)
        return super().train(mode)


MIMO_PREFIXES = ("model.mimo_layers.", "model.mimo_norm.", "mimo_output.")


def missing_mimo_weights(model_dir: str) -> list[str]:
    """The MIMO (audio head) prefixes a local safetensors checkpoint lacks (none for a hub id or .bin files)."""
    index = os.path.join(model_dir, "model.safetensors.index.json")
    single = os.path.join(model_dir, "model.safetensors")
    if os.path.isfile(index):
        import json

        with open(index, encoding="utf-8") as handle:
            names = json.load(handle).get("weight_map", {}).keys()
    elif os.path.isfile(single):
        from safetensors import safe_open

        with safe_open(single, framework="pt") as handle:
            names = list(handle.keys())
    else:
        return []
    return [prefix for prefix in MIMO_PREFIXES if not any(name.startswith(prefix) for name in names)]


def copy_remote_code(source_dir: str | None, save_directory: str) -> None:
    """Keep the official ``*.py`` files (named by ``auto_map``) next to a saved checkpoint, so an export loads with
    the official remote code as well; this package never executes them."""
    if (
        not source_dir
        or not os.path.isdir(source_dir)
        or os.path.abspath(source_dir) == os.path.abspath(save_directory)
    ):
        return
    for name in sorted(os.listdir(source_dir)):
        if name.endswith(".py") and os.path.isfile(os.path.join(source_dir, name)):
            shutil.copy2(os.path.join(source_dir, name), os.path.join(save_directory, name))


SPEECH_SUBDIRS = ("audio_detokenizer", "vocoder")  # the detokenizer of spoken answers (models/detokenizer/)


def copy_speech_dirs(source_dir: str | None, save_directory: str) -> None:
    """Keep ``audio_detokenizer/`` and ``vocoder/`` of the source checkpoint (training never changes them), so an
    export still speaks. Files are hard-linked when the filesystem allows (the official ``model.pt`` is 19 GB)."""
    if not source_dir or not os.path.isdir(source_dir):
        return
    for name in SPEECH_SUBDIRS:
        source, target = os.path.join(source_dir, name), os.path.join(save_directory, name)
        if os.path.isdir(source) and os.path.abspath(source) != os.path.abspath(target):
            shutil.copytree(source, target, dirs_exist_ok=True, copy_function=_link_or_copy)


def _link_or_copy(source: str, target: str) -> None:
    if os.path.exists(target):
        os.remove(target)  # a re-export replaces the file instead of writing through an old link
    try:
        os.link(source, target)
    except OSError:  # another filesystem, or links not allowed
        shutil.copy2(source, target)


def load_into_zero3_partitions(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Fill a module whose parameters DeepSpeed ZeRO-3 has partitioned (each rank holds a slice, ``param.data`` is
    empty): gather them, copy on rank 0, let DeepSpeed re-partition from rank 0 (a collective: every rank calls)."""
    import deepspeed
    import torch.distributed as dist

    params = dict(module.named_parameters())
    with deepspeed.zero.GatheredParameters(list(params.values()), modifier_rank=0):
        if not dist.is_initialized() or dist.get_rank() == 0:
            with torch.no_grad():
                for name, param in params.items():
                    param.copy_(state[name].to(device=param.device, dtype=param.dtype))
    with torch.no_grad():
        for name, buffer in module.named_buffers():
            if name in state:
                buffer.copy_(state[name].to(device=buffer.device, dtype=buffer.dtype))
    module.requires_grad_(False)


def token_ids(config: KimiAudioConfig) -> dict[str, int]:
    """bos / eos / pad as the tokenizer has them in a ``kimi_audio`` run: ``[BOS]``, ``<|im_kimia_text_eos|>``
    (LLaMA-Factory's template makes the text end the tokenizer's EOS, ``replace_eos``) and the pad token."""
    return {
        "bos_token_id": special_id(config, BOS),
        "eos_token_id": special_id(config, TEXT_EOS),
        "pad_token_id": special_id(config, PAD),
    }


def align_token_ids(config: KimiAudioConfig, generation: GenerationConfig) -> None:
    """Give the model config and the generation config the tokenizer's ids. The official config.json does not say
    them for sure (spec §1: unverified), and the Trainer otherwise "aligns" them itself at every training run, with a
    warning; this does the same alignment quietly (other EOS ids of a shipped generation config stay stop ids)."""
    ids = token_ids(config)
    for key, value in ids.items():
        setattr(config, key, value)
    generation.bos_token_id, generation.pad_token_id = ids["bos_token_id"], ids["pad_token_id"]
    text_eos, eos = ids["eos_token_id"], generation.eos_token_id
    if eos is None or eos == text_eos:
        generation.eos_token_id = text_eos
    elif isinstance(eos, int):
        generation.eos_token_id = [text_eos, eos]
    elif text_eos not in eos:
        generation.eos_token_id = [text_eos, *eos]


def default_generation_config(config: KimiAudioConfig, model_dir: str | None = None) -> GenerationConfig:
    """Greedy decoding that stops at ``<|im_kimia_text_eos|>`` (spec §7), unless the checkpoint ships its own."""
    eos = special_id(config, TEXT_EOS)
    pad = special_id(config, SPECIAL_TOKENS[-1])
    generation = GenerationConfig(do_sample=False, eos_token_id=eos, pad_token_id=pad, max_new_tokens=512)
    if model_dir and os.path.isfile(os.path.join(model_dir, "generation_config.json")):
        try:
            shipped = GenerationConfig.from_pretrained(model_dir)
            shipped.eos_token_id = shipped.eos_token_id or eos
            shipped.pad_token_id = pad if shipped.pad_token_id is None else shipped.pad_token_id
            return shipped
        except Exception:  # a foreign generation_config.json must not block loading
            return generation
    return generation
