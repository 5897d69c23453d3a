"""Readers for conversation-shaped JSON: the official Kimi-Audio fine-tune JSONL and sharegpt-style turns.

An ASR row has one audio, a user instruction (optional) and one assistant transcript. Rows with zero or several
audios, or whose ``<audio>`` placeholders do not match their ``audios`` list, become ``audio_count`` issues.
"""

from __future__ import annotations

import os
import re
from typing import Any

from .records import Source, SourceRecord, iter_json_records
from .validate import Issue

_INLINE_AUDIO = re.compile(r"<audio>(.*?)</audio>", re.DOTALL)
_PLACEHOLDER = "<audio>"
_ROLES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant", "model": "assistant"}
_ID_KEYS = ("id", "key", "utt", "utt_id", "uttid", "name")


def _uid(obj: dict) -> str | None:
    value = next((obj[k] for k in _ID_KEYS if obj.get(k) not in (None, "")), None)
    return None if value is None else str(value)


def _read(path: str, encoding: str, parse: Any) -> Source:
    name = os.path.basename(path)
    records: list[SourceRecord | Issue] = []
    items, codec = iter_json_records(path, encoding)
    for line, obj in items:
        if isinstance(obj, Issue):
            records.append(obj)
        elif not isinstance(obj, dict):
            records.append(Issue("malformed_record", name, line, f"expected a JSON object, got {type(obj).__name__}"))
        else:
            records.append(parse(obj, name, line))
    return Source(records=records, encoding=codec)


def _kimi_record(obj: dict, name: str, line: int) -> SourceRecord | Issue:
    conversation = obj.get("conversation")
    if not isinstance(conversation, list):
        return Issue("malformed_record", name, line, 'no "conversation" list in the record')
    audios, instructions, answers = [], [], []
    for message in conversation:
        if not isinstance(message, dict):
            return Issue("malformed_record", name, line, "a conversation message is not an object")
        role, kind, content = message.get("role"), message.get("message_type"), message.get("content")
        if role not in ("user", "assistant"):
            return Issue("malformed_record", name, line, f"role {role!r} is not supported (only user / assistant)")
        if kind == "audio":
            audios.append(content)
        elif kind == "text":
            (answers if role == "assistant" else instructions).append(content or "")
        else:
            return Issue("malformed_record", name, line, f"message_type {kind!r} is not text or audio")
    if len(audios) != 1:
        return Issue("audio_count", name, line, f"{len(audios)} audio messages in the conversation", _uid(obj))
    instruction = " ".join(i.strip() for i in instructions if i.strip()) or None
    text = answers[0] if answers else None
    return SourceRecord(name, line, _uid(obj), audios[0], text.strip() if text else text, instruction)


def message_turns(obj: dict) -> list[tuple[str, str]] | None:
    """(role, text) of a sharegpt / OpenAI-messages row, roles normalised to user / assistant; None if malformed."""
    messages = obj.get("conversations", obj.get("messages"))
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        return None
    turns = []
    for message in messages:
        role = _ROLES.get(str(message.get("from", message.get("role"))).lower())
        content = message.get("value", message.get("content"))
        if role is not None:
            turns.append((role, content if isinstance(content, str) else ""))
    return turns


def _sharegpt_record(obj: dict, name: str, line: int) -> SourceRecord | Issue:
    turns = message_turns(obj)
    if turns is None:
        return Issue("malformed_record", name, line, 'no "conversations" / "messages" list of turns in the record')
    listed = obj.get("audios", obj.get("audio")) or []
    listed = [listed] if isinstance(listed, str) else list(listed)
    user_text = " ".join(content for role, content in turns if role == "user")
    inline = [p.strip() for p in _INLINE_AUDIO.findall(user_text)]
    instruction = _INLINE_AUDIO.sub(" ", user_text)
    placeholders = instruction.count(_PLACEHOLDER)
    uid = _uid(obj)
    if placeholders != len(listed):
        message = f'{placeholders} <audio> placeholder(s) but {len(listed)} path(s) in "audios"'
        return Issue("audio_count", name, line, message, uid)
    paths = inline + [p.get("path") if isinstance(p, dict) else p for p in listed]
    if len(paths) != 1:
        where = "<audio>PATH</audio> tags and the audios list"
        return Issue("audio_count", name, line, f"{len(paths)} audio references ({where}) in the conversation", uid)
    answers = [content for role, content in turns if role == "assistant"]
    instruction = " ".join(instruction.replace(_PLACEHOLDER, " ").split()) or None
    return SourceRecord(name, line, uid, paths[0], answers[0].strip() if answers else None, instruction)


def read_kimi_jsonl(path: str, opts: Any) -> Source:
    """Official Kimi-Audio fine-tune records (architecture spec §5.1); ``audio_tokens`` are ignored."""
    return _read(path, opts.encoding, _kimi_record)


def read_conversations(path: str, opts: Any) -> Source:
    """``conversations`` (from/value) or ``messages`` (role/content) turns, inline tags or an ``audios`` list."""
    return _read(path, opts.encoding, _sharegpt_record)


def is_dataset_dir(path: str) -> bool:
    """A LLaMA-Factory dataset folder as ``convert`` writes corpora: ``part-*.jsonl`` shards only."""
    names = [n for n in os.listdir(path) if not n.startswith(".")] if os.path.isdir(path) else []
    return bool(names) and all(n.startswith("part-") and n.endswith(".jsonl") for n in names)


def read_dataset_dir(path: str, opts: Any) -> Source:
    """Every shard of a dataset folder, in name order, as sharegpt rows (file names keep their shard)."""
    records: list[SourceRecord | Issue] = []
    for name in sorted(os.listdir(path)):
        if name.endswith(".jsonl"):
            records += read_conversations(os.path.join(path, name), opts).records
    return Source(records=records, encoding="utf-8")
