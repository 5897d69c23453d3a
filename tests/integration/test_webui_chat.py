"""Web UI chat speaks (issue 26 item 5): LlamaBoard's ``WebChatModel.stream`` as patched, without a browser.

A real ``WebChatModel`` loads the tiny checkpoints through LLaMA-Factory's HF engine (as the Chat tab's *Load model*
does) and streams an answer. With ``audio_detokenizer/`` + ``vocoder/`` the last chatbot message is the spoken
answer, a 24 kHz WAV that gradio's Chatbot turns into an audio message; without them the chat is LlamaBoard's own.
The browser test of the same is ``test_webui.py::test_chat_tab_speaks``.
"""

from __future__ import annotations

import inspect
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[0]))

from serve_helpers import clip_bytes  # noqa: E402

QUESTION = [{"role": "user", "content": "Answer:"}]


def web_chat(checkpoint: str):
    from llamafactory.chat import ChatModel
    from llamafactory.webui.chatter import WebChatModel

    chat = WebChatModel(manager=None, lazy_init=True)
    args = dict(model_name_or_path=checkpoint, template="kimi_audio", infer_backend="huggingface")
    ChatModel.__init__(chat, dict(args, trust_remote_code=True, infer_dtype="float32"))  # what load_model does
    return chat


def chat_tab_inputs(audio: str | None, temperature: float = 0.8) -> tuple:
    """The Chat tab's inputs for one question, up to ``temperature`` (the part every LLaMA-Factory version shares)."""
    chatbot = [{"role": "user", "content": "Answer:"}]
    return (chatbot, list(QUESTION), "en", "", "", None, None, audio, 60, 0.7, temperature)


def stream(chat, audio: str | None, temperature: float = 0.8) -> list[tuple[list, list]]:
    """Every (chatbot, messages) the patched stream yields for one question, in the Chat tab's argument order."""
    return list(chat.stream(*chat_tab_inputs(audio, temperature), *chat_tab_switches()))


def chat_tab_switches() -> list:
    """The Chat tab's inputs after ``temperature``, by name: 0.9.5 has three switches, LLaMA-Factory main adds a
    ``seed`` box (-1: no seed) before them; 5 keeps the voice seeded there too."""
    from llamafactory.webui.chatter import WebChatModel

    values = {"seed": 5, "skip_special_tokens": True, "escape_html": True, "enable_thinking": True}
    names = list(inspect.signature(inspect.unwrap(WebChatModel.stream)).parameters)
    return [values[name] for name in names[names.index("temperature") + 1 :]]


@pytest.fixture
def wav_question(tmp_path: Path) -> str:
    path = tmp_path / "question.wav"
    path.write_bytes(clip_bytes(1.0))
    return str(path)


def test_chat_with_a_detokenizer_adds_the_spoken_answer(tiny_speaking_checkpoint, wav_question):
    import gradio as gr
    import numpy as np
    import soundfile as sf

    chat = web_chat(tiny_speaking_checkpoint.path)
    yields = stream(chat, wav_question)
    *text_steps, (chatbot, messages) = yields
    assert text_steps, "the text answer is streamed first"
    text_bot, text_messages = text_steps[-1]
    assert chatbot[:-1] == text_bot and messages == text_messages  # the voice comes after the unchanged text
    assert messages[-1]["role"] == "assistant" and isinstance(chatbot[-2]["content"], str)
    spoken = chatbot[-1]
    assert spoken["role"] == "assistant" and spoken["content"]["path"].endswith(".wav")
    assert spoken["content"]["alt_text"]  # the spoken words (the tiny model's are gibberish)
    wave, rate = sf.read(spoken["content"]["path"])
    assert rate == 24000 and len(wave) > 0 and np.abs(wave).max() > 0  # the native detokenizer's speech
    assert os.stat(spoken["content"]["path"]).st_mode & 0o777 == 0o666 & ~_umask()

    shown = gr.Chatbot(type="messages").postprocess(chatbot).model_dump()[-1]
    assert shown["content"]["file"]["mime_type"] == "audio/wav", shown  # gradio renders it as an audio player

    again = stream(chat, wav_question)[-1][0][-1]
    assert Path(again["content"]["path"]).read_bytes() == Path(spoken["content"]["path"]).read_bytes()  # seeded


def test_the_seed_box_picks_the_voice(tiny_speaking_checkpoint, wav_question):
    """LLaMA-Factory main's Chat tab has a *Seed* box after the temperature (0.9.5 has none): a seed ≥ 0 gives its
    own wave every time, -1 a new one each time. ``main_stream`` has main's signature and streams a fixed text."""
    from llamafactory_kimi_audio.integration.webui_chat import make_spoken_chat

    def main_stream(self, chatbot, messages, lang, system, tools, image, video, audio, max_new_tokens, top_p,
                    temperature, seed, skip_special_tokens, escape_html, enable_thinking):  # fmt: skip
        answer = {"role": "assistant", "content": "a"}
        yield [*chatbot, answer], [*messages, answer]

    chat, spoken_stream = web_chat(tiny_speaking_checkpoint.path), make_spoken_chat(main_stream)

    def voice(seed: int) -> bytes:
        *_, (answer_bot, _messages) = spoken_stream(chat, *chat_tab_inputs(wav_question), seed, True, True, True)
        return Path(answer_bot[-1]["content"]["path"]).read_bytes()

    assert voice(3) == voice(3)
    assert voice(3) != voice(4)
    assert voice(-1) != voice(-1)


def test_chat_without_a_detokenizer_is_text_only(tiny_checkpoint, wav_question):
    chat = web_chat(tiny_checkpoint.path)
    yields = stream(chat, wav_question)
    chatbot, messages = yields[-1]
    assert [message["role"] for message in chatbot] == ["user", "assistant"]
    assert isinstance(chatbot[-1]["content"], str) and messages[-1]["role"] == "assistant"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_an_answer_without_audio_codes_writes_no_player(tmp_path):
    import io

    import numpy as np
    import soundfile as sf

    from llamafactory_kimi_audio.integration.webui_chat import write_spoken_answer

    empty = io.BytesIO()
    sf.write(empty, np.zeros(0, dtype=np.float32), 24000, format="WAV", subtype="PCM_16")  # what speak() gives
    assert write_spoken_answer(empty.getvalue()) is None


def test_the_voice_answers_the_last_user_turn():
    from llamafactory_kimi_audio.integration.webui_chat import spoken_question

    first = [{"role": "user", "content": "<audio>Answer:"}]
    assert spoken_question(first, "q.wav") == ("Answer:", "q.wav")  # LLaMA-Factory's placeholder is not read
    later = [*first, {"role": "assistant", "content": "a"}, {"role": "user", "content": "And then?"}]
    assert spoken_question(later, "q.wav") == ("And then?", None)  # the clip belongs to the first turn
    assert spoken_question([*later, {"role": "observation", "content": "{}"}], None) is None
