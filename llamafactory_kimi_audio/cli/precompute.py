"""``kimi-audio-lf precompute``: thin wrapper over ``llamafactory_kimi_audio.data.features.precompute``."""

from __future__ import annotations

import argparse
import sys

from ..errors import EXIT_BAD_INPUT, InputError

HELP = "encode every audio file of a dataset once (semantic codes + Whisper rows) into the feature cache"
EXAMPLES = """examples:
  kimi-audio-lf precompute --model Kimi-Audio-7B-Instruct --data data/my_asr.json --device cuda
  kimi-audio-lf precompute --model Kimi-Audio-7B-Instruct --dataset-dir data --dataset my_asr,my_asr_dev
over 8 GPUs of one node (each rank writes its own shard of the clips; re-run to resume):
  torchrun --nproc-per-node 8 -m llamafactory_kimi_audio.cli precompute --model M --data d.json --device cuda
or by hand, one process per part: kimi-audio-lf precompute ... --shard 3/8
then train with the cache:
  export KIMI_AUDIO_FEATURE_CACHE=~/.cache/llamafactory_kimi_audio/features
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EXAMPLES
    parser.add_argument("--model", required=True, metavar="DIR", help="Kimi-Audio checkpoint directory")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", nargs="+", metavar="DATASET.json", help="LLaMA-Factory dataset file(s)")
    source.add_argument("--dataset", metavar="NAME[,NAME]", help="dataset name(s) from DIR/dataset_info.json")
    parser.add_argument(
        "--dataset-dir",
        default="data",
        metavar="DIR",
        help="folder of dataset_info.json for --dataset (default: data, as LLaMA-Factory)",
    )
    parser.add_argument(
        "--media-dir", metavar="DIR", help="folder relative audio paths resolve against (default: the dataset folder)"
    )
    parser.add_argument(
        "--cache",
        metavar="DIR",
        help="cache root (default: $KIMI_AUDIO_FEATURE_CACHE or ~/.cache/llamafactory_kimi_audio/features)",
    )
    parser.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda when available)")
    parser.add_argument("--batch-size", type=int, default=32, help="audio files encoded together (default: 32)")
    parser.add_argument("--strict", action="store_true", help="stop with exit code 2 at the first bad audio file")
    parser.add_argument(
        "--silent-clips",
        choices=("off", "warn", "error"),
        help="a silent clip (peak below -80 dBFS) with a non-empty transcript: warn (cache it, name it in the "
        "summary), error (do not cache it; exit 2 naming it after the other clips) or off; "
        "default: $KIMI_AUDIO_SILENT_CLIPS (warn)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--shard", metavar="K/N", help="encode only part K of N (0-based); default: RANK/WORLD_SIZE under torchrun"
    )
    parser.add_argument(
        "--codes-only",
        action="store_true",
        help="store only the GLM-4-Voice codes (a few bytes per second; Whisper then runs during training); "
        "default: $KIMI_AUDIO_CACHE_MODE (full)",
    )
    parser.add_argument(
        "--rows-dtype",
        choices=("bfloat16", "float32"),
        help="run Whisper in, and store its rows in, the dtype training runs it in (default: bfloat16 on CUDA, "
        "float32 on CPU)",
    )


def run(args: argparse.Namespace) -> int:
    from ..data.features.dataset_audio import AudioList, collect_audio_paths
    from ..data.features.precompute import PrecomputeOptions, precompute, resolve_device
    from ..data.features.precompute_plan import parse_shard
    from ..fileio.audio_silence import SilentClipError, error_line

    if args.batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {args.batch_size}")
    audios: AudioList = collect_audio_paths(_data_files(args))
    for line in audios.problems:
        print(f"precompute: {line}", file=sys.stderr)
    if audios.problems and args.strict:
        raise InputError(f"{len(audios.problems)} unusable dataset row(s); the first: {audios.problems[0]}")
    if not audios.paths:
        raise InputError("no audio files in the dataset(s); check the audio column (default: audios)")
    options = PrecomputeOptions(
        cache_dir=args.cache,
        device=resolve_device(args.device) if args.device else None,  # default: decided when the encoders load
        batch_size=args.batch_size,
        strict=args.strict,
        progress=False if args.no_progress else None,
        shard=parse_shard(args.shard) if args.shard else None,
        mode="codes" if args.codes_only else None,
        rows_dtype=args.rows_dtype,
        silent_clips=args.silent_clips,
    )
    # EncoderError is a ModelError: exit code 3
    result = precompute(args.model, audios.paths, options, transcribed=audios.transcribed)
    result.failed += len(audios.problems)
    _print_in_rank_order(result.summary())
    if result.silent and result.silent_mode == "error":
        raise SilentClipError(error_line(result.silent, "--silent-clips ", "; the other clips are cached"))
    return EXIT_BAD_INPUT if result.failed or result.missing else 0


def _print_in_rank_order(summary: str) -> None:
    """Print the summary once every rank has finished; under torchrun the ranks take turns (gloo barriers, no GPU
    memory), each writing its lines whole, so the ranks' lines never run together on a shared terminal."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1") or 1) < 2 or "MASTER_ADDR" not in os.environ:
        _write_whole(summary)
        return
    import datetime

    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=datetime.timedelta(hours=24))
    dist.barrier()  # every rank finished its shard
    for rank in range(dist.get_world_size()):
        if rank == dist.get_rank():
            _write_whole(summary)
        dist.barrier()
    dist.destroy_process_group()


def _write_whole(text: str) -> None:
    """``text`` and its final newline in one write (print() writes the newline separately: another process
    writing to the same terminal in between glues its line to ours)."""
    sys.stderr.flush()
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _data_files(args: argparse.Namespace) -> list:
    from ..data.features.dataset_audio import data_file, dataset_files

    if args.data:
        return [data_file(path, args.media_dir) for path in args.data]
    names = [name.strip() for name in args.dataset.split(",") if name.strip()]
    return dataset_files(args.dataset_dir, names, args.media_dir)
