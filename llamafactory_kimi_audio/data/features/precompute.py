"""Fill the feature cache (``feature_cache.py``) ahead of training: semantic codes + Whisper rows per audio file.

Only the audio encoders of a checkpoint are loaded (Whisper-large-v3 from ``<model>/whisper-large-v3/`` in bf16 on
CUDA / fp32 on CPU, GLM-4-Voice in fp32), never the 7B language model. Inputs go through
``KimiAudioProcessor.audio_inputs`` and the model's own ``whisper_rows``, so a cached entry holds exactly what the
model computes online. Runs are resumable (sound existing entries are skipped, damaged ones rewritten) and split
over ranks deterministically (``precompute_plan.py``): ``torchrun --nproc-per-node N`` or ``--shard K/N``.

Each clip it decodes is also checked for digital silence when its rows give it a non-empty transcript
(``transcribed``; ``fileio/audio_silence.py``): ``warn`` caches it and names it in the summary; ``error`` does not
cache it and the CLI exits 2 naming it, after every other clip is done. Error mode also decodes the cached clips
that have a transcript (an earlier warn run cached them), so that exit 0 vouches for every clip of the dataset.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ...errors import InputError
from ...fileio.audio import load_audio
from ...fileio.audio_errors import AudioError
from ...fileio.audio_silence import SilentClipError, error_line, is_silent, silent_clips_mode
from .cache_format import ClipKey, clip_key
from .encoders import AudioEncoders, EncoderError, load_audio_encoders
from .feature_cache import CACHE_ENV, CacheEntryError, FeatureCache, cache_mode, cache_root, encoder_identity
from .precompute_plan import PrecomputeResult, Progress, shard_paths

DEFAULT_CACHE = os.path.join("~", ".cache", "llamafactory_kimi_audio", "features")
ROWS_DTYPES = ("bfloat16", "float32")


def default_cache_dir() -> str:
    """``$KIMI_AUDIO_FEATURE_CACHE`` or ``~/.cache/llamafactory_kimi_audio/features`` (absolute)."""
    return os.path.abspath(os.path.expanduser(cache_root() or DEFAULT_CACHE))


@dataclass(frozen=True)
class PrecomputeOptions:
    cache_dir: str | None = None  # None: $KIMI_AUDIO_FEATURE_CACHE or ~/.cache/llamafactory_kimi_audio/features
    device: str | None = "cpu"  # None: CUDA when visible (torchrun: the rank's GPU), decided when the encoders load
    batch_size: int = 32  # 571x real time on an H200 at 32, 294x at 8 (benchmarks/RESULTS.md)
    strict: bool = False  # re-raise the first bad audio instead of counting it
    progress: bool | None = None  # tqdm's disable=None: a bar only on a terminal
    shard: tuple[int, int] | None = None  # (K, N): this run's part; None: torchrun's RANK / WORLD_SIZE, else all
    mode: str | None = None  # "full" or "codes"; None: $KIMI_AUDIO_CACHE_MODE (default full)
    rows_dtype: str | None = None  # Whisper runs in (and rows are stored in) this dtype; None: bf16 CUDA, fp32 CPU
    silent_clips: str | None = None  # off, warn or error; None: $KIMI_AUDIO_SILENT_CLIPS (warn)


@dataclass
class _Prepared:
    key: ClipKey
    wave: Any  # None: the entry exists and is sound
    problem: str | None = None  # why an existing entry is rewritten
    frames: int = 0  # of a cached entry (progress hours)
    silent: bool = False  # digitally silent, and its rows give it a transcript


def precompute(
    model_dir: str,
    audio_paths: list[str],
    options: PrecomputeOptions | None = None,
    encoders: AudioEncoders | None = None,
    report: Callable[[str], None] | None = None,
    transcribed: Mapping[str, str] | None = None,
) -> PrecomputeResult:
    """Write a cache entry for every audio file of this shard not yet cached; bad files are reported and counted.
    ``transcribed``: the input clips whose rows have a non-empty transcript (path -> row), checked for silence
    (``dataset_audio.collect_audio_paths`` gives it; None: no clip is checked)."""
    options = options or PrecomputeOptions()
    if options.batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {options.batch_size}")
    if options.rows_dtype not in (None, *ROWS_DTYPES):
        raise InputError(f"--rows-dtype must be one of {', '.join(ROWS_DTYPES)}, got {options.rows_dtype!r}")
    root = os.path.abspath(os.path.expanduser(options.cache_dir)) if options.cache_dir else default_cache_dir()
    cache = FeatureCache(root, _guarded(encoder_identity, model_dir))
    shard, paths = shard_paths(audio_paths, options.shard)
    result = PrecomputeResult(cache_dir=root, identity=cache.identity, shard=shard)
    result.silent_mode = silent_clips_mode(options.silent_clips)
    with Progress(paths, shard, options.progress) as progress:
        say = report or progress.write
        load = (lambda: encoders) if encoders else (lambda: _load(model_dir, options))
        # Similar durations share a batch (GLM-4-Voice then computes little padding). Three stages overlap: decoding
        # and lookups of the next files (a few threads), the log-mels of the next batch (one thread) and the encoders
        # on the current one; soundfile, numpy and torch release the GIL.
        len(cache.index)  # load the index before the worker threads use it
        try:
            with ThreadPoolExecutor(max_workers=1) as featurizer:
                checked = transcribed if result.silent_mode != "off" and transcribed else {}
                run = _Run(cache, result, options, progress, say, load, featurizer, checked)
                for audio, prepared in prefetch(paths, run.prepare, window=4 * options.batch_size):
                    run.add(audio, prepared)
                run.flush()
                run.finish()
            cache.writer.close()
            result.missing = _not_in_cache(cache, run.seen)
        finally:
            cache.writer.close()
            cache.lock.release()
    return result


def _not_in_cache(cache: FeatureCache, keys: set[bytes]) -> int:
    """How many of the entries this run found or wrote a fresh read of the index does not hold (the summary's
    counts are what the cache holds, or this count says otherwise)."""
    from .cache_store import CacheIndex

    index = CacheIndex(cache.folder)
    return sum(index.find(digest) is None for digest in keys)


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


def _load(model_dir: str, options: PrecomputeOptions) -> AudioEncoders:
    device = resolve_device(options.device)  # its one-line error is not an encoder's
    return _guarded(load_audio_encoders, model_dir, device, options.rows_dtype)


def resolve_device(requested: str | None) -> str:
    """``requested`` checked against torch (None: CUDA when visible, else the CPU); imports torch, so a run whose
    clips are all cached already never pays for it."""
    import torch

    if requested is None:
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is visible to torch; use --device cpu")
    if requested == "cuda" and "LOCAL_RANK" in os.environ:  # torchrun: one GPU per rank
        return f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return requested


def _guarded(function: Callable[..., Any], model_dir: str, *args: Any) -> Any:
    try:
        return function(model_dir, *args)
    except (OSError, ValueError, KeyError) as err:
        raise EncoderError(f"{model_dir}: cannot load the audio encoders ({err})") from err


class _Run:
    """The loop state: a batch of loaded waveforms, lazily loaded encoders, the counters."""

    def __init__(
        self,
        cache: FeatureCache,
        result: PrecomputeResult,
        options: PrecomputeOptions,
        progress: Progress,
        say: Callable[[str], None],
        load: Callable[[], AudioEncoders],
        featurizer: ThreadPoolExecutor,
        transcribed: Mapping[str, str],
    ) -> None:
        self.cache, self.result, self.options, self.progress, self.say = cache, result, options, progress, say
        self._load, self.featurizer = load, featurizer
        self.mode = options.mode or cache_mode()
        self.encoders: AudioEncoders | None = None
        self.pending: list[tuple[_Prepared, str]] = []
        self.in_flight: tuple[list[tuple[_Prepared, str]], Future] | None = None  # log-mels being computed
        self.seen: set[bytes] = set()
        self.transcribed = transcribed  # clips checked for silence (path -> the row of its transcript)

    def prepare(self, audio: str) -> _Prepared | Exception:
        """The key and the waveform to encode (None when a sound entry exists), or the error; runs in a thread."""
        try:
            key = clip_key(audio)
        except FileNotFoundError:
            return AudioError(
                f"{audio}: audio file not found; fix the path in the dataset (relative paths resolve "
                "against --media-dir, by default the folder of dataset_info.json or of the file)"
            )
        except OSError as err:
            return AudioError(f"{audio}: cannot read the file ({err.strerror or type(err).__name__}); check it")
        at, problem = self.cache.find(key), None
        if at is not None:
            try:
                codes, rows = self.cache.read(at, audio)  # verifies the checksum
                if rows is not None and not bool(rows.isfinite().all()):  # written before NaN audio was refused
                    problem = "its Whisper rows are not finite; re-encoding the clip"
                elif rows is not None or self.mode == "codes":
                    return _Prepared(key, None, frames=len(codes), silent=self.cached_silent(audio))
                else:
                    problem = "a codes-only entry; adding the Whisper rows"
            except CacheEntryError as err:
                problem = str(err).split(" (", 1)[-1].split(")")[0]
        try:
            wave = load_audio(audio)
            return _Prepared(key, wave, problem, silent=audio in self.transcribed and is_silent(wave))
        except AudioError as err:
            return err
        except OSError as err:
            return AudioError(f"{audio}: cannot read the file ({err.strerror or type(err).__name__}); check it")

    def cached_silent(self, audio: str) -> bool:
        """Error mode only: whether a cached clip with a transcript is silent (its audio is decoded again)."""
        if self.result.silent_mode != "error" or audio not in self.transcribed:
            return False
        try:
            return is_silent(load_audio(audio))
        except (AudioError, OSError):  # the entry is what training reads; the audio is not this run's concern
            return False

    def add(self, audio: str, prepared: _Prepared | Exception) -> None:
        if isinstance(prepared, Exception):
            self.fail(audio, prepared)
            return
        if prepared.silent and self.silent(audio, cached=prepared.wave is None):
            return
        if prepared.key.digest in self.seen or prepared.wave is None:  # cached, or listed twice
            self.seen.add(prepared.key.digest)
            self.result.skipped += 1
            self.progress.done(audio, prepared.frames * 1280)
            return
        if prepared.problem is not None:
            self.say(f"precompute: rewriting the feature-cache entry of {audio} ({prepared.problem})")
            self.result.repaired += 1
        self.pending.append((prepared, audio))
        self.seen.add(prepared.key.digest)
        if len(self.pending) >= self.options.batch_size:
            self.flush()

    def fail(self, audio: str, err: Exception) -> None:
        if self.options.strict:
            raise err if isinstance(err, AudioError) else AudioError(f"{audio}: {err}") from err
        message = str(err) if audio in str(err) else f"{audio}: {err}"
        self.say(f"precompute: skipped {message}")
        self.result.failed += 1
        self.result.failures.append(message)
        self.progress.done(audio, 0)

    def silent(self, audio: str, cached: bool) -> bool:
        """Note a silent clip with a transcript; True when this run leaves it out of the cache (error mode)."""
        clip = (audio, self.transcribed.get(audio))
        self.result.silent.append(clip)
        if self.result.silent_mode != "error":
            return False
        if self.options.strict:
            raise SilentClipError(error_line([clip], "--silent-clips "))
        if cached:  # counted as skipped; the exit code tells
            return False
        self.progress.done(audio, 0)
        return True

    def flush(self) -> None:
        """Start the log-mels of the pending batch, then encode the batch before it meanwhile."""
        if not self.pending:
            return
        if self.encoders is None:
            self.encoders = self._load()
        batch, self.pending = self.pending, []
        future = self.featurizer.submit(self.encoders.features, [p.wave for p, _ in batch])
        self.finish()
        self.in_flight = (batch, future)

    def finish(self) -> None:
        """Encode the batch in flight and write its entries."""
        if self.in_flight is None:
            return
        import torch

        (batch, future), self.in_flight = self.in_flight, None
        lengths = [len(p.wave) for p, _ in batch]
        outputs = self.encoders.encode_features(future.result(), lengths, with_rows=self.mode != "codes")
        for (item, audio), (codes, rows) in zip(batch, outputs):
            if (
                rows is not None and self.options.rows_dtype
            ):  # given encoders may run in another dtype: store what training consumes
                rows = rows.to(getattr(torch, self.options.rows_dtype))
            self.cache.write(item.key, codes, rows)
            self.result.computed += 1
            self.progress.done(audio, len(item.wave))


__all__ = [
    "CACHE_ENV",
    "PrecomputeOptions",
    "PrecomputeResult",
    "default_cache_dir",
    "load_audio_encoders",
    "precompute",
]
