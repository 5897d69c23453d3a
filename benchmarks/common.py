"""Shared pieces of the GPU benchmarks: model directories with random weights, a synthetic ASR corpus, the
LLaMA-Factory timing callback and the FLOP accounting.

Nothing here downloads anything. ``preset="full"`` writes the real Kimi-Audio shapes (``make_tiny_checkpoint(...,
"full")``: config only) plus a tokenizer with the real vocabulary size (151,643 base tokens: the tiny merges, then
unreachable filler tokens), a random Whisper-large-v3 encoder and a random full-size GLM-4-Voice tokenizer; the
language model itself gets random weights from ``from_config`` (LLaMA-Factory's ``train_from_scratch``) on the GPU.
``preset="tiny"`` uses the tiny checkpoint so every script runs on a CPU in seconds (``--tiny``).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PEAK_BF16_FLOPS = 989.4e12  # H100/H200 SXM dense bf16 datasheet peak (MFU denominator)
MEASURED_MATMUL_FLOPS = 790e12  # 8192³ bf16 matmul measured on these H200s (KINDS.md)
FULL_BASE_TOKENS = 151643
SAMPLE_RATE = 16000
INSTRUCTION = "Please transcribe the spoken content into written text."
WORDS = "zero one two three four five six seven eight nine ten red blue green yellow black white".split()
GPU_INIT_ENV = "KIMI_BENCH_GPU_INIT"


# ------------------------------------------------------------------------------------------- model directories
def full_vocab_ranks() -> dict[bytes, int]:
    """A tiktoken vocabulary of the real size: the tiny BPE merges, then filler tokens text never produces."""
    from llamafactory_kimi_audio.models.tiny import TINY_CORPUS, train_tiny_tiktoken

    ranks = train_tiny_tiktoken(TINY_CORPUS, num_merges=192)
    index = 0
    while len(ranks) < FULL_BASE_TOKENS:
        ranks[b"\xf8" + index.to_bytes(3, "big")] = len(ranks)  # 0xF8 never occurs in UTF-8 text
        index += 1
    return ranks


def make_kimi_dir(directory: str, preset: str, device: str = "cpu", seed: int = 0) -> str:
    """A Kimi-Audio checkpoint directory for ``train_from_scratch`` runs (LM weights are never read)."""
    from llamafactory_kimi_audio.models.tiny import make_tiny_checkpoint

    if os.path.isfile(os.path.join(directory, "bench_ready")):
        return directory
    if preset == "tiny":
        make_tiny_checkpoint(directory, seed=seed)
    else:
        _make_full_kimi_dir(directory, device, seed)
    open(os.path.join(directory, "bench_ready"), "w").close()
    return directory


def _make_full_kimi_dir(directory: str, device: str, seed: int) -> None:
    import torch

    from llamafactory_kimi_audio.models.constants import SEMANTIC_SUBDIR, WHISPER_SUBDIR
    from llamafactory_kimi_audio.models.glm4_voice import Glm4VoiceConfig, Glm4VoiceEncoder, save_glm4_voice_tokenizer
    from llamafactory_kimi_audio.models.tiny import make_tiny_checkpoint
    from llamafactory_kimi_audio.models.tokenization_kimi_audio import write_tokenizer_files
    from llamafactory_kimi_audio.models.whisper_encoder import build_whisper_encoder, save_whisper_dir

    info = make_tiny_checkpoint(directory, preset="full")
    assert write_tokenizer_files(directory, full_vocab_ranks()) == info.num_base_tokens == FULL_BASE_TOKENS
    with open(os.path.join(directory, WHISPER_SUBDIR, "config.json"), encoding="utf-8") as f:
        whisper_config = json.load(f)
    torch.manual_seed(seed)
    with torch.device(device):
        whisper = build_whisper_encoder(whisper_config).to(torch.bfloat16)
    save_whisper_dir(os.path.join(directory, WHISPER_SUBDIR), whisper.state_dict(), whisper_config)
    del whisper
    with torch.device(device):
        glm = Glm4VoiceEncoder(Glm4VoiceConfig())  # the released shapes: 16 of 32 layers, 16384 codes
    save_glm4_voice_tokenizer(glm, os.path.join(directory, SEMANTIC_SUBDIR))


def make_qwen_dir(directory: str, preset: str, kimi_dir: str) -> str:
    """A text-only Qwen2-7B-shaped model dir (vocab 152064) with a word-level tokenizer of the same base size."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config

    from llamafactory_kimi_audio.models.configuration_kimi_audio import KimiAudioConfig

    if os.path.isfile(os.path.join(directory, "bench_ready")):
        return directory
    kimi = KimiAudioConfig.from_pretrained(kimi_dir)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab = {f"t{i}": i for i in range(kimi.num_base_tokens)}
    vocab.update({tok: kimi.num_base_tokens + i for i, tok in enumerate(specials)})
    backend = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>", additional_special_tokens=specials
    )
    tokenizer.save_pretrained(directory)
    config = Qwen2Config(
        vocab_size=kimi.kimia_text_output_vocab,  # 152064 for the full preset
        hidden_size=kimi.hidden_size,
        intermediate_size=kimi.intermediate_size,
        num_hidden_layers=kimi.num_hidden_layers,
        num_attention_heads=kimi.num_attention_heads,
        num_key_value_heads=kimi.num_key_value_heads,
        max_position_embeddings=32768,
        rope_theta=1000000.0,
        rms_norm_eps=kimi.rms_norm_eps,
        tie_word_embeddings=False,
        use_sliding_window=False,
        bos_token_id=kimi.num_base_tokens,
        eos_token_id=kimi.num_base_tokens + 2,
    )
    config.torch_dtype = "bfloat16" if preset == "full" else "float32"
    config.save_pretrained(directory)
    open(os.path.join(directory, "bench_ready"), "w").close()
    return directory


# ---------------------------------------------------------------------------------------------- synthetic data
def make_corpus(directory: str, count: int, seconds: tuple[float, float] = (5.0, 15.0), seed: int = 0) -> str:
    """``count`` clips of 5–15 s (tones + noise) with random-word transcripts (~2.5 words/s) as a sharegpt dataset
    ``bench_asr`` in ``directory`` (``dataset_info.json`` included). Returns the directory."""
    import soundfile as sf

    marker = os.path.join(directory, f"bench_ready_{count}_{seed}")
    if os.path.isfile(marker):
        return directory
    rng = np.random.default_rng(seed)
    wav_dir = os.path.join(directory, "wavs")
    os.makedirs(wav_dir, exist_ok=True)
    rows = []
    for i in range(count):
        duration = float(rng.uniform(*seconds))
        t = np.arange(int(duration * SAMPLE_RATE)) / SAMPLE_RATE
        wave = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 2000) * t) + 0.05 * rng.standard_normal(t.size)
        path = os.path.join(wav_dir, f"utt{i:05d}.wav")
        sf.write(path, wave.astype(np.float32), SAMPLE_RATE, subtype="PCM_16")
        words = " ".join(rng.choice(WORDS, size=max(1, round(2.5 * duration))))
        rows.append(
            {
                "id": f"utt{i:05d}",
                "messages": [
                    {"role": "user", "content": f"{INSTRUCTION}<audio>"},
                    {"role": "assistant", "content": words},
                ],
                "audios": [path],
            }
        )
    with open(os.path.join(directory, "bench_asr.json"), "w", encoding="utf-8") as f:
        json.dump(rows, f)
    info = {
        "bench_asr": {
            "file_name": "bench_asr.json",
            "formatting": "sharegpt",
            "columns": {"messages": "messages", "audios": "audios"},
            "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"},
        }
    }
    with open(os.path.join(directory, "dataset_info.json"), "w", encoding="utf-8") as f:
        json.dump(info, f, indent=2)
    open(marker, "w").close()
    return directory


def corpus_audio_paths(directory: str) -> list[str]:
    with open(os.path.join(directory, "bench_asr.json"), encoding="utf-8") as f:
        return [row["audios"][0] for row in json.load(f)]


def fill_random_feature_cache(
    cache_root: str, model_dir: str, audio_paths: list[str], seed: int = 0, with_rows: bool = True
) -> None:
    """Cache entries (codes + Whisper rows of the right shapes, random values) as ``precompute`` would write them;
    ``with_rows=False``: codes-only entries (training then runs Whisper online)."""
    import soundfile as sf
    import torch

    from llamafactory_kimi_audio.data.features.cache_format import clip_key
    from llamafactory_kimi_audio.data.features.feature_cache import FeatureCache, encoder_identity
    from llamafactory_kimi_audio.models.configuration_kimi_audio import KimiAudioConfig
    from llamafactory_kimi_audio.models.processing_kimi_audio import num_audio_tokens

    config = KimiAudioConfig.from_pretrained(model_dir)
    codebook = config.kimia_audio_output_vocab - config.num_audio_special_tokens
    cache = FeatureCache(cache_root, encoder_identity(model_dir))
    generator = torch.Generator().manual_seed(seed)
    for path in audio_paths:
        key = clip_key(path)
        if cache.find(key) is not None:
            continue
        frames = num_audio_tokens(sf.info(path).frames)
        codes = torch.randint(0, codebook, (frames,), generator=generator)
        rows = torch.randn(frames, config.kimia_adaptor_input_dim, generator=generator).to(torch.bfloat16)
        cache.write(key, codes, rows if with_rows else None)
    cache.writer.close()


def make_text_only_tokenized(kimi_tokenized: str, out_dir: str, num_base_tokens: int, seed: int = 0) -> str:
    """The Kimi token stream with every non-text id (specials, audio placeholders) replaced by an ordinary text id:
    same lengths, same labelled positions — the input of the text-only Qwen2 run."""
    from datasets import load_from_disk

    if os.path.isdir(out_dir):
        return out_dir
    data = load_from_disk(kimi_tokenized)

    def convert(example: dict[str, Any], index: int) -> dict[str, Any]:
        rng = np.random.default_rng(seed + index)
        ids = np.asarray(example["input_ids"])
        swap = ids >= num_base_tokens
        new_ids = np.where(swap, rng.integers(0, num_base_tokens, size=ids.size), ids)
        labels = np.asarray(example["labels"])
        new_labels = np.where(labels == -100, -100, new_ids)
        return {"input_ids": new_ids.tolist(), "labels": new_labels.tolist()}

    drop = [c for c in ("images", "videos", "audios") if c in data["train"].column_names]
    data = data.map(convert, with_indices=True).remove_columns(drop)
    data.save_to_disk(out_dir)
    return out_dir


# --------------------------------------------------------------------------------------------- GPU initialisation
def build_on_gpu(enable: bool = True) -> None:
    """Make ``Auto*.from_config`` (LLaMA-Factory's ``train_from_scratch``) build the model directly on this rank's
    GPU; random init of 10 B parameters on the CPU would take minutes. Under ZeRO-3 ``zero.Init`` places it."""
    import torch
    import transformers

    if not enable or not torch.cuda.is_available():
        return
    for name in ("AutoModelForCausalLM", "AutoModelForSeq2SeqLM"):
        auto = getattr(transformers, name)
        original = auto.from_config.__func__ if hasattr(auto.from_config, "__func__") else auto.from_config
        if getattr(original, "_bench_gpu", False):
            continue

        def from_config(cls, config, *args, _original=original, **kwargs):
            from transformers.integrations import is_deepspeed_zero3_enabled

            if is_deepspeed_zero3_enabled():
                return _original(cls, config, *args, **kwargs)
            with torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"):
                return _original(cls, config, *args, **kwargs)

        from_config._bench_gpu = True
        auto.from_config = classmethod(from_config)


class GpuInitHook:
    """An entry point of the ``llamafactory_extensions`` group (the package's own hook mechanism): torchrun ranks of
    the stock launcher build the random model on their GPU too. Active only when ``KIMI_BENCH_GPU_INIT=1``."""

    module = "llamafactory.model.loader"

    def __call__(self, module: Any) -> None:
        if os.environ.get(GPU_INIT_ENV) == "1":
            build_on_gpu()


HOOK = GpuInitHook()
TIMING_ENV = "KIMI_BENCH_TIMING_DIR"
AUDIO_ID_ENV = "KIMI_BENCH_AUDIO_ID"  # the audio placeholder's token id: audio frames per step are counted
PROFILE_ENV = "KIMI_BENCH_PROFILE_DIR"  # rank 0 profiles two steps (torch.profiler) into this folder
PROFILE_STEP_ENV = "KIMI_BENCH_PROFILE_STEP"  # the first profiled optimizer step (default 2)


class TimingHook:
    """Entry point on ``llamafactory.train.tuner``: when ``KIMI_BENCH_TIMING_DIR`` is set, every ``run_exp`` (also in
    torchrun ranks of the stock launcher) gets the timing callback and writes ``rank<R>.json`` there (step times,
    token counts, the losses this rank logged); with ``KIMI_BENCH_PROFILE_DIR`` rank 0 also profiles two steps."""

    module = "llamafactory.train.tuner"

    def __call__(self, tuner: Any) -> None:
        if not os.environ.get(TIMING_ENV) or getattr(tuner.run_exp, "_bench_timed", False):
            return  # a second copy of the hook (two hook folders on the path) must not time twice
        original = tuner.run_exp

        def run_exp(args=None, callbacks=None):
            audio_id = os.environ.get(AUDIO_ID_ENV)
            callback = make_callback(int(audio_id) if audio_id else None)
            rank = int(os.environ.get("RANK", "0"))
            extra = [callback]
            if os.environ.get(PROFILE_ENV) and rank == 0:
                first = int(os.environ.get(PROFILE_STEP_ENV, "2"))
                extra.append(make_profiler_callback(os.environ[PROFILE_ENV], first))
            try:
                return original(args, [*(callbacks or []), *extra])
            finally:
                record = {
                    "rank": rank,
                    "world": int(os.environ.get("WORLD_SIZE", "1")),
                    "node_rank": int(os.environ.get("GROUP_RANK", os.environ.get("NODE_RANK", "0"))),
                    "peak_bytes": callback.state.peak_bytes,
                    "losses": callback.state.losses,
                    "steps": [s.__dict__ for s in callback.state.steps],
                }
                with open(os.path.join(os.environ[TIMING_ENV], f"rank{rank}.json"), "w", encoding="utf-8") as f:
                    json.dump(record, f)

        run_exp._bench_timed = True
        tuner.run_exp = run_exp


TIMING_HOOK = TimingHook()


def install_gpu_init_hook(site_packages: str) -> None:
    """Copy this module into ``site_packages`` as ``kimi_bench_common`` and declare ``HOOK`` as an entry point."""
    import shutil

    os.makedirs(site_packages, exist_ok=True)
    shutil.copy(__file__, os.path.join(site_packages, "kimi_bench_common.py"))
    dist = os.path.join(site_packages, "kimi_bench_gpu_init-0.0.dist-info")
    os.makedirs(dist, exist_ok=True)
    with open(os.path.join(dist, "METADATA"), "w") as f:
        f.write("Metadata-Version: 2.1\nName: kimi-bench-gpu-init\nVersion: 0.0\n")
    with open(os.path.join(dist, "entry_points.txt"), "w") as f:
        f.write(
            "[llamafactory_extensions]\nzz_bench_gpu_init = kimi_bench_common:HOOK\n"
            "zz_bench_timing = kimi_bench_common:TIMING_HOOK\n"
        )
    with open(os.path.join(dist, "RECORD"), "w") as f:
        f.write("")


# ------------------------------------------------------------------------------------------------- FLOP counting
@dataclass(frozen=True)
class Shapes:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int  # the text head's width (Kimi: 168448, Qwen2: 152064)
    mimo_layers: int = 0
    whisper_params: int = 0

    @property
    def layer_linear_params(self) -> int:
        h, kv = self.hidden, self.hidden // self.heads * self.kv_heads
        return 2 * h * h + 2 * h * kv + 3 * h * self.intermediate

    @classmethod
    def of(cls, config: Any) -> Shapes:
        whisper = getattr(config, "whisper_config", None) or {}
        whisper_params = 0
        if whisper:
            d, f, n = whisper["d_model"], whisper["encoder_ffn_dim"], whisper["encoder_layers"]
            whisper_params = n * (4 * d * d + 2 * d * f)
        return cls(
            config.hidden_size, config.intermediate_size, config.num_hidden_layers, config.num_attention_heads,
            config.num_key_value_heads, config.vocab_size, getattr(config, "kimia_mimo_layers", 0), whisper_params,
        )  # fmt: skip


def step_flops(shapes: Shapes, lengths: list[int], labelled: int, full_ft: bool = False) -> float:
    """Model FLOPs of one training step on the text path (what MFU counts).

    Linear layers: 2·N·T forward + 2·N·T input gradients (+ 2·N·T weight gradients for full fine-tuning), so
    LoRA = 4·N·T, full = 6·N·T, N = the 28 decoder layers' linear weights; causal attention 2·L²·d forward and twice
    that backward per layer; the text head only at labelled positions (2·d·V·n forward + the same backward).
    Padding, gradient-checkpointing recomputation, LoRA's own tiny matmuls and the frozen audio encoders are not
    counted.
    """
    mult = 6 if full_ft else 4
    tokens = sum(lengths)
    linear = mult * shapes.layers * shapes.layer_linear_params * tokens
    attention = 3 * shapes.layers * sum(2 * n * n * shapes.hidden for n in lengths)
    head = (mult if full_ft else 4) * shapes.hidden * shapes.vocab * labelled
    return float(linear + attention + head)


def whisper_flops(shapes: Shapes, chunks: int) -> float:
    """Forward FLOPs of the frozen Whisper-large-v3 encoder on ``chunks`` 30 s-padded chunks (1500 frames each)."""
    return float(chunks * (2 * shapes.whisper_params * 1500 + 32 * 4 * 1500 * 1500 * 1280))


# ---------------------------------------------------------------------------------------- LLaMA-Factory callback
@dataclass
class StepRecord:
    seconds: float
    lengths: list[int]
    padded: int
    labelled: int
    audio_frames: int
    gap_before: float = 0.0  # from the previous step's end to this one's begin: batch fetch, a stalled loader


@dataclass
class BenchCallbackState:
    steps: list[StepRecord] = field(default_factory=list)
    peak_bytes: int = 0  # allocated, from train begin (after parking) to train end
    load_peak_bytes: int = 0  # allocated, from process start to train begin (model load, before parking)
    peak_reserved_bytes: int = 0  # the caching allocator's reservation at its highest (what the card must hold)
    current: dict[str, Any] = field(default_factory=dict)
    losses: list[float] = field(default_factory=list)  # the training losses this rank logged (on_log)


def packed_lengths(diagonal: Any, position_ids: Any) -> list[int]:
    """Real tokens of every utterance in packed rows: positions restart at 0 per utterance; a token is real when the
    block-diagonal 4-D mask lets it see itself (``diagonal`` [B, L] of that mask, 0 = visible; pad rows are fully
    masked)."""
    real = (diagonal == 0).cpu()
    starts = (position_ids == 0).cpu()
    lengths = []
    for row_real, row_starts in zip(real, starts):
        bounds = [*row_starts.nonzero().flatten().tolist(), len(row_real)]
        lengths += [int(row_real[a:b].sum()) for a, b in zip(bounds, bounds[1:])]
    return [n for n in lengths if n]


def communication_seconds(averages: Any, on_gpu: bool) -> float:
    """Time in collectives: NCCL kernels on the GPU (they run on their own stream, so this is their length whether or
    not they overlap compute). On the CPU (gloo) only the host time of collectives called on the profiled thread (the
    Trainer's loss gather); DDP's reducer runs its all-reduces on gloo's own threads, which are not recorded."""
    if on_gpu:
        return sum(e.self_device_time_total for e in averages if "nccl" in e.key.lower()) / 1e6
    names = ("c10d::allreduce_", "gloo:all_reduce", "c10d::allgather_", "c10d::_allgather_base_",
             "c10d::reduce_scatter_", "c10d::_reduce_scatter_base_", "c10d::broadcast_")  # fmt: skip
    return sum(e.cpu_time_total for e in averages if e.key in names) / 1e6


def make_profiler_callback(out_dir: str, first_step: int, steps: int = 2):
    """``torch.profiler`` over optimizer steps ``first_step .. first_step + steps - 1``: writes the kernel table, the
    GPU-busy share of the wall time and a gzipped Chrome trace into ``out_dir``."""
    import gzip
    import shutil

    import torch
    from transformers import TrainerCallback

    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)

    class ProfileCallback(TrainerCallback):
        def __init__(self) -> None:
            self.prof = None
            self.t0 = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            if self.prof is None and state.global_step == first_step:
                self.prof = torch.profiler.profile(activities=activities)
                self.prof.__enter__()
                self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if self.prof is None or state.global_step != first_step + steps:
                return
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            wall = time.perf_counter() - self.t0
            self.prof.__exit__(None, None, None)
            os.makedirs(out_dir, exist_ok=True)
            averages = self.prof.key_averages()
            kernels = [e for e in averages if e.device_type == torch.autograd.DeviceType.CUDA]
            busy = sum(e.self_device_time_total for e in kernels) / 1e6
            comm = communication_seconds(averages, bool(kernels))
            key = "self_device_time_total" if kernels else "self_cpu_time_total"
            by_ops = averages.table(sort_by=key, row_limit=60)
            summary = (
                f"wall {wall:.3f}s over {steps} steps; GPU kernels {busy:.3f}s = {100 * busy / wall:.1f}% busy; "
                f"collectives {comm:.3f}s = {100 * comm / wall:.1f}% of the wall time\n"
            )
            with open(os.path.join(out_dir, "profile.txt"), "w", encoding="utf-8") as f:
                f.write(summary + by_ops)
            figures = {"wall_s": wall, "steps": steps, "busy_s": busy, "comm_s": comm, "comm_share": comm / wall}
            with open(os.path.join(out_dir, "comm.json"), "w", encoding="utf-8") as f:
                json.dump(figures, f)
            trace = os.path.join(out_dir, "trace.json")
            self.prof.export_chrome_trace(trace)
            with open(trace, "rb") as src, gzip.open(trace + ".gz", "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.remove(trace)
            print("[profile] " + summary, flush=True)
            self.prof = None

    return ProfileCallback()


def make_callback(placeholder_id: int | None = None):
    """A ``TrainerCallback`` that times every optimizer step and counts its tokens, without adding work to the step.

    On a GPU a step is timed by CUDA events recorded at its begin and end callbacks, on the GPU's clock, and nothing
    synchronises the device mid-run (a per-step ``synchronize`` would drain the queue that lets the host prepare the
    next step while the GPU finishes this one). As with the host timer before it, what the Trainer does between steps
    while the GPU idles (fetching the next batch, a new epoch's data workers) is left out. A forward pre-hook keeps the
    model's inputs (references, plus the diagonal of a packed 4-D mask), and the real, padded and labelled tokens and
    audio frames are counted after training.
    """
    import torch
    from transformers import TrainerCallback

    state = BenchCallbackState()
    cuda = torch.cuda.is_available()

    def keep_inputs(module, args, kwargs) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if not module.training or ids is None:
            return
        mask = kwargs.get("attention_mask")
        packed = mask is not None and mask.dim() == 4
        if packed:  # neat_packing: keep only the diagonal (a token that sees itself is real)
            mask = torch.diagonal(mask[:, 0], dim1=-2, dim2=-1).clone()
        kept = dict(
            ids=ids, mask=mask, packed=packed, position_ids=kwargs.get("position_ids"), labels=kwargs.get("labels")
        )
        state.current.setdefault("inputs", []).append(kept)

    def now() -> Any:
        if cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    class BenchCallback(TrainerCallback):
        def __init__(self) -> None:
            self.state = state
            self._handle = None
            self._marks: list[tuple[Any, Any, list[dict]]] = []

        def on_train_begin(self, args, train_state, control, model=None, **kwargs):
            if model is not None:
                self._handle = model.register_forward_pre_hook(keep_inputs, with_kwargs=True)
            if cuda:
                torch.cuda.synchronize()
                state.load_peak_bytes = torch.cuda.max_memory_allocated()
                torch.cuda.reset_peak_memory_stats()

        def on_step_begin(self, args, train_state, control, **kwargs):
            state.current = {"begin": now()}

        def on_step_end(self, args, train_state, control, **kwargs):
            self._marks.append((state.current["begin"], now(), state.current.get("inputs", [])))

        def on_log(self, args, train_state, control, logs=None, **kwargs):
            if logs and "loss" in logs:  # every rank logs the loss (the Trainer gathers it across ranks first)
                state.losses.append(float(logs["loss"]))

        def on_train_end(self, args, train_state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
                state.peak_bytes = torch.cuda.max_memory_allocated()
                state.peak_reserved_bytes = torch.cuda.max_memory_reserved()
            previous_end = None
            for begin, end, inputs in self._marks:
                seconds = begin.elapsed_time(end) / 1e3 if cuda else end - begin
                record = step_record(seconds, inputs, placeholder_id)
                if previous_end is not None:  # on the GPU's clock: time the GPU waited for the host between steps
                    record.gap_before = previous_end.elapsed_time(begin) / 1e3 if cuda else begin - previous_end
                state.steps.append(record)
                previous_end = end
            self._marks.clear()
            if self._handle is not None:
                self._handle.remove()
                self._handle = None

    return BenchCallback()


def step_record(seconds: float, inputs: list[dict], placeholder_id: int | None) -> StepRecord:
    """Token counts of one optimizer step from the inputs of its forward passes."""
    lengths: list[int] = []
    padded = labelled = audio_frames = 0
    for kept in inputs:
        ids, mask, labels = kept["ids"], kept["mask"], kept["labels"]
        if kept["packed"]:  # one length per packed utterance
            lengths += packed_lengths(mask, kept["position_ids"])
        elif mask is not None:
            lengths += [int(n) for n in mask.sum(-1).tolist()]
        else:
            lengths += [ids.shape[-1]] * ids.shape[0]
        padded += ids.numel()
        if labels is not None:
            labelled += int((labels[:, 1:] != -100).sum())
        if placeholder_id is not None:
            audio_frames += int((ids == placeholder_id).sum())
    return StepRecord(seconds, lengths, padded, labelled, audio_frames)


def summarise(
    name: str, steps: list[StepRecord], shapes: Shapes, warmup: int, peak_bytes: int, full_ft: bool = False,
    extra_flops_per_step: float = 0.0, world_size: int = 1,
) -> dict[str, Any]:  # fmt: skip
    """Tokens/s, step time, MFU over the steps after ``warmup`` (per GPU when ``world_size`` > 1)."""
    measured = steps[warmup:] or steps
    seconds = sum(s.seconds for s in measured)
    tokens = sum(sum(s.lengths) for s in measured)
    padded = sum(s.padded for s in measured)
    flops = sum(step_flops(shapes, s.lengths, s.labelled, full_ft) for s in measured)
    return {
        "case": name,
        "steps_measured": len(measured),
        "step_s_median": statistics.median(s.seconds for s in measured),
        "tokens_per_step": tokens / max(1, len(measured)),
        "labelled_per_step": sum(s.labelled for s in measured) / max(1, len(measured)),
        "audio_frames_per_step": sum(s.audio_frames for s in measured) / max(1, len(measured)),
        "padding_share": 1 - tokens / padded if padded else 0.0,
        "tokens_per_s": tokens / seconds / world_size if seconds else math.nan,
        "mfu": flops / seconds / world_size / PEAK_BF16_FLOPS if seconds else math.nan,
        "extra_tflops_per_step": extra_flops_per_step / 1e12,
        "peak_mem_gib": peak_bytes / 2**30,
        # seconds of audio trained per second = audio hours per GPU-hour (12.5 audio frames per second of audio)
        "audio_x": sum(s.audio_frames for s in measured) / 12.5 / seconds / world_size if seconds else math.nan,
    }


def format_table(rows: list[dict[str, Any]]) -> str:
    header = "| case | step s (median) | tokens/step | tokens/s | MFU | peak GiB | padding | audio h / GPU-h |"
    lines = [header, "|" + "---|" * 8]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['case']} | error: {r['error'][:80]} | | | | | | |")
            continue
        lines.append(
            f"| {r['case']} | {r['step_s_median']:.3f} | {r['tokens_per_step']:.0f} | {r['tokens_per_s']:.0f} | "
            f"{100 * r['mfu']:.1f}% | {r['peak_mem_gib']:.1f} | {100 * r['padding_share']:.0f}% | "
            f"{r.get('audio_x', math.nan):.0f} |"
        )
    return "\n".join(lines)


def _cli() -> None:
    """``python benchmarks/common.py setup --preset full --work DIR --samples N`` (model dir, corpus, cache) or
    ``python benchmarks/common.py install-hooks SITE_PACKAGES``."""
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["setup", "install-hooks"])
    parser.add_argument("site", nargs="?")
    parser.add_argument("--preset", default="full")
    parser.add_argument("--work", default="/tmp/kimi_bench")
    parser.add_argument("--samples", type=int, default=400)
    a = parser.parse_args()
    if a.command == "install-hooks":
        install_gpu_init_hook(a.site)
        return
    work = os.path.abspath(a.work)
    kimi = make_kimi_dir(os.path.join(work, f"kimi-{a.preset}"), a.preset, "cpu" if a.preset == "tiny" else "cuda")
    data = make_corpus(os.path.join(work, "data"), a.samples)
    fill_random_feature_cache(os.path.join(work, "feature_cache"), kimi, corpus_audio_paths(data))


if __name__ == "__main__":
    _cli()
