"""Batched greedy transcription with the native model: a base checkpoint, a LoRA adapter on it, or a merged model.

Loading (:func:`load_for_inference`) is separate from transcribing (:func:`transcribe`), so a caller that already
holds a model transcribes several test sets without loading the checkpoint again.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, TextIO

import torch

from ..errors import InputError, ModelError
from ..versions import DTYPE_KWARG
from .model_dir import check_model_dir

PREFETCH_BATCHES = 3  # batches whose audio is read and featurised on CPU threads while the GPU decodes
PROGRESS_EVERY_S = 30.0  # seconds between progress lines when stderr is not a terminal


@dataclass(frozen=True)
class Generation:
    """Decoding settings of :func:`transcribe` (recorded in ``summary.json``)."""

    batch_size: int = 8
    repetition_penalty: float = 1.0
    max_new_tokens: int = 256
    # auto: static KV cache + CUDA-graphed step on CUDA, static cache on CPU; graph / static; generate: model.generate
    decode: str = "auto"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_for_inference(model_path: str, adapter_path: str | None = None, device: str | None = None):
    """``(model, processor)`` in eval mode on ``device`` (default: CUDA when available); a LoRA adapter is merged."""
    from ..models.modeling_kimi_audio import KimiAudioForCausalLM
    from ..models.processing_kimi_audio import KimiAudioProcessor

    check_model_dir(model_path, adapter_path)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.startswith("cuda") and torch.cuda.is_bf16_supported() else torch.float32
    model = load_weights(KimiAudioForCausalLM, model_path, dtype, device)
    if adapter_path:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_path).merge_and_unload()
    has_own_tokenizer = adapter_path and os.path.isfile(os.path.join(adapter_path, "tiktoken.model"))
    processor = KimiAudioProcessor.from_pretrained(adapter_path if has_own_tokenizer else model_path)
    return model.to(device).eval(), processor


def load_weights(model_class: Any, model_path: str, dtype: torch.dtype, device: str):
    """Straight onto the GPU (no 16 GB copy through host memory first); the host route if that placement fails."""
    if device.startswith("cuda"):
        try:
            return model_class.from_pretrained(model_path, device_map={"": device}, **{DTYPE_KWARG: dtype})
        except (RuntimeError, ValueError, ImportError, NotImplementedError):
            pass
    return model_class.from_pretrained(model_path, **{DTYPE_KWARG: dtype})


def batches(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def prefetched(function: Callable[[Any], Any], chunks: list, ahead: int = PREFETCH_BATCHES) -> Iterator[Any]:
    """``function(chunk)`` for every chunk in order, the next ``ahead`` computed on worker threads meanwhile (audio
    decoding and feature extraction overlap the model's work; numpy and torch release the GIL)."""
    with ThreadPoolExecutor(max_workers=max(1, ahead)) as pool:
        pending = [pool.submit(function, chunk) for chunk in chunks[:ahead]]
        for index in range(len(chunks)):
            if index + ahead < len(chunks):
                pending.append(pool.submit(function, chunks[index + ahead]))
            yield pending.pop(0).result()


class ProgressLines:
    """Plain progress lines (done / total, utt/s, ETA) for logs: tqdm's bar is off when stderr is not a terminal."""

    def __init__(self, total: int, stream: TextIO, every_s: float = PROGRESS_EVERY_S):
        self.total, self.stream, self.every_s = total, stream, every_s
        self.start = self.last = time.perf_counter()
        self.done = 0

    def update(self, count: int) -> None:
        self.done += count
        now = time.perf_counter()
        if self.done == count or self.done >= self.total or now - self.last >= self.every_s:
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            eta = (self.total - self.done) / rate if rate else 0.0
            print(
                f"transcribe: {self.done}/{self.total} utterances, {rate:.2f} utt/s, ETA {format_seconds(eta)}",
                file=self.stream,
                flush=True,
            )


def format_seconds(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def decoder_for(model: Any, generation: Generation) -> Callable[..., torch.Tensor]:
    """``(**inputs) -> ids``: the fast greedy decoder (``models/fast_generation.py``), or ``model.generate`` when
    asked for or when a repetition penalty needs its logits processors."""
    from ..models.fast_generation import DECODE_MODES

    if generation.decode not in DECODE_MODES:
        raise InputError(f"--decode {generation.decode}: use one of {', '.join(DECODE_MODES)}")
    penalised = generation.repetition_penalty != 1.0
    if penalised and generation.decode in ("graph", "static"):
        raise InputError(f"--decode {generation.decode} is greedy only; --repetition-penalty needs --decode generate")
    if generation.decode == "graph" and model.device.type != "cuda":
        raise InputError(f"--decode graph needs a CUDA device (the model is on {model.device}); use auto or static")
    if generation.decode == "generate" or penalised:
        return lambda **inputs: model.generate(
            **inputs,
            do_sample=False,
            max_new_tokens=generation.max_new_tokens,
            repetition_penalty=generation.repetition_penalty,
        )
    fast = model.fast_greedy_decoder(generation.decode)  # the model's kept decoder: caches and graphs are reused
    return lambda **inputs: fast(max_new_tokens=generation.max_new_tokens, **inputs)


def transcribe(
    model: Any,
    processor: Any,
    audios: Sequence[str],
    instructions: Sequence[str],
    generation: Generation = Generation(),
    progress: bool = True,
    unreadable: dict[int, str] | None = None,
    on_silent: Callable[[int], None] | None = None,
) -> list[str]:
    """Greedy transcripts of ``audios`` (paths), one per audio, in order. Batches are sorted by file size to limit
    padding (results are put back in input order); the next batches' audio is prepared while one decodes.

    With an ``unreadable`` dict, a clip that cannot be decoded is not fatal: its index and the reason are put there
    and its transcript is ``""`` (the caller drops it); without one, the clip's AudioError ends the call. With a
    ``on_silent`` callback, it is called with the index of each digitally silent clip as it is decoded (in the
    prefetch thread, before its batch is transcribed; ``fileio/audio_silence.py``); what it raises ends the call."""
    from tqdm.auto import tqdm

    if len(instructions) != len(audios):
        raise ValueError(f"{len(instructions)} instructions for {len(audios)} audios")
    order = sorted(range(len(audios)), key=lambda i: os.path.getsize(audios[i]) if os.path.isfile(audios[i]) else 0)
    chunks = list(batches(order, generation.batch_size))
    decode = decoder_for(model, generation)
    results: dict[int, str] = {}
    terminal = sys.stderr.isatty()
    bar = tqdm(total=len(audios), desc="transcribe", unit="utt", disable=not (progress and terminal), file=sys.stderr)
    lines = ProgressLines(len(audios), sys.stderr) if progress and not terminal else None

    def prepare(chunk: list[int]) -> tuple[list[int], dict[str, torch.Tensor] | None]:
        waves = decoded(audios, chunk, unreadable, on_silent)
        chunk = [i for i in chunk if i in waves]
        if not chunk:
            return chunk, None
        return chunk, processor.asr_inputs([waves[i] for i in chunk], [instructions[i] for i in chunk])

    for (chunk, inputs), size in zip(prefetched(prepare, chunks), map(len, chunks)):
        if inputs is not None:
            inputs = {k: v.to(model.device) for k, v in inputs.items()}
            with torch.no_grad():
                output = decode(**inputs)
            texts = processor.decode_transcripts(output[:, inputs["input_ids"].shape[1] :])
            if len(texts) != len(chunk):
                raise ModelError(f"the model returned {len(texts)} transcripts for a batch of {len(chunk)} audios")
            results.update(zip(chunk, texts))
        bar.update(size)  # skipped clips count as done
        if lines:
            lines.update(size)
    bar.close()
    return [results.get(i, "") for i in range(len(audios))]


def decoded(
    audios: Sequence[str],
    chunk: list[int],
    unreadable: dict[int, str] | None,
    on_silent: Callable[[int], None] | None = None,
) -> dict[int, Any]:
    """index -> 16 kHz wave of the chunk's clips; one that cannot be decoded goes to ``unreadable`` (if given), the
    index of a silent one to ``on_silent`` (if given)."""
    from ..fileio.audio import load_audio
    from ..fileio.audio_errors import AudioError
    from ..fileio.audio_silence import is_silent

    waves = {}
    for index in chunk:
        try:
            waves[index] = load_audio(audios[index])
            if on_silent is not None and is_silent(waves[index]):
                on_silent(index)
        except AudioError as err:
            if unreadable is None:
                raise
            unreadable[index] = str(err)
    return waves
