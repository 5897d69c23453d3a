"""The speech-output evaluation library: code alignment against a plain edit-distance reference, the speech test-set
reader (TTS and spoken-reply rows; rows it cannot score stop the run with the line and the fix), and the routing of
``evaluate``. The end-to-end run (overfit model beats the untrained one) is in ``test_speech_train.py``."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import soundfile as sf

from llamafactory_kimi_audio.errors import InputError
from llamafactory_kimi_audio.eval.evaluation import evaluate
from llamafactory_kimi_audio.eval.speech_eval import (
    SpeechScores,
    check_speech_clips,
    code_score,
    is_speech_test_set,
    load_speech_test_set,
)
from llamafactory_kimi_audio.fileio.textio import DataError


def edit_distance(ref: list[int], hyp: list[int]) -> int:
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, start=1):
        previous, row[0] = row[0], i
        for j, h in enumerate(hyp, start=1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (r != h))
    return row[-1]


def test_code_alignment_is_the_edit_distance():
    rng = random.Random(0)
    for _ in range(200):
        ref = [rng.randrange(6) for _ in range(rng.randint(1, 12))]
        hyp = [rng.randrange(6) for _ in range(rng.randint(0, 14))]
        score = code_score("u", ref, hyp)
        assert score.errors == edit_distance(ref, hyp), (ref, hyp)
        assert score.hits + score.substitutions + score.deletions == len(ref)
        assert score.exact == (ref == hyp)


def test_totals_are_over_the_set():
    scores = SpeechScores([code_score("a", [1, 2, 3, 4], [1, 2, 3, 4]), code_score("b", [5, 6], [])])
    assert scores.code_error_rate == pytest.approx(2 / 6)
    assert scores.exact_match == 0.5
    assert scores.length_ratio == pytest.approx(4 / 6)
    assert scores.to_dict()["metric"] == "codes"


def write_rows(tmp_path, rows) -> str:
    for name in ("q.wav", "a.wav"):
        sf.write(tmp_path / name, np.zeros(1600, dtype=np.float32), 16000)
    path = tmp_path / "set.json"
    path.write_text(json.dumps(rows))
    return str(path)


def turn(role: str, content: str) -> dict:
    return {"role": role, "content": content}


def test_reader_takes_tts_and_spoken_reply_rows(tmp_path):
    tts = {
        "id": "t1",
        "messages": [turn("user", "Read aloud: hi"), turn("assistant", "hi<audio>")],
        "audios": ["a.wav"],
    }
    reply = {
        "messages": [turn("user", "Answer: <audio>"), turn("assistant", "It is sunny.<audio>")],
        "audios": ["q.wav", "a.wav"],
    }
    path = write_rows(tmp_path, [tts, reply])
    assert is_speech_test_set(path)
    first, second = load_speech_test_set(path)
    assert (first.id, first.question_text, first.question_audio, first.answer_text) == (
        "t1",
        "Read aloud: hi",
        None,
        "hi",
    )
    assert first.target_audio == str(tmp_path / "a.wav")
    assert second.id == "1" and second.question_text == "Answer:" and second.question_audio == str(tmp_path / "q.wav")
    assert second.answer_text == "It is sunny."
    check_speech_clips([first, second], strict=True)


def test_reader_stops_at_rows_it_cannot_score(tmp_path):
    asr = {"messages": [turn("user", "<audio>"), turn("assistant", "hi")], "audios": ["q.wav"]}
    tts = {"messages": [turn("user", "say hi"), turn("assistant", "hi<audio>")], "audios": ["a.wav"]}
    two_turns = {"messages": [*tts["messages"], turn("user", "again"), turn("assistant", "hi<audio>")]}
    assert not is_speech_test_set(write_rows(tmp_path, [asr]))
    for bad, expected in (
        ([tts, asr], "evaluate ASR and speech-output rows as separate sets"),
        ([{**two_turns, "audios": ["a.wav", "a.wav"]}], "split multi-turn conversations"),
        ([{**tts, "audios": []}], "exactly one target audio"),
    ):
        with pytest.raises(DataError, match=expected) as info:
            load_speech_test_set(write_rows(tmp_path, bad))
        assert "set.json line" in str(info.value)
    items = load_speech_test_set(write_rows(tmp_path, [{**tts, "audios": ["missing.wav"]}]))
    with pytest.raises(InputError, match="missing.wav.*--strict stops"):
        check_speech_clips(items, strict=True)
    with pytest.raises(InputError, match="none of the 1 test clips can be read"):
        check_speech_clips(items)


def test_evaluate_routes_speech_sets_to_the_model(tmp_path):
    tts = {"messages": [turn("user", "say hi"), turn("assistant", "hi<audio>")], "audios": ["a.wav"]}
    with pytest.raises(InputError, match="evaluated with --model"):
        evaluate(write_rows(tmp_path, [tts]), out_dir=str(tmp_path / "out"))
