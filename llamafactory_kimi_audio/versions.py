"""What the installed torch and transformers can do, detected once, in one place.

Parsed with ``packaging`` (local labels such as ``+cu130`` and dev builds included) or detected from the API itself,
never by splitting version strings by hand. Supported: transformers 4.55–5.6, torch ≥ 2.4. SDPA's grouped-query
support is decided by transformers' own ``sdpa_attention_forward``, which the model calls through the registry.
"""

from __future__ import annotations

import inspect

import transformers
from packaging.version import Version

TRANSFORMERS_VERSION = Version(transformers.__version__)
TRANSFORMERS_MAJOR = TRANSFORMERS_VERSION.major

# 5.x renamed ``from_pretrained(torch_dtype=...)`` to ``dtype=`` and warns on the old name.
DTYPE_KWARG = "dtype" if TRANSFORMERS_MAJOR >= 5 else "torch_dtype"

try:  # variable-length FlashAttention over packed sequences (torch ≥ 2.9)
    from torch.nn.attention.varlen import varlen_attn
except ImportError:
    varlen_attn = None

# The varlen signature moved between torch releases: causality by ``is_causal`` or by a (-1, 0) window; GQA native
# (``enable_gqa``) only in later ones.
_VARLEN_PARAMETERS = inspect.signature(varlen_attn).parameters if varlen_attn is not None else {}
VARLEN_CAUSAL_KWARGS: dict[str, object] = (
    {"window_size": (-1, 0)} if "window_size" in _VARLEN_PARAMETERS else {"is_causal": True}
)
VARLEN_HAS_GQA = "enable_gqa" in _VARLEN_PARAMETERS
