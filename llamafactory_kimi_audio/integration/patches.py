"""THE table of every patch this package applies: LLaMA-Factory, transformers' Auto classes, PEFT's LoRA layer.

Where to add a patch: one ``Patch`` row in :data:`PATCHES` (the wrapper goes in ``wrappers.py`` or a module of its
own). ``trigger`` is the module whose import applies the row; :func:`apply_trigger` is the one generic hook that
``hooks.py`` runs for every trigger. Registrations into LLaMA-Factory's and transformers' own registries are no
patches; they are listed per trigger in :data:`REGISTRATIONS`, as are the log filters of ``quiet_logs.py``. Before a
row is applied, the installed version of the patched distribution and the parameters of the wrapped function are
checked (``patching.py``): a mismatch is one warning that names both versions and the opt-out variable, and a row
whose signature changed is skipped.
``kimi-audio-lf doctor`` reads :func:`patch_rows`; the README's table is this one.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any

from .. import settings
from ..errors import EnvironmentProblem
from ..patching import SUPPORTED_VERSIONS, Patch, installed_version, version_problem
from . import nonfinite, speed
from . import registration as reg
from . import wrappers as w
from .auto_classes import AUTO_CLASSES, route_to_native
from .feature_cache_hook import make_streaming_batches, make_write_through
from .fp8 import make_fp8_decoder
from .quiet_logs import quiet_cpu_precision_advice
from .run_guard import make_opt_out_notice, make_run_guard
from .serve_app import make_serving_app
from .serve_audio import make_audio_requests, make_eager_stream
from .serve_protocol import make_audio_chat_request
from .serve_speech import make_spoken_answers
from .webui_args import make_extra_args_win
from .webui_chat import make_spoken_chat

LOADER = "llamafactory.model.loader"  # imports transformers' Auto classes and PEFT (through model.adapter)
SFT_WORKFLOW = "llamafactory.train.sft.workflow"  # run_sft: imports the trainer, the data processors, the metrics
TUNER = "llamafactory.train.tuner"
SFT_TRAINER = "llamafactory.train.sft.trainer:CustomSeq2SeqTrainer"
WEBUI_RUNNER = "llamafactory.webui.runner"
WEBUI_CHATTER = "llamafactory.webui.chatter"
API_PROTOCOL = "llamafactory.api.protocol"  # `llamafactory-cli api`: imported by api.chat, then api.app
API_CHAT = "llamafactory.api.chat"
API_APP = "llamafactory.api.app"
OPT_OUT = "KIMI_AUDIO_DISABLE"


def _fused_forward(original):
    from ..models.fused_lora import make_fused_forward

    return make_fused_forward(original)


def _registries(loader: ModuleType) -> None:
    from ..models.auto import register_auto_classes

    register_auto_classes()


AUTO_PATCHES = [
    Patch(
        name=f"native_dispatch.{auto}",
        trigger=LOADER,
        owner=f"transformers:{auto}",
        attribute="from_pretrained",
        make_replacement=route_to_native(auto),
        distribution="transformers",
        parameters=("cls", "pretrained_model_name_or_path"),
        wrap_classmethod=True,
        why="Kimi-Audio directories load the native classes, never the flash-attn-only remote code, also with "
        "trust_remote_code=True and for official exports that say model_type 'qwen2' (integration/auto_classes.py)",
    )
    for auto in AUTO_CLASSES
]

LOADER_PATCHES = [
    Patch(
        name="fused_lora",
        trigger=LOADER,
        owner=LOADER,
        attribute="init_adapter",
        make_replacement=w.make_fused_lora,
        parameters=("config", "model", "model_args", "finetuning_args", "is_trainable"),
        why="marks Kimi-Audio's LoRA layers for the fused forward (KIMI_AUDIO_FUSED_LORA=0: PEFT's own)",
    ),
    Patch(
        name="fused_lora.forward",
        trigger=LOADER,
        owner="peft.tuners.lora.layer:Linear",
        attribute="forward",
        make_replacement=_fused_forward,
        distribution="peft",
        parameters=("self", "x"),
        why="PEFT's LoRA forward copies every input to fp32 and back under bf16 autocast and scales/adds in two "
        "extra passes; marked layers run the same math in one addmm (models/fused_lora.py), others PEFT's forward",
    ),
    Patch(
        name="mimo_lora_targets",
        trigger=LOADER,
        owner="llamafactory.model.adapter",
        attribute="patch_target_modules",
        make_replacement=w.make_mimo_lora_targets,
        parameters=("model", "finetuning_args", "target_modules"),
        why="speech output: `lora_target: all,mimo` adds LoRA to the MIMO audio-head layers (opt-in; `all` keeps "
        "them frozen, as the composite entry lists them with the Whisper tower)",
    ),
    Patch(
        name="official_auto_map",
        trigger=LOADER,
        owner=LOADER,
        attribute="register_autoclass",
        make_replacement=w.make_official_auto_map,
        parameters=("config", "model", "tokenizer"),
        why="saved / exported checkpoints keep the official auto_map instead of pointing at copies of this "
        "package's sources (register_for_auto_class would rewrite AutoConfig/AutoModel and copy *.py files)",
    ),
    Patch(
        name="speed_switches",
        trigger=LOADER,
        owner=LOADER,
        attribute="patch_config",
        make_replacement=speed.make_speed_switches,
        parameters=("config", "tokenizer", "model_args", "init_kwargs", "is_trainable"),
        why="the model's speed switches are config attributes (use_varlen_attention, compile_pointwise), set from "
        "KIMI_AUDIO_VARLEN_ATTENTION / KIMI_AUDIO_COMPILE_POINTWISE before the model is built (auto: whole layers "
        "compiled for unquantised training on CUDA, integration/speed.py)",
    ),
]

SFT_PATCHES = [
    Patch(
        name="fp8_decoder_linears",
        trigger=SFT_WORKFLOW,
        owner="llamafactory.train.sft.trainer:CustomSeq2SeqTrainer",
        attribute="create_optimizer",
        make_replacement=make_fp8_decoder,
        parameters=("self",),
        why="fp8: true converts only the decoder's Linear layers (frozen ones quantised once, FP8 GEMMs; Whisper, "
        "adaptor, MIMO, heads and LoRA stay bf16); LLaMA-Factory's own Accelerate recipe is a no-op under "
        "transformers 5 and would convert every Linear (integration/fp8.py)",
    ),
    Patch(
        name="asr_metrics",
        trigger=SFT_WORKFLOW,
        owner=SFT_WORKFLOW,
        attribute="ComputeSimilarity",
        make_replacement=w.make_asr_metrics,
        parameters=("tokenizer",),
        why="predict_with_generate reports CER/WER (jiwer) instead of BLEU/ROUGE for Kimi-Audio",
    ),
    Patch(
        name="asr_predict_dependencies",
        trigger=SFT_WORKFLOW,
        owner="llamafactory.hparams.parser",
        attribute="_check_extra_dependencies",
        make_replacement=w.make_asr_predict_dependencies,
        parameters=("model_args", "finetuning_args", "training_args"),
        why="predict_with_generate demands jieba/nltk/rouge_chinese for BLEU/ROUGE; Kimi-Audio scores CER/WER instead",
    ),
    Patch(
        name="greedy_asr_predictions",
        trigger=SFT_WORKFLOW,
        owner="llamafactory.train.sft.trainer:CustomSeq2SeqTrainer",
        attribute="prediction_step",
        make_replacement=w.make_greedy_prediction,
        parameters=("self", "model", "inputs", "prediction_loss_only", "ignore_keys"),
        why="LLaMA-Factory samples by default (do_sample=True, T=0.95); ASR evaluation decodes greedily",
    ),
    Patch(
        name="segment_media_paths",
        trigger=SFT_WORKFLOW,
        owner="llamafactory.data.converter:DatasetConverter",
        attribute="_find_medias",
        make_replacement=w.make_segment_media_paths,
        parameters=("self", "medias"),
        why="segments of long recordings are written PATH#t=BEGIN,END (kimi-audio-lf convert); the fragment is split "
        "off for the media_dir lookup, else relative segment paths stay unresolved and each one logs a warning",
    ),
    Patch(
        name="feature_cache.write_through",
        trigger=SFT_WORKFLOW,
        owner=SFT_TRAINER,
        attribute="__init__",
        make_replacement=make_write_through,
        parameters=("self", "finetuning_args", "processor"),
        why="a Kimi-Audio trainer's batches list their clips (audio_clips); with KIMI_AUDIO_FEATURE_CACHE set a "
        "TrainerCallback sets the model's feature sink to write-through for train() (epoch 2 never re-encodes; each "
        "rank logs hits / misses / writes); LLaMA-Factory builds the callback list itself (data/write_through.py)",
    ),
    Patch(
        name="nonfinite_guard.record",
        trigger=SFT_WORKFLOW,
        owner=SFT_TRAINER,
        attribute="compute_loss",
        make_replacement=nonfinite.make_record,
        parameters=("self", "model", "inputs"),
        why="a Kimi-Audio trainer keeps each training batch's loss (on the device) with the clip names of the batch's "
        "audio_clips list, so that a non-finite step can be named (integration/nonfinite.py)",
    ),
    Patch(
        name="nonfinite_guard.check",
        trigger=SFT_WORKFLOW,
        owner=SFT_TRAINER,
        attribute="_maybe_log_save_evaluate",
        make_replacement=nonfinite.make_check,
        distribution="transformers",
        parameters=("self", "tr_loss", "grad_norm", "model"),
        why="a NaN/inf loss or gradient norm stops the run with one line naming the batch's clips (exit 2), checked "
        "where the Trainer waits for the GPU anyway (log / eval / save / last step), before a checkpoint is written",
    ),
    *(
        Patch(
            name=f"audio_span_guard.{kind}",
            trigger=SFT_WORKFLOW,
            owner=f"llamafactory.data.processor.{kind}:{cls}",
            attribute="_encode_data_example",
            make_replacement=w.make_audio_span_guard,
            parameters=("self", "prompt", "response", "system", "tools", "images", "videos", "audios"),
            why="cutoff_len must not cut an audio span or an answer silently: the sample fails at preprocessing, by "
            "name, instead of a frame-count mismatch later or transcripts trained without their end (the processors "
            "are first used by run_sft)",
        )
        for kind, cls in (
            ("supervised", "SupervisedDatasetProcessor"),
            ("unsupervised", "UnsupervisedDatasetProcessor"),
        )
    ),
]

TUNER_PATCHES = [
    Patch(
        name="park_idle_weights",
        trigger=TUNER,
        owner=TUNER,
        attribute="_training_function",
        make_replacement=speed.make_park_idle_weights,
        parameters=("config",),
        why="at train begin the frozen MIMO branch and audio head (and Whisper, with a feature cache) move to host "
        "memory until a batch uses them: ~5 GiB less on the GPU for ASR LoRA (integration/speed.py)",
    ),
    Patch(
        name="streaming_audio_batches",
        trigger=TUNER,
        owner=TUNER,
        attribute="get_train_args",
        make_replacement=make_streaming_batches,
        parameters=("args",),
        why="streaming: true makes accelerate slice every batch tensor to the batch size, audio frames included; "
        "kimi_audio runs set accelerator_config.dispatch_batches=False (each rank reads its own part of the stream)",
    ),
    Patch(
        name="one_line_errors",
        trigger=TUNER,
        owner=TUNER,
        attribute="run_exp",
        make_replacement=make_run_guard,
        parameters=("args",),
        why="a Kimi-Audio run ends with the package's one-line message (file / sample / setting and the fix) and "
        "its exit code instead of a traceback; KIMI_AUDIO_DEBUG=1 keeps the traceback (integration/run_guard.py)",
    ),
]

WEBUI_PATCHES = [
    Patch(
        name="webui_extra_args_win",
        trigger=WEBUI_RUNNER,
        owner=f"{WEBUI_RUNNER}:Runner",
        attribute="_parse_train_args",
        make_replacement=make_extra_args_win,
        parameters=("self", "data"),
        why="Web UI: in a kimi_audio run the Extra arguments box wins over the UI's fields (`lora_target: all,mimo` "
        "typed there was replaced by the LoRA modules field), with a warning naming each (integration/webui_args.py)",
    ),
    Patch(
        name="webui_chat_speaks",
        trigger=WEBUI_CHATTER,
        owner=f"{WEBUI_CHATTER}:WebChatModel",
        attribute="stream",
        make_replacement=make_spoken_chat,
        parameters=(
            "self",
            "chatbot",
            "messages",
            "lang",
            "system",
            "tools",
            "image",
            "video",
            "audio",
            "max_new_tokens",
            "top_p",
            "temperature",
        ),  # fmt: skip
        why="Web UI chat: a Kimi-Audio checkpoint with audio_detokenizer/ + vocoder/ adds its spoken answer "
        "(generate_speech + the native detokenizer) as an audio player after the text (integration/webui_chat.py)",
    ),
]


# Triggers without an entry point of their own: the hook of the module named here (imported before them) registers
# theirs with the start-up finder, so a new trigger needs no reinstall of the package's entry points.
DEFERRED_TRIGGERS = {WEBUI_RUNNER: "llamafactory.extras.constants", WEBUI_CHATTER: "llamafactory.extras.constants"}

SERVE_PATCHES = [
    Patch(
        name="serve.input_audio",
        trigger=API_PROTOCOL,
        owner=API_PROTOCOL,
        attribute="ChatCompletionRequest",
        make_replacement=make_audio_chat_request,
        why="chat requests also take OpenAI's input_audio parts ({data: base64, format}) and the modalities field "
        "(integration/serve_protocol.py)",
    ),
    Patch(
        name="serve.audio_inputs",
        trigger=API_CHAT,
        owner=API_CHAT,
        attribute="_process_request",
        make_replacement=make_audio_requests,
        parameters=("request",),
        why="every audio of a chat request (data URL of any audio type, local file, http(s) URL, input_audio) is "
        "read, checked and decoded to 16 kHz before generation; a bad clip is HTTP 400 naming it, not a 500 "
        "(integration/serve_audio.py)",
    ),
    Patch(
        name="serve.eager_stream",
        trigger=API_CHAT,
        owner=API_CHAT,
        attribute="create_stream_chat_completion_response",
        make_replacement=make_eager_stream,
        parameters=("request", "chat_model"),
        why="stream: true processes the request before the 200 goes out (a bad clip is a 400, not a broken "
        "stream); an error while generating ends the stream with one error event",
    ),
    Patch(
        name="serve.spoken_answers",
        trigger=API_CHAT,
        owner=API_CHAT,
        attribute="create_chat_completion_response",
        make_replacement=make_spoken_answers,
        parameters=("request", "chat_model"),
        why='"modalities": ["text", "audio"] answers with message.audio (base64 WAV from generate_speech and the '
        "native detokenizer); a 400 without audio_detokenizer/ + vocoder/ (integration/serve_speech.py)",
    ),
    Patch(
        name="serve.app",
        trigger=API_APP,
        owner=API_APP,
        attribute="create_app",
        make_replacement=make_serving_app,
        parameters=("chat_model",),
        why="one-line JSON errors (no traceback, no 422 echoing the request) and POST /v1/audio/transcriptions "
        "(integration/serve_errors.py, serve_transcribe.py)",
    ),
]

PATCHES: tuple[Patch, ...] = (
    *AUTO_PATCHES,
    *LOADER_PATCHES,
    *SFT_PATCHES,
    *TUNER_PATCHES,
    *WEBUI_PATCHES,
    *SERVE_PATCHES,
)

# Applied instead of everything above when KIMI_AUDIO_DISABLE is set (_startup.install's only hook then).
OPT_OUT_NOTICE = Patch(
    name="opt_out_notice",
    trigger=TUNER,
    owner=TUNER,
    attribute="run_exp",
    make_replacement=make_opt_out_notice,
    parameters=("args",),
    why=f"only with {OPT_OUT}=1: a kimi_audio recipe that then fails says which variable turned the integration off",
)

REGISTRATIONS: dict[str, tuple[Callable[[ModuleType], None], ...]] = {
    "llamafactory.extras.constants": (reg.register_model_groups,),
    "llamafactory.data.mm_plugin": (reg.register_plugin,),
    "llamafactory.data.template": (reg.register_kimi_template,),
    "llamafactory.model.model_utils.visual": (reg.register_composite,),
    LOADER: (_registries,),
    TUNER: (quiet_cpu_precision_advice,),  # a logging.Filter on LLaMA-Factory's logger (integration/quiet_logs.py)
}


def triggers() -> list[str]:
    """Every module with an entry-point hook (its import applies something), in the order first listed."""
    names = [*REGISTRATIONS, *(patch.trigger for patch in PATCHES)]
    return list(dict.fromkeys(name for name in names if name not in DEFERRED_TRIGGERS))


def apply_trigger(module: ModuleType) -> list[str]:
    """The generic hook: the registrations and patch rows of ``module``. Returns the names of the rows applied."""
    for register in REGISTRATIONS.get(module.__name__, ()):
        register(module)
    for deferred, parent in DEFERRED_TRIGGERS.items():
        if parent == module.__name__:
            from .. import _startup

            _startup.register(f"kimi_audio_deferred:{deferred}", deferred, apply_trigger)
    return apply_patches(patch for patch in PATCHES if patch.trigger == module.__name__)


def apply_patches(patches: Iterable[Patch]) -> list[str]:
    """Apply rows after the version / signature check; a row whose signature changed is skipped, with one warning."""
    patches = list(patches)
    skipped = {patch.name: problem for patch in patches if (problem := patch.problem()) is not None}
    _warn_incompatible(patches, skipped)
    return [patch.name for patch in patches if patch.name not in skipped and patch.apply()]


_warned: set[str] = set()


def _warn_incompatible(patches: list[Patch], skipped: dict[str, str]) -> None:
    versions = [v for d in dict.fromkeys(p.distribution for p in patches) if (v := version_problem(d)) is not None]
    versions = [text for text in versions if text not in _warned]
    if not versions and not skipped:
        return
    _warned.update(versions)
    parts = versions + [f"skipped patch {name}: {problem}" for name, problem in skipped.items()]
    message = (
        f"{'; '.join(parts)}. Kimi-Audio runs may fail: install a supported version, or set {OPT_OUT}=1 to run "
        "LLaMA-Factory without this integration"
    )
    if settings.enabled("KIMI_AUDIO_STRICT"):
        raise EnvironmentProblem(message)
    if os.environ.get("RANK", "0") in ("", "0"):
        sys.stderr.write(f"llamafactory-kimi-audio: {message}\n")


def apply_opt_out_notice(tuner: ModuleType) -> list[str]:
    return apply_patches([OPT_OUT_NOTICE])


def patch_rows() -> list[dict[str, Any]]:
    """One dict per row (for ``doctor`` and the README): what, where, why, versions, state in this process."""
    return [
        {
            "name": patch.name,
            "trigger": patch.trigger,
            "target": f"{patch.owner}.{patch.attribute}",
            "distribution": patch.distribution,
            "supported": SUPPORTED_VERSIONS[patch.distribution],
            "installed": installed_version(patch.distribution),
            "applied": patch.applied,
            "opt_out_only": patch is OPT_OUT_NOTICE,  # applied instead of the others when KIMI_AUDIO_DISABLE is set
            "why": patch.why,
        }
        for patch in (*PATCHES, OPT_OUT_NOTICE)
    ]


def all_patches() -> list[Patch]:
    return list(PATCHES)


def revert_all() -> list[str]:
    """Undo every applied row (tests; a process that wants stock LLaMA-Factory back). Returns the reverted names."""
    return [patch.name for patch in reversed((*PATCHES, OPT_OUT_NOTICE)) if patch.revert()]
