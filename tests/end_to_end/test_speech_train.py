"""Speech output end to end: a real ``llamafactory-cli train`` on TTS samples (tiny random model, full fine-tune
with the MIMO branch trainable), then greedy speech generation, in-process and through ``kimi-audio-lf respond``,
returns the target codes; the audio loss falls."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from lf_runs import two_at_a_time

from llamafactory_kimi_audio import DISABLE_ENV
from llamafactory_kimi_audio.data.convert.dataset_files import dataset_info_entry
from llamafactory_kimi_audio.models.layout import LayoutEncoder, Segment, speech_marker
from llamafactory_kimi_audio.models.modeling_kimi_audio import KimiAudioForCausalLM
from llamafactory_kimi_audio.models.processing_kimi_audio import KimiAudioProcessor

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
INSTRUCTION = "Read the following text aloud:"
SAMPLES = {"abc": 0.6, "hello": 0.8}  # text -> seconds of target audio (8 and 10 codes)


def write_dataset(directory: Path) -> dict[str, str]:
    rows, paths = [], {}
    for index, (text, seconds) in enumerate(SAMPLES.items()):
        rng = np.random.default_rng(index)
        paths[text] = str(directory / f"target{index}.wav")
        sf.write(paths[text], (0.3 * rng.standard_normal(int(16000 * seconds))).astype(np.float32), 16000)
        messages = [
            {"role": "user", "content": f"{INSTRUCTION} {text}"},
            {"role": "assistant", "content": f"{text}<audio>"},
        ]
        rows.append({"messages": messages, "audios": [paths[text]]})
    (directory / "tts.json").write_text(json.dumps(rows))
    entry = dataset_info_entry("tts.json")  # what kimi-audio-lf convert writes
    (directory / "dataset_info.json").write_text(json.dumps({"tts": entry}))
    return paths


def target_codes(model, processor, path: str) -> list[int]:
    wave, _ = sf.read(path, dtype="float32")
    inputs = processor.audio_inputs([wave])
    return model.audio_codes_from_features(inputs["semantic_input_features"], inputs["semantic_frame_mask"]).tolist()


def audio_loss(model, processor, text: str, codes: list[int]) -> float:
    """The audio term alone: text targets masked out (they sit inside the delay rows for these short texts)."""
    layout = LayoutEncoder(processor.tokenizer)
    ids, labels = layout.conversation(
        [("user", f"{INSTRUCTION} {text}"), ("assistant", text + speech_marker(len(codes)))]
    )
    start = ids.index(processor.tokenizer.convert_tokens_to_ids("<|reserved_token_13|>"))
    labels = [-100] * (start + 7) + labels[start + 7 :]  # keep rows from s + D + 1: codes and msg_end
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels]), audio_codes=torch.tensor(codes))
    return out.loss.item()


def greedy_codes(model, processor, text: str) -> tuple[list[int], str]:
    prompt = LayoutEncoder(processor.tokenizer).speech_prompt([Segment(text=f"{INSTRUCTION} {text}")])
    out = model.generate_speech(torch.tensor([prompt]), max_new_tokens=40)
    return out.codes, processor.tokenizer.decode(out.text_ids)


RECIPE = {  # examples/tiny_demo.yaml's settings, plus the MIMO branch trainable (freeze_vision_tower: false)
    "trust_remote_code": True,
    "stage": "sft",
    "do_train": True,
    "finetuning_type": "full",
    "freeze_vision_tower": False,
    "freeze_multi_modal_projector": False,
    "disable_gradient_checkpointing": True,
    "dataset": "tts",
    "template": "kimi_audio",
    "cutoff_len": 128,
    "preprocessing_num_workers": 1,
    "overwrite_cache": True,
    "logging_steps": 10,
    "save_strategy": "no",
    "report_to": "none",
    "per_device_train_batch_size": 2,
    "learning_rate": 2.0e-3,
    "max_steps": 120,
    "lr_scheduler_type": "constant",
    "max_grad_norm": 1.0,
    "use_cpu": True,
    "seed": 0,
    "overwrite_output_dir": True,
}


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != DISABLE_ENV}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return env


def train(checkpoint: str, workdir: Path) -> Path:
    out_dir = workdir / "trained"
    config = {**RECIPE, "model_name_or_path": checkpoint, "dataset_dir": str(workdir), "output_dir": str(out_dir)}
    (workdir / "train.yaml").write_text(json.dumps(config))
    command = [str(BIN / "llamafactory-cli"), "train", str(workdir / "train.yaml")]
    done = subprocess.run(command, cwd=workdir, env=environment(), capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    return out_dir


def respond(model_dir: Path, text: str, out: Path) -> dict:
    command = [str(BIN / "kimi-audio-lf"), "respond", str(model_dir), "--text", text, "--out", str(out)]
    command += ["--max-new-tokens", "40", "--device", "cpu"]
    done = subprocess.run(command, env=environment(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.with_suffix(".json").read_text())


@pytest.fixture(scope="module")
def trained_run(tiny_checkpoint, tmp_path_factory) -> tuple[Path, Path, dict[str, str]]:
    """(work dir with tts.json, trained model dir, text -> target wav): one training run for the tests below."""
    workdir = tmp_path_factory.mktemp("speech_train")
    paths = write_dataset(workdir)
    return workdir, train(tiny_checkpoint.path, workdir), paths


def test_speech_output_training_overfits(tiny_checkpoint, trained_run):
    tmp_path, out_dir, paths = trained_run
    base = KimiAudioForCausalLM.from_pretrained(tiny_checkpoint.path).eval()
    processor = KimiAudioProcessor.from_pretrained(tiny_checkpoint.path)
    targets = {text: target_codes(base, processor, path) for text, path in paths.items()}
    assert [len(codes) for codes in targets.values()] == [8, 10]
    before = {text: audio_loss(base, processor, text, codes) for text, codes in targets.items()}
    trained = KimiAudioForCausalLM.from_pretrained(str(out_dir)).eval()
    for text, codes in targets.items():
        after = audio_loss(trained, processor, text, codes)
        assert after < 0.2 * before[text], (text, before[text], after)
        generated, spoken_text = greedy_codes(trained, processor, text)
        assert generated == codes and spoken_text == text
    record = respond(out_dir, f"{INSTRUCTION} hello", tmp_path / "answer")
    assert record["codes"] == targets["hello"] and record["text"] == "hello"
    assert np.load(tmp_path / "answer.npy").tolist() == [targets["hello"]]


def evaluate_cli(model_dir: str, data: Path, out: Path) -> tuple[dict, str]:
    command = [str(BIN / "kimi-audio-lf"), "evaluate", "--model", model_dir, "--data", str(data), "--out", str(out)]
    done = subprocess.run(
        command + ["--device", "cpu"], env=environment(), capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "summary.json").read_text()), done.stdout


def test_evaluate_scores_spoken_answers_by_their_codes(tiny_checkpoint, trained_run):
    """``kimi-audio-lf evaluate`` on the TTS set: the overfit model's greedy codes are closer to the targets than the
    untrained model's; the per-utterance rows agree with the totals and with the targets' own codes."""
    workdir, out_dir, paths = trained_run
    (base, _), (tuned, tuned_out) = two_at_a_time(  # two independent evaluations, side by side
        evaluate_cli,
        (tiny_checkpoint.path, str(out_dir)),
        [workdir / "tts.json"] * 2,
        (workdir / "eval_base", workdir / "eval_tuned"),
    )
    assert base["speech"]["metric"] == tuned["speech"]["metric"] == "codes"
    assert base["speech"]["n"] == tuned["speech"]["n"] == len(paths)
    assert tuned["speech"]["code_error_rate"] < base["speech"]["code_error_rate"]
    assert tuned["speech"]["exact_match"] > base["speech"]["exact_match"]
    assert tuned["cer"] < base["cer"]  # the text stream: the answer text itself
    assert "code error rate" in tuned_out and "code error rate" in (workdir / "eval_tuned" / "report.md").read_text()
    assert "(code level: no detokenizer)" in tuned_out
    processor = KimiAudioProcessor.from_pretrained(tiny_checkpoint.path)
    model = KimiAudioForCausalLM.from_pretrained(tiny_checkpoint.path).eval()
    rows = [json.loads(line) for line in (workdir / "eval_tuned" / "speech_utterances.jsonl").read_text().splitlines()]
    assert [row["target_len"] for row in rows] == [len(target_codes(model, processor, p)) for p in paths.values()]
    errors = sum(r["substitutions"] + r["deletions"] + r["insertions"] for r in rows)
    assert tuned["speech"]["code_error_rate"] == pytest.approx(errors / sum(r["target_len"] for r in rows))


def test_chat_of_a_speech_model_shows_text(trained_run):
    """The Web UI chat (LLaMA-Factory's ChatModel, HF backend, plain and streamed) on a model trained to speak: HF
    ``generate`` is the official "text" mode, so the answer is text (no detokenizer here, hence no audio)."""
    from llamafactory.chat import ChatModel

    _, out_dir, _ = trained_run
    args = {"model_name_or_path": str(out_dir), "template": "kimi_audio", "trust_remote_code": True}
    chat = ChatModel({**args, "max_new_tokens": 8, "do_sample": False, "infer_backend": "huggingface"})
    messages = [{"role": "user", "content": f"{INSTRUCTION} hello"}]
    responses = chat.chat(messages)
    assert len(responses) == 1 and isinstance(responses[0].response_text, str)
    assert 0 < responses[0].response_length <= 8
    assert "".join(chat.stream_chat(messages)) == responses[0].response_text
    history = [*messages, {"role": "assistant", "content": responses[0].response_text or "hello"}]
    follow_up = chat.chat([*history, {"role": "user", "content": "again"}])  # the next turn of a Web UI chat
    assert isinstance(follow_up[0].response_text, str)
