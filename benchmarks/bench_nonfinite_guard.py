"""What the non-finite step guard (integration/nonfinite.py) and the convert-time decode check cost, on this machine.

    python benchmarks/bench_nonfinite_guard.py [--device cuda] [--steps 1000]

Prints one JSON line:
- ``guard_us_per_step``: the guard's work per optimizer step (one micro-batch): keeping a copy of the loss with the
  clip names, then the gradient norm. On CUDA these are kernel launches only: nothing waits for the GPU.
- ``check_us_per_256_steps``: one check of 256 kept steps (the one device-to-host transfer, at a logging step).
- ``sync_per_step_us``: for comparison, what ``bool(loss.isfinite())`` costs per step when the GPU is busy
  (a per-step host sync; CUDA only).
- ``verify_ms_per_10s``: ``audio_verify.verify_samples`` on a 10 s clip per format (what convert adds per row).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np
import torch

from llamafactory_kimi_audio.integration.nonfinite import NonFiniteGuard


def guard_cost(device: str, steps: int) -> tuple[float, float]:
    guard = NonFiniteGuard()
    loss, norm = torch.tensor(1.5, device=device), torch.tensor(0.7, device=device)
    clips = [f"/data/clips/{i:06d}.wav" for i in range(8)]
    start = time.perf_counter()
    for step in range(steps):
        guard.add_batch(clips, loss)
        guard.end_step(step, norm)
        if guard.full():
            guard.steps.clear()  # the check is timed separately
    per_step = (time.perf_counter() - start) / steps * 1e6
    checks = []
    for _ in range(5):  # the best of 5: this is a shared machine
        for step in range(256):
            guard.add_batch(clips, loss)
            guard.end_step(step, norm)
        start = time.perf_counter()
        guard.check()
        checks.append((time.perf_counter() - start) * 1e6)
    return per_step, min(checks)


def sync_cost(device: str, steps: int) -> float | None:
    if not device.startswith("cuda"):
        return None  # nothing runs asynchronously: a sync waits for nothing
    loss = torch.tensor(1.5, device=device)
    work = torch.randn(2048, 2048, device=device)
    start = time.perf_counter()
    for _ in range(steps):
        work = work @ work * 1e-3  # a busy device: the sync waits for it
        assert bool(loss.isfinite())
    busy = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        work = work @ work * 1e-3
    torch.cuda.synchronize()
    return (busy - (time.perf_counter() - start)) / steps * 1e6


def verify_cost() -> dict[str, float]:
    import soundfile as sf

    from llamafactory_kimi_audio.fileio.audio import probe
    from llamafactory_kimi_audio.fileio.audio_verify import verify_samples

    wave = (0.1 * np.random.default_rng(0).standard_normal(160000)).astype(np.float32)
    out = {}
    with tempfile.TemporaryDirectory() as folder:
        for name, options in (("wav_pcm16", {"subtype": "PCM_16"}), ("wav_float", {"subtype": "FLOAT"})):
            sf.write(os.path.join(folder, f"{name}.wav"), wave, 16000, **options)
        for ext in ("flac", "ogg", "mp3"):
            sf.write(os.path.join(folder, f"{ext}.{ext}"), wave, 16000)
        for file in sorted(os.listdir(folder)):
            info = probe(os.path.join(folder, file))
            start = time.perf_counter()
            for _ in range(5):
                verify_samples(info)
            out[file] = round((time.perf_counter() - start) / 5 * 1e3, 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=1000)
    args = parser.parse_args()
    per_step, check = guard_cost(args.device, args.steps)
    result = {
        "device": args.device,
        "guard_us_per_step": round(per_step, 1),
        "check_us_per_256_steps": round(check, 1),
        "sync_per_step_us": sync_cost(args.device, min(args.steps, 50)),
        "verify_ms_per_10s": verify_cost(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
