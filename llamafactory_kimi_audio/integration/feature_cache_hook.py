"""Two rows of the patch table for audio data at scale.

- ``feature_cache.write_through``: a Kimi-Audio model loaded by LLaMA-Factory while ``KIMI_AUDIO_FEATURE_CACHE`` is
  set stores the audio features it encodes (``data/write_through.py``).
- ``streaming_audio_batches``: with ``streaming: true``, accelerate's batch dispatching would slice every tensor of a
  batch to the batch size, audio frames included; a ``kimi_audio`` run reads its own part of the stream instead.
"""

from __future__ import annotations

import functools
from typing import Any


def make_write_through(original):
    @functools.wraps(original)
    def patch_model(model, tokenizer, model_args, is_trainable, *args: Any, **kwargs: Any):
        result = original(model, tokenizer, model_args, is_trainable, *args, **kwargs)
        from ..data.feature_cache import cache_root
        from .wrappers import KIMI_MODEL_TYPE

        if is_trainable and cache_root() and getattr(model.config, "model_type", None) == KIMI_MODEL_TYPE:
            from ..data.write_through import attach

            attach(model)
        return result

    return patch_model


def make_streaming_batches(original):
    @functools.wraps(original)
    def get_train_args(*args: Any, **kwargs: Any):
        parsed = original(*args, **kwargs)
        _, data_args, training_args = parsed[:3]
        config = getattr(training_args, "accelerator_config", None)
        if getattr(data_args, "streaming", False) and getattr(data_args, "template", None) == "kimi_audio" and config:
            config.dispatch_batches = False  # each rank iterates its own shard: whole batches, audio intact
        return parsed

    return get_train_args
