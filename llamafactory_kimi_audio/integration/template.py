"""The ``kimi_audio`` template: LLaMA-Factory messages → the official Kimi-Audio layout (``models/layout.py``)."""

from __future__ import annotations

import weakref
from typing import Any

from llamafactory.data.template import Template

from .. import settings
from .._startup import resume
from ..errors import InputError
from ..models import special_tokens as st
from ..models.layout import LayoutEncoder

INSTRUCTION_ENV = "KIMI_AUDIO_DEFAULT_INSTRUCTION"


def default_instruction() -> str:
    """Instruction added to a user turn that holds only audio (the official one; KIMI_AUDIO_DEFAULT_INSTRUCTION)."""
    return str(settings.get(INSTRUCTION_ENV) or st.DEFAULT_INSTRUCTION["zh"])


_ENCODERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _layout_encoder(tokenizer: Any) -> LayoutEncoder:
    """One encoder per tokenizer: building one looks up every special token (~400 ids), which was 3/4 of the
    preprocessing time of a row."""
    try:
        return _ENCODERS[tokenizer]
    except (KeyError, TypeError):  # TypeError: an object that cannot be weakly referenced
        encoder = LayoutEncoder(tokenizer)
        try:
            _ENCODERS[tokenizer] = encoder
        except TypeError:
            pass
        return encoder


class KimiAudioTemplate(Template):
    """Encodes turns with the official rules instead of string slots (roles change the stream, not the text)."""

    def _encode(self, tokenizer: Any, messages: list[dict[str, str]], system: str | None, tools: str | None):
        if system or self.default_system:
            raise InputError(
                "Kimi-Audio has no system role: remove the `system` column / default_system, or put the "
                f"instruction into the user turn (got {(system or self.default_system)[:60]!r})"
            )
        if tools:
            raise InputError("the kimi_audio template does not support tools / function calling")
        for message in messages:
            if message["role"] not in ("user", "assistant"):
                role = message["role"]
                raise InputError(f"the kimi_audio template supports user and assistant turns only, got {role!r}")
        # an assistant turn with a target audio is a speech turn (layout A, models/layout.py)
        turns = [(message["role"], message["content"]) for message in messages]
        return _layout_encoder(tokenizer).turns(turns, default_instruction())

    def fix_jinja_template(self, tokenizer: Any) -> None:
        """Keep the official tokenizer files clean: the layout is not expressible as a chat template string."""
        return None


resume(__name__)  # hooks that needed this module while it was importing LLaMA-Factory run now
