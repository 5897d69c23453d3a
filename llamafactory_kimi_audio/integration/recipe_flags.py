"""A recipe given as command-line flags (``llamafactory-cli train --template kimi_audio --dataset d ...``).

For such a run LLaMA-Factory's ``read_args`` returns the flag list itself, which HfArgumentParser turns into typed
dataclasses. The run guard's checks read a recipe dict, so ``flags_to_recipe`` reads the list the way argparse
does for the keys they look at: ``--key value``, ``--key=value``, a bare ``--do_train`` (true), a bare
``--no_do_sample`` (HfArgumentParser's complement of a bool that defaults to true), ``--model-name-or-path``, and the
last of a repeated flag. Values stay strings (the checks read ``"true"`` as true); only ``accelerator_config``'s
JSON text becomes a dict, as transformers' ``TrainingArguments`` does. Flag names argparse would accept abbreviated
are not recognised: such a recipe runs unchecked.

The dict is for the checks only: LLaMA-Factory keeps the list, since a dict of strings would go to ``parse_dict``,
which converts no types. What ``complete_recipe`` adds is given back as flags appended to the list
(``added_flags``): argparse keeps a flag's last value, and only keys the user left out are added.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from typing import Any

JSON_FIELDS = frozenset({"accelerator_config"})  # transformers decodes these when their text starts with "{"
HELP_FLAGS = frozenset({"-h", "--help"})
_NUMBER = re.compile(r"-\d|-\.\d")  # argparse reads "-1" / "-.5" as a value (no option looks like a number)


def flags_to_recipe(flags: Sequence[str]) -> dict[str, Any]:
    """The recipe the flags say, for the checks: ``{"template": "kimi_audio", "do_train": "true", ...}``."""
    recipe: dict[str, Any] = {}
    for name, values in _flag_groups(flags):
        key = name.replace("-", "_")
        if not values and key.startswith("no_"):
            recipe[key[3:]] = "false"
        recipe[key] = "true" if not values else values[0] if len(values) == 1 else list(values)
        if key in JSON_FIELDS:
            recipe[key] = _json_object(recipe[key])
    return recipe


def wants_help(flags: Sequence[str]) -> bool:
    return any(flag in HELP_FLAGS for flag in flags)


def added_flags(recipe: dict[str, Any], completed: dict[str, Any]) -> list[str]:
    """The flags that turn ``recipe`` (as read by ``flags_to_recipe``) into ``completed``, to append to the list."""
    flags: list[str] = []
    for key, value in completed.items():
        if key in recipe and recipe[key] == value:
            continue
        if any(key.startswith(name) for name in recipe if name != key):
            continue  # the user gave it abbreviated (``--do_samp``): argparse reads that as this key
        flags += [f"--{key}", flag_value(value)]
    return flags


def flag_value(value: Any) -> str:
    """A value as HfArgumentParser reads it: ``true`` / ``false`` for its bools, JSON text for a dict field."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def _flag_groups(flags: Sequence[str]) -> Iterator[tuple[str, list[str]]]:
    """(name, the values after it) for each ``--name``; the values of ``--name=value`` are that one value."""
    name: str | None = None
    values: list[str] = []
    for token in flags:
        if not _is_option(token):
            values.append(token)
            continue
        if name is not None:
            yield name, values
        name, values = None, []
        if token.startswith("--") and len(token) > 2:
            name, sep, value = token[2:].partition("=")
            if sep:
                yield name, [value]
                name = None
    if name is not None:
        yield name, values


def _is_option(token: str) -> bool:
    return token.startswith("-") and len(token) > 1 and not _NUMBER.match(token)


def _json_object(value: Any) -> Any:
    """JSON object text as a dict; other text (a JSON file's path, or text that does not parse) as it is."""
    if not (isinstance(value, str) and value.startswith("{")):
        return value
    try:
        decoded = json.loads(value)
    except json.JSONDecodeError:
        return value  # transformers says what is wrong with it
    return decoded if isinstance(decoded, dict) else value
