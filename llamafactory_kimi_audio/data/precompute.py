"""Fill the feature cache (``feature_cache.py``) ahead of training: semantic codes + Whisper rows per audio file.

Only the audio encoders of a checkpoint are loaded (Whisper-large-v3 from ``<model>/whisper-large-v3/`` in bf16 on
CUDA / fp32 on CPU, GLM-4-Voice in fp32), never the 7B language model. Inputs go through
``KimiAudioProcessor.audio_inputs`` and the model's own ``whisper_rows``, so a cached entry holds exactly what the
model computes online. Runs are resumable (sound existing entries are skipped, corrupt or truncated ones are
rewritten) and every entry is written atomically.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ..audio_io import AudioError, load_audio
from ..errors import InputError
from .encoders import AudioEncoders, EncoderError, load_audio_encoders
from .feature_cache import CACHE_ENV, cache_root, encoder_identity, entry_path, entry_problem, write_entry

DEFAULT_CACHE = os.path.join("~", ".cache", "llamafactory_kimi_audio", "features")


def default_cache_dir() -> str:
    """``$KIMI_AUDIO_FEATURE_CACHE`` or ``~/.cache/llamafactory_kimi_audio/features`` (absolute)."""
    return os.path.abspath(os.path.expanduser(cache_root() or DEFAULT_CACHE))


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
    repaired: int = 0  # of the computed: entries that existed but were corrupt or truncated
    skipped: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"precompute: {self.computed} computed{self._repaired}, {self.skipped} skipped (already cached), "
            f"{self.failed} failed; "
            f"cache {os.path.join(self.cache_dir, self.identity)}\n"
            f"  use it: export {CACHE_ENV}={self.cache_dir}"
        )

    @property
    def _repaired(self) -> str:
        return f" ({self.repaired} replacing corrupt or truncated entries)" if self.repaired else ""


@dataclass
class _Pending:
    audio: str
    entry: str
    wave: Any


@dataclass
class _Prepared:
    entry: str
    wave: Any  # None: the entry exists and is sound
    problem: str | None = None  # why an existing entry is rewritten


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
        raise InputError(f"--batch-size must be >= 1, got {options.batch_size}")
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

    def prepare(self, audio: str) -> _Prepared | Exception:
        """The cache entry and the waveform to encode (None when a sound entry exists), or the error; runs in a
        worker thread."""
        if not os.path.isfile(audio):
            return AudioError(
                f"{audio}: audio file not found; fix the path in the dataset (relative paths resolve "
                "against --media-dir, by default the folder of dataset_info.json or of the file)"
            )
        try:
            entry = entry_path(self.result.cache_dir, self.result.identity, audio)
            exists = os.path.isfile(entry)
            problem = entry_problem(entry) if exists else None
            return (
                _Prepared(entry, None) if exists and problem is None else _Prepared(entry, load_audio(audio), problem)
            )
        except AudioError as err:
            return err
        except OSError as err:
            return AudioError(f"{audio}: cannot read the file ({err.strerror or type(err).__name__}); check it")

    def add(self, audio: str, prepared: _Prepared | Exception) -> None:
        if isinstance(prepared, Exception):
            self.fail(audio, prepared)
            return
        if prepared.entry in self.seen or prepared.wave is None:  # cached, or the same bytes under another name
            self.result.skipped += 1
            self.bar.update(1)
            return
        if prepared.problem is not None:
            self.say(
                f"precompute: rewriting the unreadable cache entry {prepared.entry} of {audio} ({prepared.problem})"
            )
            self.result.repaired += 1
        self.pending.append(_Pending(audio, prepared.entry, prepared.wave))
        self.seen.add(prepared.entry)
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
