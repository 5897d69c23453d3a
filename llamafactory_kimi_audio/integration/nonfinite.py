"""A training step whose loss or gradients are not finite stops the run with one line naming the batch's clips.

Left alone, one NaN step makes every weight NaN and the run goes on to the end and exits 0 (the Trainer even
filters NaN losses out of the logged mean, so the log shows ``loss 0``). Two rows of the patch table stop it:

- ``nonfinite_guard.record`` (``CustomSeq2SeqTrainer.compute_loss``): for a Kimi-Audio model, keeps each training
  micro-batch's loss (a detached copy, still on the device) with the batch's clip names, read from the plain list
  ``audio_clips`` that the collator puts in the batch (``collate_inputs.AudioClip``, enabled for Kimi-Audio trainers
  by ``feature_cache_hook.make_write_through``; a list survives DataLoader workers and device moves). The guard
  lives on the trainer; the model is not touched.
- ``nonfinite_guard.check`` (``Trainer._maybe_log_save_evaluate``, called after every optimizer step): keeps the
  gradient norm the Trainer computed anyway (``clip_grad_norm_``; non-finite iff a gradient is), then, only when the
  Trainer is about to log, evaluate, save or stop, or when MAX_PENDING micro-batches wait, copies every kept value
  to the host in one transfer and stops at the first non-finite one.

Why not a check per step: ``bool(loss.isfinite())`` waits for the GPU on every step. Here a step costs one copy
kernel of a scalar; the host waits only where the Trainer already does (``.item()`` of the logged loss / grad norm,
a checkpoint's copies), so the GPU queue is never drained for the guard. Since the check runs before the Trainer
logs or saves, no checkpoint is written from a non-finite step on, and the last step is always checked.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import NonFiniteTrainingError
from .wrappers import kimi_base_model

MAX_PENDING = 256  # micro-batches kept between checks: bounded memory with rare logging; one sync per 256 steps
SHOWN_CLIPS = 4  # clip names in the message (then "and N more")
_GUARD_ATTR = "_kimi_audio_nonfinite_guard"
__all__ = ["NonFiniteGuard", "NonFiniteTrainingError", "make_check", "make_record"]


@dataclass
class _Batch:
    clips: list[str]
    loss: Any  # detached 0-dim device tensor, or None (the model returned no loss)


@dataclass
class _Step:
    step: int
    batches: list[_Batch]
    grad_norm: Any  # device tensor, float (DeepSpeed) or None


@dataclass
class NonFiniteGuard:
    """What the model and the Trainer report per micro-batch / optimizer step, kept until the next check."""

    current: list[_Batch] = field(default_factory=list)
    steps: list[_Step] = field(default_factory=list)

    def add_batch(self, clips: list[str], loss: Any) -> None:
        self.current.append(_Batch(clips, None if loss is None else loss.detach().clone()))  # a scalar: one kernel

    def end_step(self, step: int, grad_norm: Any) -> None:
        if self.current:  # the Trainer calls again at epoch end with the same norm and no new batch
            self.steps.append(_Step(step, self.current, grad_norm))
            self.current = []

    def full(self) -> bool:
        return sum(len(step.batches) for step in self.steps) >= MAX_PENDING

    def check(self) -> None:
        """Raise NonFiniteTrainingError for the first kept step with a non-finite loss or gradient norm."""
        steps, self.steps = self.steps, []
        values = iter(_to_host([v for s in steps for v in (*(b.loss for b in s.batches), s.grad_norm)]))
        for step in steps:
            for batch in step.batches:
                loss = next(values)
                if loss is not None and not math.isfinite(loss):
                    raise NonFiniteTrainingError(_message(step.step, f"the loss is {loss}", batch.clips))
            norm = next(values)
            if norm is not None and not math.isfinite(norm):
                clips = [clip for batch in step.batches for clip in batch.clips]
                raise NonFiniteTrainingError(_message(step.step, f"the gradient norm is {norm}", clips))


def _to_host(values: list[Any]) -> list[float | None]:
    """Floats of ``values`` (tensors, floats or None) with one device-to-host copy for all the tensors."""
    import torch

    tensors = [v.reshape(()).float() for v in values if isinstance(v, torch.Tensor)]  # scalars: views, no copy
    copied = iter(torch.stack([t.to(tensors[0].device) for t in tensors]).tolist() if tensors else [])
    return [next(copied) if isinstance(v, torch.Tensor) else (None if v is None else float(v)) for v in values]


def _message(step: int, what: str, clips: list[str]) -> str:
    clips = clips or ["(clip names unknown)"]
    more = f" and {len(clips) - SHOWN_CLIPS} more" if len(clips) > SHOWN_CLIPS else ""
    shown = ", ".join(clips[:SHOWN_CLIPS]) + more
    return (
        f"training stopped at step {step}: {what} on the batch of clips {shown}, which would make every weight NaN "
        "(no checkpoint was written from this step on); check these clips (`kimi-audio-lf convert` skips NaN/inf "
        "and cut audio) or lower learning_rate, then train again"
    )


def clip_names(inputs: Any) -> list[str]:
    """The names in the batch's ``audio_clips`` (empty when the collator did not describe the batch)."""
    from ..data.features.collate_inputs import CLIPS_KEY

    clips = inputs.get(CLIPS_KEY) if isinstance(inputs, Mapping) else None  # a dict or BatchEncoding (UserDict)
    return [clip.name for clip in clips or ()]


def guard_of(trainer: Any) -> NonFiniteGuard | None:
    return getattr(trainer, _GUARD_ATTR, None)


def make_record(original):
    @functools.wraps(original)
    def compute_loss(self, model, inputs, *args: Any, **kwargs: Any):
        names = clip_names(inputs)  # read before the call: the Trainer may consume the batch
        result = original(self, model, inputs, *args, **kwargs)
        if getattr(model, "training", False) and torch_grad_enabled() and kimi_base_model(model) is not None:
            if guard_of(self) is None:
                setattr(self, _GUARD_ATTR, NonFiniteGuard())
            loss = result[0] if isinstance(result, tuple) else result
            guard_of(self).add_batch(names, loss if hasattr(loss, "detach") else None)
        return result

    return compute_loss


def torch_grad_enabled() -> bool:
    import torch

    return torch.is_grad_enabled()


def make_check(original):
    @functools.wraps(original)
    def _maybe_log_save_evaluate(self, tr_loss, grad_norm, model, *args: Any, **kwargs: Any):
        guard = guard_of(self)
        if guard is not None:
            guard.end_step(self.state.global_step, grad_norm)
            control = self.control
            due = control.should_log or control.should_evaluate or control.should_save
            if due or control.should_training_stop or guard.full():  # points where the Trainer syncs anyway
                guard.check()
        return original(self, tr_loss, grad_norm, model, *args, **kwargs)

    return _maybe_log_save_evaluate
