"""Codes -> waveform as the official ``KimiAudio.detokenize_audio`` does it: chunked prefix flow matching + BigVGAN.

Why chunked and not one whole-utterance pass: the official detokenizer does not reduce to one pass. Each chunk attends
to the key/values of the *generated* mel of the earlier chunks (re-encoded once at t = 0.999), it sees 12 look-ahead
codes of the next chunk, chunks after the first get the position rows 1..L (see ``SinCosPositions``), and the waves of
consecutive vocoder calls are cross-faded with a Hamming window. This module reproduces that loop step by step:

- codes are split into a first chunk of 30 and then chunks of 30 (12.5 Hz codes), each repeated 4x (50 Hz mel rate);
- a chunk = 48 carried look-ahead tokens + its own tokens; Euler ODE from N(0, I) noise over ``linspace(0, 1, 30)``
  (torchdyn's fixed-step loop: 29 steps, t advanced by dt), the velocity at step ``int(t * 1000)``;
- the chunk's last 48 frames (look-ahead) are dropped; the kept mel is re-run at t = 0.999 to commit its key/values
  (at most 900 prefix tokens are kept); the final chunk has no look-ahead;
- the vocoder re-synthesises the pending half chunk with the new one; half-overlapping waves are Hamming cross-faded;
- 24 kHz output, 480 samples per 50 Hz frame: 1920 samples per code in all.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...errors import InputError
from .bigvgan import BigVGAN
from .flow_model import FlowDiT, PrefixKVCache


@dataclass
class StreamingSettings:
    """The official values (``get_audio_detokenizer`` + ``KimiAudio.detokenize_audio``)."""

    ode_steps: int = 30
    solver: str = "neural_ode_euler"  # or "naive_euler" (the official alternative)
    upsample_factor: int = 4
    look_ahead_tokens: int = 12  # in codes; x upsample_factor in mel frames
    first_chunk_codes: int = 30
    chunk_codes: int = 30
    max_kv_cache_tokens: int = 900
    max_positions: int = 4096


@dataclass
class MelNorm:
    """``normalize_mel`` / ``mel_mean`` / ``mel_std`` of the official config.yaml: mel = x * std + mean."""

    enabled: bool = False
    mean: float | list[float] = 0.0
    std: float | list[float] = 1.0

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        mean, std = (torch.as_tensor(v, dtype=x.dtype, device=x.device) for v in (self.mean, self.std))
        return x * std + mean


class FlowStream:
    """The streaming state of the flow model: next position id and the committed key/value prefix."""

    def __init__(self, model: FlowDiT, settings: StreamingSettings) -> None:
        self.model, self.settings = model, settings
        self.reset()

    def reset(self) -> None:
        self.position = 0
        self.cache = PrefixKVCache(len(self.model.blocks))

    def velocity(self, t: torch.Tensor, x: torch.Tensor, tokens: torch.Tensor, positions: torch.Tensor):
        steps = torch.zeros(x.shape[0], dtype=torch.long, device=x.device) + (t * 1000).long().to(x.device)
        return self.model(x, tokens, steps, positions, self.cache)

    def solve(self, x: torch.Tensor, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Integrate dx/dt = v from t=0 (noise) to 1 on ``linspace(0, 1, ode_steps)``."""
        steps = self.settings.ode_steps
        t_span = torch.linspace(0, 1, steps)
        if self.settings.solver == "naive_euler":  # official ``scheduler.sample``: every grid point, h = (1-1e-4)/N
            h = torch.full((x.shape[0],), (1 - 1e-4) / steps, dtype=x.dtype, device=x.device)
            for t in t_span:
                x = x + h * self.velocity(t, x, tokens, positions)
            return x
        if self.settings.solver != "neural_ode_euler":
            raise InputError(f"solver {self.settings.solver!r}: choose 'neural_ode_euler' or 'naive_euler'")
        if steps < 2:
            raise InputError(f"ode_steps {steps}: the Euler grid needs at least 2 points")
        t, dt = t_span[0], t_span[1] - t_span[0]
        for index in range(1, steps):  # torchdyn ``_fixed_odeint`` with the Euler solver
            x = x + dt * self.velocity(t, x, tokens, positions)
            t = t + dt
            if index < steps - 1:
                dt = t_span[index + 1] - t
        return x

    def infer_chunk(self, noise: torch.Tensor, tokens: torch.Tensor, look_ahead: int) -> torch.Tensor:
        """noise [L, 80], tokens [L] -> mel [L - look_ahead, 80]; commits the kept frames to the prefix."""
        length = tokens.shape[0]
        positions = torch.arange(self.position, self.position + length, device=tokens.device)[None]
        x = self.solve(noise[None], tokens[None], positions)
        if look_ahead > 0:
            x = x[:, :-look_ahead]
            commit_t = torch.tensor([0.999])
            self.velocity(commit_t, x, tokens[None, :-look_ahead], positions[:, :-look_ahead])
        self.position += x.shape[1]
        self.cache.commit(self.settings.max_kv_cache_tokens)
        return x[0]


class Detokenizer:
    """GLM-4-Voice semantic codes (12.5 Hz, without the model's token offset) -> 24 kHz mono waveform."""

    def __init__(self, flow: FlowDiT, vocoder: BigVGAN, mel_norm: MelNorm, settings: StreamingSettings | None = None):
        self.flow_model, self.vocoder, self.mel_norm = flow, vocoder, mel_norm
        self.settings = settings or StreamingSettings()
        self.stream = FlowStream(flow, self.settings)
        self.sampling_rate = int(vocoder.h.get("sampling_rate", 24000))
        self.frame_size = vocoder.hop_length
        self._clear()

    @property
    def samples_per_code(self) -> int:
        return self.frame_size * self.settings.upsample_factor

    def _clear(self) -> None:
        self.stream.reset()
        self.left_tokens: torch.Tensor | None = None
        self.pre_mel: torch.Tensor | None = None
        self.pre_wav: torch.Tensor | None = None

    @torch.inference_mode()
    def __call__(self, codes, generator: torch.Generator | None = None) -> torch.Tensor:
        """codes: ints or a [T] / [1, T] tensor -> float32 wave [T * samples_per_code] on the model's device."""
        codes = torch.as_tensor(codes, dtype=torch.long).reshape(-1)
        device = next(self.flow_model.parameters()).device
        if codes.numel() == 0:
            return torch.zeros(0, device=device)
        vocab = self.flow_model.config.semantic_vocab_size
        if int(codes.min()) < 0 or int(codes.max()) >= vocab:
            raise InputError(
                f"audio codes must lie in [0, {vocab}) (GLM-4-Voice ids minus the model's token offset); "
                f"got {int(codes.min())}..{int(codes.max())}"
            )
        codes = codes.to(device)
        self._clear()
        first, size = self.settings.first_chunk_codes, self.settings.chunk_codes
        pieces = [self._chunk(codes[:first], codes.numel() <= first, generator)]
        rest = codes[first:]
        for start in range(0, rest.numel(), size):
            pieces.append(self._chunk(rest[start : start + size], start + size >= rest.numel(), generator))
        return torch.cat(pieces, dim=-1)[0]

    def _chunk(self, codes: torch.Tensor, final: bool, generator: torch.Generator | None) -> torch.Tensor:
        """The official ``detokenize_streaming`` for one chunk: returns the wave [1, n] that is ready."""
        dtype = next(self.flow_model.parameters()).dtype
        tokens = codes.repeat_interleave(self.settings.upsample_factor)
        if self.settings.look_ahead_tokens and self.left_tokens is not None:
            tokens = torch.cat([self.left_tokens, tokens])
        noise = torch.randn(tokens.shape[0], self.flow_model.config.input_size, generator=generator)
        noise = noise.to(tokens.device).to(dtype)
        look_ahead = 0 if final else self.settings.look_ahead_tokens * self.settings.upsample_factor
        mel = self.stream.infer_chunk(noise, tokens, look_ahead)
        if look_ahead > 0:
            self.left_tokens = tokens[-look_ahead:]
        mel = self.mel_norm.denormalize(mel)
        wave = self._smooth(mel, final)
        if not final and self.stream.position + 2 * mel.shape[0] > self.settings.max_positions:
            self.stream.reset()  # out of position ids: the official restarts the flow state (no prompt to restore)
        return wave

    def _smooth(self, mel: torch.Tensor, final: bool) -> torch.Tensor:
        """Vocode the pending half chunk with the new mel; cross-fade the overlap with the previous call's wave."""
        frames = mel.shape[0]
        if self.pre_mel is None:
            wave = self.vocoder.decode_mel(mel)
            if final:
                self._clear()
                return wave.float()
            half = self.frame_size * frames // 2
            self.pre_wav, self.pre_mel = wave[:, -half:], mel[-frames // 2 :]
            return wave[:, :half].float()
        wave = self.vocoder.decode_mel(torch.cat([self.pre_mel, mel], dim=0))
        if final:
            self._clear()
            return wave.float()
        previous = self.pre_wav.shape[1]
        ready = previous * 2 if wave.shape[1] > previous * 2 else wave.shape[1] // 2
        out = wave[:, :ready]  # a view: the cross-fade below writes into ``wave`` as the official does
        window = torch.hamming_window(ready).to(wave.dtype).to(wave.device).unsqueeze(0)
        fade = ready // 2
        out[:, :fade] = self.pre_wav[:, :fade] * window[:, -fade:] + out[:, :fade] * window[:, :fade]
        remaining = wave.shape[1] - ready
        self.pre_wav, self.pre_mel = wave[:, -remaining:], mel[-(remaining // self.frame_size) :]
        return out.float()
