"""Miniature copies of public corpus layouts (notes/corpus_layouts.md), with synthetic tones as audio."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import soundfile as sf


def tone(path: Path, seconds: float, sr: int = 16000, fmt: str | None = None, subtype: str | None = None) -> Path:
    """A sine tone; OGG/Opus/MP3 are written in 1 s blocks (one big OGG write can crash libsndfile)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (0.1 * np.sin(np.arange(int(seconds * sr)) / 7.0)).astype(np.float32)
    with sf.SoundFile(path, "w", sr, 1, format=fmt, subtype=subtype) as fh:
        for start in range(0, len(data), sr):
            fh.write(data[start : start + sr])
    return path


def opus(path: Path, seconds: float) -> Path:
    return tone(path, seconds, 16000, "OGG", "OPUS")


def aishell1(root: Path) -> Path:
    base = root / "aishell" / "data_aishell"
    for rel in (
        "train/S0002/BAC009S0002W0122",
        "train/S0002/BAC009S0002W0123",
        "train/S0002/BAC009S0002W0124",
        "dev/S0724/BAC009S0724W0121",
        "test/S0764/BAC009S0764W0121",
    ):
        tone(base / "wav" / f"{rel}.wav", 1.0)
    (base / "transcript").mkdir(parents=True)
    (base / "transcript" / "aishell_transcript_v0.8.txt").write_text(
        "BAC009S0002W0122 而 对 楼市 成交 抑制 作用 最 大 的 限 购\n"
        "BAC009S0002W0123 也 成为 地方 政府 的 眼中 钉\n"
        "BAC009S0724W0121 甚至 出现 交易 几乎 停滞 的 情况\n"
        "BAC009S0764W0121 ｋｔ 线 的 走势\n"
        "BAC009S0002W9999 没有 对应 的 音频\n",
        encoding="utf-8",
    )
    return root / "aishell"


def aishell2(root: Path) -> Path:
    base = root / "AISHELL-2" / "iOS"
    for folder, utts, texts in (
        ("data", ["IC0001W0001", "IC0001W0002"], ["厨房用具", "电蒸锅"]),
        ("dev", ["IT0011W0001"], ["帮我放一首歌Let's"]),
    ):
        spk = utts[0][1:6]
        scp = "".join(f"{u}\twav/{spk}/{u}.wav\n" for u in utts)
        (base / folder).mkdir(parents=True)
        (base / folder / "wav.scp").write_text(scp, encoding="utf-8")
        (base / folder / "trans.txt").write_text("".join(f"{u}\t{t}\n" for u, t in zip(utts, texts)), encoding="utf-8")
        for utt in utts:
            tone(base / folder / "wav" / spk / f"{utt}.wav", 0.8)
    return root / "AISHELL-2"


def librispeech(root: Path) -> Path:
    base = root / "LibriSpeech"
    base.mkdir(parents=True)
    (base / "README.TXT").write_text("LibriSpeech\n")
    chapters = {
        "dev-clean/84/121123": {
            "84-121123-0000": "GO DO YOU HEAR",
            "84-121123-0001": "BUT IN LESS THAN FIVE MINUTES THE STAIRCASE GROANED BENEATH AN EXTRAORDINARY WEIGHT",
        },
        "train-clean-100/19/198": {
            "19-198-0001": "NORTHANGER ABBEY",
            "19-198-0002": "CATHERINE'S FATHER WAS A CLERGYMAN",
            "19-198-0003": "THIS LINE HAS NO AUDIO",
        },
    }
    for rel, lines in chapters.items():
        folder = base / rel
        folder.mkdir(parents=True)
        spk, chapter = rel.split("/")[1:]
        (folder / f"{spk}-{chapter}.trans.txt").write_text("".join(f"{u} {t}\n" for u, t in lines.items()))
        for utt in list(lines)[:2]:
            tone(folder / f"{utt}.flac", 0.8, fmt="FLAC")
    return base


CV_HEADER = (
    "client_id path sentence_id sentence sentence_domain up_votes down_votes age gender accents variant locale segment"
)


def commonvoice(root: Path, old_header: bool = False) -> Path:
    base = root / "cv-corpus-17.0-2024-03-15" / "zh-CN"
    for n in range(1, 5):
        tone(base / "clips" / f"common_voice_zh-CN_10000{n}.mp3", 0.7, 48000, "MP3", "MPEG_LAYER_III")
    header = "client_id path sentence up_votes down_votes age gender accent" if old_header else CV_HEADER

    def row(client: str, n: int, sentence: str) -> str:
        clip = f"common_voice_zh-CN_10000{n}.mp3"
        if old_header:
            return "\t".join([client, clip, sentence, "2", "0", "", "", ""])
        return "\t".join([client, clip, f"s{n}", sentence, "", "2", "0", "", "", "", "", "zh-CN", ""])

    head = header.replace(" ", "\t")
    train = [row("c1", 1, '"你好，"他说。'), row("c2", 2, '他说"不')]
    dev = [row("c3", 3, "今天天气很好。")]
    for name, rows in (("train", train), ("dev", dev), ("test", []), ("validated", train + dev)):
        (base / f"{name}.tsv").write_text("\n".join([head, *rows]) + "\n", encoding="utf-8")
    (base / "clip_durations.tsv").write_text("clip\tduration[ms]\ncommon_voice_zh-CN_100001.mp3\t700\n")
    return base.parent


def wenetspeech(root: Path, braces: bool = False) -> Path:
    base = root / "WenetSpeech"
    opus(base / "audio/train/youtube/B00000/Y0000000000_--5llN02F84.opus", 30.0)
    opus(base / "audio/train/podcast/B00000/X0000000000_100638174.opus", 4.0)
    opus(base / "audio/dev/third_party/B00000/DEV0000000001.opus", 30.0)

    def seg(sid: str, begin: float, end: float, subsets: list[str], text: str) -> dict:
        tags = [f"{{{t}}}" for t in subsets] if braces else subsets
        return {"sid": sid, "confidence": 1.0, "begin_time": begin, "end_time": end, "subsets": tags, "text": text}

    y, x = "Y0000000000_--5llN02F84", "X0000000000_100638174"
    audios = [
        (
            y,
            "audio/train/youtube/B00000",
            [
                seg(f"{y}_S00000", 1.0, 4.5, ["L", "M", "S"], "怎么样这些日子住得还习惯吧"),
                seg(f"{y}_S00001", 4.0, 6.0, ["L", "M"], "挺好的"),
                seg(f"{y}_S00002", 8.0, 7.0, ["L"], "反了"),
                seg(f"{y}_S00003", 10.0, 12.0, ["W"], "弱标签"),
                seg(f"{y}_S00004", 12.0, 12.0, ["L"], "空"),
            ],
        ),
        (
            x,
            "audio/train/podcast/B00000",
            [
                seg(f"{x}_S00000", 0.5, 4.3, ["L"], "末尾略超"),
                seg(f"{x}_S00001", 2.0, 5.0, ["L"], "超出文件"),
            ],
        ),
        ("DEV0000000001", "audio/dev/third_party/B00000", [seg("DEV0000000001_S00000", 0.0, 3.0, ["DEV"], "开发集")]),
        (
            "TEST_NET_Y0000000001",
            "audio/test_net/youtube/B00000",
            [seg("TEST_NET_Y0000000001_S00000", 0.0, 3.0, ["TEST_NET"], "缺文件")],
        ),
    ]
    manifest = {
        "dataset": "WenetSpeech",
        "version": "v1.0.0",
        "audios": [
            {"aid": aid, "duration": 30.0, "path": f"{folder}/{aid}.opus", "source": "x", "segments": segs}
            for aid, folder, segs in audios
        ],
        "after": {"members": "after audios are skipped"},
    }
    (base / "WenetSpeech.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=4), encoding="utf-8")
    return base


def gigaspeech(root: Path) -> Path:
    base = root / "GigaSpeech"
    opus(base / "audio/podcast/P0001/POD0000000025.opus", 20.0)
    opus(base / "audio/youtube/Y0001/YOU0000000001.opus", 10.0)

    def seg(sid: str, begin: float, end: float, text: str, subsets: list[str]) -> dict:
        return {
            "sid": sid,
            "speaker": "N/A",
            "begin_time": begin,
            "end_time": end,
            "text_tn": text,
            "subsets": subsets,
        }

    manifest = {
        "dataset": "GigaSpeech",
        "language": "EN",
        "audios": [
            {
                "aid": "POD0000000025",
                "path": "audio/podcast/P0001/POD0000000025.opus",
                "format": "opus",
                "segments": [
                    seg(
                        "POD0000000025_S0000103",
                        1.31,
                        4.13,
                        "FOUR O'CLOCK TOMORROW AFTERNOON <COMMA> SAID WILLIAMS <PERIOD>",
                        ["{XL}", "{L}"],
                    ),
                    seg(
                        "POD0000000025_S0000104",
                        5.0,
                        7.0,
                        "WHAT DID YOU SAY <QUESTIONMARK>",
                        ["{XL}", "{L}", "{M}", "{S}", "{XS}"],
                    ),
                ],
            },
            {
                "aid": "YOU0000000001",
                "path": "audio/youtube/Y0001/YOU0000000001.opus",
                "format": "opus",
                "segments": [
                    seg("YOU0000000001_S0000000", 0.0, 2.0, "<MUSIC>", ["{DEV}"]),
                    seg("YOU0000000001_S0000001", 2.0, 5.5, "HELLO THERE <EXCLAMATIONPOINT>", ["{DEV}"]),
                ],
            },
        ],
    }
    (base / "GigaSpeech.json").write_text(json.dumps(manifest), encoding="utf-8")
    return base


def kaldi_segments(root: Path) -> Path:
    recipe = root / "recipe"
    data = recipe / "data" / "train"
    data.mkdir(parents=True)
    tone(recipe / "audio" / "rec1.wav", 20.0)
    tone(recipe / "audio" / "rec2.flac", 5.0, fmt="FLAC")
    (data / "wav.scp").write_text(
        "rec1 audio/rec1.wav\nrec2 audio/rec2.flac\nrec3 sox /x/y.sph -t wav - |\nrec4 /abs/feats.ark:1234\n"
    )
    (data / "segments").write_text(
        "spkA-rec1-0001 rec1 0.50 3.20\nspkA-rec1-0002 rec1 3.00 6.00\nspkB-rec2-0001 rec2 1.0 -1\n"
        "spkB-rec2-0002 rec2 4.0 5.4\nspkB-rec2-0003 rec2 3.0 2.0\nspkC-rec3-0001 rec3 0 1\nspkD-rec9-0001 rec9 0 1\n"
    )
    (data / "text").write_text(
        "spkA-rec1-0001 HELLO WORLD\nspkA-rec1-0002 OVERLAPPING ONE\nspkB-rec2-0001 TO THE END\n"
        "spkB-rec2-0002 CLAMPED\nspkB-rec2-0003 REVERSED\nspkC-rec3-0001 PIPE\nspkD-rec9-0001 NO RECORDING\n"
        "spkE-orphan-0001 TEXT WITHOUT SEGMENT\n"
    )
    return data


def audio_bytes(seconds: float, fmt: str) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, (0.1 * np.sin(np.arange(int(16000 * seconds)) / 7)).astype("float32"), 16000, format=fmt)
    return buffer.getvalue()


def hf_datasets(root: Path) -> dict[str, Path]:
    """``hf_single`` (Dataset), ``hf_dd`` (DatasetDict, 2 train shards), ``hf_parquet`` and ``no_audio`` Parquet."""
    from datasets import Audio, Dataset, DatasetDict, Features, Value

    feats = Features({"audio": Audio(sampling_rate=16000), "sentence": Value("string"), "id": Value("string")})
    ds = Dataset.from_dict(
        {
            "audio": [
                {"bytes": audio_bytes(1.0, "WAV"), "path": "a.wav"},
                {"bytes": audio_bytes(0.5, "FLAC"), "path": None},
            ],
            "sentence": ["hello", "world"],
            "id": ["a", "b"],
        },
        features=feats,
    )
    ds.save_to_disk(str(root / "hf_single"))
    DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(
        str(root / "hf_dd"), num_shards={"train": 2, "test": 1}
    )
    ds.to_parquet(str(root / "hf_parquet" / "data" / "train-00000-of-00001.parquet"))
    Dataset.from_dict({"sentence": ["x"], "id": ["a"]}).to_parquet(str(root / "no_audio" / "train.parquet"))
    return {name: root / name for name in ("hf_single", "hf_dd", "hf_parquet", "no_audio")}
