"""``KimiAudioConfig``: reads the official ``config.json`` (model_type ``moonshot_kimia``) on transformers 4.55–5.6."""

from __future__ import annotations

import json
import os
from typing import Any

from transformers import PretrainedConfig

from ..errors import InputError, ModelError
from .constants import MODEL_TYPE, OFFICIAL_ARCHITECTURE, WHISPER_SUBDIR, find_semantic_tokenizer
from .pointwise import COMPILE_MODES

OFFICIAL_AUTO_MAP = {
    "AutoConfig": "configuration_moonshot_kimia.KimiAudioConfig",
    "AutoModel": "modeling_moonshot_kimia.MoonshotKimiaForCausalLM",
    "AutoModelForCausalLM": "modeling_moonshot_kimia.MoonshotKimiaForCausalLM",
}
LOSS_REDUCTIONS = ("sample", "token")  # the official per-utterance mean, or the mean over all labelled tokens
RUNTIME_SWITCHES = ("use_varlen_attention", "compile_pointwise", "fast_greedy")


class KimiAudioConfig(PretrainedConfig):
    model_type = MODEL_TYPE
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        vocab_size: int = 168448,
        hidden_size: int = 3584,
        intermediate_size: int = 18944,
        num_hidden_layers: int = 28,
        num_attention_heads: int = 28,
        num_key_value_heads: int = 4,
        hidden_act: str = "silu",
        max_position_embeddings: int = 8192,
        rms_norm_eps: float = 1e-6,
        rope_theta: float | None = None,
        attention_dropout: float = 0.0,
        use_cache: bool = True,
        tie_word_embeddings: bool = False,
        kimia_mimo_layers: int = 6,
        kimia_mimo_transformer_from_layer_index: int = 21,
        kimia_mimo_audiodelaytokens: int = 6,
        kimia_audio_output_vocab: int = 16896,
        kimia_text_output_vocab: int = 152064,
        kimia_token_offset: int = 152064,
        kimia_adaptor_input_dim: int = 5120,
        kimia_media_begin: int = 151661,
        kimia_media_end: int = 151663,
        num_base_tokens: int = 151643,
        num_audio_special_tokens: int = 512,
        use_whisper_feature: bool = True,
        whisper_config: dict[str, Any] | None = None,
        semantic_tokenizer_path: str | None = None,
        loss_reduction: str = "sample",
        use_varlen_attention: bool = True,
        compile_pointwise: str = "off",
        fast_greedy: bool = True,
        **kwargs: Any,
    ):
        rope_theta = plain_rope_theta(
            rope_theta, kwargs.pop("rope_parameters", None), kwargs.pop("rope_scaling", None)
        )
        check_choice("loss_reduction", loss_reduction, LOSS_REDUCTIONS)
        check_choice("compile_pointwise", compile_pointwise, COMPILE_MODES)
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads or num_attention_heads
        self.head_dim = hidden_size // num_attention_heads
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.rms_norm_eps = rms_norm_eps
        # Never fall back silently to a default base (the remote class default 10000 is wrong for the real model).
        self.rope_theta = None if rope_theta is None else float(rope_theta)
        self.attention_dropout = attention_dropout
        self.use_cache = use_cache
        self.kimia_mimo_layers = kimia_mimo_layers
        self.kimia_mimo_transformer_from_layer_index = kimia_mimo_transformer_from_layer_index
        self.kimia_mimo_audiodelaytokens = kimia_mimo_audiodelaytokens
        self.kimia_audio_output_vocab = kimia_audio_output_vocab
        self.kimia_text_output_vocab = kimia_text_output_vocab
        self.kimia_token_offset = kimia_token_offset
        self.kimia_adaptor_input_dim = kimia_adaptor_input_dim
        self.kimia_media_begin = kimia_media_begin
        self.kimia_media_end = kimia_media_end
        self.num_base_tokens = num_base_tokens
        self.num_audio_special_tokens = num_audio_special_tokens
        self.use_whisper_feature = use_whisper_feature
        self.whisper_config = whisper_config
        self.semantic_tokenizer_path = semantic_tokenizer_path
        self.loss_reduction = loss_reduction
        # Speed switches of this process (set by the LLaMA-Factory integration from its settings); never saved.
        self.use_varlen_attention = bool(use_varlen_attention)
        self.compile_pointwise = compile_pointwise
        self.fast_greedy = bool(fast_greedy)  # greedy generate() on CUDA: static cache + CUDA graph (fast_generation)
        kwargs.setdefault("architectures", [OFFICIAL_ARCHITECTURE])
        kwargs.setdefault("auto_map", dict(OFFICIAL_AUTO_MAP))
        kwargs.pop("model_type", None)  # an official export's "qwen2" would shadow the class's model_type
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)

    def require_rope_theta(self) -> float:
        if self.rope_theta is None:
            raise ModelError(
                "config.json has neither `rope_theta` nor `rope_parameters.rope_theta`; refusing to guess the RoPE "
                "base "
                "(the real Kimi-Audio uses the value in its downloaded config.json)"
            )
        return self.rope_theta

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> KimiAudioConfig:
        config = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        result = config[0] if isinstance(config, tuple) else config
        result.attach_audio_dirs(os.fspath(pretrained_model_name_or_path))
        return config

    def attach_audio_dirs(self, model_dir: str) -> None:
        """Read the Whisper encoder config and locate the GLM-4-Voice tokenizer next to an official checkpoint."""
        whisper_config_file = os.path.join(model_dir, WHISPER_SUBDIR, "config.json")
        if os.path.isfile(whisper_config_file):
            with open(whisper_config_file, encoding="utf-8") as f:
                self.whisper_config = json.load(f)
        if self.semantic_tokenizer_path is None:
            self.semantic_tokenizer_path = find_semantic_tokenizer(model_dir)

    def to_diff_dict(self) -> dict[str, Any]:
        """What ``save_pretrained`` writes. The dtype under the official name ``torch_dtype`` (5.x says ``dtype``);
        renamed here, not in ``to_dict``, whose keys 5.x reads back as attributes (``torch_dtype`` would warn)."""
        output = super().to_diff_dict()
        if output.get("dtype") is not None:
            output["torch_dtype"] = output.pop("dtype")
        return output

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        output["model_type"] = self.model_type
        output["architectures"] = [OFFICIAL_ARCHITECTURE]
        output.setdefault("auto_map", dict(OFFICIAL_AUTO_MAP))
        output.pop("head_dim", None)
        # Local paths and the sub-model config live in their own directories, not in the official config.json.
        for key in ("whisper_config", "semantic_tokenizer_path", "rope_parameters", *RUNTIME_SWITCHES):
            output.pop(key, None)
        if output.get("loss_reduction") == "sample":
            output.pop("loss_reduction")
        return output


def plain_rope_theta(rope_theta: float | None, rope_parameters: dict | None, rope_scaling: dict | None):
    """The RoPE base from ``rope_theta`` or 5.x's ``rope_parameters``; any RoPE scaling is refused."""
    if rope_scaling and rope_scaling.get("rope_type", rope_scaling.get("type", "default")) != "default":
        raise ModelError(f"Kimi-Audio uses plain RoPE; rope_scaling={rope_scaling} is not supported")
    return rope_theta if rope_theta is not None else (rope_parameters or {}).get("rope_theta")


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise InputError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
