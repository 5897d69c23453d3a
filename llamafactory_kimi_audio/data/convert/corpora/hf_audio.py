"""Audio cells of Hugging Face datasets: finding the audio column and writing a cell out as a file."""

from __future__ import annotations

import io
import json
import os
from typing import Any

from ....fileio.textio import DataError

_MAGIC = ((b"RIFF", ".wav"), (b"fLaC", ".flac"), (b"ID3", ".mp3"))
_AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a")


def audio_column(schema: Any, shown: str) -> str:
    """The column declared ``Audio`` in the schema's ``huggingface`` metadata, else a struct with bytes+path or
    array+sampling_rate; DataError naming the columns otherwise."""
    meta = (schema.metadata or {}).get(b"huggingface")
    if meta:
        features = json.loads(meta).get("info", {}).get("features", {})
        declared = [name for name, f in features.items() if isinstance(f, dict) and f.get("_type") == "Audio"]
        if declared:
            return declared[0]
    for field in schema:
        names = (
            {field.type.field(i).name for i in range(field.type.num_fields)}
            if hasattr(field.type, "num_fields")
            else set()
        )
        if {"bytes", "path"} <= names or {"array", "sampling_rate"} <= names:
            return field.name
    raise DataError(
        f"{shown}: no audio column among {schema.names} (looked for a datasets Audio feature or a struct with "
        "bytes/path or array/sampling_rate); this is not an audio dataset, or pass the audio files another way"
    )


def sniff_extension(data: bytes) -> str:
    for magic, ext in _MAGIC:
        if data.startswith(magic):
            return ext
    if data[:4] == b"OggS":
        return ".opus" if b"OpusHead" in data[28:40] else ".ogg"
    if len(data) > 1 and data[0] == 0xFF and (data[1] & 0xE0) == 0xE0:
        return ".mp3"
    return ".bin"


def write_audio(cell: Any, target_dir: str, stem: str, source_dir: str) -> str:
    """The path of the audio of one cell: embedded bytes written to ``target_dir/stem.ext`` unchanged (kept when a
    file of the same size is already there: resumed runs), a decoded array written as WAV, or the cell's own path."""
    if isinstance(cell, str):
        cell = {"path": cell, "bytes": None}
    if not isinstance(cell, dict):
        raise DataError(f"audio cell of type {type(cell).__name__} is neither bytes, a path nor an array")
    data, hint = cell.get("bytes"), cell.get("path") or ""
    if data:
        ext = os.path.splitext(hint)[1].lower()
        path = os.path.join(target_dir, stem + (ext if ext in _AUDIO_EXTENSIONS else sniff_extension(data)))
        _write_once(path, data)
        return path
    if cell.get("array") is not None:
        import soundfile as sf

        buffer = io.BytesIO()
        sf.write(buffer, cell["array"], int(cell.get("sampling_rate") or 16000), format="WAV", subtype="FLOAT")
        path = os.path.join(target_dir, stem + ".wav")
        _write_once(path, buffer.getvalue())
        return path
    if hint:
        return hint if os.path.isabs(hint) else os.path.join(source_dir, hint)
    raise DataError("audio cell has neither bytes nor a path")


def _write_once(path: str, data: bytes) -> None:
    if os.path.isfile(path) and os.path.getsize(path) == len(data):
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.part"
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)
