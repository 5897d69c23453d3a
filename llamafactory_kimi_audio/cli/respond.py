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
    parser.add_argument(
        "--out",
        required=True,
        help="output prefix: writes OUT.json (text, codes) and OUT.npy (codes), and OUT.wav (24 kHz) when the "
        "checkpoint has audio_detokenizer/ and vocoder/",
    )
    parser.add_argument("--output-type", choices=["both", "text"], default="both", help="both = speak (default)")
    parser.add_argument(
        "--audio-temperature",
        type=float,
        default=0.0,
        help="0 = greedy (official API default); the official examples use 0.8 with --audio-top-k 10",
    )
    parser.add_argument(
        "--audio-top-k",
        type=int,
        default=10,
        help="with --audio-temperature > 0: sample the audio code among the k likeliest (default: 10, as the "
        "official examples; 0 = the whole vocabulary)",
    )
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        help="cap on decoding steps (default: the official budget, 1500 - prompt); speech takes 12.5 steps a second "
        "after 6 forced blank audio steps, so a small cap can end the answer before its audio starts",
    )
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (audio temperature > 0)")
    parser.add_argument("--device", help="cpu / cuda (default: cuda when available)")


def run(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..eval.model_dir import check_model_dir

    if not args.audio and not args.text:
        raise InputError("respond needs a question: --audio FILE and/or --text TEXT")
    check_model_dir(args.model, args.adapter)  # like the question: before torch is imported
    import torch

    from ..eval.transcribe import load_for_inference
    from ..fileio.audio import load_audio
    from ..fileio.textio import atomic_open, write_json
    from ..models.detokenizer import has_detokenizer
    from ..models.speech_generation import HeadSampling, SpeechSampling

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
    seconds = len(out.codes) / 12.5
    print(f"respond: {console_text(text)}; {len(out.codes)} audio codes ({seconds:.2f} s) -> {args.out}.json/.npy")
    if wav_path:
        print(f"  waveform (native detokenizer, 24 kHz) -> {wav_path}")
    elif out.codes:
        print("  no audio_detokenizer/ + vocoder/ in the checkpoint: see README 'Speech output' (codes = OUT.npy)")
    if args.output_type == "both" and (note := audio_note(out, model._ids)):
        wav = f"no {args.out}.wav: " if not out.codes and has_detokenizer(args.model) else ""
        print(f"  {wav}{note}")
    return 0


def console_text(text: str) -> str:
    """The answer quoted for the console, every control / format / unassigned character escaped (``repr``): a
    model's text must not move the cursor, ring the bell or recolour the terminal."""
    return repr(text)


def audio_note(out, ids) -> str | None:
    """Why a spoken answer has no audio, or was cut (``None`` when it ended at its audio end with codes).

    Every answer starts with ``ids.delay`` (6) forced blank audio steps; codes come after them, 12.5 a second."""
    audio, delay = out.audio_tokens, ids.delay
    ended = bool(audio) and audio[-1] in (ids.msg_end, ids.media_end)
    steps = len(out.fed_rows) + ended
    raise_budget = "raise --max-new-tokens (12.5 steps per second of speech, after the blanks) or leave it out"
    if not audio:
        return (
            f"the budget of {steps} decoding steps ended before the audio started (every answer opens with "
            f"{delay} forced blank audio steps); {raise_budget}"
        )
    if out.codes and not ended:
        return f"the budget of {steps} decoding steps ended before the audio end: the answer is cut; {raise_budget}"
    if out.codes:
        return None
    if ended and len(audio) == 1:
        return (
            f"the audio head ended the answer right after the {delay} forced blank steps: this model does not speak "
            "this answer (train it on speech output: README 'Speech output')"
        )
    tail = "then ended it" if ended else f"until the budget of {steps} decoding steps ran out; {raise_budget}"
    return f"in {len(audio)} steps after the {delay} forced blanks the audio head gave no speech code, {tail}"


def _write_wave(args: argparse.Namespace, codes: list[int], device) -> str | None:
    """``OUT.wav`` from the checkpoint's detokenizer, the flow's start noise drawn on the CPU from ``--seed``."""
    from ..eval.speech_roundtrip import open_detokenizer, write_wave
    from ..models.detokenizer import has_detokenizer

    if not has_detokenizer(args.model):
        return None
    return write_wave(open_detokenizer(args.model, device), codes, args.seed, f"{args.out}.wav")
