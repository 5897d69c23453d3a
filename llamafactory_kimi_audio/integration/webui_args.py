"""Web UI (LlamaBoard): in a Kimi-Audio run the *Extra arguments* box wins over the UI's own fields.

LlamaBoard's ``Runner._parse_train_args`` applies the *Extra arguments* JSON and then sets the LoRA, freeze,
quantisation, multimodal and eval fields, so ``{"lora_target": "all,mimo"}`` typed there was silently replaced by
the *LoRA modules* field (``all`` when empty). For a ``kimi_audio`` run the extra arguments are applied again last,
and a warning (the page and the Web UI's log) names each field they replaced. Other templates keep LlamaBoard's
behaviour.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from ..logs import get_logger
from .registration import TEMPLATE_NAME

logger = get_logger(__name__)
EXTRA_ARGS_ID = "train.extra_args"


def overridden_fields(args: dict[str, Any], extra: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """key -> (the UI field's value, the extra argument's) where the fields replaced an extra argument."""
    return {key: (args[key], value) for key, value in extra.items() if key in args and args[key] != value}


def extra_args_warning(replaced: dict[str, tuple[Any, Any]]) -> str:
    changes = ", ".join(f"{key}={extra!r} (the field said {field!r})" for key, (field, extra) in replaced.items())
    return f"Kimi-Audio run: the Extra arguments win over the UI's fields: {changes}"


def make_extra_args_win(original):
    @functools.wraps(original)
    def _parse_train_args(self: Any, data: dict[Any, Any]) -> dict[str, Any]:
        args = original(self, data)
        if args.get("template") != TEMPLATE_NAME:
            return args
        try:
            extra = json.loads(data[self.manager.get_elem_by_id(EXTRA_ARGS_ID)] or "{}")
        except (KeyError, TypeError, ValueError):  # LlamaBoard itself refuses a box that is not JSON
            return args
        replaced = overridden_fields(args, extra) if isinstance(extra, dict) else {}
        if replaced:
            args.update({key: value for key, (_, value) in replaced.items()})
            warn_on_page(extra_args_warning(replaced))
        return args

    return _parse_train_args


def warn_on_page(message: str) -> None:
    """A warning in the log and, inside a Web UI event, as a toast on the page."""
    logger.warning(message)
    try:
        import gradio as gr

        gr.Warning(message)  # a toast on the page; outside an event gradio only logs it
    except Exception:  # no page to show it on: the log line stays
        pass
