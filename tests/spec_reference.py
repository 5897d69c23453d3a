"""Independent references for ``KimiAudioForCausalLM``, written from the architecture spec (they never call the
code under test); the ``tests/models/test_modeling_*.py`` modules compare the model against them:

- the official two-stream layout is built row by row from the table of spec §5.3, with token ids taken from the
  spec's numbering (§4) shifted onto the tiny base vocabulary, and text tokens from ``tiktoken`` + the spec regex;
- embeddings follow spec §3.3 literally: a zero-padded ``[L, 4·d]`` Whisper buffer filled between media markers, the
  VQ adaptor written with ``F.linear``/``F.silu``/``F.layer_norm`` from the checkpoint tensors, masked, then
  ``(E[a] + adaptor) · √2`` (√2 in the adaptor output's dtype) at continuous positions and ``+ E[text]`` everywhere;
- the decoder is a stock ``transformers.Qwen2ForCausalLM`` holding the same tensors (spec §2.1: identical names);
  the MIMO head is a stock Qwen2 whose layers are main ``0..k`` followed by the MIMO layers (spec §3.4);
- Whisper rows use transformers' ``WhisperEncoder`` loaded from ``whisper-large-v3/model.safetensors`` (spec §3.2);
- the loss is ``Σ CE·mask / (Σ mask + 1e-4)`` over the shifted text stream (spec §5.4).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from transformers import Qwen2Config, Qwen2ForCausalLM, WhisperFeatureExtractor
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from llamafactory_kimi_audio.models.layout import audio_marker

# ------------------------------------------------------------------------------------------ spec constants (§4)
OFFICIAL_BASE = 151643  # num_base_tokens of the real tiktoken.model
OFFICIAL_AUDIO_OFFSET = 152064  # kimia_token_offset: GLM-4-Voice code c has id c + 152064
OFFICIAL_IDS = {
    "msg_end": 151645,
    "media_begin": 151661,
    "placeholder": 151662,  # <|reserved_token_12|>: the package's single-stream audio-frame placeholder
    "media_end": 151663,
    "blank": 151666,
    "text_eos": 151667,
    "user_start": 151670,
    "assistant_start": 151671,
    "speech_ct": 151675,
    "pad": 152063,
}
SPEC_PAT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
INSTRUCTION = "Please transcribe the spoken content into written text."
SR = 16000


@dataclass(frozen=True)
class SpecIds:
    msg_end: int
    media_begin: int
    placeholder: int
    media_end: int
    blank: int
    text_eos: int
    user_start: int
    assistant_start: int
    speech_ct: int
    pad: int
    offset: int
    num_base: int

    @classmethod
    def for_base(cls, num_base: int) -> SpecIds:
        shift = num_base - OFFICIAL_BASE
        return cls(
            **{k: v + shift for k, v in OFFICIAL_IDS.items()}, offset=OFFICIAL_AUDIO_OFFSET + shift, num_base=num_base
        )

    @property
    def audio_stream_controls(self) -> set[int]:
        """Ids that spec §5.3 puts in the audio stream (besides the semantic codes)."""
        return {self.user_start, self.assistant_start, self.media_begin, self.media_end, self.speech_ct, self.msg_end}


def speechy(num_samples: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(num_samples) / SR
    f0 = 110 + 90 * rng.random()
    x = sum(np.sin(2 * np.pi * f0 * h * t * (1 + 0.2 * np.sin(2 * np.pi * 0.7 * t))) / h for h in range(1, 5))
    x = x * (1.2 + np.sin(2 * np.pi * (0.5 + rng.random()) * t)) + 0.05 * rng.standard_normal(num_samples)
    return (0.2 * x / np.abs(x).max()).astype(np.float32)


def frames(num_samples: int) -> int:
    return (num_samples - 1) // 1280 + 1  # spec §3.2 token_len


# ------------------------------------------------------------------------------------------------ references
def official_streams(ids: SpecIds, instruction: list[int], codes: list[int], transcript: list[int] | None = None):
    """Rows of spec §5.3: (audio stream, text stream, is_continuous, text-loss mask before the shift)."""
    b = ids.blank
    rows = [(ids.user_start, b, False, False)]
    rows += [(b, t, False, False) for t in instruction]
    rows += [(ids.media_begin, b, False, False)]
    rows += [(c + ids.offset, b, True, False) for c in codes]
    rows += [(ids.media_end, b, False, False), (ids.speech_ct, b, False, False)]
    rows += [(ids.msg_end, b, False, False), (ids.assistant_start, b, False, False)]
    if transcript is not None:
        rows += [(b, t, False, True) for t in transcript]
        rows += [(b, ids.text_eos, False, True), (ids.msg_end, b, False, False)]
    audio, text, cont, loss = zip(*rows)
    return torch.tensor(audio), torch.tensor(text), torch.tensor(cont), torch.tensor(loss)


def reference_embeddings(state, config, ids: SpecIds, audio, text, is_cont, whisper_rows, sqrt2=None):
    """Spec §3.3, ``inputs_embeds is None`` branch, one sample."""
    embed = state["model.embed_tokens.weight"]
    dtype = embed.dtype
    length = audio.shape[0]
    expanded = torch.zeros(length, whisper_rows.shape[-1], dtype=dtype)
    starts = (audio == ids.media_begin).nonzero().flatten().tolist()
    ends = (audio == ids.media_end).nonzero().flatten().tolist()
    used = 0
    for start, end in zip(starts, ends):
        expanded[start + 1 : end] = whisper_rows[used : used + end - start - 1].to(dtype)
        used += end - start - 1
    assert used == whisper_rows.shape[0] == int(is_cont.sum())
    a = "model.vq_adaptor.layers."
    h = F.silu(F.linear(expanded, state[a + "0.weight"], state[a + "0.bias"]))
    h = F.linear(h, state[a + "3.weight"], state[a + "3.bias"])
    h = F.layer_norm(h, (h.shape[-1],), state[a + "4.weight"], state[a + "4.bias"], eps=config.rms_norm_eps)
    w = h * is_cont[:, None]
    sqrt2 = torch.sqrt(torch.tensor(2.0, dtype=w.dtype)) if sqrt2 is None else sqrt2  # in the adaptor output's dtype
    audio_emb = embed[audio]
    audio_emb = torch.where(is_cont[:, None], (audio_emb + w) * sqrt2, audio_emb)
    return audio_emb + embed[text]


def official_text_loss(text_logits, text, text_mask, pad: int) -> torch.Tensor:
    """Spec §5.4: labels = text stream shifted by one (pad at the end), mask shifted the same way."""
    labels = torch.cat([text[1:], torch.tensor([pad])])
    mask = torch.cat([text_mask[1:], torch.tensor([False])])
    ce = F.cross_entropy(text_logits.float(), labels, reduction="none")
    return (ce * mask).sum() / (mask.sum() + 1e-4)


def hf_per_sample_loss(logits, labels) -> torch.Tensor:
    """The same per-utterance mean for LLaMA-Factory style labels (-100 outside the response)."""
    shift_logits, shift_labels = logits[:-1].float(), labels[1:]
    keep = shift_labels != -100
    ce = F.cross_entropy(shift_logits[keep], shift_labels[keep], reduction="sum")
    return ce / (keep.sum() + 1e-4)


def qwen2_reference(model, layers: list[str], norm: str, head: str) -> Qwen2ForCausalLM:
    """A stock Qwen2ForCausalLM holding the Kimi tensors (embed + the given layer prefixes + norm + head)."""
    c = model.config
    qcfg = Qwen2Config(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
        num_hidden_layers=len(layers), num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads, max_position_embeddings=c.max_position_embeddings,
        rms_norm_eps=c.rms_norm_eps, rope_theta=c.rope_theta, tie_word_embeddings=False, hidden_act="silu",
        attention_dropout=0.0, use_sliding_window=False,
    )  # fmt: skip
    qcfg._attn_implementation = "eager"
    reference = Qwen2ForCausalLM(qcfg).eval()
    state = model.state_dict()
    mapped = {
        "model.embed_tokens.weight": state["model.embed_tokens.weight"],
        "model.norm.weight": state[norm],
        "lm_head.weight": state[head],
    }
    for index, prefix in enumerate(layers):
        for key, value in state.items():
            if key.startswith(prefix + "."):
                mapped[f"model.layers.{index}.{key[len(prefix) + 1 :]}"] = value
    reference.load_state_dict(mapped, strict=True)
    return reference


def reference_logits(reference: Qwen2ForCausalLM, embeds: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return reference(inputs_embeds=embeds[None]).logits[0]


def reference_whisper_rows(whisper_ref: WhisperEncoder, wave: np.ndarray) -> torch.Tensor:
    """Spec §3.2: 30 s chunks, log-mel padded to 30 s, encoder, first 4·T frames, 4 frames → one 4·d row."""
    extractor = WhisperFeatureExtractor(feature_size=128)
    rows = []
    for start in range(0, len(wave), 480000):
        chunk = wave[start : start + 480000]
        mel = extractor(chunk, sampling_rate=SR, padding="max_length", return_tensors="pt").input_features
        with torch.no_grad():
            hidden = whisper_ref(mel).last_hidden_state
        t = frames(len(chunk))
        rows.append(hidden[0, : 4 * t].reshape(t, -1))
    return torch.cat(rows)


def training_sample(layout, ids, tik, rng, num_codes: int, transcript: str):
    """Official streams + single-stream LayoutEncoder ids/labels for one ASR sample with random audio inputs."""
    codes = rng.integers(0, 256, size=num_codes).tolist()
    instr, trans = tik.encode_ordinary(INSTRUCTION), tik.encode_ordinary(transcript)
    streams = official_streams(ids, instr, codes, trans)
    layout_ids, labels = layout.conversation(
        [("user", INSTRUCTION + audio_marker(num_codes)), ("assistant", transcript)]
    )
    return streams, torch.tensor(layout_ids), torch.tensor(labels), torch.tensor(codes)


WAVE_SECONDS = (0.3, 1.1, 2.0)
TRANSCRIPTS = ("red", "one two three four", "the quick brown fox jumps")


def right_padded_training_batch(layout, waves, pad_id: int):
    samples = [
        layout.conversation([("user", INSTRUCTION + audio_marker(frames(len(w)))), ("assistant", t)])
        for w, t in zip(waves, TRANSCRIPTS)
    ]
    width = max(len(s[0]) for s in samples)
    input_ids = torch.full((len(samples), width), pad_id)
    labels = torch.full((len(samples), width), -100)
    mask = torch.zeros((len(samples), width), dtype=torch.long)
    for row, (sample_ids, sample_labels) in enumerate(samples):
        input_ids[row, : len(sample_ids)] = torch.tensor(sample_ids)
        labels[row, : len(sample_ids)] = torch.tensor(sample_labels)
        mask[row, : len(sample_ids)] = 1
    return samples, {"input_ids": input_ids, "attention_mask": mask, "labels": labels}
