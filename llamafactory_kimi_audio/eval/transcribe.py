"""Batched greedy transcription with the native model: a base checkpoint, a LoRA adapter on it, or a merged model."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import torch


def load_for_inference(model_path: str, adapter_path: str | None = None, device: str | None = None):
    """(model, processor) in eval mode; a LoRA adapter is merged for speed."""
    from ..models.auto import is_kimi_audio_checkpoint
    from ..models.modeling_kimi_audio import TRANSFORMERS_MAJOR, KimiAudioForCausalLM
    from ..models.processing_kimi_audio import KimiAudioProcessor

    if not is_kimi_audio_checkpoint(model_path):
        raise FileNotFoundError(
            f"{model_path}: not a Kimi-Audio checkpoint (config.json with model_type moonshot_kimia)"
        )
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.startswith("cuda") and torch.cuda.is_bf16_supported() else torch.float32
    dtype_kwarg = "dtype" if TRANSFORMERS_MAJOR >= 5 else "torch_dtype"  # 5.x renamed it
    model = KimiAudioForCausalLM.from_pretrained(model_path, **{dtype_kwarg: dtype})
    if adapter_path:
        from peft import PeftModel

        if not os.path.isfile(os.path.join(adapter_path, "adapter_config.json")):
            raise FileNotFoundError(f"{adapter_path}: no adapter_config.json (expected a LoRA output_dir)")
        model = PeftModel.from_pretrained(model, adapter_path).merge_and_unload()
    processor_dir = (
        adapter_path if adapter_path and os.path.isfile(os.path.join(adapter_path, "tiktoken.model")) else model_path
    )
    processor = KimiAudioProcessor.from_pretrained(processor_dir)
    return model.to(device).eval(), processor


def batches(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def transcribe(
    audios: list[str],
    instructions: list[str],
    model_path: str,
    adapter_path: str | None = None,
    batch_size: int = 8,
    repetition_penalty: float = 1.0,
    max_new_tokens: int = 256,
    device: str | None = None,
    progress: bool = True,
) -> list[str]:
    """Greedy transcripts (spec §7) of ``audios``, in order. Batches are sorted by length to limit padding."""
    from tqdm.auto import tqdm

    from ..audio_io import load_audio

    model, processor = load_for_inference(model_path, adapter_path, device)
    order = sorted(range(len(audios)), key=lambda i: os.path.getsize(audios[i]) if os.path.isfile(audios[i]) else 0)
    results: dict[int, str] = {}
    bar = tqdm(total=len(audios), desc="transcribe", unit="utt", disable=None if progress else True, file=sys.stderr)
    for chunk in batches(order, batch_size):
        waves = [load_audio(audios[i]) for i in chunk]
        inputs = processor.asr_inputs(waves, [instructions[i] for i in chunk])
        inputs = {k: v.to(model.device) for k, v in inputs.items()}
        with torch.no_grad():
            output = model.generate(
                **inputs, do_sample=False, max_new_tokens=max_new_tokens, repetition_penalty=repetition_penalty
            )
        texts = processor.decode_transcripts(output[:, inputs["input_ids"].shape[1] :])
        results.update(zip(chunk, texts))
        bar.update(len(chunk))
    bar.close()
    return [results[i] for i in range(len(audios))]
