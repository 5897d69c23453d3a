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

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from ..errors import InputError, ModelError
from . import special_tokens as st
from .attention import KimiAudioAttention
from .checkpoint_io import OfficialLayoutMixin
from .configuration_kimi_audio import KimiAudioConfig
from .constants import SAMPLES_PER_TOKEN, SEMANTIC_SUBDIR, WHISPER_SUBDIR
from .fast_generation import FastGreedy, greedy_request
from .feature_sink import FeatureSink, split_clips
from .grouped_lora import project_together
from .masks import attention_bias, default_position_ids, packed_segments, warn_if_packed_without_blocks
from .packed_attention import packed_sequences, varlen_applies
from .pointwise import fused, fused_layer, rms_norm, swiglu
from .special_tokens import AUDIO_PLACEHOLDER, AUDIO_STREAM_TOKENS, special_id
from .speech import Streams, audio_labels, head_ce, per_utterance, speech_loss, split_streams, utterance_numbers
from .whisper_encoder import build_whisper_encoder, encode_whisper_rows

IGNORE_INDEX = -100
AUDIO_INPUT_KEYS = (
    "audio_input_features",
    "audio_chunk_tokens",
    "semantic_input_features",
    "semantic_frame_mask",
    "audio_codes",
    "whisper_features",
)


@dataclass
class KimiAudioCausalLMOutput(CausalLMOutputWithPast):
    audio_logits: torch.FloatTensor | None = None


class KimiAudioRMSNorm(nn.Module):
    def __init__(self, config: KimiAudioConfig):
        super().__init__()
        self.config = config
        self.weight = nn.Parameter(torch.ones(config.hidden_size))
        self.variance_epsilon = config.rms_norm_eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return fused(rms_norm, self.config.compile_pointwise)(hidden_states, self.weight, self.variance_epsilon)


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


class KimiAudioMLP(nn.Module):
    def __init__(self, config: KimiAudioConfig):
        super().__init__()
        self.config = config
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = project_together((self.gate_proj, self.up_proj), x)  # LoRA: one A matmul for both
        return self.down_proj(fused(swiglu, self.config.compile_pointwise)(gate, up))


class KimiAudioDecoderLayer(GradientCheckpointingLayer):
    def __init__(self, config: KimiAudioConfig, layer_idx: int):
        super().__init__()
        self.self_attn = KimiAudioAttention(config, layer_idx)
        self.mlp = KimiAudioMLP(config)
        self.input_layernorm = KimiAudioRMSNorm(config)
        self.post_attention_layernorm = KimiAudioRMSNorm(config)

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
        self.norm = KimiAudioRMSNorm(config)
        offset = config.num_hidden_layers
        self.mimo_layers = nn.ModuleList(
            KimiAudioDecoderLayer(config, offset + i) for i in range(config.kimia_mimo_layers)
        )
        self.mimo_norm = KimiAudioRMSNorm(config)
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
                raise InputError("a 4-D (packed) attention_mask needs the position_ids of its packed sequences")
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
            hidden = fused_layer(layer, self.config.compile_pointwise)(
                hidden, position_embeddings, bias, is_causal, past_key_values=past_key_values
            )
            if run_mimo and index == self.config.kimia_mimo_transformer_from_layer_index:
                mimo_hidden = hidden
        if mimo_hidden is not None:  # the cache holds the MIMO layers at 28 + j, as the official 34-entry tuple
            for layer in self.mimo_layers:
                mimo_hidden = layer(mimo_hidden, position_embeddings, bias, is_causal, past_key_values=past_key_values)
            mimo_hidden = self.mimo_norm(mimo_hidden)
        output = BaseModelOutputWithPast(last_hidden_state=self.norm(hidden), past_key_values=past_key_values)
        return output, mimo_hidden

    def packs_through_varlen(self, hidden: torch.Tensor, past_len: int) -> bool:
        """Packed rows through variable-length FlashAttention (packed_attention.py): switched on in the config, SDPA
        attention, no KV cache, no attention dropout (the kernel has none), a GPU and fp16/bf16."""
        if not self.config.use_varlen_attention or past_len:
            return False
        if getattr(self.config, "_attn_implementation", None) == "eager":
            return False
        return (not self.training or not self.config.attention_dropout) and varlen_applies(hidden)


class KimiAudioGenerationMixin(GenerationMixin):
    """``generate`` with the prompt length recorded and the fast greedy decoder.

    The name ends in ``GenerationMixin`` on purpose: LLaMA-Factory's ``patch_model`` binds transformers'
    ``GenerationMixin.generate`` on the model instance unless the model's own ``generate`` is a ``*GenerationMixin``
    function, which would bypass this one (and the fast decoder) in ``do_predict``."""

    def generate(
        self,
        inputs: torch.Tensor | None = None,
        *args: Any,
        fast_greedy: bool | str | None = None,
        audio_clips: list | None = None,
        **kwargs,
    ):
        """Records the prompt length: without a KV cache the generated ids must still be embedded as text (§7).

        Plain greedy calls (no sampling, beams or penalties; LLaMA-Factory's ``do_predict`` with ``do_sample: false``)
        on CUDA run ``fast_generation.FastGreedy``: a static KV cache and a CUDA-graphed decode step, same tokens.
        ``fast_greedy``: None = ``config.fast_greedy`` (default on), False = transformers' loop, ``"static"`` /
        ``"graph"`` = that decoder (``"static"`` also on CPU). ``audio_clips`` (the collator's description of an
        evaluation batch's clips) is for the feature sink of training forwards: generation ignores it."""
        prompt = inputs if inputs is not None else kwargs.get("input_ids")
        if isinstance(prompt, torch.Tensor) and prompt.ndim == 2 and not prompt.is_floating_point():
            kwargs.setdefault("generation_prompt_length", prompt.shape[1])
        decoder = self.fast_greedy_decoder(fast_greedy) if not args else None
        request = greedy_request(self, {**kwargs, "input_ids": prompt}, AUDIO_INPUT_KEYS) if decoder else None
        if request is not None:
            with torch.no_grad():
                return decoder(**request)
        return super().generate(inputs, *args, **kwargs)

    def fast_greedy_decoder(self, mode: bool | str | None) -> FastGreedy | None:
        """The kept ``FastGreedy`` of ``mode`` (its caches and graphs are reused between calls), or None."""
        mode = getattr(self.config, "fast_greedy", True) if mode is None else mode
        if mode is True:
            mode = "graph" if self.device.type == "cuda" else None
        if not mode:
            return None
        decoders = self.__dict__.setdefault("_fast_greedy_decoders", {})
        if mode not in decoders:
            decoders[mode] = FastGreedy(self, mode)
        return decoders[mode]


class KimiAudioForCausalLM(OfficialLayoutMixin, KimiAudioPreTrainedModel, KimiAudioGenerationMixin):
    """The official ``MoonshotKimiaForCausalLM`` (text + audio heads) plus the frozen Whisper-large-v3 encoder."""

    # Never quantised: bitsandbytes / QLoRA leave these modules as they are (their weights are not in the LM shards
    # but in whisper-large-v3/, loaded after from_pretrained). Upcast to fp32 only for an fp16 load.
    _keep_in_fp32_modules = ["whisper_encoder"]
    # Optional consumer of what ``frame_inputs`` encodes, per clip (``models/feature_sink.py``); set_feature_sink().
    feature_sink: FeatureSink | None = None

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
                raise ModelError(
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
            raise ModelError(f"this checkpoint has no {WHISPER_SUBDIR}/ directory, so it cannot encode audio features")
        return encode_whisper_rows(self.whisper_encoder, input_features, chunk_tokens)

    def fuse_embeddings(
        self, input_ids: torch.Tensor, text_only: bool = False, text_from: int | None = None, **audio: Any
    ) -> torch.Tensor:
        """Single id stream → official two-stream fused embeddings, audio scattered per sample (row-major)."""
        return self.fuse_streams(input_ids, text_only, text_from, **audio)[0]

    def fuse_streams(
        self, input_ids: torch.Tensor, text_only: bool = False, text_from: int | None = None, **audio: Any
    ) -> tuple[torch.Tensor, Streams | None]:
        """``fuse_embeddings`` and the two streams it embedded (codes filled in; ``models/speech.py``)."""
        ids = self._ids
        embed = self.model.embed_tokens
        if text_only:  # decoding steps: the sampled token is text, the audio stream is blank (spec §7)
            return embed(input_ids) + embed(torch.full_like(input_ids, ids.blank)), None
        streams = split_streams(input_ids, ids, text_from)
        is_frame, all_frames, is_input = streams.input_frames, streams.input_frames, None
        if streams.num_output_frames:  # speech targets: code rows without Whisper rows, in the same frame order
            all_frames = is_frame | streams.output_frames
            is_input = is_frame[all_frames]
        num_frames = streams.num_input_frames + streams.num_output_frames
        if num_frames == 0:
            return embed(streams.audio_ids) + embed(streams.text_ids), streams
        codes, rows = self.frame_inputs(input_ids, all_frames, num_frames, audio, is_input)
        streams.audio_ids = streams.audio_ids.masked_scatter(all_frames, codes + ids.offset)
        audio_embeds = embed(streams.audio_ids)
        if rows is None:  # speech targets only (TTS): no Whisper rows are used
            return audio_embeds + embed(streams.text_ids), streams
        adapted = self.model.vq_adaptor(rows.to(audio_embeds.dtype))
        scattered = adapted.new_zeros(audio_embeds.shape).masked_scatter(is_frame[..., None], adapted)
        # As the original: √2 in the adaptor output's dtype, so bf16's 1.4140625 only in pure bf16; fp32 √2 for fp32
        # and under bf16 autocast (CUDA runs the adaptor's LayerNorm in fp32). The sums follow type promotion; the
        # result is rounded once, back to the embedding dtype.
        sqrt2 = torch.tensor(2.0, dtype=adapted.dtype, device=adapted.device).sqrt()
        audio_part = torch.where(is_frame[..., None], (audio_embeds + scattered) * sqrt2, audio_embeds)
        return (audio_part + embed(streams.text_ids)).to(audio_embeds.dtype), streams

    def set_feature_sink(self, sink: FeatureSink | None) -> None:
        """Hand what ``frame_inputs`` encodes to ``sink(encoded_clips, audio_clips)``; None removes the sink."""
        if sink is None:
            self.__dict__.pop("feature_sink", None)  # back to the class's None
        else:
            self.feature_sink = sink

    def frame_inputs(self, input_ids, is_frame, num_frames: int, audio: dict[str, Any], is_input=None):
        """Semantic codes (no offset) for every audio frame position, in batch-major order, and the Whisper rows of
        the input frames (``is_input`` selects them among the frames; ``None``: all are input frames). With a
        feature sink set, it gets them per clip, with the batch's ``audio_clips`` description."""
        codes, rows = self.encode_frames(input_ids, is_frame, num_frames, audio, is_input)
        if self.feature_sink is not None:
            encoded = split_clips(is_frame, codes.detach(), None if rows is None else rows.detach(), is_input)
            self.feature_sink(encoded, audio.get("audio_clips"))
        return codes, rows

    def encode_frames(self, input_ids, is_frame, num_frames: int, audio: dict[str, Any], is_input=None):
        """``frame_inputs`` without the sink."""
        given = input_ids[is_frame]
        if audio.get("audio_codes") is not None:
            codes = audio["audio_codes"].to(input_ids.device).long().reshape(-1)
        elif audio.get("semantic_input_features") is not None:
            codes = self.audio_codes_from_features(audio["semantic_input_features"], audio["semantic_frame_mask"])
        elif bool((given >= self._ids.offset).all()):
            codes = given - self._ids.offset  # ids already hold codes (official JSONL audio_tokens)
        else:
            raise InputError(f"the input has {num_frames} audio frame tokens but no audio inputs were given")
        codes = codes.to(given.device)
        if is_input is not None and not bool(is_input.any()):
            check_frame_count(num_frames, codes.shape[0], num_frames)
            return codes, None
        if audio.get("whisper_features") is not None:
            rows = audio["whisper_features"].to(input_ids.device).reshape(-1, self.config.kimia_adaptor_input_dim)
        elif audio.get("audio_input_features") is not None:
            rows = self.whisper_rows(audio["audio_input_features"], audio["audio_chunk_tokens"])
        else:
            raise InputError(f"the input has {num_frames} audio frame tokens but no Whisper features were given")
        if is_input is not None and rows.shape[0] == int(is_input.sum()) != num_frames:  # rows of inputs only
            rows = rows.new_zeros(num_frames, rows.shape[1]).masked_scatter(is_input[:, None].to(rows.device), rows)
        check_frame_count(num_frames, codes.shape[0], rows.shape[0])
        codes = torch.where(given >= self._ids.offset, given - self._ids.offset, codes)
        return codes, rows if is_input is None else rows[is_input.to(rows.device)]

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
        audio_clips: list | None = None,
        **kwargs: Any,
    ) -> KimiAudioCausalLMOutput | tuple:
        """Audio inputs (see ``KimiAudioProcessor``) are consumed only where the ids hold audio frame tokens.
        ``audio_clips``: the collator's description of the batch's clips, passed on to the feature sink only."""
        given = (audio_input_features, audio_chunk_tokens, semantic_input_features, semantic_frame_mask, audio_codes)
        audio = dict(zip(AUDIO_INPUT_KEYS, (*given, whisper_features)))
        if audio_clips is not None:
            audio["audio_clips"] = audio_clips
        streams = None
        if inputs_embeds is None:
            inputs_embeds, streams = self.fuse_streams(input_ids, text_only=text_only, text_from=text_from, **audio)
        audio_targets = audio_labels(streams, labels) if streams is not None and labels is not None else None
        run_mimo = return_audio_logits or audio_targets is not None  # ASR batches never touch the MIMO branch
        if run_mimo:
            self.require_mimo_weights()
        use_cache = use_cache if use_cache is not None else (self.config.use_cache and not self.training)
        outputs, mimo_hidden = self.model(
            inputs_embeds, attention_mask, position_ids, past_key_values, bool(use_cache), run_mimo=run_mimo
        )
        segments = packed_segments(position_ids, attention_mask) if labels is not None else None
        loss, logits, audio_logits = self.heads(
            outputs.last_hidden_state, mimo_hidden, labels, audio_targets, segments, logits_to_keep
        )
        output = KimiAudioCausalLMOutput(
            loss=loss, logits=logits, past_key_values=outputs.past_key_values, audio_logits=audio_logits
        )
        return output if return_dict is not False else output.to_tuple()

    def heads(self, hidden, mimo_hidden, labels, audio_targets, segments, logits_to_keep: int):
        """(loss, text logits, audio logits): the loss when labels are given (text alone for ASR batches, as before
        speech output existed), else the logits of the kept positions."""
        if labels is not None:
            if audio_targets is None:
                return self.text_loss(hidden, labels, segments), None, None
            reduction = self.config.loss_reduction
            return speech_loss(self, hidden, mimo_hidden, labels, audio_targets, segments, reduction), None, None
        logits = self.lm_head(hidden[:, -logits_to_keep:] if logits_to_keep else hidden)
        if mimo_hidden is None:
            return None, logits, None
        return None, logits, self.mimo_output(mimo_hidden[:, -logits_to_keep:] if logits_to_keep else mimo_hidden)

    def text_loss(
        self, hidden: torch.Tensor, labels: torch.Tensor, segments: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Cross-entropy of the text head at labelled positions only (no fp32 logits over unlabelled positions).

        ``sample`` reduction = the official per-utterance mean ``Σ CE / (n + 1e-4)`` (spec §5.4), averaged over the
        utterances of the batch that have labels; ``token`` = the usual mean over all labelled tokens. ``segments``
        [B, L] numbers the utterances of packed rows (see ``packed_segments``); without it a row is one utterance.
        """
        token_loss, selected = head_ce(self.lm_head, hidden, labels)
        if self.config.loss_reduction == "token":
            return token_loss.sum() / selected.sum().clamp(min=1)
        # utterance numbers: one per row, or per packed utterance (at most one per token: no device sync for a max)
        numbers, total = utterance_numbers(labels, segments, hidden.device)
        per_sample, counts = per_utterance(token_loss, selected, numbers, total)
        has_labels = counts > 0
        if not bool(has_labels.any()):
            return per_sample.sum() + 0.0 * hidden.sum()  # keep the graph connected (DDP) for label-free batches
        return (per_sample[has_labels] / (counts[has_labels] + 1e-4)).mean()

    def require_mimo_weights(self) -> None:
        """Speech output needs the audio head; a checkpoint without it would train / speak from random weights."""
        missing = getattr(self, "missing_mimo_weights", ())
        if missing:
            raise ModelError(
                f"{self.config._name_or_path}: the checkpoint has no MIMO audio-head weights ({missing[0]} and "
                f"{len(missing) - 1} more), so it cannot learn or generate speech (assistant <audio> targets); use "
                "a Kimi-Audio checkpoint with model.mimo_layers.*, model.mimo_norm and mimo_output, or drop assistant "
                "audio"
            )

    def idle_submodules(self, audio_features_cached: bool) -> dict[str, nn.Module]:
        """What a batch without speech targets never runs (the MIMO branch and audio head) and, when every clip's
        features come from a cache, Whisper: candidates to keep off the GPU (``models/parking.py``)."""
        idle = {"model.mimo_layers": self.model.mimo_layers, "model.mimo_norm": self.model.mimo_norm}
        idle["mimo_output"] = self.mimo_output
        if audio_features_cached and self.whisper_encoder is not None:
            idle["whisper_encoder"] = self.whisper_encoder
        return idle

    # ------------------------------------------------------------------------------------------------- generation
    def generate_speech(self, input_ids: torch.LongTensor, output_type: str = "both", **kwargs: Any):
        """The official two-stream decoding loop (``models/speech_generation.py``): text and audio codes."""
        from .speech_generation import generate_speech

        return generate_speech(self, input_ids, output_type=output_type, **kwargs)

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


@dataclass(frozen=True)
class StreamIds:
    offset: int
    placeholder: int
    blank: int
    audio_stream: tuple[int, ...]
    speech_start: int  # role row of an assistant speech turn (models/speech.py)
    assistant_start: int
    msg_end: int
    media_end: int
    text_eos: int
    pad: int
    delay: int  # kimia_mimo_audiodelaytokens

    @classmethod
    def from_config(cls, config: KimiAudioConfig) -> StreamIds:
        stream = [special_id(config, token) for token in (*AUDIO_STREAM_TOKENS, AUDIO_PLACEHOLDER)]
        return cls(
            offset=config.kimia_token_offset,
            placeholder=special_id(config, AUDIO_PLACEHOLDER),
            blank=special_id(config, st.TEXT_BLANK),
            audio_stream=tuple(stream),
            speech_start=special_id(config, st.SPEECH_START),
            assistant_start=special_id(config, st.ASSISTANT_MSG_START),
            msg_end=special_id(config, st.MSG_END),
            media_end=special_id(config, st.MEDIA_END),
            text_eos=special_id(config, st.TEXT_EOS),
            pad=special_id(config, st.PAD),
            delay=int(config.kimia_mimo_audiodelaytokens),
        )


def check_frame_count(positions: int, codes: int, rows: int) -> None:
    if positions == codes == rows:
        return
    raise InputError(
        f"audio token count mismatch: the text has {positions} audio frame tokens but the audio gives {codes} "
        f"semantic codes and {rows} Whisper feature rows; every clip needs "
        f"(num_samples - 1) // {SAMPLES_PER_TOKEN} + 1 tokens — "
        "raise cutoff_len if samples were truncated"
    )


__all__ = [
    "KimiAudioForCausalLM",
    "KimiAudioModel",
    "KimiAudioPreTrainedModel",
    "KimiAudioCausalLMOutput",
]
