"""Every environment variable of the package, in one table: name, default, one parsing rule, what it does.

All names share the prefix ``KIMI_AUDIO_``. Values are read once per process and cached (:func:`reload` re-reads
them, for tests). Switches accept ``1/true/yes/on`` and ``0/false/no/off`` (any case); anything else is one warning
and the default. Stdlib only: the start-up hook imports this module in every interpreter.
"""

from __future__ import annotations

import os
import sys

PREFIX = "KIMI_AUDIO_"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


class Setting:
    """One environment variable: ``kind`` is ``"switch"`` (bool), ``"choice"`` (one of ``choices``) or ``"text"``."""

    __slots__ = ("name", "default", "kind", "doc", "choices")

    def __init__(
        self,
        name: str,
        default: object,
        kind: str,
        doc: str,
        choices: tuple[str, ...] = (),
    ) -> None:
        self.name, self.default, self.kind, self.doc = name, default, kind, doc
        self.choices = choices

    def parse(self, raw: str) -> object:
        value = raw.strip()
        if self.kind == "text":
            return value or self.default
        if self.kind == "switch":
            if value.lower() in _TRUE:
                return True
            if value.lower() in _FALSE or not value:
                return False if value else self.default
            _warn(f"{self.name}={raw!r} is not a switch (use 1 or 0); using the default {self.default}")
            return self.default
        if value.lower() in self.choices:
            return value.lower()
        if value.lower() in _TRUE + _FALSE and self.choices:  # 1/0 spell the first two choices ("off", "on")
            return self.choices[1] if value.lower() in _TRUE else self.choices[0]
        if value:
            _warn(f"{self.name}={raw!r} is not one of {', '.join(self.choices)}; using {self.default!r}")
        return self.default


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "KIMI_AUDIO_DISABLE",
        False,
        "switch",
        "Turn the LLaMA-Factory integration off in every process: no registration, no patch (a kimi_audio recipe "
        "that then fails says that this variable is set).",
    ),
    Setting(
        "KIMI_AUDIO_STRICT",
        False,
        "switch",
        "Raise instead of warning when a hook or patch of the integration fails.",
    ),
    Setting(
        "KIMI_AUDIO_DEBUG",
        False,
        "switch",
        "Keep the full traceback of bad-input errors (as `kimi-audio-lf --debug`).",
    ),
    Setting("KIMI_AUDIO_FUSED_LORA", True, "switch", "Fused LoRA forward on Kimi-Audio layers (0: PEFT's own)."),
    Setting(
        "KIMI_AUDIO_GROUPED_LORA",
        True,
        "switch",
        "With the fused LoRA forward: q/k/v and gate/up (same input) run one LoRA-A matmul together when they have no "
        "LoRA dropout (0: one per projection).",
    ),
    Setting(
        "KIMI_AUDIO_FP8_EMULATE",
        False,
        "switch",
        "Tests only: fp8: true runs without FP8 hardware (CPU, older GPUs), the FP8 math emulated in fp32.",
    ),
    Setting(
        "KIMI_AUDIO_FP8_MATMULS",
        "both",
        "choice",
        "fp8: true: which matmuls of the frozen decoder layers run in FP8: both (fastest), forward (input gradients "
        "in bf16), backward (forward in bf16: closest to a bf16 run, least speed-up; the bf16 weights stay on the GPU "
        "with one FP8 copy).",
        choices=("both", "forward", "backward"),
    ),
    Setting(
        "KIMI_AUDIO_FP8_FAST_ACCUM",
        "all",
        "choice",
        "fp8: true: which FP8 GEMMs accumulate in the tensor cores' fast mode: all (forward and input-gradient "
        "GEMMs: 1-4% faster than forward on an H100, same step-1 gradients and losses), forward (the forward GEMMs "
        "only, as torchao's recipes), off (full-precision accumulation; 0 = off).",
        choices=("off", "forward", "all"),
    ),
    Setting(
        "KIMI_AUDIO_FP8_CENTER",
        False,
        "switch",
        "fp8: true: the frozen decoder layers round only each input minus the batch's mean token to FP8 and add the "
        "mean token's product in bf16 (1: closer to bf16 where tokens share a large common part, one bf16 GEMV more).",
    ),
    Setting(
        "KIMI_AUDIO_VARLEN_ATTENTION",
        True,
        "switch",
        "Packed rows use variable-length FlashAttention on CUDA (0: SDPA with the dense block mask).",
    ),
    Setting(
        "KIMI_AUDIO_COMPILE_POINTWISE",
        "auto",
        "choice",
        "torch.compile in training: layers (whole decoder layers), on (RMSNorm, RoPE, SwiGLU only), off, or auto "
        "(layers for unquantised training on a CUDA GPU with Triton outside ZeRO-3, else off).",
        choices=("off", "on", "layers", "auto"),
    ),
    Setting(
        "KIMI_AUDIO_PARK_IDLE",
        True,
        "switch",
        "At train begin, keep the frozen MIMO branch + audio head (and Whisper, with a feature cache; with fp8: true "
        "the bf16 weights of the FP8 decoder layers) in host memory until a batch uses them (0: everything stays on "
        "the GPU).",
    ),
    Setting(
        "KIMI_AUDIO_FAST_GREEDY",
        True,
        "switch",
        "Greedy generate() on CUDA (do_predict with do_sample: false) uses a static KV cache and a CUDA-graphed "
        "decode step, same tokens (0: transformers' own loop).",
    ),
    Setting("KIMI_AUDIO_DEFAULT_INSTRUCTION", "", "text", "Instruction used when a sample has no user text."),
    Setting("KIMI_AUDIO_SEMANTIC_TOKENIZER", "", "text", "Directory of the GLM-4-Voice tokenizer, if not beside."),
    Setting(
        "KIMI_AUDIO_FEATURE_CACHE",
        "",
        "text",
        "Feature cache directory (precompute writes; training reads it and stores what it encodes).",
    ),
    Setting(
        "KIMI_AUDIO_CACHE_STRICT",
        False,
        "switch",
        "With a feature cache: stop at the first clip that is not cached, naming it, instead of encoding it.",
    ),
    Setting(
        "KIMI_AUDIO_CACHE_MODE",
        "full",
        "choice",
        "What training and precompute store: full (codes + Whisper rows) or codes (GLM-4-Voice codes only; "
        "Whisper runs online, ~1000x less disk).",
        choices=("full", "codes"),
    ),
    Setting(
        "KIMI_AUDIO_SILENT_CLIPS",
        "warn",
        "choice",
        "A digitally silent clip (peak below -80 dBFS) with a non-empty transcript, met where samples are read "
        "(precompute, training, evaluate): warn (one summary line naming the clips), error (exit 2 naming the "
        "first), off (no check; 0 = off, 1 = warn). Silence with an empty transcript is never flagged.",
        choices=("off", "warn", "error"),
    ),
    Setting(
        "KIMI_AUDIO_SERVE_MAX_SECONDS",
        "600",
        "text",
        "`llamafactory-cli api`: longest audio clip accepted per request, in seconds (longer: HTTP 400).",
    ),
    Setting(
        "KIMI_AUDIO_SERVE_MAX_MB",
        "25",
        "text",
        "`llamafactory-cli api`: largest encoded audio accepted per clip, in MiB (larger: HTTP 400; OpenAI's limit).",
    ),
)
BY_NAME: dict[str, Setting] = {setting.name: setting for setting in SETTINGS}
_values: dict[str, object] = {}
_warned: set[str] = set()


def _warn(message: str) -> None:
    if message in _warned:
        return
    _warned.add(message)
    try:
        sys.stderr.write(f"llamafactory-kimi-audio: {message}\n")
    except Exception:  # no usable stderr
        pass


def raw_value(name: str) -> tuple[str | None, str]:
    """The raw string of a setting (None when unset) and the variable it is read from."""
    return os.environ.get(BY_NAME[name].name), BY_NAME[name].name


def get(name: str) -> object:
    """The parsed value of setting ``name`` (read from the environment once per process)."""
    if name not in _values:
        raw, _ = raw_value(name)
        _values[name] = BY_NAME[name].default if raw is None else BY_NAME[name].parse(raw)
    return _values[name]


def enabled(name: str) -> bool:
    return bool(get(name))


def reload() -> None:
    """Forget the cached values (tests that change the environment)."""
    _values.clear()


def env_for(name: str, value: object) -> dict[str, str]:
    """The environment entry that sets ``name`` to ``value`` in a child process."""
    if isinstance(value, bool):
        return {name: "1" if value else "0"}
    return {name: str(value)}


def describe() -> list[tuple[str, str, str]]:
    """(name, current value, doc) for every setting: for `doctor` and the README."""
    return [(s.name, repr(get(s.name)), s.doc) for s in SETTINGS]
