"""Native Kimi-Audio (``moonshot_kimia``) for transformers 4.55–5.6: SDPA/eager attention, real gradient
checkpointing, Cache objects, ``GenerationMixin``, loss from ``labels``, per-sample audio fusion.

One id stream. LLaMA-Factory carries a single ``input_ids``; the official model takes two parallel streams (spec §5.3).
Every official position holds a real token in exactly one stream and ``<|im_kimia_text_blank|>`` in the other, so the
streams are recovered from ids: control / media / audio-code ids (and the audio placeholder) belong to the audio
stream, everything else to the text stream. Placeholders are replaced by the GLM-4-Voice semantic code of their
12.5 Hz frame, and those positions also receive the Whisper feature through the adaptor (spec §3.3)::

    e = E[audio] + E[text];   at audio frames: e = √2 · (E[code] + adaptor(whisper)) + E[blank]

Weight names equal the official checkpoint (``model.layers.*``, ``model.mimo_layers.*``, ``model.vq_adaptor.*``,
``lm_head``, ``mimo_output``); the Whisper encoder lives in ``<model>/whisper-large-v3/`` as in the official layout.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationConfig, GenerationMixin, PreTrainedModel
from transformers import __version__ as transformers_version
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.utils import logging

from .configuration_kimi_audio import SEMANTIC_SUBDIR, WHISPER_SUBDIR, KimiAudioConfig
from .packed_attention import PackedSequences, packed_sequences, varlen_applies, varlen_sdpa
from .pointwise import fused, fused_layer, rms_norm, rotary, swiglu
from .special_tokens import AUDIO_PLACEHOLDER, AUDIO_STREAM_TOKENS, SPECIAL_TOKENS, TEXT_BLANK, TEXT_EOS

logger = logging.get_logger(__name__)

try:  # transformers >= 4.52
    from transformers.modeling_layers import GradientCheckpointingLayer
except ImportError:  # pragma: no cover - older transformers are outside the supported range
    GradientCheckpointingLayer = nn.Module

IGNORE_INDEX = -100
AUDIO_INPUT_KEYS = (
    "audio_input_features",
    "audio_chunk_tokens",
    "semantic_input_features",
    "semantic_frame_mask",
    "audio_codes",
    "whisper_features",
)


def special_id(config: KimiAudioConfig, token: str) -> int:
    """Id of a Kimi special token: base vocabulary size + its fixed index (spec §4)."""
    return config.num_base_tokens + SPECIAL_TOKENS.index(token)


@dataclass
class KimiAudioCausalLMOutput(CausalLMOutputWithPast):
    audio_logits: torch.FloatTensor | None = None


class KimiAudioRMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return fused(rms_norm)(hidden_states, self.weight, self.variance_epsilon)


class KimiAudioRotaryEmbedding(nn.Module):
    """RoPE with the inverse frequencies computed on the fly (fp32), so no buffer can be left uninitialised by
    meta-device loading on transformers 5.x (spec §10.3) and the checkpoint's ``rotary_emb.inv_freq`` is ignored."""

    def __init__(self, head_dim: int, base: float):
        super().__init__()
        self.head_dim = head_dim
        self.base = base

    @torch.no_grad()
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        exponent = torch.arange(0, self.head_dim, 2, dtype=torch.int64, device=x.device).float() / self.head_dim
        inv_freq = 1.0 / (self.base**exponent)
        freqs = position_ids[..., None].float() * inv_freq  # [B, L, D/2]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


def repeat_kv(hidden: torch.Tensor, n_rep: int) -> torch.Tensor:
    if n_rep == 1:
        return hidden
    batch, heads, length, dim = hidden.shape
    return hidden[:, :, None].expand(batch, heads, n_rep, length, dim).reshape(batch, heads * n_rep, length, dim)


def eager_attention(q, k, v, bias, is_causal: bool, dropout: float) -> torch.Tensor:
    scores = torch.matmul(q, k.transpose(2, 3)) / (q.shape[-1] ** 0.5)
    if is_causal:
        length = q.shape[2]
        causal = torch.ones(length, length, dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~causal, torch.finfo(scores.dtype).min)
    elif bias is not None:
        scores = scores + bias
    probs = F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    probs = F.dropout(probs, p=dropout)
    return torch.matmul(probs, v)


def sdpa_attention(q, k, v, bias, is_causal: bool, dropout: float) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout, is_causal=is_causal)


ATTENTION_FUNCTIONS = {"eager": eager_attention, "sdpa": sdpa_attention}
SDPA_HAS_GQA = tuple(int(part) for part in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 5)


class KimiAudioAttention(nn.Module):
    def __init__(self, config: KimiAudioConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=True)
        self.k_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=True)
        self.v_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=True)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=False)

    def forward(self, hidden_states, position_embeddings, attention_bias, is_causal, past_key_values=None):
        batch, length, _ = hidden_states.shape
        q = self.q_proj(hidden_states).view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(hidden_states).view(batch, length, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(hidden_states).view(batch, length, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = fused(rotary)(q, k, *position_embeddings)
        if past_key_values is not None:
            k, v = past_key_values.update(k, v, self.layer_idx)
        groups = self.num_heads // self.num_kv_heads
        implementation = getattr(self.config, "_attn_implementation", None) or "sdpa"
        attention = ATTENTION_FUNCTIONS.get(implementation, sdpa_attention)
        dropout = self.config.attention_dropout if self.training else 0.0
        if isinstance(attention_bias, PackedSequences):  # packed rows: one causal sequence per utterance
            out = varlen_sdpa(q, k, v, attention_bias)
        elif attention is sdpa_attention and attention_bias is None and groups > 1 and SDPA_HAS_GQA:
            # no mask: the fused kernel reads the 4 KV heads itself instead of 7x expanded copies (same math)
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=is_causal, enable_gqa=True)
        else:
            k, v = repeat_kv(k, groups), repeat_kv(v, groups)
            out = attention(q, k, v, attention_bias, is_causal, dropout)
        return self.o_proj(out.transpose(1, 2).reshape(batch, length, -1))


class KimiAudioMLP(nn.Module):
    def __init__(self, config: KimiAudioConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(fused(swiglu)(self.gate_proj(x), self.up_proj(x)))


class KimiAudioDecoderLayer(GradientCheckpointingLayer):
    def __init__(self, config: KimiAudioConfig, layer_idx: int):
        super().__init__()
        self.self_attn = KimiAudioAttention(config, layer_idx)
        self.mlp = KimiAudioMLP(config)
        self.input_layernorm = KimiAudioRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = KimiAudioRMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, hidden_states, position_embeddings, attention_bias=None, is_causal=False, past_key_values=None):
        residual = hidden_states
        hidden_states = self.self_attn(
            self.input_layernorm(hidden_states), position_embeddings, attention_bias, is_causal, past_key_values
        )
        hidden_states = residual + hidden_states
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


class KimiAudioVQAdaptor(nn.Module):
    """Whisper rows (4 × 50 Hz frames = 5120-d at 12.5 Hz) → LM width: Linear → SiLU → Dropout → Linear → LayerNorm."""

    def __init__(self, config: KimiAudioConfig):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(config.kimia_adaptor_input_dim, config.hidden_size, bias=True),
            nn.SiLU(),
            nn.Dropout(0.0),
            nn.Linear(config.hidden_size, config.hidden_size, bias=True),
            nn.LayerNorm(config.hidden_size, eps=config.rms_norm_eps, bias=True),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)


class KimiAudioPreTrainedModel(PreTrainedModel):
    config_class = KimiAudioConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["KimiAudioDecoderLayer", "WhisperEncoderLayer"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_sdpa = True
    _supports_flash_attn_2 = False
    _supports_cache_class = True
    _keys_to_ignore_on_load_unexpected = [r"rotary_emb\.inv_freq"]
    _keys_to_ignore_on_load_missing = [r"^whisper_encoder\."]

    def _init_weights(self, module: nn.Module) -> None:
        # torch.nn.init only: transformers 5.x guards these against overwriting loaded tensors.
        std = getattr(self.config, "initializer_range", 0.02)
        if isinstance(module, (nn.Linear, nn.Conv1d)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, (KimiAudioRMSNorm, nn.LayerNorm)):
            nn.init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)


class KimiAudioModel(KimiAudioPreTrainedModel):
    """Embeddings, the 28 main layers, the final norm, the 6-layer MIMO branch and the VQ adaptor (``model.*``)."""

    def __init__(self, config: KimiAudioConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(KimiAudioDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = KimiAudioRMSNorm(config.hidden_size, config.rms_norm_eps)
        offset = config.num_hidden_layers
        self.mimo_layers = nn.ModuleList(
            KimiAudioDecoderLayer(config, offset + i) for i in range(config.kimia_mimo_layers)
        )
        self.mimo_norm = KimiAudioRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.vq_adaptor = KimiAudioVQAdaptor(config)
        self.rotary_emb = KimiAudioRotaryEmbedding(config.head_dim, config.require_rope_theta())
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        use_cache: bool = False,
        run_mimo: bool = False,
    ) -> tuple[BaseModelOutputWithPast, torch.Tensor | None]:
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache()
        past_len = past_key_values.get_seq_length() if past_key_values is not None else 0
        if position_ids is None:
            if attention_mask is not None and attention_mask.dim() == 4:
                raise ValueError("a 4-D (packed) attention_mask needs the position_ids of its packed sequences")
            position_ids = default_position_ids(attention_mask, inputs_embeds.shape[1], past_len, inputs_embeds.device)
        elif self.training and (attention_mask is None or attention_mask.dim() == 2):
            warn_if_packed_without_blocks(position_ids)
        bias, is_causal = attention_bias(
            attention_mask, inputs_embeds.shape[1], past_len, inputs_embeds.dtype, inputs_embeds.device
        )
        packed = attention_mask is not None and attention_mask.dim() == 4
        if packed and self.packs_through_varlen(inputs_embeds, past_len):
            bias = packed_sequences(position_ids, bias)
        position_embeddings = self.rotary_emb(inputs_embeds, position_ids)
        hidden, mimo_hidden = inputs_embeds, None
        for index, layer in enumerate(self.layers):
            hidden = fused_layer(layer)(hidden, position_embeddings, bias, is_causal, past_key_values=past_key_values)
            if run_mimo and index == self.config.kimia_mimo_transformer_from_layer_index:
                mimo_hidden = hidden
        if mimo_hidden is not None:
            for layer in self.mimo_layers:
                mimo_hidden = layer(mimo_hidden, position_embeddings, bias, is_causal)
            mimo_hidden = self.mimo_norm(mimo_hidden)
        output = BaseModelOutputWithPast(last_hidden_state=self.norm(hidden), past_key_values=past_key_values)
        return output, mimo_hidden

    def packs_through_varlen(self, hidden: torch.Tensor, past_len: int) -> bool:
        """Packed rows through variable-length FlashAttention (packed_attention.py): SDPA attention, no KV cache, no
        attention dropout (the kernel has none), a GPU and fp16/bf16."""
        if past_len or getattr(self.config, "_attn_implementation", None) == "eager":
            return False
        return (not self.training or not self.config.attention_dropout) and varlen_applies(hidden)


def warn_if_packed_without_blocks(position_ids: torch.Tensor) -> None:
    """Positions that restart inside a row mean packed utterances; without a 4-D block mask they see each other."""
    if position_ids.dim() == 2 and position_ids.shape[1] > 1 and bool((position_ids[:, 1:] == 0).any()):
        logger.warning_once(
            "packed rows without a block-diagonal mask: utterances attend to the ones packed before them; "
            "set neat_packing: true next to packing: true"
        )


def packed_segments(position_ids: torch.Tensor | None, mask: torch.Tensor | None) -> torch.Tensor | None:
    """Batch-wide utterance numbers [B, L] of packed rows (a new utterance wherever its positions restart at 0), or
    None for unpacked batches. Packing is recognised by its 4-D block-diagonal mask (``neat_packing``)."""
    if position_ids is None or mask is None or mask.dim() != 4 or position_ids.dim() != 2:
        return None
    starts = position_ids == 0
    starts[:, 0] = True  # every row opens a new utterance, even if its positions do not start at 0
    return starts.long().flatten().cumsum(0).view_as(position_ids) - 1


def default_position_ids(mask: torch.Tensor | None, length: int, past_len: int, device) -> torch.Tensor:
    """Positions 0..L-1 of every sample's real tokens (left padding included), continuing after the cache."""
    if mask is None:
        return torch.arange(past_len, past_len + length, device=device)[None]
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    return positions[:, -length:]


def attention_bias(
    mask: torch.Tensor | None, length: int, past_len: int, dtype, device=None
) -> tuple[torch.Tensor | None, bool]:
    """Additive [B,1,L,K] bias for causal + padding masking; (None, True) when plain causal attention suffices.

    A 4-D mask is taken as given (LLaMA-Factory's ``neat_packing`` passes a block-diagonal causal one, additive or
    boolean): it already says which keys each query may see.
    """
    if mask is not None and mask.dim() == 4:
        if mask.dtype == torch.bool:
            mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
        return mask.to(dtype), False
    if mask is None or bool(mask.all()):
        if past_len == 0:
            return None, length > 1
        if length == 1:
            return None, False
        mask = torch.ones(1, past_len + length, dtype=torch.long, device=device)
    elif past_len == 0 and length > 1 and mask.shape[-1] == length and bool((mask[:, 1:] <= mask[:, :-1]).all()):
        # Right padding (training batches): pads only follow the real tokens, so causal attention alone gives every
        # real query exactly its keys; only the pad rows (never read: no labels, later than every real token)
        # change. No [B,1,L,L] bias, and SDPA can take the flash kernel.
        return None, True
    device = mask.device
    query_pos = torch.arange(past_len, past_len + length, device=device)
    key_pos = torch.arange(mask.shape[-1], device=device)
    allowed = (key_pos[None, :] <= query_pos[:, None])[None] & mask[:, None, :].bool()
    bias = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)
    return bias[:, None], False


class KimiAudioForCausalLM(KimiAudioPreTrainedModel, GenerationMixin):
    """The official ``MoonshotKimiaForCausalLM`` (text + audio heads) plus the frozen Whisper-large-v3 encoder."""

    # Never quantised: bitsandbytes / QLoRA leave these modules as they are (their weights are not in the LM shards
    # but in whisper-large-v3/, loaded after from_pretrained). Upcast to fp32 only for an fp16 load.
    _keep_in_fp32_modules = ["whisper_encoder"]

    def __init__(self, config: KimiAudioConfig):
        super().__init__(config)
        self.model = KimiAudioModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.mimo_output = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.whisper_encoder = build_whisper_encoder(config.whisper_config)
        self._semantic_tokenizer = None  # GLM-4-Voice, fp32, loaded on first use; deliberately not a submodule
        self._ids = StreamIds.from_config(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    # ----------------------------------------------------------------------------------------------- audio inputs
    def semantic_tokenizer(self, device: torch.device):
        if self._semantic_tokenizer is None:
            from .glm4_voice import load_glm4_voice_tokenizer

            path = self.config.semantic_tokenizer_path
            if not path or not os.path.isdir(path):
                raise ValueError(
                    "audio needs GLM-4-Voice semantic codes but no tokenizer directory was found: put THUDM/"
                    f"glm-4-voice-tokenizer at <model>/{SEMANTIC_SUBDIR}, set KIMI_AUDIO_SEMANTIC_TOKENIZER, or "
                    "precompute codes with `kimi-audio-lf precompute`"
                )
            # object.__setattr__: a plain nn.Module assignment would register it as a submodule (state_dict, .to(bf16))
            object.__setattr__(self, "_semantic_tokenizer", load_glm4_voice_tokenizer(path))
        return self._semantic_tokenizer.to(device)

    def audio_codes_from_features(self, features: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        # Features travel as int32 bit patterns so the collator's cast to bf16 cannot touch the fp32 GLM input.
        encoder = self.semantic_tokenizer(features.device)
        features = features.view(torch.float32) if features.dtype == torch.int32 else features.float()
        # no autocast: the Trainer's bf16 autocast would run GLM-4-Voice's matmuls in bf16 (codes must be fp32's)
        with torch.no_grad(), torch.autocast(features.device.type, enabled=False):
            codes = encoder.encode_features(features, frame_mask)
        return torch.cat([c.to(features.device) for c in codes])

    def whisper_rows(self, input_features: torch.Tensor, chunk_tokens: torch.Tensor) -> torch.Tensor:
        """Whisper frames of every 30 s chunk, first 4·T kept, stacked 4 → 1 to 12.5 Hz rows (spec §3.2)."""
        if self.whisper_encoder is None:
            raise ValueError(f"this checkpoint has no {WHISPER_SUBDIR}/ directory, so it cannot encode audio features")
        return whisper_rows(self.whisper_encoder, input_features, chunk_tokens)

    def fuse_embeddings(
        self, input_ids: torch.Tensor, text_only: bool = False, text_from: int | None = None, **audio: Any
    ) -> torch.Tensor:
        """Single id stream → official two-stream fused embeddings, audio scattered per sample (row-major)."""
        ids = self._ids
        embed = self.model.embed_tokens
        if text_only:  # decoding steps: the sampled token is text, the audio stream is blank (spec §7)
            return embed(input_ids) + embed(torch.full_like(input_ids, ids.blank))
        in_audio_stream = torch.isin(input_ids, torch.tensor(ids.audio_stream, device=input_ids.device)) | (
            input_ids >= ids.offset
        )
        is_frame = (input_ids == ids.placeholder) | (input_ids >= ids.offset)
        if text_from is not None:  # generated ids (decoding without KV cache) are text whatever their value (§7)
            generated = torch.arange(input_ids.shape[1], device=input_ids.device) >= text_from
            in_audio_stream, is_frame = in_audio_stream & ~generated, is_frame & ~generated
        audio_ids = torch.where(in_audio_stream, input_ids, ids.blank)
        text_ids = torch.where(in_audio_stream, ids.blank, input_ids)
        num_frames = int(is_frame.sum())
        if num_frames == 0:
            return embed(audio_ids) + embed(text_ids)
        codes, rows = self.frame_inputs(input_ids, is_frame, num_frames, audio)
        audio_ids = audio_ids.masked_scatter(is_frame, codes + ids.offset)
        audio_embeds = embed(audio_ids)
        adapted = self.model.vq_adaptor(rows.to(audio_embeds.dtype))
        scattered = adapted.new_zeros(audio_embeds.shape).masked_scatter(is_frame[..., None], adapted)
        # As the original: √2 in the adaptor output's dtype, so bf16's 1.4140625 only in pure bf16; fp32 √2 for fp32
        # and under bf16 autocast (CUDA runs the adaptor's LayerNorm in fp32). The sums follow type promotion; the
        # result is rounded once, back to the embedding dtype.
        sqrt2 = torch.tensor(2.0, dtype=adapted.dtype, device=adapted.device).sqrt()
        fused = torch.where(is_frame[..., None], (audio_embeds + scattered) * sqrt2, audio_embeds)
        return (fused + embed(text_ids)).to(audio_embeds.dtype)

    def frame_inputs(self, input_ids, is_frame, num_frames: int, audio: dict[str, Any]):
        """Semantic codes (no offset) and Whisper rows for every audio frame position, in batch-major order."""
        given = input_ids[is_frame]
        if audio.get("audio_codes") is not None:
            codes = audio["audio_codes"].to(input_ids.device).long().reshape(-1)
        elif audio.get("semantic_input_features") is not None:
            codes = self.audio_codes_from_features(audio["semantic_input_features"], audio["semantic_frame_mask"])
        elif bool((given >= self._ids.offset).all()):
            codes = given - self._ids.offset  # ids already hold codes (official JSONL audio_tokens)
        else:
            raise ValueError(f"the input has {num_frames} audio frame tokens but no audio inputs were given")
        if audio.get("whisper_features") is not None:
            rows = audio["whisper_features"].to(input_ids.device).reshape(-1, self.config.kimia_adaptor_input_dim)
        elif audio.get("audio_input_features") is not None:
            rows = self.whisper_rows(audio["audio_input_features"], audio["audio_chunk_tokens"])
        else:
            raise ValueError(f"the input has {num_frames} audio frame tokens but no Whisper features were given")
        check_frame_count(num_frames, codes.shape[0], rows.shape[0])
        codes = torch.where(given >= self._ids.offset, given - self._ids.offset, codes.to(given.device))
        return codes, rows

    # ---------------------------------------------------------------------------------------------------- forward
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        audio_input_features: torch.Tensor | None = None,
        audio_chunk_tokens: torch.LongTensor | None = None,
        semantic_input_features: torch.Tensor | None = None,
        semantic_frame_mask: torch.Tensor | None = None,
        audio_codes: torch.LongTensor | None = None,
        whisper_features: torch.Tensor | None = None,
        return_audio_logits: bool = False,
        text_only: bool = False,
        text_from: int | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> KimiAudioCausalLMOutput | tuple:
        """Audio inputs (see ``KimiAudioProcessor``) are consumed only where the ids hold audio frame tokens."""
        audio = {
            "audio_input_features": audio_input_features,
            "audio_chunk_tokens": audio_chunk_tokens,
            "semantic_input_features": semantic_input_features,
            "semantic_frame_mask": semantic_frame_mask,
            "audio_codes": audio_codes,
            "whisper_features": whisper_features,
        }
        if inputs_embeds is None:
            inputs_embeds = self.fuse_embeddings(input_ids, text_only=text_only, text_from=text_from, **audio)
        if return_audio_logits and past_key_values is not None:
            raise ValueError("audio logits (MIMO branch) are computed for full sequences only, without a KV cache")
        use_cache = use_cache if use_cache is not None else (self.config.use_cache and not self.training)
        outputs, mimo_hidden = self.model(
            inputs_embeds, attention_mask, position_ids, past_key_values, bool(use_cache), run_mimo=return_audio_logits
        )
        hidden = outputs.last_hidden_state
        loss = logits = None
        if labels is not None:
            loss = self.text_loss(hidden, labels, packed_segments(position_ids, attention_mask))
        else:
            kept = hidden[:, -logits_to_keep:] if logits_to_keep else hidden
            logits = self.lm_head(kept)
        audio_logits = self.mimo_output(mimo_hidden) if mimo_hidden is not None else None
        output = KimiAudioCausalLMOutput(
            loss=loss, logits=logits, past_key_values=outputs.past_key_values, audio_logits=audio_logits
        )
        return output if return_dict is not False else output.to_tuple()

    def text_loss(
        self, hidden: torch.Tensor, labels: torch.Tensor, segments: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Cross-entropy of the text head at labelled positions only (no fp32 logits over unlabelled positions).

        ``sample`` reduction = the official per-utterance mean ``Σ CE / (n + 1e-4)`` (spec §5.4), averaged over the
        utterances of the batch that have labels; ``token`` = the usual mean over all labelled tokens. ``segments``
        [B, L] numbers the utterances of packed rows (see ``packed_segments``); without it a row is one utterance.
        """
        shift_labels = labels[:, 1:].to(hidden.device)
        selected = shift_labels != IGNORE_INDEX
        logits = self.lm_head(hidden[:, :-1][selected]).float()
        token_loss = F.cross_entropy(logits, shift_labels[selected], reduction="none")
        if self.config.loss_reduction == "token":
            return token_loss.sum() / selected.sum().clamp(min=1)
        # utterance numbers: one per row, or per packed utterance (at most one per token: no device sync for a max)
        total = labels.shape[0] if segments is None else segments.numel()
        if segments is None:
            segments = torch.arange(labels.shape[0], device=hidden.device)[:, None].expand_as(labels)
        segments = segments[:, 1:].to(hidden.device)  # a label belongs to the utterance of the token it predicts
        per_sample = torch.zeros(total, device=hidden.device).index_add(0, segments[selected], token_loss)
        counts = torch.zeros(total, dtype=torch.long, device=hidden.device).index_add(
            0, segments[selected], torch.ones_like(segments[selected])
        )
        has_labels = counts > 0
        if not bool(has_labels.any()):
            return per_sample.sum() + 0.0 * hidden.sum()  # keep the graph connected (DDP) for label-free batches
        return (per_sample[has_labels] / (counts[has_labels] + 1e-4)).mean()

    # ------------------------------------------------------------------------------------------------- generation
    def generate(self, inputs: torch.Tensor | None = None, *args: Any, **kwargs: Any):
        """Records the prompt length: without a KV cache the generated ids must still be embedded as text (§7)."""
        prompt = inputs if inputs is not None else kwargs.get("input_ids")
        if isinstance(prompt, torch.Tensor) and prompt.ndim == 2 and not prompt.is_floating_point():
            kwargs.setdefault("generation_prompt_length", prompt.shape[1])
        return super().generate(inputs, *args, **kwargs)

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        past_key_values: Cache | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool = True,
        generation_prompt_length: int | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        past_len = past_key_values.get_seq_length() if past_key_values is not None else 0
        model_inputs: dict[str, Any] = {"past_key_values": past_key_values, "use_cache": use_cache}
        if past_len > 0:  # decoding step: only new tokens, all of them text; audio was consumed by the prefill
            input_ids = input_ids[:, past_len:]
            model_inputs["text_only"] = True
        else:
            model_inputs.update({key: kwargs[key] for key in AUDIO_INPUT_KEYS if kwargs.get(key) is not None})
            if generation_prompt_length is not None and input_ids.shape[1] > generation_prompt_length:
                model_inputs["text_from"] = generation_prompt_length
        model_inputs["input_ids"] = input_ids
        model_inputs["attention_mask"] = attention_mask
        model_inputs["position_ids"] = default_position_ids(
            attention_mask, input_ids.shape[1], past_len, input_ids.device
        )
        model_inputs["logits_to_keep"] = 1
        return model_inputs

    # ------------------------------------------------------------------------------------------------ bookkeeping
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

    def train(self, mode: bool = True) -> KimiAudioForCausalLM:
        self.__dict__.pop("_training_parameter_counts", None)
        return super().train(mode)

    # ---------------------------------------------------------------------------------------- loading and saving
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *args: Any, **kwargs: Any):
        path = os.fspath(pretrained_model_name_or_path)
        config = kwargs.pop("config", None)
        if not isinstance(config, KimiAudioConfig):
            config = KimiAudioConfig.from_pretrained(path)
        elif config.whisper_config is None:
            config.attach_audio_dirs(path)
        kwargs.pop("trust_remote_code", None)
        model = super().from_pretrained(path, *args, config=config, **kwargs)
        loaded = model[0] if isinstance(model, tuple) else model
        dtype = loaded.get_input_embeddings().weight.dtype
        # 4.x upcasts _keep_in_fp32_modules for every quantised load, 5.x for fp16 loads only: do as 5.x does
        if TRANSFORMERS_MAJOR < 5 and loaded.whisper_encoder is not None and dtype != torch.float16:
            loaded.whisper_encoder.to(dtype)
        loaded.load_whisper_encoder(path)
        loaded.generation_config = default_generation_config(loaded.config, path)
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
        reference = self.whisper_encoder.state_dict()
        state = read_whisper_encoder_state(weights, reference)
        if any(hasattr(p, "ds_id") for p in self.whisper_encoder.parameters()):
            load_into_zero3_partitions(self.whisper_encoder, state)  # from_pretrained under DeepSpeed ZeRO-3
            return
        param = next(self.whisper_encoder.parameters())
        self.whisper_encoder.load_state_dict(
            {k: v.to(device=param.device, dtype=param.dtype) for k, v in state.items()}
        )
        self.whisper_encoder.requires_grad_(False)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """A state dict without any ``whisper_encoder.*`` key is an LM checkpoint of the official layout (every save,
        Trainer checkpoints included: the frozen encoder lives in ``whisper-large-v3/``). It leaves the encoder as
        loaded and does not report the encoder's keys missing, so resuming is quiet; anything else is loaded as usual."""
        if self.whisper_encoder is None or any(key.startswith("whisper_encoder.") for key in state_dict):
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        missing = [key for key in result.missing_keys if not key.startswith("whisper_encoder.")]
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
        lm_state = {k: v for k, v in state_dict.items() if not k.startswith("whisper_encoder.")}
        super().save_pretrained(save_directory, *args, state_dict=lm_state, **kwargs)
        if self.whisper_encoder is not None:
            whisper_state = {
                k[len("whisper_encoder.") :]: v for k, v in state_dict.items() if k.startswith("whisper_encoder.")
            }
            save_whisper_dir(os.path.join(save_directory, WHISPER_SUBDIR), whisper_state, self.config.whisper_config)
        source = self.config.semantic_tokenizer_path
        target = os.path.join(save_directory, SEMANTIC_SUBDIR)
        if source and os.path.isdir(source) and os.path.abspath(source) != os.path.abspath(target):
            shutil.copytree(source, target, dirs_exist_ok=True)
        copy_remote_code(getattr(self.config, "_name_or_path", None), save_directory)


@dataclass(frozen=True)
class StreamIds:
    offset: int
    placeholder: int
    blank: int
    text_eos: int
    audio_stream: tuple[int, ...]

    @classmethod
    def from_config(cls, config: KimiAudioConfig) -> StreamIds:
        stream = [special_id(config, token) for token in (*AUDIO_STREAM_TOKENS, AUDIO_PLACEHOLDER)]
        return cls(
            offset=config.kimia_token_offset,
            placeholder=special_id(config, AUDIO_PLACEHOLDER),
            blank=special_id(config, TEXT_BLANK),
            text_eos=special_id(config, TEXT_EOS),
            audio_stream=tuple(stream),
        )


TRANSFORMERS_MAJOR = int(transformers_version.split(".")[0])


def check_frame_count(positions: int, codes: int, rows: int) -> None:
    if positions == codes == rows:
        return
    raise ValueError(
        f"audio token count mismatch: the text has {positions} audio frame tokens but the audio gives {codes} "
        f"semantic codes and {rows} Whisper feature rows; every clip needs (num_samples - 1) // 1280 + 1 tokens — "
        "raise cutoff_len if samples were truncated"
    )


def whisper_rows(encoder: nn.Module, input_features: torch.Tensor, chunk_tokens: torch.Tensor) -> torch.Tensor:
    """Whisper frames of every 30 s chunk, first 4·T kept, stacked 4 → 1 to 12.5 Hz rows (spec §3.2).

    Shared by the model and ``kimi-audio-lf precompute``, so cached rows are computed exactly as online ones.
    """
    dtype = next(encoder.parameters()).dtype
    frozen = not any(p.requires_grad for p in encoder.parameters())
    # no autocast: online rows (inside the Trainer's bf16 autocast) must equal precomputed ones (none)
    autocast_off = torch.autocast(input_features.device.type, enabled=False)
    with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen), autocast_off:
        hidden = encoder(input_features.to(dtype)).last_hidden_state
    rows = [hidden[i, : 4 * int(n)].reshape(int(n), -1) for i, n in enumerate(chunk_tokens.tolist())]
    return torch.cat(rows)


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


def read_whisper_encoder_state(weights: str, expected: Iterable[str]) -> dict[str, torch.Tensor]:
    """The ``model.encoder.*`` tensors named by ``expected`` from a full Whisper file; the decoder is never read."""
    from safetensors import safe_open

    prefix, expected = "model.encoder.", set(expected)
    with safe_open(weights, framework="pt", device="cpu") as f:
        names = [k for k in f.keys() if k.startswith(prefix) and k[len(prefix) :] in expected]
        state = {k[len(prefix) :]: f.get_tensor(k) for k in names}
    missing = sorted(expected - set(state))
    if missing:
        raise ValueError(f"{weights}: missing Whisper encoder tensors {missing[:5]} (expected keys model.encoder.*)")
    return state


def build_whisper_encoder(whisper_config: dict[str, Any] | None) -> nn.Module | None:
    if not whisper_config:
        return None
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    keys = ("d_model", "encoder_layers", "encoder_attention_heads", "encoder_ffn_dim", "num_mel_bins")
    config = WhisperConfig(**{k: whisper_config[k] for k in keys if k in whisper_config})
    config.max_source_positions = whisper_config.get("max_source_positions", 1500)
    config._attn_implementation = "sdpa"
    encoder = WhisperEncoder(config)
    encoder.requires_grad_(False)
    return encoder


def save_whisper_dir(
    directory: str, encoder_state: dict[str, torch.Tensor], whisper_config: dict[str, Any] | None
) -> None:
    from safetensors.torch import save_file

    os.makedirs(directory, exist_ok=True)
    tensors = {f"model.encoder.{k}": v.detach().contiguous().cpu() for k, v in encoder_state.items()}
    save_file(tensors, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(directory, "config.json"), "w", encoding="utf-8") as f:
        json.dump(whisper_config or {}, f, indent=2, sort_keys=True)
    from transformers import WhisperFeatureExtractor

    WhisperFeatureExtractor(feature_size=128).save_pretrained(directory)


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


__all__ = ["KimiAudioForCausalLM", "KimiAudioModel", "KimiAudioPreTrainedModel", "KimiAudioCausalLMOutput"]
