"""The detokenizer behind the commands: ``kimi-audio-lf make-tiny --detokenizer`` + ``respond`` writing the wave,
the line ``respond`` prints when an answer has no (complete) audio, control characters escaped on the console; and
``evaluate`` adding the ASR round trip of the generated audio only when the checkpoint has a detokenizer.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from lf_runs import two_at_a_time

from llamafactory_kimi_audio.models.detokenizer import load_detokenizer


def _cli(*args):
    import subprocess
    import sys

    bin_dir = os.path.dirname(sys.executable)
    command = [os.path.join(bin_dir, "kimi-audio-lf"), *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
def test_respond_writes_the_native_detokenizer_wave(tmp_path):
    import json

    import soundfile as sf

    model = tmp_path / "tiny"
    _cli("make-tiny", str(model), "--detokenizer")
    assert os.path.isfile(model / "audio_detokenizer" / "config.yaml") and os.path.isfile(
        model / "vocoder" / "model.pt"
    )
    # sampling (the random tiny model answers greedily with blanks only); top-k within the tiny vocabulary
    flags = ["--text", "hello there", "--max-new-tokens", "60", "--device", "cpu", "--audio-temperature", "1.0",
             "--audio-top-k", "1000", "--seed", "0"]  # fmt: skip
    # a budget inside the 6 forced blank audio steps: no wav, and the console says why and what to change
    short = ["--text", "hello there", "--max-new-tokens", "5", "--device", "cpu"]
    without_vocoder = tmp_path / "tiny_without_vocoder"  # without the detokenizer: codes only, as before
    without_vocoder.mkdir()
    for item in model.iterdir():
        if item.name != "vocoder":
            (without_vocoder / item.name).symlink_to(item)
    _, out, _ = two_at_a_time(  # three independent answers, two at a time
        lambda directory, name, more: _cli("respond", str(directory), "--out", str(tmp_path / name), *more),
        (model, model, without_vocoder),
        ("a", "short", "b"),
        (flags, short, flags),
    )
    record = json.loads((tmp_path / "a.json").read_text())
    assert record["num_codes"] > 0 and record["wav"] == f"{tmp_path / 'a'}.wav"
    wave, rate = sf.read(record["wav"], dtype="float32")
    assert rate == 24000 and wave.shape == (record["num_codes"] * 1920,)
    expected = load_detokenizer(str(model), device="cpu")(record["codes"], generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(wave, expected.numpy(), atol=1.5 / 32768)  # PCM_16 rounding

    assert json.loads((tmp_path / "short.json").read_text())["num_codes"] == 0
    assert not (tmp_path / "short.wav").exists()
    assert f"no {tmp_path / 'short'}.wav: the budget of 5 decoding steps ended before the audio started" in out
    assert "6 forced blank audio steps" in out and "raise --max-new-tokens" in out

    assert json.loads((tmp_path / "b.json").read_text())["wav"] is None and not (tmp_path / "b.wav").exists()


def test_respond_says_why_an_answer_has_no_audio():
    """Each way a spoken answer ends without (all of) its audio has its own line; a complete answer has none."""
    from types import SimpleNamespace

    from llamafactory_kimi_audio.cli.respond import audio_note
    from llamafactory_kimi_audio.models.speech_generation import SpeechOutput

    ids = SimpleNamespace(delay=6, msg_end=2, media_end=3, offset=100)

    def answer(audio: list[int], steps: int) -> SpeechOutput:
        codes = [token - ids.offset for token in audio if token >= ids.offset]
        return SpeechOutput([], codes, audio, [(0, 0)] * steps)

    assert "ended before the audio started" in audio_note(answer([], 5), ids)
    assert "before the audio end: the answer is cut" in audio_note(answer([101, 102], 8), ids)
    assert audio_note(answer([101, 102, ids.msg_end], 8), ids) is None
    assert "does not speak this answer" in audio_note(answer([ids.msg_end], 6), ids)
    silent = audio_note(answer([7, 8, 9], 9), ids)
    assert "in 3 steps after the 6 forced blanks the audio head gave no speech code" in silent
    assert "budget of 9 decoding steps ran out" in silent


def test_respond_escapes_control_characters_of_the_answer():
    from llamafactory_kimi_audio.cli.respond import console_text

    shown = console_text("ok\x1b[31mred\x07\r\u202eé三")
    assert shown.isprintable() and "é三" in shown and "\\x1b" in shown and "\\u202e" in shown


@pytest.fixture(scope="module")
def tiny_speaker(tmp_path_factory):
    from llamafactory_kimi_audio.eval.transcribe import load_for_inference
    from llamafactory_kimi_audio.models.tiny import make_tiny_checkpoint

    directory = str(tmp_path_factory.mktemp("tiny_speaker"))
    make_tiny_checkpoint(directory, detokenizer=True)
    model, processor = load_for_inference(directory, None, "cpu")
    return directory, model, processor


def test_round_trip_transcribes_the_detokenized_answers(tiny_speaker, tmp_path):
    import soundfile as sf

    from llamafactory_kimi_audio.eval.speech_eval import SpeechItem
    from llamafactory_kimi_audio.eval.speech_roundtrip import round_trip
    from llamafactory_kimi_audio.eval.transcribe import Generation, transcribe
    from llamafactory_kimi_audio.models.special_tokens import DEFAULT_INSTRUCTION

    _, model, processor = tiny_speaker
    items = [SpeechItem(u, "say it", None, "unused.wav", text) for u, text in (("a/1", "hello there"), ("b", "bye"))]
    codes = [torch.randint(0, 256, (40,), generator=torch.Generator().manual_seed(1)).tolist(), []]
    trip = round_trip(model, processor, items, codes, str(tmp_path), "standard", "auto", progress=False)
    assert trip.wavs[1] is None and trip.hyps[1] == ""  # no codes: nothing to hear
    wave, rate = sf.read(trip.wavs[0], dtype="float32")
    assert os.path.dirname(trip.wavs[0]) == str(tmp_path / "speech_wav") and rate == 24000
    assert wave.shape == (40 * 1920,)
    direct = transcribe(model, processor, [trip.wavs[0]], [DEFAULT_INSTRUCTION["en"]], Generation(), progress=False)
    assert trip.hyps[0] == direct[0]
    assert trip.report.n == 2 and trip.to_dict()["metric"] == "asr_round_trip"
    rows = {row.id: row for row in trip.report.utterances}
    assert rows["a/1"].hyp == direct[0] and rows["a/1"].audio == trip.wavs[0]
    assert rows["b"].hyp == "" and rows["b"].hits == 0 and rows["b"].deletions == rows["b"].ref_len  # all missed


def test_evaluate_adds_the_round_trip_only_with_a_detokenizer(tiny_speaker, tmp_path):
    import json
    import shutil

    import soundfile as sf

    from llamafactory_kimi_audio.eval.evaluation import evaluate

    directory, model, processor = tiny_speaker
    rng = np.random.default_rng(0)
    sf.write(tmp_path / "a.wav", (0.1 * rng.standard_normal(16000)).astype(np.float32), 16000)
    row = {"messages": [{"role": "user", "content": "say hi"}, {"role": "assistant", "content": "hi<audio>"}],
           "audios": ["a.wav"]}  # fmt: skip
    data = tmp_path / "set.json"
    data.write_text(json.dumps([row, {**row, "id": "two"}]))
    result = evaluate(str(data), model=model, processor=processor, out_dir=str(tmp_path / "out"), progress=False)
    block = result.summary["speech"]["round_trip"]
    assert block["metric"] == "asr_round_trip" and block["n"] == 2
    lines = (tmp_path / "out" / "speech_utterances.jsonl").read_text().splitlines()
    assert all("round_trip_hyp" in json.loads(line) for line in lines) and len(lines) == 2
    assert "round-trip" in (tmp_path / "out" / "report.md").read_text()
    cli_out = str(tmp_path / "cli")
    printed = _cli("evaluate", "--model", directory, "--data", str(data), "--out", cli_out, "--device", "cpu")
    cer = json.loads((tmp_path / "cli" / "summary.json").read_text())["speech"]["round_trip"]["cer"]
    assert f"round-trip CER {100 * cer:.2f}%" in printed and "no detokenizer" not in printed

    shutil.rmtree(os.path.join(directory, "vocoder"))
    result = evaluate(str(data), model=model, processor=processor, out_dir=str(tmp_path / "out2"), progress=False)
    assert "round_trip" not in result.summary["speech"]
    assert "no ASR round trip" in (tmp_path / "out2" / "report.md").read_text()
