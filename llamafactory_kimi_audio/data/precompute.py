"""Fill the feature cache (``feature_cache.py``) ahead of training: semantic codes + Whisper rows per audio file.

Only the audio encoders of a checkpoint are loaded (Whisper-large-v3 from ``<model>/whisper-large-v3/`` in bf16 on
CUDA / fp32 on CPU, GLM-4-Voice in fp32), never the 7B language model. Inputs go through
``KimiAudioProcessor.audio_inputs`` and the model's own ``whisper_rows``, so a cached entry holds exactly what the
model computes online. Runs are resumable (existing entries are skipped) and every entry is written atomically.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ..audio_io import AudioError, load_audio
from .feature_cache import CACHE_ENV, encoder_identity, entry_path, write_entry

DEFAULT_CACHE = os.path.join("~", ".cache", "llamafactory_kimi_audio", "features")


def default_cache_dir() -> str:
    """``$KIMI_AUDIO_FEATURE_CACHE`` or ``~/.cache/llamafactory_kimi_audio/features`` (absolute)."""
    return os.path.abspath(os.path.expanduser(os.environ.get(CACHE_ENV) or DEFAULT_CACHE))


# ----------------------------------------------------------------------------------------------- encoders
class EncoderError(RuntimeError):
    """The checkpoint's audio encoders cannot be identified or loaded (a model problem, not a data problem)."""


@dataclass
class AudioEncoders:
    """The audio front-end of a checkpoint: processor, Whisper encoder and GLM-4-Voice tokenizer."""

    processor: Any
    whisper: Any
    semantic: Any
    device: Any

    def encode(self, waveforms: list[Any]) -> list[tuple[Any, Any]]:
        """``(codes, rows)`` per 16 kHz waveform, as ``KimiAudioForCausalLM.frame_inputs`` computes them."""
        return self.encode_features(self.features(waveforms), [len(w) for w in waveforms])

    def features(self, waveforms: list[Any]) -> dict[str, Any]:
        """Both log-mels of a batch (CPU); thread-safe, so it can run while the encoders work on the last batch."""
        return self.processor.audio_inputs(waveforms)

    def encode_features(self, features: dict[str, Any], lengths: list[int]) -> list[tuple[Any, Any]]:
        """``(codes, rows)`` per waveform of ``lengths`` samples from ``features`` (the encoders' device)."""
        import torch

        from ..models.modeling_kimi_audio import whisper_rows
        from ..models.processing_kimi_audio import CHUNK_SAMPLES

        inputs = {k: v.to(self.device) for k, v in features.items()}
        with torch.no_grad():
            codes = torch.cat(
                self.semantic.encode_features(
                    _as_float(inputs["semantic_input_features"]), inputs["semantic_frame_mask"]
                )
            )
            rows = whisper_rows(self.whisper, inputs["audio_input_features"], inputs["audio_chunk_tokens"])
        chunk_tokens = iter(inputs["audio_chunk_tokens"].tolist())  # per 30 s chunk, audio after audio
        sizes = [sum(next(chunk_tokens) for _ in range(-(-n // CHUNK_SAMPLES))) for n in lengths]
        return list(zip(codes.split(sizes), rows.split(sizes)))


def _as_float(features: Any) -> Any:
    import torch

    # The processor ships GLM features as int32 bit patterns (immune to the collator's casts), as the model reads them.
    return features.view(torch.float32) if features.dtype == torch.int32 else features.float()


def load_audio_encoders(model_dir: str, device: str = "cpu") -> AudioEncoders:
    """Load the processor and both audio encoders of ``model_dir`` (no language model)."""
    import torch

    from ..models.configuration_kimi_audio import WHISPER_SUBDIR, KimiAudioConfig
    from ..models.glm4_voice import load_glm4_voice_tokenizer
    from ..models.processing_kimi_audio import KimiAudioProcessor

    config = KimiAudioConfig.from_pretrained(model_dir)
    if not config.whisper_config:
        raise FileNotFoundError(
            f"{os.path.join(model_dir, WHISPER_SUBDIR, 'config.json')}: Whisper encoder config not found"
        )
    if not config.semantic_tokenizer_path:
        raise FileNotFoundError(f"{model_dir}: GLM-4-Voice tokenizer not found (glm-4-voice-tokenizer/ next to it)")
    target = torch.device(device)
    dtype = torch.bfloat16 if target.type == "cuda" else torch.float32
    whisper_file = os.path.join(model_dir, WHISPER_SUBDIR, "model.safetensors")
    whisper = load_whisper_encoder(config.whisper_config, whisper_file, target, dtype)
    semantic = load_glm4_voice_tokenizer(config.semantic_tokenizer_path, device=target)
    return AudioEncoders(KimiAudioProcessor.from_pretrained(model_dir), whisper, semantic, target)


def load_whisper_encoder(whisper_config: dict[str, Any], weights: str, device: Any, dtype: Any) -> Any:
    """``build_whisper_encoder`` filled from the ``model.encoder.*`` tensors only (the decoder is never read)."""
    import torch

    from ..models.modeling_kimi_audio import build_whisper_encoder, read_whisper_encoder_state

    if not os.path.isfile(weights):
        raise FileNotFoundError(f"{weights}: Whisper encoder weights not found")
    with torch.device("meta"):
        encoder = build_whisper_encoder(whisper_config)
    state = read_whisper_encoder_state(weights, encoder.state_dict())
    encoder.load_state_dict({k: v.to(device=device, dtype=dtype) for k, v in state.items()}, assign=True)
    return encoder.requires_grad_(False).eval()


# ------------------------------------------------------------------------------------------------ the run
@dataclass(frozen=True)
class PrecomputeOptions:
    cache_dir: str | None = None  # None: $KIMI_AUDIO_FEATURE_CACHE or ~/.cache/llamafactory_kimi_audio/features
    device: str = "cpu"
    batch_size: int = 32  # 571x real time on an H200 at 32, 294x at 8 (benchmarks/RESULTS.md)
    strict: bool = False  # re-raise the first bad audio instead of counting it
    progress: bool | None = None  # tqdm's disable=None: a bar only on a terminal


@dataclass
class PrecomputeResult:
    cache_dir: str  # the root to export as $KIMI_AUDIO_FEATURE_CACHE
    identity: str  # sub-folder of this checkpoint's audio encoders
    computed: int = 0
    skipped: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"precompute: {self.computed} computed, {self.skipped} skipped (already cached), {self.failed} failed; "
            f"cache {os.path.join(self.cache_dir, self.identity)}\n"
            f"  use it: export {CACHE_ENV}={self.cache_dir}"
        )


@dataclass
class _Pending:
    audio: str
    entry: str
    wave: Any


def precompute(
    model_dir: str,
    audio_paths: list[str],
    options: PrecomputeOptions | None = None,
    encoders: AudioEncoders | None = None,
    report: Callable[[str], None] | None = None,
) -> PrecomputeResult:
    """Write a cache entry for every audio file not yet cached; bad files are reported and counted, not fatal."""
    options = options or PrecomputeOptions()
    if options.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {options.batch_size}")
    from tqdm.auto import tqdm

    root = os.path.abspath(os.path.expanduser(options.cache_dir)) if options.cache_dir else default_cache_dir()
    result = PrecomputeResult(cache_dir=root, identity=_guarded(encoder_identity, model_dir))
    disable = None if options.progress is None else not options.progress
    with tqdm(total=len(audio_paths), desc="precompute", unit="audio", disable=disable, file=sys.stderr) as bar:
        say = report or (lambda line: bar.write(line, file=sys.stderr))
        load = (lambda: encoders) if encoders else (lambda: _guarded(load_audio_encoders, model_dir, options.device))
        # Similar durations share a batch (GLM-4-Voice then computes little padding). Three stages overlap: decoding
        # and hashing of the next files (a few threads), the log-mels of the next batch (one thread) and the encoders
        # on the current one; soundfile, numpy and torch release the GIL.
        ordered = sorted(audio_paths, key=_file_size)
        with ThreadPoolExecutor(max_workers=1) as featurizer:
            run = _Run(result, options, bar, say, load, featurizer)
            for audio, prepared in prefetch(ordered, run.prepare, window=4 * options.batch_size):
                run.add(audio, prepared)
            run.flush()
            run.finish()
    return result


def _file_size(path: str) -> int:
    return os.path.getsize(path) if os.path.isfile(path) else 0


def prefetch(items: list[str], function: Callable[[str], Any], window: int, workers: int = 4) -> Iterator[tuple]:
    """``(item, function(item))`` in order, computed ``window`` items ahead in a thread pool (bounded memory)."""
    from collections import deque

    with ThreadPoolExecutor(max_workers=workers) as pool:
        queue: deque = deque()
        for item in items:
            queue.append((item, pool.submit(function, item)))
            if len(queue) > window:
                head, future = queue.popleft()
                yield head, future.result()
        while queue:
            head, future = queue.popleft()
            yield head, future.result()


def _guarded(function: Callable[..., Any], model_dir: str, *args: Any) -> Any:
    try:
        return function(model_dir, *args)
    except (OSError, ValueError, KeyError) as err:
        raise EncoderError(f"{model_dir}: cannot load the audio encoders ({err})") from err


class _Run:
    """The loop state: a batch of loaded waveforms, lazily loaded encoders, the counters."""

    def __init__(
        self,
        result: PrecomputeResult,
        options: PrecomputeOptions,
        bar: Any,
        say: Callable[[str], None],
        load: Callable[[], AudioEncoders],
        featurizer: ThreadPoolExecutor,
    ) -> None:
        self.result, self.options, self.bar, self.say, self._load = result, options, bar, say, load
        self.featurizer = featurizer
        self.encoders: AudioEncoders | None = None
        self.pending: list[_Pending] = []
        self.in_flight: tuple[list[_Pending], Future] | None = None  # a batch whose log-mels are being computed
        self.seen: set[str] = set()

    def prepare(self, audio: str) -> tuple[str, Any] | Exception:
        """(cache entry, waveform or None when already cached), or the error; runs in a worker thread."""
        try:
            entry = entry_path(self.result.cache_dir, self.result.identity, audio)
            return entry, None if os.path.isfile(entry) else load_audio(audio)
        except (AudioError, OSError) as err:
            return err

    def add(self, audio: str, prepared: tuple[str, Any] | Exception) -> None:
        if isinstance(prepared, Exception):
            self.fail(audio, prepared)
            return
        entry, wave = prepared
        if entry in self.seen or wave is None:  # cached, or the same bytes under another name
            self.result.skipped += 1
            self.bar.update(1)
            return
        self.pending.append(_Pending(audio, entry, wave))
        self.seen.add(entry)
        if len(self.pending) >= self.options.batch_size:
            self.flush()

    def fail(self, audio: str, err: Exception) -> None:
        if self.options.strict:
            raise err if isinstance(err, AudioError) else AudioError(f"{audio}: {err}") from err
        message = str(err) if audio in str(err) else f"{audio}: {err}"
        self.say(f"precompute: skipped {message}")
        self.result.failed += 1
        self.result.failures.append(message)
        self.bar.update(1)

    def flush(self) -> None:
        """Start the log-mels of the pending batch, then encode the batch before it meanwhile."""
        if not self.pending:
            return
        if self.encoders is None:
            self.encoders = self._load()
        batch, self.pending = self.pending, []
        future = self.featurizer.submit(self.encoders.features, [p.wave for p in batch])
        self.finish()
        self.in_flight = (batch, future)

    def finish(self) -> None:
        """Encode the batch in flight and write its entries."""
        if self.in_flight is None:
            return
        (batch, future), self.in_flight = self.in_flight, None
        outputs = self.encoders.encode_features(future.result(), [len(p.wave) for p in batch])
        for item, (codes, rows) in zip(batch, outputs):
            write_entry(item.entry, codes, rows)
            self.result.computed += 1
            self.bar.update(1)
