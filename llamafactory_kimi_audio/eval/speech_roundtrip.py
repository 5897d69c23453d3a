"""ASR round trip of spoken answers: codes -> 24 kHz wave (native detokenizer) -> the same model's transcript -> CER.

Runs when the evaluated checkpoint has the official ``audio_detokenizer/`` and ``vocoder/`` directories (README
"Speech output"); otherwise the speech evaluation stays at the code level. The generated waves are written next to
the report (``speech_wav/ID.wav``) so they can be listened to; an answer without codes is scored as an empty
transcript (every reference character deleted).
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .scoring import ScoreReport, score
from .speech_eval import SpeechItem

WAV_SUBDIR = "speech_wav"


@dataclass
class RoundTrip:
    report: ScoreReport  # transcripts of the generated audio against the answer texts
    hyps: list[str]
    wavs: list[str | None]  # None: the answer had no codes

    def to_dict(self) -> dict[str, Any]:
        return {"metric": "asr_round_trip", "n": self.report.n, "cer": self.report.cer, "wer": self.report.wer}


def detokenizer_checkpoint(model: Any) -> str | None:
    """The model's checkpoint directory when it holds the detokenizer files, else None."""
    from ..models.detokenizer import has_detokenizer

    path = getattr(getattr(model, "config", None), "_name_or_path", None)
    return path if path and os.path.isdir(path) and has_detokenizer(path) else None


def open_detokenizer(checkpoint: str, device: Any) -> Any:
    """The checkpoint's native detokenizer on ``device``: bfloat16 on a GPU, as the official runs it, else float32."""
    import torch

    from ..models.detokenizer import load_detokenizer

    dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    return load_detokenizer(checkpoint, device=device, dtype=dtype)


def write_wave(detokenizer: Any, codes: Sequence[int], seed: int, path: str) -> str:
    """``codes`` as a 24 kHz PCM-16 wav at ``path`` (written atomically); ``seed`` draws the flow's start noise."""
    import soundfile as sf
    import torch

    from ..fileio.textio import atomic_open

    wave = detokenizer(list(codes), generator=torch.Generator().manual_seed(seed)).cpu().numpy()
    with atomic_open(path, "wb") as handle:
        sf.write(handle, wave, detokenizer.sampling_rate, format="WAV", subtype="PCM_16")
    return path


def write_waves(checkpoint: str, model: Any, ids: Sequence[str], codes: Sequence[Sequence[int]], directory: str):
    """One wav per answer with codes (the flow noise seeded per answer); paths, None for an answer without codes."""
    detokenizer = open_detokenizer(checkpoint, next(model.parameters()).device)
    os.makedirs(directory, exist_ok=True)
    paths: list[str | None] = []
    for index, (uid, answer) in enumerate(zip(ids, codes)):
        name = f"{index:05d}_{re.sub(r'[^A-Za-z0-9_.-]', '_', uid)[:80]}.wav"
        paths.append(write_wave(detokenizer, answer, index, os.path.join(directory, name)) if answer else None)
    return paths


def round_trip(
    model: Any,
    processor: Any,
    items: Sequence[SpeechItem],
    codes: Sequence[Sequence[int]],
    out_dir: str | None,
    normalizer: str,
    language: str,
    progress: bool = True,
) -> RoundTrip | None:
    """Transcribe the detokenized answers with ``model`` itself and score them; None without a detokenizer."""
    from ..models.special_tokens import DEFAULT_INSTRUCTION
    from .normalize import detect_language
    from .transcribe import Generation, transcribe

    checkpoint = detokenizer_checkpoint(model)
    if checkpoint is None:
        return None
    directory = os.path.join(out_dir, WAV_SUBDIR) if out_dir else tempfile.mkdtemp(prefix="kimi_speech_wav_")
    ids, refs = [item.id for item in items], [item.answer_text for item in items]
    wavs = write_waves(checkpoint, model, ids, codes, directory)
    spoken = [path for path in wavs if path]
    instruction = DEFAULT_INSTRUCTION[detect_language(refs)]
    heard = iter(transcribe(model, processor, spoken, [instruction] * len(spoken), Generation(), progress))
    hyps = [next(heard) if path else "" for path in wavs]
    return RoundTrip(score(ids, refs, hyps, normalizer, language, wavs), hyps, wavs)
