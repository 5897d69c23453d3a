"""Evaluation speed of ``kimi-audio-lf evaluate --model``: start-up, utterances/s, prefill and decode ms per step,
and the projected time for the AISHELL-1 test set (7,176 utterances, ~5 s audio, ~15 characters each).

GPU mode writes a full-size checkpoint with random weights once (``common.make_kimi_dir(..., "full")``, then
``bench_dist.save_random_checkpoint``: the official layout, ~18 GB), so the start-up is the real
``load_for_inference`` from disk. The corpus is ``common.make_corpus`` with 4-6 s clips. Random weights never emit
EOS, so every utterance decodes ``--new-tokens`` steps (default 20: ~15 characters + EOS).

    python benchmarks/bench_eval.py --tiny                       # CPU, tiny checkpoint, < 2 minutes
    python benchmarks/bench_eval.py --prepare-only               # one GPU: write the random checkpoint (~18 GB)
    python benchmarks/bench_eval.py --batch-sizes 8,16,32,64     # one GPU, full size

Per batch size and decoder (``--decode``, default ``auto,generate``; ``generate`` = transformers' generate, the
pre-existing path, run only at ``--generate-batch-sizes``): the end-to-end ``transcribe`` of the corpus (audio
reading, features, encoders, decoding) and, on one batch, prefill ms and decode ms per step (CUDA-synchronised).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_dist  # noqa: E402
import common  # noqa: E402

AISHELL_TEST_UTTERANCES = 7176
AISHELL_SECONDS = (4.0, 6.0)  # clip lengths of the synthetic corpus: mean 5 s, as AISHELL-1's test set
GOAL_MINUTES = 3.0


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def prepare(a) -> tuple[str, list[str]]:
    preset = "tiny" if a.tiny else "full"
    work = os.path.abspath(a.work)
    t0 = time.perf_counter()
    bench_dir = common.make_kimi_dir(os.path.join(work, f"kimi-{preset}"), preset, "cpu" if a.tiny else "cuda")
    # bench_dist's saved checkpoint (same path: a machine that ran bench_dist already has it)
    model_dir = bench_dist.save_random_checkpoint(bench_dir, os.path.join(work, f"kimi-{preset}-saved"), a.tiny)
    data_dir = os.path.join(work, f"eval-data-{a.samples}")
    common.make_corpus(data_dir, a.samples, seconds=AISHELL_SECONDS)
    print(f"[bench_eval] model dir + corpus: {time.perf_counter() - t0:.1f}s", flush=True)
    return model_dir, common.corpus_audio_paths(data_dir)


def step_times(model: Any, processor: Any, audios: list[str], batch: int, decode: str, steps: int) -> dict[str, float]:
    """Prefill ms and decode ms per step on the first ``batch`` clips (fastest of 3 runs each)."""
    import torch

    from llamafactory_kimi_audio.fileio.audio import load_audio
    from llamafactory_kimi_audio.models.fast_generation import FastGreedy

    inputs = processor.asr_inputs([load_audio(p) for p in audios[:batch]], [common.INSTRUCTION] * batch)
    inputs = {k: v.to(model.device) for k, v in inputs.items()}
    fast = FastGreedy(model, decode) if decode != "generate" else None

    def run(new_tokens: int) -> float:
        sync()
        t0 = time.perf_counter()
        with torch.no_grad():
            if fast is None:
                model.generate(**inputs, do_sample=False, max_new_tokens=new_tokens)
            else:
                fast(max_new_tokens=new_tokens, **inputs)
        sync()
        return time.perf_counter() - t0

    run(steps)  # warm-up (and graph capture)
    one = min(run(1) for _ in range(3))  # min: the least disturbed run (shared CPUs, clocks)
    full = min(run(steps) for _ in range(3))
    return {"prefill_ms": 1000 * one, "decode_ms_per_step": 1000 * (full - one) / max(steps - 1, 1)}


def run_case(model, processor, audios: list[str], batch: int, decode: str, a) -> dict[str, Any]:
    from llamafactory_kimi_audio.eval.transcribe import Generation, transcribe

    generation = Generation(batch_size=batch, max_new_tokens=a.new_tokens, decode=decode)
    instructions = [common.INSTRUCTION] * len(audios)
    sync()
    t0 = time.perf_counter()  # warm-up: 2 batches, with the first use of GLM-4-Voice and the graph capture
    transcribe(model, processor, audios[: 2 * batch], instructions[: 2 * batch], generation, progress=False)
    sync()
    warmup = time.perf_counter() - t0
    t0 = time.perf_counter()
    transcribe(model, processor, audios, instructions, generation, progress=False)
    sync()
    seconds = time.perf_counter() - t0
    row = {"decode": decode, "batch": batch, "utterances": len(audios), "seconds": seconds, "warmup_s": warmup}
    row["utt_per_s"] = len(audios) / seconds
    row.update(step_times(model, processor, audios, batch, decode, a.new_tokens))
    return row


def projected_minutes(row: dict[str, Any], startup_s: float) -> float:
    """Load + warm-up (2 real batches, so a slight overestimate) + the test set at the measured rate."""
    return (startup_s + row["warmup_s"] + AISHELL_TEST_UTTERANCES / row["utt_per_s"]) / 60


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="CPU run on the tiny checkpoint (< 2 minutes)")
    parser.add_argument("--batch-sizes", default=None, help="comma list (default 8,16,32,64; tiny 4,8)")
    parser.add_argument(
        "--decode", default="auto,generate", help="decoders to compare (auto, graph, static, generate)"
    )
    parser.add_argument("--generate-batch-sizes", default="8,32", help="batch sizes at which `generate` runs")
    parser.add_argument("--samples", type=int, default=None, help="corpus size (default 512, tiny 16)")
    parser.add_argument("--generate-samples", type=int, default=128, help="utterances for `generate` (default 128)")
    parser.add_argument("--new-tokens", type=int, default=20, help="decode steps per utterance (default 20)")
    parser.add_argument("--work", default=os.environ.get("BENCH_WORK", "/tmp/kimi_bench"))
    parser.add_argument("--out", default=None, help="append one JSON line per case")
    parser.add_argument("--prepare-only", action="store_true", help="write the checkpoint and corpus, then stop")
    a = parser.parse_args(argv)
    a.samples = a.samples or (16 if a.tiny else 512)
    sizes = [int(x) for x in (a.batch_sizes or ("4,8" if a.tiny else "8,16,32,64")).split(",") if x]
    generate_sizes = {int(x) for x in a.generate_batch_sizes.split(",") if x}
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    model_dir, audios = prepare(a)
    if a.prepare_only:
        return 0

    from llamafactory_kimi_audio.eval.transcribe import load_for_inference

    sync()
    t0 = time.perf_counter()
    model, processor = load_for_inference(model_dir, device="cpu" if a.tiny else None)
    sync()
    startup = time.perf_counter() - t0
    print(f"[bench_eval] start-up (load_for_inference): {startup:.1f}s on {model.device}", flush=True)
    rows = []
    for decode in [d for d in a.decode.split(",") if d]:
        for batch in sizes:
            if decode == "generate" and batch not in generate_sizes:
                continue
            clips = audios[: a.generate_samples] if decode == "generate" else audios
            row = {"startup_s": startup, **run_case(model, processor, clips, batch, decode, a)}
            row["aishell_test_minutes"] = projected_minutes(row, startup)
            rows.append(row)
            print("[bench_eval] " + json.dumps(row), flush=True)
            if a.out:
                with open(a.out, "a", encoding="utf-8") as f:
                    f.write(json.dumps(row) + "\n")
    print_table(rows, startup, a.new_tokens)
    return 0


def print_table(rows: list[dict[str, Any]], startup: float, new_tokens: int) -> None:
    print(f"\nstart-up {startup:.1f}s; {new_tokens} decode steps per utterance; clips 4-6 s")
    print("| decode | batch | utt/s | prefill ms | decode ms/step | warm-up s | AISHELL-1 test (7,176 utts), min |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['decode']} | {r['batch']} | {r['utt_per_s']:.2f} | {r['prefill_ms']:.1f} | "
            f"{r['decode_ms_per_step']:.2f} | {r['warmup_s']:.1f} | {r['aishell_test_minutes']:.2f} |"
        )
    best = min(rows, key=lambda r: r["aishell_test_minutes"])
    verdict = "meets" if best["aishell_test_minutes"] <= GOAL_MINUTES else "misses"
    print(
        f"best: {best['decode']} at batch {best['batch']}: {best['aishell_test_minutes']:.2f} min projected for the "
        f"AISHELL-1 test set ({verdict} the {GOAL_MINUTES:.0f}-minute goal)"
    )


if __name__ == "__main__":
    sys.exit(main())
