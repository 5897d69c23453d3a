"""The README demo as a library: tiny checkpoint → synthetic speech → convert → precompute → ``llamafactory-cli
train`` → evaluate before and after. Every step is the public tool a user would run, in a subprocess where the
user would use a subprocess, so the demo proves the whole path (template → plugin → collator → model).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .demo_progress import TrainingProgress, wait_with_progress
from .errors import EXIT_GATE, EnvironmentProblem, KimiAudioError

DEMO_INSTRUCTION = "Please transcribe the spoken content into written text."
# Transcripts are at most four words; a random model never emits EOS, so cap the decode length.
EVAL_ARGS = ("--max-new-tokens", "24", "--batch-size", "20")
# The README's figure was measured with 2 CPU threads. Float sums depend on how work is split over threads, and 600
# steps amplify the difference, so every step runs with this many threads unless the caller says otherwise.
DEFAULT_THREADS = 2
ESPEAK_MISSING = (
    "espeak-ng not found: the demo uses the synthetic tone-word fallback, so its CER differs from the README's "
    "espeak-ng figure; install it with `apt-get install espeak-ng` for real synthetic speech"
)


class DemoStepFailed(KimiAudioError):
    """A demo step (a public tool run in a subprocess) failed; its exit code is passed through."""


def demo_recipe(out_dir: str, max_steps: int = 600, dataset: str = "demo_train", seed: int = 0) -> dict[str, Any]:
    """The ``llamafactory-cli train`` recipe of the demo (``examples/tiny_demo.yaml`` is this with out_dir=demo_out).

    A random tiny model has nothing for LoRA to adapt, so all LM weights and the adaptor are trained; the Whisper
    encoder and the GLM-4-Voice tokenizer stay frozen as in the real recipes.
    """
    return {
        "model_name_or_path": f"{out_dir}/tiny-kimi-audio",
        "trust_remote_code": True,
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "full",
        "freeze_multi_modal_projector": False,
        "disable_gradient_checkpointing": True,
        "dataset": dataset,
        "dataset_dir": f"{out_dir}/data",
        "template": "kimi_audio",
        "cutoff_len": 256,
        "preprocessing_num_workers": 1,
        "overwrite_cache": True,
        "output_dir": f"{out_dir}/tiny-kimi-audio-trained",
        "logging_steps": 20,
        "save_strategy": "no",
        "overwrite_output_dir": True,
        "report_to": "none",
        "per_device_train_batch_size": 16,
        "learning_rate": 1.0e-3,
        "max_steps": max_steps,
        "lr_scheduler_type": "cosine",
        "warmup_steps": math.ceil(0.1 * max_steps),  # 10%, as warmup_ratio 0.1 gave (deprecated on transformers 5)
        "max_grad_norm": 1.0,
        "use_cpu": True,
        "seed": seed,
    }


@dataclass
class DemoResult:
    out_dir: str
    cer_before: float
    cer_after: float
    wer_before: float
    wer_after: float
    seconds: dict[str, float] = field(default_factory=dict)
    audio: str = ""  # the speech backend that produced the corpus, e.g. "espeak-ng 1.51"

    def summary(self) -> str:
        return (
            f"demo: CER {100 * self.cer_before:.1f}% → {100 * self.cer_after:.1f}%, "
            f"WER {100 * self.wer_before:.1f}% → "
            f"{100 * self.wer_after:.1f}% on held-out word sequences ({self.out_dir}/eval_*/report.md)\n"
            f"  audio: {self.audio}"
        )


def resolve_backend(backend: str) -> tuple[str, str]:
    """``(backend for synth, description)``; ``auto`` without espeak-ng says so on the console, not only in a log."""
    espeak = shutil.which("espeak-ng")
    if backend == "espeak" and not espeak:
        raise EnvironmentProblem("espeak-ng not found on PATH; apt-get install espeak-ng, or use --backend tones")
    if backend == "auto":
        backend = "espeak" if espeak else "tones"
        if not espeak:
            say(f"warning: {ESPEAK_MISSING}")
    if backend == "tones":
        return backend, "tone-word fallback (no espeak-ng)"
    return backend, f"espeak-ng {_espeak_version(espeak or 'espeak-ng')}"


def _espeak_version(binary: str) -> str:
    """``1.51`` from ``eSpeak NG text-to-speech: 1.51  Data at: ...``; the voices differ between versions."""
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "(version unknown)"
    words = out.split(":", 1)[-1].split()
    return words[0] if words else "(version unknown)"


def thread_env(threads: int) -> dict[str, str]:
    """Environment pinning torch's CPU threads of every step (0 = leave torch's default)."""
    if threads <= 0:
        return {}
    return {name: str(threads) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}


def say(line: str) -> None:
    print(f"[demo] {line}", file=sys.stderr, flush=True)


def run_step(
    name: str,
    command: list[str],
    log_dir: str,
    env: dict[str, str] | None = None,
    progress: Callable[[], str | None] | None = None,
) -> float:
    """Run one tool as a subprocess with its output in ``<log_dir>/<name>.log``; raise naming the log on failure.

    ``progress`` is asked every few seconds while the step runs; what it returns goes to the console."""
    say(f"{name}: {' '.join(command)}")
    start = time.time()
    log_path = os.path.join(log_dir, f"{name}.log")
    with open(log_path, "w", encoding="utf-8") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        try:
            returncode = wait_with_progress(process, progress or (lambda: None), say)
        except BaseException:  # Ctrl-C or a failing progress reader: never leave the step running
            process.kill()
            process.wait()
            raise
    if returncode != 0:
        with open(log_path, encoding="utf-8", errors="replace") as f:
            tail = "".join(f.readlines()[-15:])
        code = returncode if 0 < returncode < 128 else EXIT_GATE
        message = f"demo step {name!r} failed (exit {returncode}); last lines of {log_path}:\n{tail}"
        raise DemoStepFailed(message, code)
    return time.time() - start


def tool(*args: str) -> list[str]:
    return [sys.executable, "-m", "llamafactory_kimi_audio.cli", *args]


def llamafactory_cli(*args: str) -> list[str]:
    return [
        sys.executable,
        "-c",
        "import sys; from llamafactory.cli import main; sys.argv[0] = 'llamafactory-cli'; main()",
        *args,
    ]


def write_yaml(path: str, recipe: dict[str, Any]) -> None:
    lines = [f"{key}: {json.dumps(value)}" for key, value in recipe.items()]
    with open(path, "w", encoding="utf-8") as f:
        f.write("# generated by `kimi-audio-lf demo`; same as examples/tiny_demo.yaml\n" + "\n".join(lines) + "\n")


@dataclass
class _Steps:
    """Runs the demo's steps with one log folder, one environment, and their timings."""

    logs: str
    env: dict[str, str]
    seconds: dict[str, float] = field(default_factory=dict)

    def __call__(
        self,
        name: str,
        command: list[str],
        extra_env: dict[str, str] | None = None,
        progress: Callable[[], str | None] | None = None,
    ) -> None:
        self.seconds[name] = run_step(name, command, self.logs, {**self.env, **(extra_env or {})}, progress)


def run_demo(
    out_dir: str = "demo_out",
    n_train: int = 600,
    n_test: int = 40,
    max_steps: int = 600,
    backend: str = "auto",
    lang: str = "en",
    seed: int = 0,
    silence: bool = False,
    threads: int = DEFAULT_THREADS,
) -> DemoResult:
    """Run the whole demo; ``silence=True`` replaces every training/test audio by silence (the control run)."""
    out = os.path.abspath(out_dir)
    backend, audio = resolve_backend(backend)
    step = _Steps(os.path.join(out, "logs"), thread_env(threads))
    os.makedirs(step.logs, exist_ok=True)
    model, speech, data = (os.path.join(out, name) for name in ("tiny-kimi-audio", "speech", "data"))
    step("make-tiny", tool("make-tiny", model, "--seed", str(seed), "--force"))
    synth = ["synth", speech, "--n-train", str(n_train), "--n-test", str(n_test), "--lang", lang, "--seed", str(seed)]
    step("synth", tool(*synth, "--backend", backend))
    if silence:
        silence_corpus(speech)
    for split in ("train", "test"):
        convert = ["convert", os.path.join(speech, f"{split}.csv"), "--out-dir", data, "--name", f"demo_{split}"]
        step(f"convert-{split}", tool(*convert, "--instruction", DEMO_INSTRUCTION))
    cache = os.path.join(out, "feature_cache")
    for split in ("train", "test"):
        dataset = os.path.join(data, f"demo_{split}.json")
        step(f"precompute-{split}", tool("precompute", "--model", model, "--data", dataset, "--cache", cache))
    test_set = os.path.join(data, "demo_test.json")
    before, after = os.path.join(out, "eval_before"), os.path.join(out, "eval_after")
    step("evaluate-before", tool("evaluate", "--model", model, "--data", test_set, "--out", before, *EVAL_ARGS))
    recipe_path = os.path.join(out, "tiny_demo.yaml")
    write_yaml(recipe_path, demo_recipe(out, max_steps, seed=seed))
    trained = demo_recipe(out)["output_dir"]
    progress = TrainingProgress(trained)  # a console line every 30 s: step / total, loss, ETA
    progress.clear_stale_log()
    step("train", llamafactory_cli("train", recipe_path), {"KIMI_AUDIO_FEATURE_CACHE": cache}, progress)
    evaluate = ["evaluate", "--model", trained, "--data", test_set, "--out", after, "--baseline", before, *EVAL_ARGS]
    step("evaluate-after", tool(*evaluate))
    return _result(out, before, after, step.seconds, audio)


def _rates(eval_dir: str) -> tuple[float, float]:
    with open(os.path.join(eval_dir, "summary.json"), encoding="utf-8") as f:
        summary = json.load(f)
    return float(summary["cer"]), float(summary["wer"])


def _result(out: str, before: str, after: str, seconds: dict[str, float], audio: str) -> DemoResult:
    cer_before, wer_before = _rates(before)
    cer_after, wer_after = _rates(after)
    return DemoResult(out, cer_before, cer_after, wer_before, wer_after, seconds, audio)


def silence_corpus(speech_dir: str) -> None:
    """Replace every wav of a synthetic corpus by silence of the same length (the learnability control)."""
    import numpy as np
    import soundfile as sf

    wav_dir = os.path.join(speech_dir, "wavs")
    for name in sorted(os.listdir(wav_dir)):
        path = os.path.join(wav_dir, name)
        info = sf.info(path)
        sf.write(path, np.zeros(info.frames, dtype=np.float32), info.samplerate, subtype="PCM_16")
