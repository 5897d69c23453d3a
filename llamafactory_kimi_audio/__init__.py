"""Fine-tune Kimi-Audio with stock LLaMA-Factory.

Importing this package is cheap (stdlib only); the model, the LLaMA-Factory integration and the CLIs live in
sub-packages that are imported on demand.
"""

from __future__ import annotations

__version__ = "0.1.0"

DISABLE_ENV = "LLAMAFACTORY_KIMI_AUDIO_DISABLE"


def activate() -> None:
    """Apply the LLaMA-Factory integration in this process now (for code that imported LLaMA-Factory first)."""
    from ._startup import activate_now

    activate_now()
