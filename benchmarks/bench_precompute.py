"""Feature + code precompute speed (× real time): Whisper-large-v3 rows and GLM-4-Voice codes for 5–15 s clips.

Random full-size encoders (Whisper-large-v3 encoder in bf16, the released GLM-4-Voice tokenizer shapes in fp32) are
saved into a checkpoint directory and loaded the way ``kimi-audio-lf precompute`` loads them. Figures:

- ``precompute()``: the package's own loop (read audio, features on the CPU, both encoders on the GPU, write the
  cache), end to end, at two batch sizes;
- the stage breakdown of one pass (audio decode, CPU log-mel ×2, Whisper, GLM-4-Voice);
- ``workers=N``: the same computation with audio decode + log-mel in N DataLoader worker processes overlapping the GPU.

- ``--ranks 1,2,4,8``: distributed precompute scaling instead (issue 19): ``torchrun --nproc-per-node N`` ranks, each
  encoding its shard (``--shard`` / RANK) of a ``--hours`` corpus into one cache; audio hours per second (slowest rank,
  after a barrier; encoder loading and warm-up left out) and per-rank efficiency vs one rank.

    python benchmarks/bench_precompute.py --tiny      # CPU, tiny checkpoint
    python benchmarks/bench_precompute.py --device cuda
    python benchmarks/bench_precompute.py --tiny --ranks 1,2              # CPU scaling, gloo
    python benchmarks/bench_precompute.py --device cuda --ranks 1,2,4,8 --hours 10
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def audio_seconds(paths: list[str]) -> float:
    import soundfile as sf

    return sum(sf.info(p).duration for p in paths)


def load_encoders(model_dir: str, device: str):
    from llamafactory_kimi_audio.data.features.precompute import load_audio_encoders

    return load_audio_encoders(model_dir, device)


def run_precompute(model_dir: str, paths: list[str], encoders, device: str, batch_size: int) -> float:
    from llamafactory_kimi_audio.data.features.precompute import PrecomputeOptions, precompute

    cache = tempfile.mkdtemp(prefix="bench_cache_")
    try:
        sync(device)
        t0 = time.perf_counter()
        result = precompute(
            model_dir, paths, PrecomputeOptions(cache_dir=cache, device=device, batch_size=batch_size, progress=False),
            encoders=encoders, report=lambda line: None,
        )  # fmt: skip
        sync(device)
        wall = time.perf_counter() - t0
        assert result.computed == len(set(paths)), result.summary()
        return wall
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def breakdown(paths: list[str], encoders, device: str, batch_size: int) -> dict[str, float]:
    import torch

    from llamafactory_kimi_audio.data.features.encoders import _as_float
    from llamafactory_kimi_audio.fileio.audio import load_audio
    from llamafactory_kimi_audio.models.whisper_encoder import encode_whisper_rows as whisper_rows

    times = dict(decode=0.0, whisper_logmel=0.0, glm_logmel=0.0, whisper_gpu=0.0, glm_gpu=0.0)
    processor = encoders.processor
    for start in range(0, len(paths), batch_size):
        t0 = time.perf_counter()
        waves = [load_audio(p, 16000) for p in paths[start : start + batch_size]]
        t1 = time.perf_counter()
        whisper_in = processor.audio_inputs(waves, with_semantic=False)
        t2 = time.perf_counter()
        full = processor.audio_inputs(waves)  # includes the Whisper log-mel again; GLM part = difference
        t3 = time.perf_counter()
        times["decode"] += t1 - t0
        times["whisper_logmel"] += t2 - t1
        times["glm_logmel"] += max(0.0, (t3 - t2) - (t2 - t1))
        inputs = {k: v.to(device) for k, v in full.items()}
        sync(device)
        t4 = time.perf_counter()
        with torch.no_grad():
            whisper_rows(encoders.whisper, inputs["audio_input_features"], inputs["audio_chunk_tokens"])
        sync(device)
        t5 = time.perf_counter()
        with torch.no_grad():
            encoders.semantic.encode_features(
                _as_float(inputs["semantic_input_features"]), inputs["semantic_frame_mask"]
            )
        sync(device)
        t6 = time.perf_counter()
        times["whisper_gpu"] += t5 - t4
        times["glm_gpu"] += t6 - t5
        del whisper_in
    return times


class _Clips:
    """Dataset for the overlapped variant: decode + both log-mels in the worker (what the package computes)."""

    def __init__(self, paths: list[str], processor) -> None:
        self.paths, self.processor = paths, processor

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        from llamafactory_kimi_audio.fileio.audio import load_audio

        wave = load_audio(self.paths[index], 16000)
        return self.paths[index], wave


def overlapped(
    model_dir: str, paths: list[str], encoders, device: str, batch_size: int, workers: int, by_length: bool = False
) -> float:
    """Decode + log-mel of batch k+1.. in ``workers`` processes while the GPU encodes batch k; writes the cache.
    ``by_length``: batches of similar duration (file headers), so GLM-4-Voice (fp32, padded to the longest clip of
    its batch) does not pay for padding; Whisper always pads to 30 s. Codes do not depend on batch padding."""
    import soundfile as sf
    import torch

    if by_length:
        paths = sorted(paths, key=lambda p: sf.info(p).frames)

    from llamafactory_kimi_audio.data.features.cache_format import clip_key
    from llamafactory_kimi_audio.data.features.feature_cache import FeatureCache, encoder_identity

    processor = encoders.processor

    def collate(items):
        names, waves = zip(*items)
        return list(names), [len(w) for w in waves], processor.audio_inputs(list(waves))

    loader = torch.utils.data.DataLoader(
        _Clips(paths, processor), batch_size=batch_size, num_workers=workers, collate_fn=collate,
        prefetch_factor=4 if workers else None,
    )  # fmt: skip
    cache = tempfile.mkdtemp(prefix="bench_cache_")
    store = FeatureCache(cache, encoder_identity(model_dir))
    try:
        sync(device)
        t0 = time.perf_counter()
        for names, lengths, batch in loader:
            for name, (codes, rows) in zip(names, encoders.encode_features(batch, lengths)):
                store.write(clip_key(name), codes, rows)
        sync(device)
        return time.perf_counter() - t0
    finally:
        shutil.rmtree(cache, ignore_errors=True)


# ---------------------------------------------------------------------------------------- scaling over ranks
def scaling_worker(model_dir: str, listing: str, cache: str, device: str, result: str) -> None:
    """One torchrun rank: load the encoders, warm up on a few clips, then time this rank's shard between barriers."""
    import torch
    import torch.distributed as dist

    from llamafactory_kimi_audio.data.features.precompute import PrecomputeOptions, precompute

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if device == "cuda":
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(1)  # one core per rank: N ranks on N cores
    dist.init_process_group("gloo")  # barriers and the gather only
    with open(listing, encoding="utf-8") as f:
        paths = json.load(f)
    encoders = load_encoders(model_dir, device)
    scratch = tempfile.mkdtemp(prefix="bench_warm_")
    run = lambda clips, root: precompute(  # noqa: E731
        model_dir, clips, PrecomputeOptions(cache_dir=root, device=device, batch_size=32, progress=False,
                                             shard=(rank, world)), encoders=encoders, report=lambda line: None,
    )  # fmt: skip
    run(paths[: 4 * world], scratch)  # kernels, allocator, feature-extractor caches
    shutil.rmtree(scratch, ignore_errors=True)
    dist.barrier()
    start = time.perf_counter()
    done = run(paths, cache)
    sync(device)
    seconds = time.perf_counter() - start
    assert not done.failed, done.summary()
    figures = [None] * world
    dist.all_gather_object(figures, {"seconds": seconds, "clips": done.computed})
    if rank == 0:
        with open(result, "w", encoding="utf-8") as f:
            json.dump(figures, f)
    dist.destroy_process_group()


def scaling(model_dir: str, paths: list[str], ranks: list[int], device: str, work: str) -> list[dict]:
    """``torchrun`` with 1, 2, ... ranks over the same clips into a fresh cache each; audio h/s and efficiency."""
    import subprocess

    listing = os.path.join(work, "scaling_clips.json")
    with open(listing, "w", encoding="utf-8") as f:
        json.dump(paths, f)
    hours = audio_seconds(paths) / 3600
    rows: list[dict] = []
    for n in ranks:
        cache, result = os.path.join(work, f"scaling_cache_{n}"), os.path.join(work, f"scaling_{n}.json")
        shutil.rmtree(cache, ignore_errors=True)
        torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
        command = [torchrun, "--nproc-per-node", str(n), "--master-port", str(29700 + n), os.path.abspath(__file__),
                   "--scaling-worker", model_dir, listing, cache, device, result]  # fmt: skip
        env = dict(os.environ, OMP_NUM_THREADS="1") if device == "cpu" else dict(os.environ)
        subprocess.run(command, env=env, check=True, timeout=3600)
        with open(result, encoding="utf-8") as f:
            figures = json.load(f)
        assert sum(r["clips"] for r in figures) == len(paths), figures
        slowest = max(r["seconds"] for r in figures)
        row = {"case": "precompute_scaling", "device": device, "ranks": n, "audio_h": hours, "wall_s": slowest,
               "audio_h_per_s": hours / slowest, "rank_s": [r["seconds"] for r in figures]}  # fmt: skip
        row["per_rank_efficiency"] = row["audio_h_per_s"] / (n * rows[0]["audio_h_per_s"]) if rows else 1.0
        rows.append(row)
        shutil.rmtree(cache, ignore_errors=True)
    print("| ranks | audio h | slowest rank s | audio h/s | × real time | per-rank efficiency |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['ranks']} | {r['audio_h']:.2f} | {r['wall_s']:.1f} | {r['audio_h_per_s']:.4f} | "
              f"{3600 * r['audio_h_per_s']:.0f} | {r['per_rank_efficiency']:.2f} |")  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--scaling-worker"]:
        scaling_worker(*argv[1:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--device", default=None, help="default cuda (cpu with --tiny)")
    parser.add_argument("--samples", type=int, default=None, help="clips (default 400, tiny 16)")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--work", default=os.environ.get("BENCH_WORK", "/tmp/kimi_bench"))
    parser.add_argument("--out", default=None)
    parser.add_argument("--ranks", default=None, help="scaling only: torchrun rank counts, e.g. 1,2,4,8")
    parser.add_argument("--hours", type=float, default=None, help="scaling corpus (default 10 h, tiny 0.2 h)")
    a = parser.parse_args(argv)
    import torch

    device = a.device or ("cpu" if a.tiny else "cuda")
    if device == "cpu":
        torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    samples = a.samples or (16 if a.tiny else 400)
    preset = "tiny" if a.tiny else "full"
    work = os.path.abspath(a.work)
    model_dir = common.make_kimi_dir(os.path.join(work, f"kimi-{preset}"), preset, device=device)
    if a.ranks:
        from bench_scale import make_corpus

        hours = a.hours or (0.2 if a.tiny else 10.0)
        clips = make_corpus(os.path.join(work, f"scale_{hours}h"), hours)
        rows = scaling(model_dir, clips, [int(n) for n in a.ranks.split(",")], device.split(":")[0], work)
        if a.out:
            with open(a.out, "a", encoding="utf-8") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)
        return 0
    data_dir = common.make_corpus(os.path.join(work, "data"), samples)
    paths = common.corpus_audio_paths(data_dir)[:samples]
    seconds = audio_seconds(paths)
    encoders = load_encoders(model_dir, device)
    print(f"[precompute] {len(paths)} clips, {seconds:.0f} s of audio, device {device}", flush=True)
    warm = paths[: min(8, len(paths))]
    run_precompute(model_dir, warm, encoders, device, 8)  # warm-up: kernels, allocator, feature-extractor caches
    results: dict[str, float] = {"clips": len(paths), "audio_s": seconds}
    for batch_size in (8, 32):
        wall = run_precompute(model_dir, paths, encoders, device, batch_size)
        results[f"precompute_bs{batch_size}_xrt"] = seconds / wall
        print(
            f"[precompute] precompute() batch {batch_size}: {wall:.2f}s = {seconds / wall:.0f}x real time", flush=True
        )
    parts = breakdown(paths, encoders, device, 32)
    for key, value in parts.items():
        results[f"stage_{key}_xrt"] = seconds / value if value else float("inf")
        print(f"[precompute] stage {key}: {value:.2f}s ({seconds / value if value else float('inf'):.0f}x real time)")
    for workers, by_length in sorted({(0, False), (a.workers, False), (a.workers, True)}):
        wall = overlapped(model_dir, paths, encoders, device, 32, workers, by_length)
        key = f"overlapped_w{workers}{'_sorted' if by_length else ''}_xrt"
        results[key] = seconds / wall
        print(f"[precompute] {key}: {seconds / wall:.0f}x real time", flush=True)
    print("[precompute] " + json.dumps(results))
    if a.out:
        with open(a.out, "a", encoding="utf-8") as f:
            f.write(json.dumps({"case": "precompute", **results}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
