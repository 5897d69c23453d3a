"""Batched greedy transcription with the native model: a base checkpoint, a LoRA adapter on it, or a merged model.

Loading (:func:`load_for_inference`) is separate from transcribing (:func:`transcribe`), so a caller that already
holds a model transcribes several test sets without loading the checkpoint again.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ..errors import ModelError
from ..versions import DTYPE_KWARG


@dataclass(frozen=True)
class Generation:
    """Decoding settings of :func:`transcribe` (recorded in ``summary.json``)."""

    batch_size: int = 8
    repetition_penalty: float = 1.0
    max_new_tokens: int = 256

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_model_dir(model_path: str, adapter_path: str | None = None) -> None:
    """Raise ModelError (exit 3) naming the directory when the model or adapter cannot be what we load."""
    from ..models.auto import is_kimi_audio_checkpoint
    from ..models.configuration_kimi_audio import OFFICIAL_ARCHITECTURE
    from ..models.constants import MODEL_TYPE

    if not os.path.isdir(model_path):
        raise ModelError(
            f"{model_path}: no such model directory; pass a local Kimi-Audio checkpoint to --model "
            "(download it first; nothing is downloaded here)"
        )
    if not is_kimi_audio_checkpoint(model_path):
        raise ModelError(
            f"{model_path}: not a Kimi-Audio checkpoint (its config.json has neither model_type "
            f"{MODEL_TYPE!r} nor architectures {OFFICIAL_ARCHITECTURE!r} / an auto_map to its code); "
            "pass the model directory itself"
        )
    if adapter_path and not os.path.isfile(os.path.join(adapter_path, "adapter_config.json")):
        raise ModelError(f"{adapter_path}: no adapter_config.json; pass the output_dir of a LoRA run to --adapter")


def load_for_inference(model_path: str, adapter_path: str | None = None, device: str | None = None):
    """``(model, processor)`` in eval mode on ``device`` (default: CUDA when available); a LoRA adapter is merged."""
    from ..models.modeling_kimi_audio import KimiAudioForCausalLM
    from ..models.processing_kimi_audio import KimiAudioProcessor

    check_model_dir(model_path, adapter_path)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.startswith("cuda") and torch.cuda.is_bf16_supported() else torch.float32
    model = KimiAudioForCausalLM.from_pretrained(model_path, **{DTYPE_KWARG: dtype})
    if adapter_path:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_path).merge_and_unload()
    has_own_tokenizer = adapter_path and os.path.isfile(os.path.join(adapter_path, "tiktoken.model"))
    processor = KimiAudioProcessor.from_pretrained(adapter_path if has_own_tokenizer else model_path)
    return model.to(device).eval(), processor


def batches(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def transcribe(
    model: Any,
    processor: Any,
    audios: Sequence[str],
    instructions: Sequence[str],
    generation: Generation = Generation(),
    progress: bool = True,
) -> list[str]:
    """Greedy transcripts of ``audios`` (paths), one per audio, in order. Batches are sorted by file size to limit
    padding."""
    from tqdm.auto import tqdm

    from ..audio_io import load_audio

    if len(instructions) != len(audios):
        raise ValueError(f"{len(instructions)} instructions for {len(audios)} audios")
    order = sorted(range(len(audios)), key=lambda i: os.path.getsize(audios[i]) if os.path.isfile(audios[i]) else 0)
    results: dict[int, str] = {}
    bar = tqdm(total=len(audios), desc="transcribe", unit="utt", disable=None if progress else True, file=sys.stderr)
    for chunk in batches(order, generation.batch_size):
        inputs = processor.asr_inputs([load_audio(audios[i]) for i in chunk], [instructions[i] for i in chunk])
        inputs = {k: v.to(model.device) for k, v in inputs.items()}
        with torch.no_grad():
            output = model.generate(
                **inputs,
                do_sample=False,
                max_new_tokens=generation.max_new_tokens,
                repetition_penalty=generation.repetition_penalty,
            )
        texts = processor.decode_transcripts(output[:, inputs["input_ids"].shape[1] :])
        if len(texts) != len(chunk):
            raise ModelError(f"the model returned {len(texts)} transcripts for a batch of {len(chunk)} audios")
        results.update(zip(chunk, texts))
        bar.update(len(chunk))
    bar.close()
    return [results[i] for i in range(len(audios))]
