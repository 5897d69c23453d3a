"""Kimi-Audio text tokenizer: tiktoken BPE plus 421 specials, as a transformers slow tokenizer (spec §4, §8).

Works unchanged on transformers 4.55.x and 5.x and never runs the Hub's ``tokenization_kimia.py``. Base tokens are
exposed to transformers as byte-level strings (GPT-2 byte-to-unicode map, as Qwen2 does), but all encoding goes
through tiktoken. ``save_pretrained`` writes the official checkpoint's layout (``tiktoken.model``,
``tokenizer_config.json`` naming the remote ``TikTokenTokenizer``, ``special_tokens_map.json``); this class loads such
directories directly, without remote code.
"""

from __future__ import annotations

import base64
import json
import logging
import os
from typing import Any

import tiktoken
from transformers import AddedToken, PreTrainedTokenizer

from ..errors import ModelError
from .special_tokens import BOS, EOS, PAD, SPECIAL_TOKENS

PAT_STR = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
VOCAB_FILE = "tiktoken.model"
OFFICIAL_TOKENIZER_CLASS = "TikTokenTokenizer"
OFFICIAL_AUTO_MAP = {"AutoTokenizer": ["tokenization_kimia.TikTokenTokenizer", None]}
# Keys transformers 5.x adds to a saved config that mean nothing to the official loader.
_DROPPED_CONFIG_KEYS = ("backend", "is_local", "local_files_only", "files_loaded", "vocab_file")


def _byte_tables() -> tuple[dict[int, str], dict[int, str]]:
    """GPT-2 byte<->unicode map as two ``str.translate`` tables (latin-1 char -> printable char, and back)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    to_unicode = {**{b: chr(b) for b in printable}, **{b: chr(256 + k) for k, b in enumerate(others)}}
    return to_unicode, {ord(c): chr(b) for b, c in to_unicode.items()}


_BYTES_TO_UNICODE, _UNICODE_TO_BYTES = _byte_tables()


def _drop_class_mismatch_warning(record: logging.LogRecord) -> bool:
    """transformers 4.x warns when ``tokenizer_class`` (the official remote name) differs from the loading class."""
    return "is not the same type as the class this function is called from" not in record.getMessage()


def _special_added_token(content: str) -> AddedToken:
    return AddedToken(content, lstrip=False, rstrip=False, single_word=False, normalized=False, special=True)


def _added_token_dict(token: AddedToken, special: bool = True) -> dict[str, Any]:
    keys = ("content", "lstrip", "normalized", "rstrip", "single_word") + (("special",) if special else ())
    return {key: getattr(token, key) for key in keys}


def parse_tiktoken_model(raw: bytes) -> dict[bytes, int]:
    """Parse the tiktoken BPE format (``base64(token) rank`` per line); ranks must be exactly ``0..n-1``."""
    ranks = {base64.b64decode(token): int(rank) for token, rank in (line.split() for line in raw.splitlines() if line)}
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ModelError("tiktoken.model ranks must be unique and contiguous from 0")
    return ranks


def write_tiktoken_model(path: str | os.PathLike, ranks: dict[bytes, int]) -> None:
    """Write ``ranks`` in the tiktoken BPE format, sorted by rank (byte-identical for equal inputs)."""
    ordered = sorted(ranks.items(), key=lambda item: item[1])
    lines = [base64.b64encode(token) + b" " + str(rank).encode() + b"\n" for token, rank in ordered]
    with open(path, "wb") as f:
        f.write(b"".join(lines))


def official_tokenizer_config(num_base_tokens: int, pat_str: str = PAT_STR) -> dict[str, Any]:
    """The ``tokenizer_config.json`` entries of the official layout for a base vocabulary of ``num_base_tokens``."""
    return {
        "added_tokens_decoder": {
            str(num_base_tokens + i): _added_token_dict(_special_added_token(tok))
            for i, tok in enumerate(SPECIAL_TOKENS)
        },
        "auto_map": OFFICIAL_AUTO_MAP,
        "bos_token": BOS,
        "clean_up_tokenization_spaces": False,
        "eos_token": EOS,
        "model_max_length": 1000000000000000019884624838656,
        "pad_token": PAD,
        "pat_str": pat_str,
        "tokenizer_class": OFFICIAL_TOKENIZER_CLASS,
    }


def _special_tokens_map(bos: str, eos: str, pad: str) -> dict[str, Any]:
    entries = {"bos_token": bos, "eos_token": eos, "pad_token": pad}
    # special_tokens_map.json carries the AddedToken fields without "special" (as transformers 4.x writes it)
    return {key: _added_token_dict(_special_added_token(value), special=False) for key, value in entries.items()}


def _dump_json(path: str, obj: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def write_tokenizer_files(directory: str | os.PathLike, ranks: dict[bytes, int], pat_str: str = PAT_STR) -> int:
    """Write tiktoken.model, tokenizer_config.json and special_tokens_map.json; return ``num_base_tokens``."""
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    write_tiktoken_model(os.path.join(directory, VOCAB_FILE), ranks)
    _dump_json(os.path.join(directory, "tokenizer_config.json"), official_tokenizer_config(len(ranks), pat_str))
    _dump_json(os.path.join(directory, "special_tokens_map.json"), _special_tokens_map(BOS, EOS, PAD))
    return len(ranks)


class KimiAudioTokenizer(PreTrainedTokenizer):
    """tiktoken-backed Kimi-Audio tokenizer; specials ``SPECIAL_TOKENS[i]`` have id ``num_base_tokens + i``."""

    vocab_files_names = {"vocab_file": VOCAB_FILE}
    model_input_names = ["input_ids", "attention_mask"]
    padding_side = "right"

    def __init__(
        self,
        vocab_file: str | None = None,
        pat_str: str = PAT_STR,
        bos_token: str | AddedToken = BOS,
        eos_token: str | AddedToken = EOS,
        pad_token: str | AddedToken = PAD,
        unk_token: str | AddedToken | None = None,
        clean_up_tokenization_spaces: bool = False,
        **kwargs: Any,
    ) -> None:
        if vocab_file is None:
            raise ModelError(f"KimiAudioTokenizer needs a {VOCAB_FILE} vocabulary file next to the checkpoint")
        with open(vocab_file, "rb") as f:
            self._vocab_bytes = f.read()
        self.vocab_file = vocab_file
        self.pat_str = pat_str
        self._build()
        # Registering the specials before the base __init__ keeps transformers from appending them anywhere else.
        decoder = {self.num_base_tokens + i: _special_added_token(tok) for i, tok in enumerate(SPECIAL_TOKENS)}
        for index, token in (kwargs.pop("added_tokens_decoder", None) or {}).items():
            token = AddedToken(**token) if isinstance(token, dict) else token
            token = AddedToken(token, special=False) if isinstance(token, str) else token
            if int(index) in decoder and token.content != decoder[int(index)].content:
                raise ModelError(f"added token {index} is {token.content!r}, expected {decoder[int(index)].content!r}")
            decoder[int(index)] = token
        self._added_tokens_decoder = decoder
        if unk_token is not None and str(unk_token) not in {t.content for t in decoder.values()}:
            unk_token = None  # tiktoken is byte level: every string is encodable, so no unknown token is needed
        super().__init__(
            pat_str=pat_str,
            bos_token=bos_token,
            eos_token=eos_token,
            pad_token=pad_token,
            unk_token=unk_token,
            clean_up_tokenization_spaces=clean_up_tokenization_spaces,
            **kwargs,
        )

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> KimiAudioTokenizer:
        base_logger = logging.getLogger("transformers.tokenization_utils_base")
        base_logger.addFilter(_drop_class_mismatch_warning)
        try:
            return super().from_pretrained(*args, **kwargs)
        finally:
            base_logger.removeFilter(_drop_class_mismatch_warning)

    # ---- derived state (rebuilt after unpickling) ----
    _DERIVED = ("_enc", "_id_to_token", "_token_to_id")  # large; small ones are pickled and simply rebuilt

    def _build(self) -> None:
        ranks = parse_tiktoken_model(self._vocab_bytes)
        self.num_base_tokens = len(ranks)
        self.special_tokens = {tok: self.num_base_tokens + i for i, tok in enumerate(SPECIAL_TOKENS)}
        # Kimi-style attributes of the official tokenizer (fixed ids, whatever bos_token/eos_token are set to later)
        self.bos_id, self.eos_id, self.pad_id = (self.special_tokens[tok] for tok in (BOS, EOS, PAD))
        self._enc = tiktoken.Encoding(
            name="kimi_audio", pat_str=self.pat_str, mergeable_ranks=ranks, special_tokens=self.special_tokens
        )
        by_id: list[bytes] = [b""] * len(ranks)
        for token, rank in ranks.items():
            by_id[rank] = token
        self._id_to_token = [t.decode("latin-1").translate(_BYTES_TO_UNICODE) for t in by_id]
        self._token_to_id = {t: i for i, t in enumerate(self._id_to_token)}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for key in self._DERIVED:
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._build()

    @property
    def vocab_size(self) -> int:
        return self.num_base_tokens + len(SPECIAL_TOKENS)

    def encode_ordinary(self, text: str) -> list[int]:
        """Fast path: tiktoken ids of ``text`` with special-token strings treated as plain text."""
        return self._enc.encode_ordinary(text)

    # ---- transformers slow-tokenizer interface ----
    def get_vocab(self) -> dict[str, int]:
        vocab = dict(self._token_to_id)
        vocab.update(self._added_tokens_encoder)
        return vocab

    def _tokenize(self, text: str, **kwargs: Any) -> list[str]:
        return [self._id_to_token[i] for i in self._enc.encode_ordinary(text)]

    def _convert_token_to_id_with_added_voc(self, token: str | None) -> int | None:
        # transformers 5.x looks tokens up in a freshly sorted copy of the added vocab; use the cached dict instead.
        if token is None:
            return None
        if token in self._added_tokens_encoder:
            return self._added_tokens_encoder[token]
        return self._convert_token_to_id(token)

    def _convert_token_to_id(self, token: str) -> int | None:
        return self._token_to_id.get(token)

    def _convert_id_to_token(self, index: int) -> str:
        if not 0 <= index < self.num_base_tokens:
            raise IndexError(f"token id {index} is outside the vocabulary")
        return self._id_to_token[index]

    def convert_ids_to_tokens(self, ids: int | list[int], skip_special_tokens: bool = False) -> str | list[str]:
        if isinstance(ids, int):
            token = self._added_tokens_decoder.get(ids)
            return token.content if token is not None else self._convert_id_to_token(ids)
        specials = {i for i, t in self._added_tokens_decoder.items() if t.special} if skip_special_tokens else set()
        return [self.convert_ids_to_tokens(int(i)) for i in ids if int(i) not in specials]

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        out = bytearray()
        for token in tokens:
            if token in self._added_tokens_encoder:
                out += token.encode("utf-8")
            else:
                try:
                    out += token.translate(_UNICODE_TO_BYTES).encode("latin-1")
                except UnicodeEncodeError:  # not a byte-level token string: take it literally
                    out += token.encode("utf-8")
        return out.decode("utf-8", errors="replace")

    def _decode(
        self,
        token_ids: int | list[int],
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool | None = None,
        **kwargs: Any,
    ) -> str:
        ids = [token_ids] if isinstance(token_ids, int) else token_ids
        out, run = bytearray(), []
        for index in map(int, ids):
            if 0 <= index < self.num_base_tokens:
                run.append(index)
                continue
            token = self._added_tokens_decoder.get(index)
            if token is None and index >= self.vocab_size:
                continue  # an audio-code id (>= kimia_token_offset) has no text: the official detokenizer drops it
            if token is None:
                raise IndexError(f"token id {index} is outside the vocabulary")
            if skip_special_tokens and token.special:
                continue
            out += self._enc.decode_bytes(run) + token.content.encode("utf-8")
            run = []
        out += self._enc.decode_bytes(run)
        text = out.decode("utf-8", errors="replace")
        if clean_up_tokenization_spaces is None:
            clean_up_tokenization_spaces = self.clean_up_tokenization_spaces
        return self.clean_up_tokenization(text) if clean_up_tokenization_spaces else text

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str]:
        path = os.path.join(save_directory, (filename_prefix + "-" if filename_prefix else "") + VOCAB_FILE)
        with open(path, "wb") as f:
            f.write(self._vocab_bytes)
        return (path,)

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> tuple[str, ...]:
        """Save via transformers, then rewrite the configs into the official layout (remote class + auto_map)."""
        # LLaMA-Factory's register_autoclass() sets _auto_class (the config names an AutoTokenizer), which would copy
        # this module next to the checkpoint and point auto_map at it; the official layout names the remote class.
        self.__dict__["_auto_class"] = None
        try:
            files = super().save_pretrained(save_directory, *args, **kwargs)
        finally:
            del self.__dict__["_auto_class"]
        prefix = kwargs.get("filename_prefix") or (args[1] if len(args) > 1 else None)
        prefix = prefix + "-" if prefix else ""
        config_path = os.path.join(os.fspath(save_directory), prefix + "tokenizer_config.json")
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
        for key in _DROPPED_CONFIG_KEYS:
            config.pop(key, None)
        for key in ("additional_special_tokens", "extra_special_tokens"):
            if not config.get(key, True):
                config.pop(key)
        config["added_tokens_decoder"] = {str(i): _added_token_dict(t) for i, t in self.added_tokens_decoder.items()}
        bos, eos, pad = str(self.bos_token), str(self.eos_token), str(self.pad_token)
        config.update(bos_token=bos, eos_token=eos, pad_token=pad, pat_str=self.pat_str)
        config.update(tokenizer_class=OFFICIAL_TOKENIZER_CLASS, auto_map=OFFICIAL_AUTO_MAP)
        if self.unk_token is None:
            config.pop("unk_token", None)
        _dump_json(config_path, config)
        map_path = os.path.join(os.fspath(save_directory), prefix + "special_tokens_map.json")
        _dump_json(map_path, _special_tokens_map(bos, eos, pad))
        return tuple(dict.fromkeys((*files, map_path)))
