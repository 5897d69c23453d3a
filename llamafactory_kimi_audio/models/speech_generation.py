"""The official Kimi-Audio decoding loop (``kimia_infer/api/kimia.py`` ``_generate_loop``; speech-output spec §3).

Transformers' ``GenerationMixin`` feeds one stream; Kimi-Audio feeds two at every step: the sampled text token and
the sampled audio token, embedded as ``E[audio] + E[text]``. Per step ``i`` (from the prompt's last position):

- text: after ``text_eos`` the text stream is blank; ``text_eos`` itself is fed back;
- audio: blank for ``i < D`` (``kimia_mimo_audiodelaytokens``) and in ``"text"`` mode, else the sampled token;
- ``"both"`` stops when the audio token is ``msg_end`` or ``media_end`` (never fed back), ``"text"`` at ``text_eos``.

Codes = audio tokens ``≥ kimia_token_offset`` minus the offset (end, blank or control tokens the audio head emitted
are fed back but not returned). Difference from upstream, on purpose: the text embedding is always added (upstream
skips it when the text id is 0, spec §3.5), and ``"text"`` mode does not run the MIMO branch (its output is unused).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.cache_utils import DynamicCache

from ..errors import InputError

SPEECH_BUDGET = int(12.5 * 120)  # official: 120 s of 12.5 Hz frames, prompt included, for output_type="both"
TEXT_BUDGET = 7500


@dataclass
class HeadSampling:
    """One head's sampler (``kimia_infer/utils/sampler.py``); temperature 0 = greedy argmax over the vocabulary."""

    temperature: float = 0.0
    top_k: int = 5
    repetition_penalty: float = 1.0
    repetition_window: int = 64

    def sample(self, logits: torch.Tensor, previous: list[int], generator: torch.Generator | None) -> int:
        logits = logits.float().clone()
        if self.repetition_penalty > 1.0 and len(previous) > self.repetition_window:
            recent = torch.tensor(previous[-self.repetition_window :], device=logits.device)
            scores = logits[recent]
            logits[recent] = torch.where(
                scores < 0, scores * self.repetition_penalty, scores / self.repetition_penalty
            )
        logprobs = torch.log_softmax(logits, dim=-1)
        if self.temperature <= 1e-6:
            return int(logprobs.argmax())
        probs = (logprobs / self.temperature).exp()
        if self.top_k > 0:  # a top-k beyond the head size keeps every code (torch.topk would fail)
            values, indices = probs.topk(min(self.top_k, probs.shape[-1]))
            return int(indices[torch.multinomial(values, 1, generator=generator)])
        return int(torch.multinomial(probs, 1, generator=generator))


@dataclass
class SpeechSampling:
    """API defaults of the official ``generate``: both heads greedy. ``official_examples()``: audio T=0.8, top-k 10."""

    text: HeadSampling = field(default_factory=lambda: HeadSampling(repetition_window=16))
    audio: HeadSampling = field(default_factory=HeadSampling)

    @classmethod
    def official_examples(cls) -> SpeechSampling:
        return cls(audio=HeadSampling(temperature=0.8, top_k=10))


@dataclass
class SpeechOutput:
    text_ids: list[int]  # up to (not including) text_eos
    codes: list[int]  # GLM-4-Voice codes (offset removed): what the detokenizer takes
    audio_tokens: list[int]  # the audio stream from the first non-delay step, end token included (as upstream)
    fed_rows: list[tuple[int, int]] = field(default_factory=list)  # (audio, text) fed after the prompt


class _LoopState:
    def __init__(self, ids, output_type: str) -> None:
        self.ids, self.output_type = ids, output_type
        self.text, self.audio, self.fed = [], [], []
        self.text_done, self.valid_text, self.valid_audio = False, 0, 0

    def step(self, text_token: int, audio_token: int) -> bool:
        """Apply the official rules to the sampled pair; True when decoding stops."""
        ids, step = self.ids, len(self.text)
        if self.text_done:
            text_token = ids.blank
        elif text_token == ids.text_eos:
            self.text_done = True
        else:
            self.valid_text += 1
        self.text.append(text_token)
        if step < ids.delay or self.output_type == "text":
            audio_token = ids.blank
        else:
            self.valid_audio += 1
        self.audio.append(audio_token)
        if self.output_type == "text":
            return self.text_done
        return audio_token in (ids.msg_end, ids.media_end)

    def result(self) -> SpeechOutput:
        audio = self.audio[self.ids.delay : self.ids.delay + self.valid_audio]
        codes = [token - self.ids.offset for token in audio if token >= self.ids.offset]
        return SpeechOutput(self.text[: self.valid_text], codes, audio, self.fed)


@torch.no_grad()
def generate_speech(
    model,
    input_ids: torch.LongTensor,
    output_type: str = "both",
    sampling: SpeechSampling | None = None,
    max_new_tokens: int | None = None,
    generator: torch.Generator | None = None,
    **audio: Any,
) -> SpeechOutput:
    """Decode one prompt (batch 1, e.g. ``KimiAudioProcessor.speech_prompt_inputs``). ``max_new_tokens`` caps the
    official budget (1500 − prompt length for ``"both"``, 7500 − prompt length for ``"text"``)."""
    if output_type not in ("both", "text"):
        raise InputError(f"output_type must be 'both' or 'text', got {output_type!r}")
    if input_ids.shape[0] != 1:
        raise InputError(
            f"speech generation decodes one prompt at a time (batch 1), got a batch of {input_ids.shape[0]}"
        )
    model.eval()
    ids, embed, speaks = model._ids, model.get_input_embeddings(), output_type == "both"
    budget = (SPEECH_BUDGET if speaks else TEXT_BUDGET) - input_ids.shape[1]
    budget = min(budget, max_new_tokens) if max_new_tokens is not None else budget
    sampling = sampling or SpeechSampling()
    cache, state = DynamicCache(), _LoopState(ids, output_type)
    inputs = {"inputs_embeds": model.fuse_embeddings(input_ids, **audio)}
    for _ in range(max(budget, 0)):
        out = model(**inputs, past_key_values=cache, use_cache=True, return_audio_logits=speaks, logits_to_keep=1)
        text_token = sampling.text.sample(out.logits[0, -1], state.text, generator)
        audio_token = sampling.audio.sample(out.audio_logits[0, -1], state.audio, generator) if speaks else ids.blank
        if state.step(text_token, audio_token):
            break
        row = torch.tensor([[state.audio[-1]], [state.text[-1]]], device=input_ids.device)
        state.fed.append((state.audio[-1], state.text[-1]))
        inputs = {"inputs_embeds": (embed(row[0]) + embed(row[1]))[None]}
    return state.result()
