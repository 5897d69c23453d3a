"""Where a profiled step's GPU time goes, by kind of work: read a ``trace.json.gz`` written by ``bench_train.py
--profile CASE`` (``common.make_profiler_callback``) and sum the GPU kernels' time per bucket.

Each kernel is attributed to the CPU operator that launched it (the trace's ``External id`` / ``correlation`` links),
so an FP8 GEMM is a kernel launched by ``aten::_scaled_mm`` whatever cuBLAS calls it, and a bf16 GEMM one launched by
``aten::mm`` / ``addmm`` / ``bmm``. Triton kernels (the compiled layers) are bucketed by the fused ops in their names:
the FP8 casts are the ones with an ``amax`` and a power-of-two scale (``exp2``).

    python benchmarks/profile_breakdown.py profiles/recipe_80gb_fp8/trace.json.gz [--steps 2] [--top 15]
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import sys
from collections.abc import Iterable

GEMM_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear")
ATTENTION_WORDS = ("flash", "attention", "fmha", "sdpa", "_efficient_")


def load_events(path: str) -> list[dict]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        trace = json.load(f)
    return trace["traceEvents"] if isinstance(trace, dict) else trace


def _link(event: dict) -> int | None:
    args = event.get("args", {})
    for key in ("External id", "correlation"):
        if key in args:
            return int(args[key])
    return None


def launcher_names(events: Iterable[dict]) -> dict[int, str]:
    """External id -> the name of the CPU operator that carries it (the innermost one: the latest to start)."""
    starts: dict[int, tuple[float, str]] = {}
    for e in events:
        if e.get("cat") not in ("cpu_op", "Operator"):
            continue
        link = e.get("args", {}).get("External id")
        if link is None:
            continue
        ts = float(e.get("ts", 0))
        if link not in starts or ts >= starts[link][0]:
            starts[link] = (ts, e["name"])
    return {link: name for link, (_, name) in starts.items()}


def bucket(kernel: str, op: str) -> str:
    """The kind of work of one GPU kernel, from its launching operator ``op`` and its own name."""
    low = kernel.lower()
    if low.startswith("triton"):  # a compiled region: its launcher is the region, so go by the fused ops' names
        if "amax" in low and ("exp2" in low or "log2" in low):
            return "FP8 cast (fused)"
        if low.startswith(("triton_red", "triton_per")):
            return "triton reduction (norm, loss, other)"
        return "triton pointwise"
    if "memcpy" in low or "memset" in low:
        return "copies"
    if op == "aten::_scaled_mm":
        return "FP8 GEMM"
    if op in GEMM_OPS:
        return "bf16 GEMM"
    if any(word in low or word in op.lower() for word in ATTENTION_WORDS):
        return "attention"
    if "nccl" in low:
        return "collectives"
    if "gemm" in low or "nvjet" in low or "xmma" in low or "cutlass" in low:
        return "other GEMM"
    if "reduce" in low or "softmax" in low or "cross_entropy" in low or "nll" in low:
        return "eager reduction"
    return "eager elementwise"


def breakdown(events: list[dict]) -> tuple[dict[str, float], dict[str, tuple[float, int, str]]]:
    """(microseconds per bucket, per kernel name: (microseconds, launches, bucket))."""
    launchers = launcher_names(events)
    buckets: dict[str, float] = collections.defaultdict(float)
    kernels: dict[str, list] = {}
    for e in events:
        if e.get("cat") not in ("kernel", "gpu_memcpy", "gpu_memset"):
            continue
        link = _link(e)
        name, dur = e["name"], float(e.get("dur", 0))
        kind = bucket(name, launchers.get(link, "") if link is not None else "")
        buckets[kind] += dur
        entry = kernels.setdefault(name, [0.0, 0, kind])
        entry[0] += dur
        entry[1] += 1
    return dict(buckets), {k: tuple(v) for k, v in kernels.items()}


def report(path: str, steps: int, top: int) -> str:
    buckets, kernels = breakdown(load_events(path))
    total = sum(buckets.values()) or 1.0
    lines = [f"{path}: GPU kernels {total / 1e3 / steps:.1f} ms per step ({steps} steps)"]
    for kind, us in sorted(buckets.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {kind:40s} {us / 1e3 / steps:8.1f} ms/step  {100 * us / total:5.1f}%")
    lines.append(f"  top {top} kernels:")
    for name, (us, count, kind) in sorted(kernels.items(), key=lambda kv: -kv[1][0])[:top]:
        lines.append(f"    {us / 1e3 / steps:7.2f} ms/step {count // steps:5d}x  [{kind}] {name[:110]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("traces", nargs="+", help="trace.json.gz files from bench_train.py --profile")
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps in each trace (bench_train: 2)")
    parser.add_argument("--top", type=int, default=15)
    a = parser.parse_args(argv)
    for path in a.traces:
        print(report(path, a.steps, a.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
