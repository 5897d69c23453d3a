"""A training step whose loss or gradients are not finite stops the run with one line naming the batch's clips.

Left alone, one NaN step makes every weight NaN and the run goes on to the end and exits 0 (the Trainer even
filters NaN losses out of the logged mean, so the log shows ``loss 0``). Two rows of the patch table stop it:

- ``nonfinite_guard.attach`` (``CustomSeq2SeqTrainer.__init__``): for a Kimi-Audio model, the model's ``forward``
  keeps each training micro-batch's loss (a detached copy, still on the device) with the batch's clip names, which
  the collator sends along as a uint8 tensor (``collate_inputs.CLIP_NAMES_KEY``: it survives DataLoader workers and
  device moves, and the wrapper drops it before the real forward / ``generate``).
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
from dataclasses import dataclass, field
from typing import Any

from ..errors import EXIT_BAD_INPUT, KimiAudioError

MAX_PENDING = 256  # micro-batches kept between checks: bounded memory with rare logging; one sync per 256 steps
SHOWN_CLIPS = 4  # clip names in the message (then "and N more")
_GUARD_ATTR = "_kimi_audio_nonfinite_guard"


class NonFiniteTrainingError(KimiAudioError):
    """A training step produced a NaN / inf loss or gradient norm (exit 2: the data or the recipe)."""

    exit_code = EXIT_BAD_INPUT


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


def attach(model: Any) -> NonFiniteGuard | None:
    """Wrap the Kimi-Audio ``model``'s forward / generate on the instance; idempotent. None for other models."""
    from ..data.collate_inputs import CLIP_NAMES_KEY, decode_names, enable_clip_names
    from .wrappers import kimi_base_model

    base = kimi_base_model(model)
    if base is None:
        return None
    if getattr(base, _GUARD_ATTR, None) is not None:
        return getattr(base, _GUARD_ATTR)
    guard = NonFiniteGuard()
    forward, generate = base.forward, base.generate

    @functools.wraps(forward)  # generate() validates its kwargs against forward's signature
    def forward_recording(*args: Any, **kwargs: Any) -> Any:
        names = kwargs.pop(CLIP_NAMES_KEY, None)
        output = forward(*args, **kwargs)
        if base.training and torch_grad_enabled():
            guard.add_batch([] if names is None else decode_names(names), getattr(output, "loss", None))
        return output

    @functools.wraps(generate)
    def generate_without_names(*args: Any, **kwargs: Any) -> Any:
        kwargs.pop(CLIP_NAMES_KEY, None)
        return generate(*args, **kwargs)

    object.__setattr__(base, "forward", forward_recording)
    object.__setattr__(base, "generate", generate_without_names)
    object.__setattr__(base, _GUARD_ATTR, guard)
    enable_clip_names()  # before the Trainer builds its DataLoader: forked workers inherit it
    return guard


def torch_grad_enabled() -> bool:
    import torch

    return torch.is_grad_enabled()


def guard_of(model: Any) -> NonFiniteGuard | None:
    from .wrappers import kimi_base_model

    return getattr(kimi_base_model(model), _GUARD_ATTR, None)


def make_attach(original):
    @functools.wraps(original)
    def __init__(self, finetuning_args: Any, processor: Any, *args: Any, **kwargs: Any) -> None:
        original(self, finetuning_args, processor, *args, **kwargs)
        attach(getattr(self, "model", None))

    return __init__


def make_check(original):
    @functools.wraps(original)
    def _maybe_log_save_evaluate(self, tr_loss, grad_norm, model, *args: Any, **kwargs: Any):
        guard = guard_of(model) or guard_of(getattr(self, "model", None))
        if guard is not None:
            guard.end_step(self.state.global_step, grad_norm)
            control = self.control
            due = control.should_log or control.should_evaluate or control.should_save
            if due or control.should_training_stop or guard.full():  # points where the Trainer syncs anyway
                guard.check()
        return original(self, tr_loss, grad_norm, model, *args, **kwargs)

    return _maybe_log_save_evaluate
