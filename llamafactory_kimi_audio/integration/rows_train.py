"""Patch rows of training: LLaMA-Factory's argument parser, SFT metric, trainer, data processors and tuner
(``patches.py`` holds the table). Module-level functions are replaced where LLaMA-Factory defines them, applied when
that module executes; class attributes are replaced on the class itself, which every importer shares."""

from __future__ import annotations

from ..patching import Patch
from . import nonfinite, speed
from . import wrappers as w
from .feature_cache_hook import make_write_through
from .fp8 import make_fp8_decoder
from .run_guard import make_cli_guard, make_opt_out_notice, make_run_guard

PARSER = "llamafactory.hparams.parser"
METRIC = "llamafactory.train.sft.metric"  # ComputeSimilarity: imported by the sft and hyper_parallel workflows
SFT_WORKFLOW = "llamafactory.train.sft.workflow"  # run_sft: imports the trainer and the data processors
SFT_TRAINER = "llamafactory.train.sft.trainer:CustomSeq2SeqTrainer"
TUNER = "llamafactory.train.tuner"
OPT_OUT = "KIMI_AUDIO_DISABLE"

TRAIN_PATCHES = [
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
        trigger=METRIC,
        owner=METRIC,
        attribute="ComputeSimilarity",
        make_replacement=w.make_asr_metrics,
        parameters=("tokenizer",),
        why="predict_with_generate reports CER/WER (jiwer) instead of BLEU/ROUGE for Kimi-Audio, in every workflow "
        "that imports ComputeSimilarity (sft, hyper_parallel)",
    ),
    Patch(
        name="asr_predict_dependencies",
        trigger=PARSER,
        owner=PARSER,
        attribute="_check_extra_dependencies",
        make_replacement=w.make_asr_predict_dependencies,
        parameters=("model_args", "finetuning_args", "training_args"),
        why="predict_with_generate demands jieba/nltk/rouge_chinese for BLEU/ROUGE; Kimi-Audio scores CER/WER instead",
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
        "rank logs hits / misses / writes); LLaMA-Factory builds the callback list itself "
        "(data/features/write_through.py)",
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
        name="one_line_errors",
        trigger=TUNER,
        owner=TUNER,
        attribute="run_exp",
        make_replacement=make_run_guard,
        parameters=("args",),
        why="a Kimi-Audio run ends with the package's one-line message (file / sample / setting and the fix) and "
        "its exit code instead of a traceback; KIMI_AUDIO_DEBUG=1 keeps the traceback (integration/run_guard.py)",
    ),
    Patch(
        name="one_line_errors.export",
        trigger=TUNER,
        owner=TUNER,
        attribute="export_model",
        make_replacement=make_cli_guard,
        parameters=("args",),
        why="llamafactory-cli export of a Kimi-Audio recipe checks model_name_or_path and adapter_name_or_path before "
        "the model loads and ends with one line and an exit code instead of a traceback (integration/run_guard.py)",
    ),
]

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
