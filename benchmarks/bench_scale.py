"""Feature cache at corpus scale: precompute cost (time, bytes, files per audio hour) and loader throughput.

For each synthetic corpus size (``--hours``, clips of 5-15 s, PCM-16 WAV), on one device:

- ``precompute``: the package's own ``precompute()`` into a fresh cache, full (codes + Whisper rows in the stored
  dtype) and codes-only: wall time, seconds per audio hour, × real time, cache bytes, bytes per audio hour, files;
- ``loader``: the collate path training uses (``KimiAudioPlugin.get_mm_inputs`` → cache reads) in a DataLoader
  with the recipes' worker count, ``--ranks`` such loaders at once reading one cache (ranks of one node): clips/s;
- the extrapolation to 10,000 h on 8 and 64 GPUs (wall time, disk, files) and the audio hours trained per GPU-hour
  for 1 and 3 epochs, precompute included, given the training speed (``--train-audio-x``, audio s per s).

    python benchmarks/bench_scale.py --tiny                            # CPU, tiny checkpoint, seconds-minutes
    python benchmarks/bench_scale.py --device cuda --hours 1,10,100    # full-size encoders (random weights)
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import os
import shutil
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

RATE = 16000
TRAIN_AUDIO_X = 990.0  # issue 20: 8 packed rows (kimi_lora_80gb.yaml) on one H200, audio seconds trained per s


def make_corpus(folder: str, hours: float, seed: int = 0) -> list[str]:
    """WAV clips of 5-15 s adding up to ``hours``; cut from a pool of noise so a 100 h corpus is written quickly."""
    import soundfile as sf

    marker = os.path.join(folder, f"ready_{hours}")
    listing = os.path.join(folder, "clips.json")
    if os.path.isfile(marker):
        with open(listing, encoding="utf-8") as f:
            return json.load(f)
    rng = np.random.default_rng(seed)
    pool = [(0.1 * rng.standard_normal(15 * RATE)).astype(np.float32) for _ in range(16)]
    paths, total, n = [], 0.0, 0
    os.makedirs(folder, exist_ok=True)
    while total < hours * 3600:
        seconds = float(rng.uniform(5, 15))
        path = os.path.join(folder, f"{n // 1000:04d}", f"c{n:07d}.wav")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        sf.write(path, pool[n % len(pool)][: int(seconds * RATE)], RATE, subtype="PCM_16")
        paths.append(path)
        total, n = total + seconds, n + 1
    with open(listing, "w", encoding="utf-8") as f:
        json.dump(paths, f)
    open(marker, "w").close()
    return paths


def disk_usage(folder: str) -> tuple[int, int]:
    sizes = [os.path.getsize(os.path.join(d, n)) for d, _, names in os.walk(folder) for n in names]
    return sum(sizes), len(sizes)


def bench_precompute(model_dir: str, paths: list[str], hours: float, cache: str, device: str, mode: str) -> dict:
    from llamafactory_kimi_audio.data.features.precompute import PrecomputeOptions, precompute

    shutil.rmtree(cache, ignore_errors=True)
    options = PrecomputeOptions(cache_dir=cache, device=device, batch_size=32, progress=False, mode=mode)
    start = time.perf_counter()
    result = precompute(model_dir, paths, options)
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
    wall = time.perf_counter() - start
    size, files = disk_usage(cache)
    assert result.computed == len(paths) and not result.failed, result.summary()
    return {
        "mode": mode,
        "wall_s": wall,
        "s_per_audio_h": wall / hours,
        "x_real_time": hours * 3600 / wall,
        "cache_bytes": size,
        "bytes_per_audio_h": size / hours,
        "files": files,
    }


def _loader_rank(model_dir: str, cache: str, paths: list[str], workers: int, batch: int, queue) -> None:
    try:
        queue.put(_read_all(model_dir, cache, paths, workers, batch))
    except BaseException as err:  # the parent waits on the queue: always answer
        queue.put(err)
        raise


def _read_all(model_dir: str, cache: str, paths: list[str], workers: int, batch: int) -> tuple[int, float]:
    import torch

    os.environ["KIMI_AUDIO_FEATURE_CACHE"] = cache
    import llamafactory.data.mm_plugin  # noqa: F401  (LLaMA-Factory first, as in training)

    from llamafactory_kimi_audio.integration.mm_plugin import KimiAudioPlugin
    from llamafactory_kimi_audio.models import special_tokens as st
    from llamafactory_kimi_audio.models.processing_kimi_audio import KimiAudioProcessor

    processor = KimiAudioProcessor.from_pretrained(model_dir)
    plugin = KimiAudioPlugin(image_token=None, video_token=None, audio_token=st.AUDIO_PLACEHOLDER)

    collate = functools.partial(_collate, plugin, processor)
    loader = torch.utils.data.DataLoader(
        paths, batch_size=batch, num_workers=workers, collate_fn=collate, multiprocessing_context="fork"
    )  # fork, as training's DataLoader on Linux
    start, count = None, 0
    for inputs in loader:
        clips, inputs = inputs
        assert "whisper_features" in inputs, "a clip was not served from the cache"
        if start is None:  # from the first batch on: worker start-up is not loader throughput
            start = time.perf_counter()
            continue
        count += clips
    return count, time.perf_counter() - (start or time.perf_counter())


def _collate(plugin, processor, audios: list[str]) -> tuple[int, dict]:
    n = len(audios)
    return n, plugin.get_mm_inputs([], [], audios, [0] * n, [0] * n, [1] * n, [[]] * n, processor)


def fill_cache(model_dir: str, cache: str, paths: list[str], dim: int) -> None:
    """Entries of the real row shape (``dim`` bf16 per 80 ms frame, random values) for the loader: a CPU reads
    what a full-size cache holds without running full-size encoders."""
    import soundfile as sf
    import torch

    from llamafactory_kimi_audio.data.features.cache_format import clip_key
    from llamafactory_kimi_audio.data.features.feature_cache import FeatureCache, encoder_identity
    from llamafactory_kimi_audio.models.processing_kimi_audio import num_audio_tokens

    shutil.rmtree(cache, ignore_errors=True)
    store = FeatureCache(cache, encoder_identity(model_dir))
    for path in paths:
        frames = num_audio_tokens(sf.info(path).frames)
        store.write(clip_key(path), torch.randint(0, 16384, (frames,)), torch.randn(frames, dim).to(torch.bfloat16))
    store.writer.close()


def bench_loader(model_dir: str, cache: str, paths: list[str], ranks: int, workers: int, batch: int) -> dict:
    """``ranks`` processes, each a DataLoader with ``workers`` workers over its 1/ranks of the clips."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    procs = [
        context.Process(target=_loader_rank, args=(model_dir, cache, paths[r::ranks], workers, batch, queue))
        for r in range(ranks)
    ]
    start = time.perf_counter()
    for proc in procs:
        proc.start()
    results = [queue.get(timeout=3600) for _ in procs]
    if errors := [r for r in results if isinstance(r, BaseException)]:
        raise RuntimeError(f"a loader rank failed: {errors[0]!r}")
    for proc in procs:
        proc.join()
    wall = time.perf_counter() - start
    clips = sum(count for count, _ in results)
    slowest = max(seconds for _, seconds in results)
    return {
        "ranks": ranks,
        "workers": workers,
        "batch": batch,
        "clips": clips,
        "clips_per_s": clips / slowest,
        "clips_per_s_per_rank": clips / slowest / ranks,
        "wall_s": wall,
    }


def extrapolate(full: dict, codes: dict, train_x: float, hours: float = 10000) -> dict:
    """10,000 h on 8 and 64 GPUs (precompute alone) and audio hours trained per GPU-hour, precompute included."""
    out = {}
    for gpus in (8, 64):
        out[f"{gpus}gpu_wall_h"] = full["s_per_audio_h"] * hours / gpus / 3600
    out["disk_tb_full"] = full["bytes_per_audio_h"] * hours / 1e12
    out["disk_gb_codes_only"] = codes["bytes_per_audio_h"] * hours / 1e9
    out["files_64gpu"] = 2 * max(64, int(full["bytes_per_audio_h"] * hours / (4 << 30)) + 64)
    precompute_gpu_h, train_gpu_h = full["s_per_audio_h"] / 3600, 1 / train_x
    for epochs in (1, 3):
        out[f"audio_h_per_gpu_h_{epochs}ep"] = epochs / (precompute_gpu_h + epochs * train_gpu_h)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny checkpoint on CPU, corpora of 0.05 and 0.2 h")
    parser.add_argument("--device", default=None, help="default cuda (cpu with --tiny)")
    parser.add_argument("--hours", default=None, help="corpus sizes, comma-separated (default 1,10,100)")
    parser.add_argument("--ranks", type=int, default=None, help="loader processes at once (default 8, tiny 2)")
    parser.add_argument("--workers", type=int, default=4, help="DataLoader workers per rank (the recipes': 4)")
    parser.add_argument("--batch", type=int, default=8, help="clips per collate (kimi_lora.yaml: 8)")
    parser.add_argument(
        "--row-dim", type=int, default=None, help="loader reads rows of this width (tiny: 5120, Kimi-Audio's)"
    )
    parser.add_argument("--train-audio-x", type=float, default=TRAIN_AUDIO_X, help="training audio s per s")
    parser.add_argument("--work", default=os.environ.get("BENCH_WORK", "/tmp/kimi_bench"))
    parser.add_argument("--out", default=None, help="append JSON lines here")
    a = parser.parse_args(argv)
    device = a.device or ("cpu" if a.tiny else "cuda")
    sizes = [float(h) for h in (a.hours or ("0.05,0.2" if a.tiny else "1,10,100")).split(",")]
    ranks = a.ranks or (2 if a.tiny else 8)
    a.row_dim = a.row_dim if a.row_dim is not None else (5120 if a.tiny else 0)
    work = os.path.abspath(a.work)
    preset = "tiny" if a.tiny else "full"
    model_dir = common.make_kimi_dir(os.path.join(work, f"kimi-{preset}"), preset, device=device)
    for hours in sizes:
        paths = make_corpus(os.path.join(work, f"scale_{hours}h"), hours)
        cache = os.path.join(work, f"scale_cache_{hours}h")
        codes = bench_precompute(model_dir, paths, hours, cache + "_codes", device, "codes")
        full = bench_precompute(model_dir, paths, hours, cache, device, "full")
        if a.row_dim:
            fill_cache(model_dir, cache + "_rows", paths, a.row_dim)
        loader = bench_loader(model_dir, cache + "_rows" if a.row_dim else cache, paths, ranks, a.workers, a.batch)
        loader["row_dim"] = a.row_dim or "model"
        row = {
            "case": "scale",
            "hours": hours,
            "clips": len(paths),
            "device": device,
            "preset": preset,
            "precompute_full": full,
            "precompute_codes": codes,
            "loader": loader,
            "extrapolation": extrapolate(full, codes, a.train_audio_x),
        }
        print(json.dumps(row), flush=True)
        if a.out:
            with open(a.out, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
