"""Silent clips with a transcript at training time: LLaMA-Factory's own SFT encoding and collator on the tiny
checkpoint, with the training process's watch on (``data/features/silent_watch.py``). A silent clip whose answer is
text is named once however often it is collated; a silent no-speech example (empty answer) never is; error mode
stops the batch with one line naming the clip. The end-to-end run through ``llamafactory-cli`` is marked slow."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from lf_pipeline import conv, encode, load_tiny, sft_collator, sft_feature
from lf_runs import check_ok, make_asr_dataset, run_cli_each, train_config

from llamafactory_kimi_audio import settings
from llamafactory_kimi_audio.data.features import silent_watch
from llamafactory_kimi_audio.fileio.audio_silence import SilentClipError

RATE = 16000


@pytest.fixture(scope="module")
def setup(tiny_checkpoint):
    tokenizer_module, template, model = load_tiny(tiny_checkpoint.path)
    return {"tm": tokenizer_module, "template": template, "model": model}


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("silent_training")
    t = np.arange(RATE) / RATE
    waves = {"speech": (0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32), "silent": np.zeros(RATE, np.float32)}
    paths = {}
    for name, wave in waves.items():
        sf.write(folder / f"{name}.wav", wave, RATE, subtype="PCM_16")
        paths[name] = str(folder / f"{name}.wav")
    return paths


def _feature(setup: dict, audio: str, answer: str) -> dict:
    tok, processor = setup["tm"]["tokenizer"], setup["tm"]["processor"]
    ids, labels = encode(setup["template"], tok, processor, conv("<audio>", answer), [audio])
    return sft_feature(ids, labels, [audio])


@pytest.fixture
def watch(monkeypatch):
    """The training process's watch, fresh for the test (no atexit summary)."""
    tally = silent_watch._Tally()
    monkeypatch.setattr(silent_watch, "_tally", tally)
    return tally


def test_an_input_clip_has_a_transcript_when_its_answer_holds_text(setup, clips) -> None:
    tok = setup["tm"]["tokenizer"]
    features = [_feature(setup, clips["silent"], answer) for answer in ("hello world", "", "x")]
    ids = [feature["input_ids"] for feature in features]
    assert silent_watch.answered_audios(ids, [1, 1, 1], tok) == [True, False, True]
    assert silent_watch.answered_audios(ids, [2, 1, 1], tok) is None  # spans and audios disagree: nothing checked


def test_collator_names_a_silent_clip_with_text_once(setup, clips, watch, capsys) -> None:
    collate = sft_collator(setup["template"], setup["model"], setup["tm"])
    batch = [
        _feature(setup, clips["speech"], "one two"),
        _feature(setup, clips["silent"], "three four"),
        _feature(setup, clips["silent"], ""),  # a no-speech example: fine
    ]
    for _ in range(3):  # three steps / epochs over the same clip: one line
        assert collate(batch)["input_ids"].shape[0] == 3
    lines = [line for line in capsys.readouterr().err.splitlines() if "silent" in line]
    assert lines == [
        f"llamafactory-kimi-audio: warning: 1 silent clip (peak below -80 dBFS) with a non-empty transcript; training "
        f"on it (the run's end sums up the others): {clips['silent']}; the model would learn to write text for "
        "silence; fix or replace the audio, give the row an empty transcript (a no-speech example) or delete the "
        "row; KIMI_AUDIO_SILENT_CLIPS=error stops on them, KIMI_AUDIO_SILENT_CLIPS=off hides this"
    ]
    assert watch.count.value == 1 and watch.shown() == [clips["silent"]]
    silent_watch._summary(watch)
    summary = capsys.readouterr().err.strip().splitlines()
    assert len(summary) == 1 and summary[0].startswith(
        f"llamafactory-kimi-audio: warning: 1 silent clip (peak below -80 dBFS) with a non-empty transcript; trained "
        f"on: {clips['silent']}; "
    )


def test_a_silent_no_speech_example_is_never_named(setup, clips, watch, capsys) -> None:
    collate = sft_collator(setup["template"], setup["model"], setup["tm"])
    collate([_feature(setup, clips["silent"], ""), _feature(setup, clips["speech"], "words")])
    silent_watch._summary(watch)
    assert watch.count.value == 0 and "silent" not in capsys.readouterr().err


def test_error_mode_stops_the_batch_with_one_line(setup, clips, watch, monkeypatch) -> None:
    monkeypatch.setenv("KIMI_AUDIO_SILENT_CLIPS", "error")
    settings.reload()
    try:
        collate = sft_collator(setup["template"], setup["model"], setup["tm"])
        with pytest.raises(SilentClipError) as info:
            collate([_feature(setup, clips["speech"], "fine"), _feature(setup, clips["silent"], "not fine")])
        message = str(info.value)
        assert "\n" not in message and message.startswith(
            f"{clips['silent']}: silent clip (peak below -80 dBFS) with a non-empty transcript in a training batch; "
        )
        assert message.endswith("(KIMI_AUDIO_SILENT_CLIPS=warn keeps such clips with a warning)")
    finally:
        monkeypatch.delenv("KIMI_AUDIO_SILENT_CLIPS")
        settings.reload()


# --------------------------------------------------------------------------------- llamafactory-cli train (slow)
@pytest.mark.slow
def test_training_run_warns_once_or_stops_with_exit_2(tmp_path: Path, tiny_checkpoint) -> None:
    dataset = make_asr_dataset(tmp_path, n_train=4, n_test=1)
    records = json.loads((dataset / "asr_train.json").read_text(encoding="utf-8"))
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(RATE, np.float32), RATE, subtype="PCM_16")
    records[1]["audios"] = [str(silent)]  # a transcript on silence; the other rows stay as they are
    (dataset / "asr_train.json").write_text(json.dumps(records), encoding="utf-8")
    config = train_config(tiny_checkpoint.path, dataset, tmp_path / "out", max_steps=4, num_train_epochs=2)
    # two DataLoader workers, forked again each epoch: they share the rank's tally; the error run is independent of it
    runs = run_cli_each(
        "train",
        {
            "warn": {**config, "dataloader_num_workers": 2},
            "error": {**config, "output_dir": str(tmp_path / "out_error")},
        },
        tmp_path,
        {"error": {"KIMI_AUDIO_SILENT_CLIPS": "error"}},
    )
    rc, log = runs["warn"]
    check_ok(rc, log)
    named = [line for line in log.splitlines() if "silent clip" in line]
    assert len(named) == 2 and all(str(silent) in line for line in named), named  # the first meeting, the end
    assert "training on it" in named[0] and "trained on" in named[1]
    rc, log = runs["error"]
    assert rc == 2, log[-4000:]
    errors = [line for line in log.splitlines() if line.startswith("llamafactory-cli: ")]
    assert errors[-1].startswith(f"llamafactory-cli: {silent}: silent clip (peak below -80 dBFS)"), log[-4000:]


def test_packed_rows_with_speech_targets_flag_only_the_silent_input_with_text(tiny_checkpoint, tmp_path, monkeypatch):
    """ASR, TTS and a spoken reply packed in one row (``neat_packing``) and padded: a silent speech-output target is
    no input (never flagged); the silent ASR input with text is, in both layouts."""
    from lf_pipeline import packed_and_plain_batches, sft_columns
    from llamafactory.hparams import DataArguments

    def clip(name: str, wave: np.ndarray) -> str:
        sf.write(tmp_path / name, wave, RATE, subtype="PCM_16")
        return str(tmp_path / name)

    quiet, tone = np.zeros(RATE, np.float32), (0.3 * np.sin(np.arange(RATE) * 0.07)).astype(np.float32)
    asr, tts_target = clip("asr_silent.wav", quiet), clip("tts_silent.wav", quiet)
    question, answer = clip("question.wav", tone), clip("answer_silent.wav", quiet)
    columns = sft_columns(
        ["<audio>", "say three", "<audio>"],
        ["one two", "three<audio>", "four<audio>"],
        [[asr], [tts_target], [question, answer]],
    )
    data_args = DataArguments(template="kimi_audio", cutoff_len=256, packing=True, neat_packing=True)
    tokenizer_module, template, model = load_tiny(tiny_checkpoint.path, data_args)
    setup = dict(tm=tokenizer_module, data_args=data_args, template=template, model=model)
    tallies = [silent_watch._Tally(), silent_watch._Tally()]  # packed, then plain rows: one tally each
    monkeypatch.setattr(silent_watch, "_tally", tallies[0])
    original = silent_watch.note

    def note_then_switch(audios, waves, answered):  # the second collator call (plain rows) counts into tallies[1]
        original(audios, waves, answered)
        monkeypatch.setattr(silent_watch, "_tally", tallies[1])

    monkeypatch.setattr(silent_watch, "note", note_then_switch)
    packed_and_plain_batches(setup, columns)
    assert [(tally.count.value, tally.shown()) for tally in tallies] == [(1, [asr]), (1, [asr])]
