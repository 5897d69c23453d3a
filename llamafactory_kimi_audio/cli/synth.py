"""``kimi-audio-lf synth OUT_DIR``: write the synthetic demo corpus (wavs + train/test CSVs)."""

from __future__ import annotations

import argparse

HELP = "synthesize a tiny spoken-word ASR corpus (espeak-ng, or a tone-word fallback) as id,audio,text CSVs"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out_dir", metavar="OUT_DIR", help="folder for wavs/, train.csv, test.csv, transcripts.csv")
    parser.add_argument("--n-train", type=int, default=240, help="training utterances (default 240)")
    parser.add_argument("--n-test", type=int, default=40, help="test utterances, unseen word sequences (default 40)")
    parser.add_argument("--lang", choices=("en", "zh", "mixed"), default="en", help="vocabulary language (default en)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same corpus (default 0)")
    parser.add_argument(
        "--backend",
        choices=("auto", "espeak", "tones"),
        default="auto",
        help="auto: espeak-ng if installed, else tones with a warning (default auto)",
    )


def run(args: argparse.Namespace) -> int:
    from ..data.synth.corpus import synthesize_corpus

    corpus = synthesize_corpus(
        args.out_dir, n_train=args.n_train, n_test=args.n_test, lang=args.lang, seed=args.seed, backend=args.backend
    )
    print(corpus.summary())
    return 0
