"""CPU benchmark of corpus conversion at scale (issue 17): ``kimi-audio-lf convert`` and LLaMA-Factory's own
preprocessing of the converted data (``llamafactory-cli train`` with ``tokenized_path``, stopped once the tokenized
dataset is saved), on synthetic corpora of growing size.

Corpora (built once under ``--work``):
- ``files-N``: LibriSpeech layout, N utterances, every ``.flac`` a hard link to a 0.2 s file (one per 50,000; the
  header probe of a warm page cache is what is measured);
- ``segments-N``: WenetSpeech layout, one long Opus recording cut into N back-to-back 0.15 s segments.

Measured per run: rows/s (rows read / wall time of the command), peak RSS of the whole process tree (sum over the
processes, polled every 0.1 s), files and bytes written (audio excluded). Results go to ``--out`` as JSON lines and a
Markdown table on stdout. Usage::

    python benchmarks/bench_corpus.py --sizes 1000,10000,100000 --lf-max 100000 --segments 100000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import soundfile as sf

BIN = Path(sys.executable).parent
CHAPTER = 100  # utterances per LibriSpeech chapter directory
SEGMENT_SECONDS = 0.15
SAVED_MARK = "Tokenized dataset is saved at"
START_MARK = "Converting format of dataset"  # LLaMA-Factory's first preprocessing step (after its start-up)


def files_corpus(work: Path, n: int) -> Path:
    root = work / f"files-{n}" / "LibriSpeech"
    if (root / "ready").exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    for first in range(0, n, CHAPTER):
        spk, chapter = 1000 + first // (CHAPTER * 50), first // CHAPTER
        folder = root / "train-clean-100" / str(spk) / str(chapter)
        folder.mkdir(parents=True, exist_ok=True)
        lines = []
        for i in range(first, min(n, first + CHAPTER)):
            utt = f"{spk}-{chapter}-{i:07d}"
            os.link(_link_source(root.parent, i), folder / f"{utt}.flac")
            lines.append(f"{utt} SEGMENT NUMBER {i} OF THE BENCHMARK")
        (folder / f"{spk}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")
    (root / "ready").touch()
    return root


def _link_source(work: Path, index: int, links: int = 50000) -> Path:
    """The file the ``index``-th utterance links to: a new copy every ``links`` (ext4 allows 65,000 links)."""
    source = work / f"one-{index // links}.flac"
    if not source.exists():
        sf.write(source, (0.1 * np.sin(np.arange(3200) / 7)).astype("float32"), 16000, format="FLAC")
    return source


def segments_corpus(work: Path, n: int) -> Path:
    root = work / f"segments-{n}" / "WenetSpeech"
    if (root / "ready").exists():
        return root
    audio = root / "audio" / "train" / "youtube" / "B00000" / "LONG.opus"
    audio.parent.mkdir(parents=True, exist_ok=True)
    seconds = int(np.ceil(n * SEGMENT_SECONDS)) + 1
    block = (0.05 * np.sin(np.arange(16000) / 7)).astype("float32")
    with sf.SoundFile(audio, "w", 16000, 1, format="OGG", subtype="OPUS") as fh:
        for _ in range(seconds):  # 1 s blocks: one huge OGG write can crash libsndfile
            fh.write(block)
    segments = [
        {
            "sid": f"LONG_S{i:07d}",
            "begin_time": round(i * SEGMENT_SECONDS, 3),
            "end_time": round((i + 1) * SEGMENT_SECONDS, 3),
            "subsets": ["L"],
            "text": f"第{i}段",
        }
        for i in range(n)
    ]
    manifest = {
        "dataset": "WenetSpeech",
        "audios": [{"aid": "LONG", "path": str(audio.relative_to(root)), "duration": seconds, "segments": segments}],
    }
    (root / "WenetSpeech.json").write_text(json.dumps(manifest, ensure_ascii=False))
    (root / "ready").touch()
    return root


def measure(command: list[str], cwd: Path, stop_at: str | None = None, start_at: str | None = None) -> dict:
    """Run ``command``; wall seconds, peak RSS (MiB, process tree), exit code; killed once ``stop_at`` is logged;
    ``work_seconds``: from the first log of ``start_at`` (start-up excluded) to the end."""
    start = time.perf_counter()
    log = open(cwd / "bench.log", "w+")
    proc = subprocess.Popen(command, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    parent, peak, stopped, began = psutil.Process(proc.pid), 0, False, None
    while proc.poll() is None:
        if start_at and began is None and _logged(cwd / "bench.log", start_at):
            began = time.perf_counter()
        try:
            tree = [parent, *parent.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:
            pass
        if stop_at and _logged(cwd / "bench.log", stop_at):
            stopped = True
            os.killpg(proc.pid, 9)
            break
        time.sleep(0.1)
    proc.wait()
    wall = time.perf_counter() - start
    log.close()
    work = time.perf_counter() - began if began else wall
    return {
        "seconds": round(wall, 2),
        "work_seconds": round(work, 2),
        "peak_rss_mib": round(peak / 2**20, 1),
        "rc": 0 if stopped else proc.returncode,
    }


def _logged(path: Path, mark: str) -> bool:
    with open(path, errors="replace") as fh:
        return mark in fh.read()


def written(out: Path) -> tuple[int, int]:
    files = size = 0
    for path in out.rglob("*"):
        if path.is_file() and "audio" not in path.relative_to(out).parts:
            files, size = files + 1, size + path.stat().st_size
    return files, size


def bench_convert(corpus: Path, out: Path, rows: int, workers: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cmd = [
        str(BIN / "kimi-audio-lf"),
        "convert",
        str(corpus),
        "--out-dir",
        str(out),
        "--name",
        "b",
        "--lang",
        "en",
        "--no-progress",
        "--workers",
        str(workers),
    ]
    result = measure(cmd, out)
    files, size = written(out)
    return {**result, "rows": rows, "rows_per_s": round(rows / result["seconds"], 1), "files": files, "bytes": size}


def bench_preprocess(data: Path, dataset: str, rows: int, model: str, workers: int) -> dict:
    work = data.parent / f"{data.name}-lf"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    config = {
        "model_name_or_path": model,
        "trust_remote_code": True,
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "lora",
        "template": "kimi_audio",
        "dataset": dataset,
        "dataset_dir": str(data),
        "tokenized_path": str(work / "tokenized"),
        "cutoff_len": 1024,
        "preprocessing_num_workers": workers,
        "output_dir": str(work / "out"),
        "report_to": "none",
        "use_cpu": True,
        "max_steps": 1,
    }
    (work / "pre.yaml").write_text(json.dumps(config))
    command = [str(BIN / "llamafactory-cli"), "train", str(work / "pre.yaml")]
    result = measure(command, work, stop_at=SAVED_MARK, start_at=START_MARK)
    files, size = written(work / "tokenized") if (work / "tokenized").exists() else (0, 0)
    rate = round(rows / result["work_seconds"], 1)  # preprocessing only: LLaMA-Factory's start-up excluded
    return {**result, "rows": rows, "rows_per_s": rate, "files": files, "bytes": size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/tmp/bench_corpus")
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--segments", type=int, default=100000, help="segments of the long recording (0: skip)")
    parser.add_argument("--lf-max", type=int, default=100000, help="largest size LLaMA-Factory preprocesses")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", default="benchmarks/bench_corpus.jsonl")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    model = str(work / "tiny")
    if not (work / "tiny" / "config.json").exists():
        subprocess.run([str(BIN / "kimi-audio-lf"), "make-tiny", model], check=True, stdout=subprocess.DEVNULL)
    cases = [("files", n, files_corpus, "b_train-clean-100") for n in map(int, args.sizes.split(","))]
    if args.segments:
        cases.append(("segments", args.segments, segments_corpus, "b_L"))
    for kind, n, build, dataset in cases:
        t0 = time.perf_counter()
        corpus = build(work, n)
        print(f"# {kind}-{n}: corpus ready in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        out = work / f"{kind}-{n}-out"
        rows = [{"stage": "convert", "corpus": kind, **bench_convert(corpus, out, n, args.workers)}]
        if n <= args.lf_max:
            rows.append(
                {"stage": "lf-preprocess", "corpus": kind, **bench_preprocess(out, dataset, n, model, args.workers)}
            )
        with open(args.out, "a") as fh:
            for row in rows:
                fh.write(json.dumps({**row, "workers": args.workers, "cpus": os.cpu_count()}) + "\n")
                print(
                    f"| {row['stage']} | {kind} | {n:,} | {row['rows_per_s']:,} | {row['peak_rss_mib']} | "
                    f"{row['files']} | {row['bytes'] / 1e6:.1f} MB | {row['seconds']} s ({row['work_seconds']} s) | "
                    f"rc {row['rc']} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
