"""What the installed torch and transformers can do, detected once, in one place.

Parsed with ``packaging`` (local labels such as ``+cu130`` and dev builds included) or detected from the API itself,
never by splitting version strings by hand. Supported: transformers 4.55–5.6, torch ≥ 2.4. SDPA's grouped-query
support is decided by transformers' own ``sdpa_attention_forward``, which the model calls through the registry.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import transformers
from packaging.version import Version

TRANSFORMERS_VERSION = Version(transformers.__version__)
TRANSFORMERS_MAJOR = TRANSFORMERS_VERSION.major

# 5.x renamed ``from_pretrained(torch_dtype=...)`` to ``dtype=`` and warns on the old name.
DTYPE_KWARG = "dtype" if TRANSFORMERS_MAJOR >= 5 else "torch_dtype"

# Variable-length FlashAttention over packed sequences (torch ≥ 2.9). Found, not imported: importing it defines
# torch custom ops (~60 ms on a 2-core machine), paid only by a run that packs rows on CUDA (``varlen_kernel``).
VARLEN_AVAILABLE = importlib.util.find_spec("torch.nn.attention.varlen") is not None


class VarlenKernel(NamedTuple):
    attn: Callable[..., Any]
    causal_kwargs: dict[str, object]
    native_gqa: bool


@functools.cache
def varlen_kernel() -> VarlenKernel | None:
    """``varlen_attn`` and how this torch release spells causality and GQA, imported on first use."""
    if not VARLEN_AVAILABLE:
        return None
    from torch.nn.attention.varlen import varlen_attn

    # The signature moved between torch releases: causality by ``is_causal`` or by a (-1, 0) window; GQA native
    # (``enable_gqa``) only in later ones.
    parameters = inspect.signature(varlen_attn).parameters
    causal: dict[str, object] = {"window_size": (-1, 0)} if "window_size" in parameters else {"is_causal": True}
    return VarlenKernel(varlen_attn, causal, "enable_gqa" in parameters)
