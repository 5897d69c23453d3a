"""Greedy ASR decoding with a preallocated KV cache and, on CUDA, a CUDA-graphed decode step.

Why: ``generate`` runs every decode step eagerly: about 6,000 ATen calls for the 28 layers (≈230 per layer, counted
with torch.profiler on the tiny model), each dispatched from Python, a ``DynamicCache`` that concatenates every
layer's keys each step, and a host sync for the padding mask. At batch 8-32 a 7B step is then bound by the launches
(≈55 ms on an H200 for a few ms of GPU work). Here the cache is allocated once per (batch, length bucket), the step's
mask and positions live on the device, and on CUDA the whole step (text embedding → 28 layers → last-position logits
→ argmax) is captured once as a CUDA graph and replayed: one launch per step.

The prefill is the model's own forward (audio fusion, Whisper rows, codes) and each step calls the model's own
forward too, so the arithmetic is ``generate``'s and so are the tokens (same EOS / pad handling, same output length;
the CPU tests compare them exactly). The one difference: the not yet written cache slots join the attention under
a ``finfo.min`` bias, so they add exact zeros; in bf16 another SDPA kernel may round differently, as a batch with
other padding already does in ``generate``. Sampling, beams, repetition penalty and other logits processors stay
with ``generate``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers.utils import logging

from ..errors import InputError
from .masks import default_position_ids

logger = logging.get_logger(__name__)

MAX_STATES = 4  # caches (and graphs) kept between calls, least recently used dropped first
LENGTH_BUCKET = 64  # cache lengths are rounded up to this, so batches of similar prompts share one captured graph
CHECK_EVERY = 8  # steps between the host checks "has every row finished?" (the only syncs of the loop)
DECODE_MODES = ("auto", "graph", "static", "generate")


class StaticKVCache:
    """The part of transformers' ``Cache`` that the attention uses (``update``, ``get_seq_length``) over fixed
    [B, kv_heads, max_len, head_dim] buffers. The prefill (``position is None``) writes slots [0, L) and attends to
    its own keys as ``DynamicCache`` would; a decode step writes slot ``position`` (a 1-element device tensor) and
    attends to the whole buffer under the caller's bias."""

    is_compileable = False

    def __init__(self, max_len: int):
        self.max_len = max_len
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}
        self.length = 0  # host-side count of written slots: the model reads it as the past length
        self.position: torch.Tensor | None = None

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, cache_kwargs: Any = None):
        if layer_idx not in self.keys:
            shape = (key.shape[0], key.shape[1], self.max_len, key.shape[3])
            self.keys[layer_idx], self.values[layer_idx] = key.new_zeros(shape), value.new_zeros(shape)
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        if self.position is None:
            keys[:, :, : key.shape[2]].copy_(key)
            values[:, :, : value.shape[2]].copy_(value)
            return key, value
        keys.index_copy_(2, self.position, key)
        values.index_copy_(2, self.position, value)
        return keys, values

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.length


def cache_length(prompt_length: int, max_new_tokens: int) -> int:
    needed = prompt_length + max_new_tokens
    return -(-needed // LENGTH_BUCKET) * LENGTH_BUCKET


@dataclass
class DecodeState:
    """The decode step's inputs, at fixed addresses (a captured graph reads them there)."""

    cache: StaticKVCache
    tokens: torch.Tensor  # [B, 1] the last token of every row
    positions: torch.Tensor  # [B, 1] its RoPE position (real tokens before it, padding excluded)
    position: torch.Tensor  # [1] its cache slot
    key_ok: torch.Tensor  # [B, max_len] False at the prompt's padding slots
    bias_dtype: torch.dtype


def decode_step(model: Any, state: DecodeState) -> torch.Tensor:
    """One greedy step through the model's forward: [B] next tokens. Nothing here syncs with the host."""
    slots = torch.arange(state.key_ok.shape[1], device=state.key_ok.device)
    allowed = state.key_ok & (slots <= state.position)[None]
    bias = torch.zeros(allowed.shape, dtype=state.bias_dtype, device=allowed.device)
    bias = bias.masked_fill(~allowed, torch.finfo(state.bias_dtype).min)[:, None, None]
    output = model(
        input_ids=state.tokens,
        attention_mask=bias,
        position_ids=state.positions,
        past_key_values=state.cache,
        use_cache=True,
        text_only=True,
        logits_to_keep=1,
    )
    return output.logits[:, -1].argmax(-1)


class GraphedStep:
    """``decode_step`` captured once as a CUDA graph; ``run`` replays it (inputs are read from ``state``)."""

    def __init__(self, model: Any, state: DecodeState):
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up outside capture (kernel selection, workspace allocation)
            for _ in range(2):
                decode_step(model, state)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.next_tokens = decode_step(model, state)

    def run(self) -> torch.Tensor:
        self.graph.replay()
        return self.next_tokens


class FastGreedy:
    """Greedy decoder for one model; keeps one cache (and graph) per (batch size, cache length) between calls.

    ``mode``: ``"graph"`` (CUDA graph, CUDA only), ``"static"`` (the same step run eagerly), ``"auto"`` (graph on
    CUDA, static elsewhere)."""

    def __init__(self, model: Any, mode: str = "auto"):
        if mode not in ("auto", "graph", "static"):
            raise InputError(f"decode mode {mode!r}: use one of auto, graph, static")
        self.model = model
        self.mode = mode
        self.states: dict[tuple[int, int], DecodeState] = {}
        self.graphs: dict[tuple[int, int], GraphedStep] = {}

    def use_graph(self, device: torch.device) -> bool:
        if self.mode == "graph" and device.type != "cuda":
            raise InputError("decode mode 'graph' needs a CUDA device; use 'static' or 'auto'")
        return device.type == "cuda" and self.mode in ("auto", "graph")

    def state_for(self, batch: int, max_len: int, device: torch.device) -> DecodeState:
        key = (batch, max_len)
        if key in self.states:
            self.states[key] = self.states.pop(key)  # most recently used last
        else:
            while len(self.states) >= MAX_STATES:
                oldest = next(iter(self.states))
                del self.states[oldest]
                self.graphs.pop(oldest, None)
            long = {"dtype": torch.long, "device": device}
            self.states[key] = DecodeState(
                StaticKVCache(max_len),
                torch.zeros(batch, 1, **long),
                torch.zeros(batch, 1, **long),
                torch.zeros(1, **long),
                torch.ones(batch, max_len, dtype=torch.bool, device=device),
                self.model.get_input_embeddings().weight.dtype,
            )
        return self.states[key]

    @torch.no_grad()
    def __call__(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        max_new_tokens: int,
        eos_token_id: int | list[int] | None = None,
        pad_token_id: int | None = None,
        **audio: Any,
    ) -> torch.Tensor:
        """``[B, L + T]`` ids like ``generate``'s: the prompt, then the greedy tokens (pad after EOS). EOS / pad
        default to the model's generation config."""
        eos, pad = stop_ids(self.model, eos_token_id, pad_token_id)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        batch, length = input_ids.shape
        state = self.state_for(batch, cache_length(length, max_new_tokens), input_ids.device)
        next_tokens = self.prefill(state, input_ids, attention_mask, audio)
        step = self.step_function(state, input_ids.device)
        generated = input_ids.new_full((batch, max_new_tokens), pad)
        unfinished = torch.ones(batch, dtype=torch.bool, device=input_ids.device)
        done = max_new_tokens
        for t in range(max_new_tokens):
            if t:
                state.tokens.copy_(next_tokens[:, None])
                next_tokens = step()
                state.positions += 1
                state.position += 1
            next_tokens = torch.where(unfinished, next_tokens, pad)
            generated[:, t] = next_tokens
            unfinished &= ~torch.isin(next_tokens, eos)
            if (t + 1) % CHECK_EVERY == 0 and not bool(unfinished.any()):
                done = t + 1
                break
        return torch.cat([input_ids, generated[:, : finished_length(generated[:, :done], eos)]], dim=1)

    def prefill(self, state: DecodeState, input_ids, attention_mask, audio: dict[str, Any]) -> torch.Tensor:
        """The model's own prompt forward into the cache; sets the step inputs; the first greedy tokens."""
        length = input_ids.shape[1]
        state.cache.length, state.cache.position = 0, None
        positions = default_position_ids(attention_mask, length, 0, input_ids.device)
        output = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=positions,
            past_key_values=state.cache,
            use_cache=True,
            logits_to_keep=1,
            **{k: v for k, v in audio.items() if v is not None},
        )
        state.cache.length, state.cache.position = length, state.position
        state.key_ok.fill_(True)
        state.key_ok[:, :length] = attention_mask.bool()
        state.positions.copy_(positions[:, -1:] + 1)
        state.position.fill_(length)
        return output.logits[:, -1].argmax(-1)

    def step_function(self, state: DecodeState, device: torch.device):
        if not self.use_graph(device):
            return lambda: decode_step(self.model, state)
        key = (state.tokens.shape[0], state.cache.max_len)
        if key not in self.graphs:  # one private memory pool per graph: replays of different graphs never collide
            try:
                self.graphs[key] = GraphedStep(self.model, state)
            except RuntimeError as error:  # e.g. a quantised layer that syncs with the host: run the step eagerly
                logger.warning("decode step not capturable as a CUDA graph (%s); running it eagerly", error)
                self.mode = "static"
                return lambda: decode_step(self.model, state)
        return self.graphs[key].run


def stop_ids(model: Any, eos: Any = None, pad: int | None = None) -> tuple[torch.Tensor, int]:
    """EOS ids (a tensor for ``isin``) and the pad id: the given ones, else the model's generation config's."""
    config = model.generation_config
    eos = config.eos_token_id if eos is None else eos
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    pad = config.pad_token_id if pad is None else pad
    if not eos or pad is None:
        raise InputError("fast greedy decoding needs eos_token_id and pad_token_id (give them or set the config's)")
    device = model.get_input_embeddings().weight.device
    return torch.tensor(eos, device=device), int(pad)


def finished_length(generated: torch.Tensor, eos: torch.Tensor) -> int:
    """Columns ``generate`` would return: up to the step where the last row emitted EOS (all, if one never did)."""
    hits = torch.isin(generated, eos)
    if not bool(hits.any(dim=1).all()):
        return generated.shape[1]
    return int(hits.int().argmax(dim=1).max()) + 1


# ------------------------------------------------------------------------------------------- generate() routing
INPUT_KEYS = frozenset({"input_ids", "attention_mask", "generation_prompt_length"})
# generate() arguments that leave plain greedy decoding plain greedy at these values (None: not given)
NEUTRAL = {
    "do_sample": (False,),
    "num_beams": (1,),
    "num_return_sequences": (1,),
    "repetition_penalty": (1.0,),
    "no_repeat_ngram_size": (0,),
    "min_new_tokens": (0,),
    "min_length": (0,),
    "synced_gpus": (False,),
    "use_cache": (True,),
    "output_scores": (False,),
    "output_logits": (False,),
    "return_dict_in_generate": (False,),
    "encoder_repetition_penalty": (1.0,),
    "guidance_scale": (1.0,),
    "penalty_alpha": (),  # contrastive search
    "suppress_tokens": (),  # the token-changing processors: any value falls back to generate
    "begin_suppress_tokens": (),
    "bad_words_ids": (),
    "sequence_bias": (),
    "forced_bos_token_id": (),
    "forced_eos_token_id": (),
    "exponential_decay_length_penalty": (),
    "stop_strings": (),
    "max_time": (),
    "assistant_model": (),
    "prompt_lookup_num_tokens": (),
}
IGNORED_UNDER_GREEDY = frozenset({"temperature", "top_p", "top_k", "length_penalty", "bos_token_id"})


def greedy_request(model: Any, kwargs: dict[str, Any], audio_keys: tuple[str, ...]) -> dict[str, Any] | None:
    """The ``FastGreedy`` arguments of a ``generate(**kwargs)`` call that is plain greedy decoding of a batch of
    prompts (LLaMA-Factory's ``do_predict`` with ``do_sample: false``), else None (``generate`` handles it)."""
    if model.training or kwargs.get("inputs_embeds") is not None or kwargs.get("generation_config") is not None:
        return None
    known = INPUT_KEYS | set(audio_keys) | set(NEUTRAL) | IGNORED_UNDER_GREEDY
    known |= {"max_new_tokens", "eos_token_id", "pad_token_id"}
    if set(kwargs) - known:
        return None
    config = model.generation_config
    for key, neutral in NEUTRAL.items():
        value = kwargs.get(key, getattr(config, key, None))
        if value is not None and value not in neutral:
            return None
    input_ids = kwargs.get("input_ids")
    max_new_tokens = kwargs.get("max_new_tokens") or config.max_new_tokens
    if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2 or not max_new_tokens:
        return None
    if kwargs.get("attention_mask") is None:  # generate would infer one from the pad id
        return None
    request = {key: kwargs[key] for key in ("input_ids", "attention_mask", *audio_keys) if key in kwargs}
    request.update(max_new_tokens=int(max_new_tokens))
    request.update(eos_token_id=kwargs.get("eos_token_id"), pad_token_id=kwargs.get("pad_token_id"))
    return request
