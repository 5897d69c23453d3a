"""The patch row of the feature cache's write-through.

- ``feature_cache.write_through`` (``CustomSeq2SeqTrainer.__init__``): the trainer of a Kimi-Audio model has its
  collator describe each batch's clips (``audio_clips``, ``data/features/collate_inputs.py``) and, while
  ``KIMI_AUDIO_FEATURE_CACHE`` is set, gets ``WriteThroughCallback``: at train begin it sets the model's feature
  sink to ``data/write_through.WriteThrough``, at train end it removes it (no method of the model is replaced);
  the rank's counts are logged at exit.

(``streaming: true`` needs ``accelerator_config.dispatch_batches: false``: a recipe key, ``recipe_keys.py``.)
"""

from __future__ import annotations

import atexit
import functools
import sys
from typing import Any

from .wrappers import kimi_base_model


def make_write_through(original):
    @functools.wraps(original)
    def __init__(self, finetuning_args: Any, processor: Any, *args: Any, **kwargs: Any) -> None:
        original(self, finetuning_args, processor, *args, **kwargs)
        if kimi_base_model(getattr(self, "model", None)) is None:
            return
        from ..data.features.collate_inputs import enable_clip_records
        from ..data.features.feature_cache import cache_root

        enable_clip_records()  # before the Trainer builds its DataLoaders: forked workers inherit it
        if cache_root():
            self.add_callback(write_through_callback())

    return __init__


@functools.cache
def _callback_class() -> type:
    from transformers import TrainerCallback

    class WriteThroughCallback(TrainerCallback):
        """Connects write-through to the model's feature sink for the length of ``train()``."""

        def __init__(self) -> None:
            self.sink: Any = None
            self.model: Any = None

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            from ..data.features.write_through import WriteThrough, preload

            self.model = kimi_base_model(model)
            if self.model is None or self.sink is not None:
                return
            self.sink = WriteThrough()
            self.model.set_feature_sink(self.sink)
            counters = self.sink.counters
            print(f"{counters.line('start')}{preload(self.model)}", file=sys.stderr, flush=True)
            # the end line comes at exit, also after a run that stopped with an error (it says what was stored)
            atexit.register(lambda: print(counters.line("end"), file=sys.stderr, flush=True))

        def on_train_end(self, args, state, control, **kwargs):
            if self.sink is not None:
                self.model.set_feature_sink(None)
                self.sink = self.model = None

    return WriteThroughCallback


def write_through_callback() -> Any:
    return _callback_class()()
