"""``bench_train.py``'s FP8 figures (issue 28): step-1 LoRA gradients and per-step losses of a case, compared between
a ``*_fp8`` case and its bf16 twin of the same round (same seed: same random weights, LoRA init and batches).

- ``StepOneGrads``: a callback that saves the trainable gradients of the first optimizer step (after accumulation,
  before clipping) to ``DIR/CASE-ROUND.pt``, as one fp32 vector in parameter-name order;
- ``LossLog``: a callback that keeps every logged training loss (run with ``--log-every 1`` for a curve);
- ``compare``: the cosine similarity of the two gradient vectors and the relative loss gaps, per pair.
"""

from __future__ import annotations

import os
import re
import statistics
from typing import Any


def callbacks(grad_path: str | None) -> tuple[Any, Any]:
    from transformers import TrainerCallback

    class StepOneGrads(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            if state.global_step != 0 or grad_path is None or model is None:
                return
            import torch

            named = sorted((n, p) for n, p in model.named_parameters() if p.requires_grad and p.grad is not None)
            vector = torch.cat([p.grad.detach().float().flatten().cpu() for _, p in named])
            os.makedirs(os.path.dirname(grad_path), exist_ok=True)
            sizes = [p.numel() for _, p in named]
            torch.save({"names": [n for n, _ in named], "sizes": sizes, "grad": vector}, grad_path)

    class LossLog(TrainerCallback):
        def __init__(self) -> None:
            self.losses: list[tuple[int, float]] = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.losses.append((state.global_step, float(logs["loss"])))

    return StepOneGrads(), LossLog()


def twin(case: str) -> str | None:
    """The bf16 case an FP8 case is compared with (``recipe_80gb_fp8``, ``recipe_80gb_fp8_bf16grad`` →
    ``recipe_80gb``); ``recipe_80gb_eager`` (bf16, uncompiled) against the compiled recipe: bf16's own noise floor;
    ``recipe_80gb[_fp8]_ungrouped`` (KIMI_AUDIO_GROUPED_LORA=0) against the same recipe grouped."""
    if case.startswith("recipe_") and case.endswith("_ungrouped"):
        return case.removesuffix("_ungrouped")
    for mark in ("_fp8", "_eager"):
        head, found, _ = case.partition(mark)
        if found and head.startswith("recipe_"):
            return head
    return None


_LAYER = re.compile(r"layers\.(\d+)\.")
_KIND = re.compile(r"(\w+_proj)\.(lora_[AB])")


def cosine(a: Any, b: Any) -> float:
    """Cosine similarity in float64 (fp32 sums over 10^8 values can pass 1)."""
    a, b = a.double(), b.double()
    return float((a @ b) / (a.norm() * b.norm()))


def cosine_by_group(names: list[str], a: Any, b: Any, sizes: list[int], key: Any) -> dict[Any, float]:
    """The cosine similarity of two flat gradient vectors restricted to the parameters that ``key(name)`` groups
    (None: left out)."""
    import torch

    groups: dict[Any, list[tuple[int, int]]] = {}
    start = 0
    for name, size in zip(names, sizes):
        group = key(name)
        if group is not None:
            groups.setdefault(group, []).append((start, start + size))
        start += size
    out = {}
    for group, spans in sorted(groups.items()):
        pick = torch.cat([torch.arange(lo, hi) for lo, hi in spans])
        out[group] = cosine(a[pick], b[pick])
    return out


def layer_of(name: str) -> int | None:
    match = _LAYER.search(name)
    return int(match.group(1)) if match else None


def kind_of(name: str) -> str | None:
    match = _KIND.search(name)
    return f"{match.group(1)}.{match.group(2)[-1]}" if match else None


def compare(rows: list[dict[str, Any]], grad_dir: str | None, after_step: int = 0) -> list[dict[str, Any]]:
    """One dict per (FP8 case, round) that has its bf16 twin in the same round: tokens/s ratio, gradient cosine,
    loss gaps (relative, at the steps both logged, after ``after_step``)."""
    import torch

    by_key = {(r["case"], r.get("round", 0)): r for r in rows if "error" not in r}
    out = []
    for (case, round_no), row in sorted(by_key.items()):
        base = by_key.get((twin(case) or "", round_no))
        if base is None:
            continue
        result: dict[str, Any] = {"case": case, "bf16": base["case"], "round": round_no}
        result["speedup"] = row["tokens_per_s"] / base["tokens_per_s"]
        result["peak_gib"] = (base["peak_mem_gib"], row["peak_mem_gib"])
        paths = [os.path.join(grad_dir or "", f"{c}-{round_no}.pt") for c in (base["case"], case)]
        if grad_dir and all(os.path.isfile(p) for p in paths):
            a, b = (torch.load(p) for p in paths)
            if a["names"] == b["names"]:
                result["grad_cosine"] = cosine(a["grad"], b["grad"])
                result["grad_rel_err"] = float((a["grad"] - b["grad"]).norm() / a["grad"].norm())
                if "sizes" in a:
                    groups = (a["names"], a["grad"], b["grad"], a["sizes"])
                    result["layer_cosine"] = cosine_by_group(*groups, key=layer_of)
                    result["kind_cosine"] = cosine_by_group(*groups, key=kind_of)
        ours, theirs = dict(row.get("losses", [])), dict(base.get("losses", []))
        gaps = [abs(ours[s] - theirs[s]) / abs(theirs[s]) for s in sorted(ours) if s in theirs and s > after_step]
        if gaps:
            result.update(loss_gap_max=max(gaps), loss_gap_median=statistics.median(gaps), loss_steps=len(gaps))
        out.append(result)
    return out


def print_comparison(rows: list[dict[str, Any]], grad_dir: str | None, after_step: int) -> None:
    for r in compare(rows, grad_dir, after_step):
        parts = [f"{r['case']} / {r['bf16']} round {r['round']}: tokens/s x{r['speedup']:.3f}"]
        parts.append("peak GiB {:.1f} -> {:.1f}".format(*r["peak_gib"]))
        if "grad_cosine" in r:
            parts.append(f"step-1 grad cosine {r['grad_cosine']:.5f} (rel err {r['grad_rel_err']:.4f})")
        if r.get("layer_cosine"):
            by_layer = r["layer_cosine"]
            shown = ", ".join(f"L{k} {v:.4f}" for k, v in by_layer.items() if k % 4 == 0 or k == max(by_layer))
            parts.append(f"per-layer cosine {shown}")
        if r.get("kind_cosine"):
            kinds = [f"{k} {v:.4f}" for k, v in r["kind_cosine"].items() if v == v]  # nan: zero (LoRA A at step 1)
            parts.append("per-projection cosine " + ", ".join(kinds))
        if "loss_gap_max" in r:
            parts.append(
                f"loss gap after step {after_step}: max {r['loss_gap_max']:.4f}, median {r['loss_gap_median']:.4f} "
                f"over {r['loss_steps']} steps"
            )
        print("; ".join(parts), flush=True)
