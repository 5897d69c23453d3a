"""KimiAudioTokenizer on tiny tiktoken vocabularies (CPU, no downloads; runs on transformers 4.55.x and 5.x)."""

from __future__ import annotations

import base64
import copy
import json
import pickle
import shutil
from pathlib import Path

import dill
import pytest
import tiktoken

from llamafactory_kimi_audio.errors import ModelError
from llamafactory_kimi_audio.models import special_tokens as st
from llamafactory_kimi_audio.models.tiny import train_tiny_tiktoken
from llamafactory_kimi_audio.models.tokenization_kimi_audio import (
    PAT_STR,
    KimiAudioTokenizer,
    write_tiktoken_model,
    write_tokenizer_files,
)

CORPUS = [
    "The quick brown fox jumps over the lazy dog. I'll say it's fine, they've gone.",
    "Please transcribe the spoken content into written text. 12345 67890",
    "请将音频内容转换为文字。今天天气很好，我们去公园散步吧！",
    "Speech recognition with Kimi-Audio: the model hears audio and writes text.",
]
NUM_MERGES = 160
TEXTS = [
    "hello world",
    "The quick brown fox jumps over the lazy dog, doesn't it? I'LL see.",
    "请将音频内容转换为文字。你好，世界！",
    "emoji 😀👍🏽 and café naïve — “quotes”",
    "  leading and trailing  ",
    "tabs\tand\nnewlines\r\n\r\nand   many     spaces\n\n\n",
    "digits 3.14159 and 1,000,000",
    "special strings as text: <|im_media_begin|> [BOS] <|reserved_token_406|>",
    "",
    ("Mixed 中英文 text with numbers 2024 and symbols #$%^&*() " * 300).strip(),
]


def _raw_ranks(path: Path) -> dict[bytes, int]:
    lines = path.read_bytes().splitlines()
    return {base64.b64decode(tok): int(rank) for tok, rank in (line.split() for line in lines if line)}


def _raw_encoding(path: Path, pat_str: str = PAT_STR) -> tiktoken.Encoding:
    return tiktoken.Encoding(name="raw", pat_str=pat_str, mergeable_ranks=_raw_ranks(path), special_tokens={})


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tiny_tokenizer")
    write_tokenizer_files(directory, train_tiny_tiktoken(CORPUS, num_merges=NUM_MERGES))
    return directory


@pytest.fixture(scope="module")
def tok(tiny_dir: Path) -> KimiAudioTokenizer:
    return KimiAudioTokenizer.from_pretrained(str(tiny_dir))


def test_tiny_writer_is_deterministic(tmp_path: Path) -> None:
    ranks = train_tiny_tiktoken(CORPUS, num_merges=NUM_MERGES)
    assert ranks == train_tiny_tiktoken(list(CORPUS), num_merges=NUM_MERGES)
    assert sorted(ranks.values()) == list(range(len(ranks))) and len(ranks) == 256 + NUM_MERGES
    assert all(ranks[bytes([b])] == b for b in range(256))
    assert len(train_tiny_tiktoken(["ab"], num_merges=50)) == 257  # runs out of pairs, ranks stay contiguous
    n_a = write_tokenizer_files(tmp_path / "a", ranks)
    n_b = write_tokenizer_files(tmp_path / "b", train_tiny_tiktoken(CORPUS, num_merges=NUM_MERGES))
    assert n_a == n_b == len(ranks)
    for name in ("tiktoken.model", "tokenizer_config.json", "special_tokens_map.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert _raw_ranks(tmp_path / "a" / "tiktoken.model") == ranks
    write_tiktoken_model(tmp_path / "c.model", dict(reversed(list(ranks.items()))))
    assert (tmp_path / "c.model").read_bytes() == (tmp_path / "a" / "tiktoken.model").read_bytes()


def test_special_token_ids(tok: KimiAudioTokenizer) -> None:
    base = tok.num_base_tokens
    assert base == 256 + NUM_MERGES
    assert tok.special_tokens == {name: base + i for i, name in enumerate(st.SPECIAL_TOKENS)}
    assert tok.convert_tokens_to_ids(st.SPECIAL_TOKENS) == list(range(base, base + 421))
    assert tok.convert_tokens_to_ids(st.MEDIA_BEGIN) == base + 18
    assert tok.convert_tokens_to_ids(st.MEDIA_END) == base + 20
    assert tok.convert_tokens_to_ids(st.TEXT_BLANK) == base + 23
    assert tok.convert_tokens_to_ids(st.TEXT_EOS) == base + 24
    assert tok.convert_tokens_to_ids(st.MSG_END) == base + 2
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (base, base + 1, base + 420)
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (base, base + 1, base + 420)
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("[BOS]", "[EOS]", "<|reserved_token_406|>")
    assert tok.unk_token is None
    assert tok.vocab_size == len(tok) == base + 421 == len(tok.get_vocab())
    assert tok.get_vocab()[st.AUDIO_PLACEHOLDER] == base + 19
    assert tok.convert_ids_to_tokens(base + 18) == st.MEDIA_BEGIN
    assert tok.model_input_names == ["input_ids", "attention_mask"]
    assert all(tok.added_tokens_decoder[base + i].special for i in range(421))


def test_real_size_ids_match_spec(tmp_path: Path) -> None:
    ranks = {bytes([b]): b for b in range(256)}
    ranks.update({f"t{i}".encode(): 256 + i for i in range(151643 - 256)})
    write_tokenizer_files(tmp_path, ranks)
    tok = KimiAudioTokenizer.from_pretrained(str(tmp_path))
    expected = {
        st.BOS: 151643, st.EOS: 151644, st.MSG_END: 151645, "[EOT]": 151652, st.MEDIA_BEGIN: 151661,
        st.MEDIA_END: 151663, st.TEXT_BLANK: 151666, st.TEXT_EOS: 151667, st.USER_MSG_START: 151670,
        st.ASSISTANT_MSG_START: 151671, st.SPEECH_CT: 151675, st.SPEECH_CTD: 151676, st.PAD: 152063,
    }  # fmt: skip
    assert {name: tok.convert_tokens_to_ids(name) for name in expected} == expected
    assert tok.vocab_size == len(tok) == 152064


@pytest.mark.parametrize("text", TEXTS)
def test_encoding_equals_raw_tiktoken(tok: KimiAudioTokenizer, tiny_dir: Path, text: str) -> None:
    expected = _raw_encoding(tiny_dir / "tiktoken.model").encode_ordinary(text)
    assert tok.encode_ordinary(text) == expected
    assert tok.encode(text, add_special_tokens=False, split_special_tokens=True) == expected
    if "<|" not in text and "[BOS]" not in text:
        assert tok.encode(text, add_special_tokens=False) == expected
        assert tok(text)["input_ids"] == expected  # no BOS/EOS are added by default


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(tok: KimiAudioTokenizer, text: str) -> None:
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    assert tok.convert_tokens_to_string(tok.tokenize(text)) == text
    assert tok.convert_tokens_to_ids(tok.tokenize(text)) == ids


def test_plain_text_never_yields_special_ids(tok: KimiAudioTokenizer) -> None:
    text = "".join(st.SPECIAL_TOKENS)
    assert max(tok.encode_ordinary(text)) < tok.num_base_tokens
    assert max(tok.encode(text, add_special_tokens=False, split_special_tokens=True)) < tok.num_base_tokens
    assert tok.decode(tok.encode_ordinary(text)) == text


def test_special_strings_are_atomic(tok: KimiAudioTokenizer) -> None:
    base = tok.num_base_tokens
    ids = tok("a <|im_media_begin|> b")["input_ids"]
    assert ids == tok.encode_ordinary("a ") + [base + 18] + tok.encode_ordinary(" b")
    ids = tok.encode("<|im_kimia_text_blank|><|im_kimia_text_eos|>[EOS]", add_special_tokens=False)
    assert ids == [base + 23, base + 24, base + 1]


def test_decode_skips_specials(tok: KimiAudioTokenizer) -> None:
    base, text = tok.num_base_tokens, "你好 world"
    ids = [tok.bos_id, base + 18, base + 19, base + 20, *tok.encode_ordinary(text), base + 24, tok.pad_id]
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.decode(ids) == "[BOS]<|im_media_begin|><|reserved_token_12|><|im_media_end|>你好 world" + (
        "<|im_kimia_text_eos|><|reserved_token_406|>"
    )
    assert tok.batch_decode([ids, ids[:3]], skip_special_tokens=True) == [text, ""]
    assert tok.convert_ids_to_tokens(ids[:2], skip_special_tokens=True) == []
    assert tok.decode(["中".encode()[0]]) == "\ufffd"  # a lone UTF-8 lead byte (rank == byte value) -> U+FFFD
    # audio-code ids (>= text vocabulary) carry no text: dropped, as the official detokenizer does
    assert tok.decode([*tok.encode_ordinary("ok"), len(tok), len(tok) + 7]) == "ok"
    with pytest.raises(IndexError):
        tok.decode([-1])


def test_padding(tok: KimiAudioTokenizer) -> None:
    a, bb = tok.encode_ordinary("a"), tok.encode_ordinary("bb")
    assert (len(a), len(bb)) == (1, 2)
    out = tok(["a", "bb"], padding=True)
    assert out["input_ids"] == [a + [tok.pad_id], bb]
    assert out["attention_mask"] == [[1, 0], [1, 1]]
    assert "token_type_ids" not in out
    pt = tok(["a", "bb"], padding="max_length", max_length=4, return_tensors="pt")
    assert pt["input_ids"].tolist() == [a + [tok.pad_id] * 3, bb + [tok.pad_id] * 2]
    padded = tok.pad({"input_ids": [a, bb]}, padding_side="left")
    assert padded["input_ids"] == [[tok.pad_id] + a, bb]


def test_save_load_round_trip(tok: KimiAudioTokenizer, tiny_dir: Path, tmp_path: Path) -> None:
    tok.save_pretrained(str(tmp_path / "s1"))
    assert (tmp_path / "s1" / "tiktoken.model").read_bytes() == (tiny_dir / "tiktoken.model").read_bytes()
    config = json.loads((tmp_path / "s1" / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "TikTokenTokenizer"
    assert config["auto_map"] == {"AutoTokenizer": ["tokenization_kimia.TikTokenTokenizer", None]}
    assert config["pat_str"] == PAT_STR
    assert (config["bos_token"], config["eos_token"], config["pad_token"]) == ("[BOS]", "[EOS]", st.PAD)
    decoder = config["added_tokens_decoder"]
    assert len(decoder) == 421 and decoder[str(tok.num_base_tokens + 18)]["content"] == st.MEDIA_BEGIN
    assert all(entry["special"] for entry in decoder.values())
    official = json.loads((tiny_dir / "tokenizer_config.json").read_text())
    assert {key: config[key] for key in official} == official
    special_map = json.loads((tmp_path / "s1" / "special_tokens_map.json").read_text())
    assert special_map == json.loads((tiny_dir / "special_tokens_map.json").read_text())

    reloaded = KimiAudioTokenizer.from_pretrained(str(tmp_path / "s1"))
    for text in TEXTS:
        assert reloaded.encode(text, add_special_tokens=False) == tok.encode(text, add_special_tokens=False)
    assert reloaded.special_tokens == tok.special_tokens and reloaded.pad_token_id == tok.pad_token_id
    reloaded.save_pretrained(str(tmp_path / "s2"))
    for name in ("tiktoken.model", "tokenizer_config.json", "special_tokens_map.json"):
        assert (tmp_path / "s1" / name).read_bytes() == (tmp_path / "s2" / name).read_bytes()


def test_load_without_config_and_with_only_the_vocab_file(tiny_dir: Path, tmp_path: Path) -> None:
    shutil.copy(tiny_dir / "tiktoken.model", tmp_path / "tiktoken.model")
    bare = KimiAudioTokenizer.from_pretrained(str(tmp_path))
    direct = KimiAudioTokenizer(vocab_file=str(tiny_dir / "tiktoken.model"))
    for tok in (bare, direct):
        assert tok.pad_token_id == tok.num_base_tokens + 420 and len(tok) == tok.num_base_tokens + 421
        assert tok.encode("x <|im_media_end|>", add_special_tokens=False)[-1] == tok.num_base_tokens + 20


def test_pickle_dill_deepcopy(tok: KimiAudioTokenizer) -> None:
    text = TEXTS[2] + " <|im_media_begin|> " + TEXTS[1]
    expected = tok(text)["input_ids"]
    assert "_enc" not in tok.__getstate__()
    for clone in (pickle.loads(pickle.dumps(tok)), dill.loads(dill.dumps(tok)), copy.deepcopy(tok)):
        assert clone(text)["input_ids"] == expected
        assert clone.decode(expected, skip_special_tokens=True) == tok.decode(expected, skip_special_tokens=True)
        assert clone.special_tokens == tok.special_tokens and clone.vocab_size == tok.vocab_size


def test_pat_str_override(tiny_dir: Path, tmp_path: Path) -> None:
    shutil.copytree(tiny_dir, tmp_path, dirs_exist_ok=True)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config["pat_str"] = r"\S+|\s+"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tok = KimiAudioTokenizer.from_pretrained(str(tmp_path))
    raw = _raw_encoding(tmp_path / "tiktoken.model", r"\S+|\s+")
    for text in TEXTS:
        assert tok.encode_ordinary(text) == raw.encode_ordinary(text)
    default = KimiAudioTokenizer.from_pretrained(str(tiny_dir))
    assert any(tok.encode_ordinary(text) != default.encode_ordinary(text) for text in TEXTS)
    tok.save_pretrained(str(tmp_path / "saved"))
    assert json.loads((tmp_path / "saved" / "tokenizer_config.json").read_text())["pat_str"] == r"\S+|\s+"


def test_config_variants(tiny_dir: Path, tmp_path: Path) -> None:
    shutil.copytree(tiny_dir, tmp_path, dirs_exist_ok=True)
    path = tmp_path / "tokenizer_config.json"
    config = json.loads(path.read_text())
    path.write_text(json.dumps({**config, "unk_token": "<unk>"}))
    tok = KimiAudioTokenizer.from_pretrained(str(tmp_path))
    assert tok.unk_token is None and len(tok) == tok.num_base_tokens + 421
    decoder, key = dict(config["added_tokens_decoder"]), str(tok.num_base_tokens + 18)
    decoder[key] = {**decoder[key], "content": "<|wrong|>"}
    path.write_text(json.dumps({**config, "added_tokens_decoder": decoder}))
    with pytest.raises(ModelError, match="expected"):
        KimiAudioTokenizer.from_pretrained(str(tmp_path))


def test_added_tokens_extend_the_vocabulary(tiny_dir: Path, tmp_path: Path) -> None:
    tok = KimiAudioTokenizer.from_pretrained(str(tiny_dir))
    assert tok.add_special_tokens({"additional_special_tokens": ["<|new|>"]}) == 1
    new_id = tok.convert_tokens_to_ids("<|new|>")
    assert new_id == tok.num_base_tokens + 421 and len(tok) == new_id + 1
    assert tok.encode("x<|new|>y", add_special_tokens=False) == [
        *tok.encode_ordinary("x"),
        new_id,
        *tok.encode_ordinary("y"),
    ]
    assert tok.decode([new_id], skip_special_tokens=True) == ""
    tok.save_pretrained(str(tmp_path))
    reloaded = KimiAudioTokenizer.from_pretrained(str(tmp_path))
    assert reloaded.convert_tokens_to_ids("<|new|>") == new_id
    assert reloaded.encode("x<|new|>", add_special_tokens=False)[-1] == new_id


def test_save_ignores_llamafactory_autoclass_registration(
    tok: KimiAudioTokenizer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # LLaMA-Factory's register_autoclass() calls KimiAudioTokenizer.register_for_auto_class(), which sets this:
    monkeypatch.setattr(KimiAudioTokenizer, "_auto_class", "AutoTokenizer")
    tok.save_pretrained(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "special_tokens_map.json",
        "tiktoken.model",
        "tokenizer_config.json",
    ]
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["auto_map"] == {"AutoTokenizer": ["tokenization_kimia.TikTokenTokenizer", None]}
    assert "_auto_class" not in tok.__dict__
