"""The ``feature_cache.write_through`` row: a Kimi-Audio model loaded by LLaMA-Factory while
``KIMI_AUDIO_FEATURE_CACHE`` is set stores the audio features it encodes (``data/write_through.py``).

(``streaming: true`` needs ``accelerator_config: {dispatch_batches: false}``: a recipe key, ``recipe_keys.py``.)
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
