"""``kimi-audio-lf respond``: a spoken (or text) answer to one question, with the official decoding loop.

Writes ``OUT.json`` (text, GLM-4-Voice codes, settings) and ``OUT.npy`` (the codes, int64 ``[1, T]``: what the
official detokenizer takes). When the checkpoint has ``audio_detokenizer/`` and ``vocoder/`` (the official Kimi-Audio
layout), the native detokenizer also writes ``OUT.wav`` (24 kHz mono); otherwise see README "Speech output".
"""

from __future__ import annotations

import argparse
import os

import numpy as np

HELP = (
    "answer one question (audio and/or text) with speech: writes the text and the GLM-4-Voice codes (.json, .npy),"
    " and a .wav when the checkpoint has the detokenizer"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="Kimi-Audio checkpoint directory (official layout, or a merged fine-tune)")
    parser.add_argument("--adapter", help="LoRA output_dir to merge on top of MODEL")
    parser.add_argument("--audio", help="question audio file")
    parser.add_argument("--text", help="question text (alone, or before --audio); for TTS: the instruction + text")
    parser.add_argument("--out", required=True, help="output prefix: writes OUT.json and OUT.npy")
    parser.add_argument("--output-type", choices=["both", "text"], default="both", help="both = speak (default)")
    parser.add_argument(
        "--audio-temperature",
        type=float,
        default=0.0,
        help="0 = greedy (official API default); the official examples use 0.8 with --audio-top-k 10",
    )
    parser.add_argument("--audio-top-k", type=int, default=10)
    parser.add_argument("--max-new-tokens", type=int, help="cap on decoding steps (official budget: 1500 - prompt)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (audio temperature > 0)")
    parser.add_argument("--device", help="cpu / cuda (default: cuda when available)")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..audio_io import load_audio
    from ..data.textio import atomic_open, write_json
    from ..errors import InputError
    from ..eval.transcribe import load_for_inference
    from ..models.speech_generation import HeadSampling, SpeechSampling

    if not args.audio and not args.text:
        raise InputError("respond needs a question: --audio FILE and/or --text TEXT")
    model, processor = load_for_inference(args.model, args.adapter, args.device)
    wave = load_audio(args.audio, processor.audio_sampling_rate) if args.audio else None
    inputs = processor.speech_prompt_inputs(wave, args.text)
    device = next(model.parameters()).device
    inputs = {key: value.to(device) for key, value in inputs.items()}
    sampling = SpeechSampling(audio=HeadSampling(temperature=args.audio_temperature, top_k=args.audio_top_k))
    generator = torch.Generator(device=device).manual_seed(args.seed)
    prompt = inputs.pop("input_ids")
    out = model.generate_speech(
        prompt,
        output_type=args.output_type,
        sampling=sampling,
        max_new_tokens=args.max_new_tokens,
        generator=generator,
        **inputs,
    )
    text = processor.tokenizer.decode([t for t in out.text_ids if t < processor.tokenizer.num_base_tokens]).strip()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)) or ".", exist_ok=True)
    with atomic_open(f"{args.out}.npy", "wb") as handle:
        np.save(handle, np.asarray([out.codes], dtype=np.int64))
    record = {
        "text": text,
        "codes": out.codes,
        "num_codes": len(out.codes),
        "seconds": len(out.codes) / 12.5,
        "output_type": args.output_type,
        "model": os.path.abspath(args.model),
        "adapter": args.adapter,
    }
    wav_path = _write_wave(args, out.codes, device) if out.codes else None
    record["wav"] = wav_path
    write_json(f"{args.out}.json", record)
    print(f"respond: {text!r}; {len(out.codes)} audio codes ({len(out.codes) / 12.5:.2f} s) -> {args.out}.json/.npy")
    if wav_path:
        print(f"  waveform (native detokenizer, 24 kHz) -> {wav_path}")
    elif out.codes:
        print("  no audio_detokenizer/ + vocoder/ in the checkpoint: see README 'Speech output' (codes = OUT.npy)")
    return 0


def _write_wave(args: argparse.Namespace, codes: list[int], device) -> str | None:
    """``OUT.wav`` from the checkpoint's detokenizer, the flow's start noise drawn on the CPU from ``--seed``."""
    from ..eval.speech_roundtrip import open_detokenizer, write_wave
    from ..models.detokenizer import has_detokenizer

    if not has_detokenizer(args.model):
        return None
    return write_wave(open_detokenizer(args.model, device), codes, args.seed, f"{args.out}.wav")
