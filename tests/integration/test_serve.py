"""``llamafactory-cli api`` serving a tiny Kimi-Audio checkpoint: audio in chat completions (data URLs of every
format, local files, OpenAI's ``input_audio``, several clips, multi-turn, streaming), one-line HTTP 400s for bad audio
while the server keeps serving, and ``POST /v1/audio/transcriptions`` through the real ``openai`` client.

One server process for the module (the real CLI in a subprocess, found ready by polling ``/v1/models``).
"""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import numpy as np
import pytest
from serve_helpers import ApiServer, clip_bytes, data_url

MAX_SECONDS = 45  # the server's KIMI_AUDIO_SERVE_MAX_SECONDS here: 40 s passes (2 Whisper chunks), 50 s does not
TIMEOUT = 600.0
AUDIO_TOKENS_1S = 13  # 12.5 Hz frames of a 1 s clip


@pytest.fixture(scope="module")
def server(tiny_checkpoint, tmp_path_factory):
    api = ApiServer(
        tiny_checkpoint.path, tmp_path_factory.mktemp("serve"), env={"KIMI_AUDIO_SERVE_MAX_SECONDS": str(MAX_SECONDS)}
    )
    api.start()
    yield api
    api.stop()


def chat(server: ApiServer, content: object, stream: bool = False, messages: list | None = None) -> httpx.Response:
    body = {"model": "kimi", "messages": messages or [{"role": "user", "content": content}], "max_tokens": 3}
    return httpx.post(f"{server.url}/v1/chat/completions", json={**body, "stream": stream}, timeout=TIMEOUT)


def audio_part(url: str) -> dict:
    return {"type": "audio_url", "audio_url": {"url": url}}


def input_audio(data: bytes, fmt: str = "wav") -> dict:
    return {"type": "input_audio", "input_audio": {"data": base64.b64encode(data).decode(), "format": fmt}}


def answer(response: httpx.Response) -> dict:
    assert response.status_code == 200, response.text
    body = response.json()
    assert isinstance(body["choices"][0]["message"]["content"], str)
    return body


def one_line_error(response: httpx.Response, status: int = 400) -> str:
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and "Traceback" not in detail, detail
    assert response.json().get("error", {"message": detail})["message"] == detail  # OpenAI's error shape too
    return detail


# ------------------------------------------------------------------------------------------------- audio in chat
FORMATS = {
    "wav": ("WAV", None, "audio/wav"),
    "flac": ("FLAC", None, "audio/flac"),
    "mp3": ("MP3", "MPEG_LAYER_III", "audio/mpeg"),
    "ogg": ("OGG", "VORBIS", "audio/ogg"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", FORMATS)
def test_data_urls_of_every_format(server, name):
    fmt, subtype, mime = FORMATS[name]
    body = answer(
        chat(
            server,
            [{"type": "text", "text": "What is said?"}, audio_part(data_url(clip_bytes(1.0, fmt, subtype), mime))],
        )
    )
    assert body["usage"]["prompt_tokens"] > AUDIO_TOKENS_1S  # the clip's frames are in the prompt


@pytest.mark.slow
def test_local_file_inside_safe_media_and_refused_outside(server, tmp_path):
    inside = server.safe_media / "clip.wav"
    inside.write_bytes(clip_bytes(1.0))
    answer(chat(server, [audio_part(str(inside))]))
    outside = tmp_path / "clip.wav"
    outside.write_bytes(clip_bytes(1.0))
    refused = one_line_error(chat(server, [audio_part(str(outside))]))  # LLaMA-Factory's own check_lfi_path
    assert "Invalid or inaccessible file path" in refused


@pytest.mark.slow
def test_several_audios_and_input_audio_parts(server):
    text = {"type": "text", "text": "and"}  # with text in the turn, no default instruction is added
    one = answer(chat(server, [text, input_audio(clip_bytes(1.0))]))["usage"]["prompt_tokens"]
    two = answer(
        chat(
            server,
            [
                input_audio(clip_bytes(1.0)),
                text,
                input_audio(clip_bytes(1.0, "MP3", "MPEG_LAYER_III"), "mp3"),
            ],
        )
    )
    assert two["usage"]["prompt_tokens"] >= one + AUDIO_TOKENS_1S


@pytest.mark.slow
def test_multi_turn_with_audio_in_two_user_turns(server):
    messages = [
        {"role": "user", "content": [audio_part(data_url(clip_bytes(1.0)))]},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": [{"type": "text", "text": "again:"}, input_audio(clip_bytes(2.0))]},
    ]
    body = answer(chat(server, None, messages=messages))
    assert body["usage"]["prompt_tokens"] > 3 * AUDIO_TOKENS_1S
    system = [{"role": "system", "content": "You are a transcriber."}, *messages]
    assert "no system role" in one_line_error(chat(server, None, messages=system))  # the package's InputError


@pytest.mark.slow
def test_streaming_answer(server):
    response = chat(server, [audio_part(data_url(clip_bytes(1.0)))], stream=True)
    assert response.status_code == 200, response.text
    events = [line[len("data: ") :] for line in response.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert not any("error" in chunk for chunk in chunks)


# -------------------------------------------------------------------------------------------------- bad requests
def truncated_wav() -> bytes:
    whole = clip_bytes(2.0)
    return whole[: len(whole) // 2]


def nan_wav() -> bytes:
    """A float WAV from a broken pipeline: a valid file whose samples hold NaN from 0.25 s on."""
    import io

    import soundfile as sf

    wave = np.full(16000, 0.1, np.float32)
    wave[4000:4010] = np.nan
    out = io.BytesIO()
    sf.write(out, wave, 16000, format="WAV", subtype="FLOAT")
    return out.getvalue()


M4A_HEADER = b"\x00\x00\x00\x18ftypM4A \x00\x00\x02\x00"  # an MP4/AAC container: libsndfile has no reader
BAD = {
    "not_audio": lambda: [audio_part(data_url(b"this is not audio at all " * 40))],
    "empty": lambda: [audio_part(data_url(b""))],
    "truncated": lambda: [audio_part(data_url(truncated_wav()))],
    "nan_samples": lambda: [input_audio(nan_wav())],
    "too_long": lambda: [input_audio(clip_bytes(MAX_SECONDS + 5.0, "FLAC"))],
    "m4a_container": lambda: [audio_part(data_url(M4A_HEADER + bytes(600), "audio/mp4"))],
    "bad_base64": lambda: [audio_part("data:audio/wav;base64,@@@not-base64@@@")],
    "unsupported_format_field": lambda: [{"type": "input_audio", "input_audio": {"data": "AAAA", "format": "aac"}}],
    "unknown_part_type": lambda: [{"type": "input_sound", "text": "x"}],
    "private_url": lambda: [audio_part("http://127.0.0.1:9/clip.wav")],  # LLaMA-Factory's SSRF check
}
EXPECTED = {
    "not_audio": "unreadable audio",
    "empty": "empty",
    "truncated": "truncated",
    "nan_samples": "not finite (NaN/inf), the first at 0.250 s; send audio without NaN/inf samples",  # not 'send WAV'
    "too_long": f"the limit is {MAX_SECONDS} s",
    "m4a_container": "send WAV, FLAC, MP3 or OGG",  # a format libsndfile does not read
    "bad_base64": "not valid base64",
    "unsupported_format_field": "'aac' is not supported",
    "unknown_part_type": "invalid request: messages.0.content",
    "private_url": "private or reserved",
}


@pytest.mark.slow
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("case", BAD)
def test_bad_audio_is_one_line_400_and_the_server_keeps_serving(server, case, stream):
    detail = one_line_error(chat(server, BAD[case](), stream=stream))
    assert EXPECTED[case] in detail, detail
    assert server.alive()
    answer(chat(server, [audio_part(data_url(clip_bytes(0.5)))]))  # the next good request is served


# ------------------------------------------------------------------------------------------------ spoken answers
@pytest.fixture(scope="module")
def speaking_server(tmp_path_factory):
    """A second server on a tiny checkpoint that has audio_detokenizer/ + vocoder/."""
    from llamafactory_kimi_audio.models.tiny import make_tiny_checkpoint

    workdir = tmp_path_factory.mktemp("speaking")
    checkpoint = make_tiny_checkpoint(str(workdir / "tiny"), detokenizer=True)
    api = ApiServer(checkpoint.path, workdir)
    api.start()
    yield api
    api.stop()


def speech_request(server: ApiServer, content: list, **extra: object) -> httpx.Response:
    body = {"model": "kimi", "messages": [{"role": "user", "content": content}], "max_tokens": 12}
    body.update(modalities=["text", "audio"], audio={"voice": "default", "format": "wav"}, **extra)
    return httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=TIMEOUT)


@pytest.mark.slow
def test_spoken_answer_is_a_base64_wav(speaking_server):
    import io

    import soundfile as sf

    question = [{"type": "text", "text": "Answer:"}, input_audio(clip_bytes(1.0))]
    response = speech_request(speaking_server, question, temperature=0.8, max_tokens=60)  # sampled audio head
    assert response.status_code == 200, response.text
    message = response.json()["choices"][0]["message"]
    audio = message["audio"]
    assert audio["format"] == "wav" and audio["id"].startswith("audio_") and audio["transcript"] == message["content"]
    wave, rate = sf.read(io.BytesIO(base64.b64decode(audio["data"])))
    assert rate == 24000 and len(wave) > 0 and np.abs(wave).max() > 0  # the native detokenizer's speech
    again = speech_request(speaking_server, question, temperature=0.8, max_tokens=60)
    assert again.json()["choices"][0]["message"]["audio"]["data"] == audio["data"]  # seeded: reproducible
    greedy = speech_request(speaking_server, question)  # both heads greedy (the official default)
    assert greedy.status_code == 200 and greedy.json()["choices"][0]["message"]["audio"]["format"] == "wav"
    assert "not streamed" in one_line_error(speech_request(speaking_server, question, stream=True))
    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    body = {"model": "kimi", "modalities": ["text", "audio"], "messages": [*history, {"role": "user", "content": "x"}]}
    refused = httpx.post(f"{speaking_server.url}/v1/chat/completions", json=body, timeout=TIMEOUT)
    assert "one user turn" in one_line_error(refused)


@pytest.mark.slow
def test_openai_client_reads_the_spoken_answer(speaking_server):
    openai = pytest.importorskip("openai", reason="the openai client (pyproject's dev extra) is not installed")
    client = openai.OpenAI(base_url=f"{speaking_server.url}/v1", api_key="unused", timeout=TIMEOUT, max_retries=0)
    part = input_audio(clip_bytes(1.0))
    reply = client.chat.completions.create(
        model="kimi",
        modalities=["text", "audio"],
        audio={"voice": "alloy", "format": "wav"},
        max_tokens=8,
        messages=[{"role": "user", "content": [part]}],
    )
    message = reply.choices[0].message
    assert message.audio.transcript == message.content and base64.b64decode(message.audio.data)[:4] == b"RIFF"


@pytest.mark.slow
def test_spoken_answer_without_a_detokenizer_is_a_400(server):
    detail = one_line_error(speech_request(server, [input_audio(clip_bytes(1.0))]))
    assert "no audio_detokenizer/ + vocoder/" in detail
    answer(chat(server, [input_audio(clip_bytes(1.0))]))  # text answers as before


# ------------------------------------------------------------------------------------------------ transcriptions
@pytest.fixture(scope="module")
def client(server):
    openai = pytest.importorskip("openai", reason="the openai client (pyproject's dev extra) is not installed")
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", timeout=TIMEOUT, max_retries=0)


@pytest.mark.slow
def test_openai_client_transcribes_in_every_response_format(client, tmp_path):
    path = tmp_path / "clip.wav"
    path.write_bytes(clip_bytes(1.5))
    with open(path, "rb") as fh:
        as_json = client.audio.transcriptions.create(model="kimi", file=fh)
    assert isinstance(as_json.text, str)
    with open(path, "rb") as fh:
        as_text = client.audio.transcriptions.create(model="kimi", file=fh, response_format="text")
    assert isinstance(as_text, str)
    with open(path, "rb") as fh:
        verbose = client.audio.transcriptions.create(
            model="kimi", file=fh, response_format="verbose_json", language="en", prompt="Transcribe:", temperature=0
        )
    assert verbose.duration == pytest.approx(1.5) and verbose.language == "en" and isinstance(verbose.text, str)


@pytest.mark.slow
def test_openai_client_long_audio_and_bad_files(client):
    long = client.audio.transcriptions.create(
        model="kimi", file=("long.flac", clip_bytes(40.0, "FLAC")), response_format="verbose_json"
    )
    assert long.duration == pytest.approx(40.0)  # two 30 s Whisper chunks, one transcript
    import openai

    with pytest.raises(openai.BadRequestError, match="unreadable audio"):
        client.audio.transcriptions.create(model="kimi", file=("notes.txt", b"not audio " * 50))
    with pytest.raises(openai.BadRequestError, match="response_format 'srt'"):
        client.audio.transcriptions.create(model="kimi", file=("a.wav", clip_bytes(0.5)), response_format="srt")
    assert client.audio.transcriptions.create(model="kimi", file=("a.wav", clip_bytes(0.5))).text is not None


@pytest.mark.slow
def test_openai_client_chat_with_input_audio(client):
    data = base64.b64encode(clip_bytes(1.0)).decode()
    completion = client.chat.completions.create(
        model="kimi",
        max_tokens=3,
        messages=[
            {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": data, "format": "wav"}}]}
        ],
    )
    assert isinstance(completion.choices[0].message.content, str)


# ------------------------------------------------------------------------------- decoding, without a server
def test_http_stream_is_read_and_decoded(tmp_path):
    """URLs reach the plugin as ``requests``' raw stream; ``serve_audio`` reads and decodes it."""
    import requests

    from llamafactory_kimi_audio.integration.serve_audio import decode_one

    payload = clip_bytes(1.0, "OGG", "VORBIS", rate=24000)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: object) -> None:
            pass

    http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    try:
        raw = requests.get(f"http://127.0.0.1:{http.server_address[1]}/clip.ogg", stream=True, timeout=30).raw
        wave = decode_one(raw, "audio #1 of the request")
    finally:
        http.shutdown()
    assert wave.dtype == np.float32 and len(wave) == 16000 and np.abs(wave).max() > 0.1


def test_the_plugin_reads_file_objects_twice():
    """The bug of issue 26: a BytesIO reached ``load_audio`` (TypeError) and was counted as 1 frame."""
    import io

    from llamafactory_kimi_audio.fileio.audio import load_audio
    from llamafactory_kimi_audio.integration.mm_plugin import audio_token_count

    stream = io.BytesIO(clip_bytes(1.0, "FLAC"))
    assert audio_token_count(stream) == AUDIO_TOKENS_1S
    assert len(load_audio(stream)) == 16000  # read again from the start


def test_a_failing_streamed_generate_ends_its_stream(tiny_checkpoint):
    """LLaMA-Factory streams from ``generate`` on a thread; a failure there must end the stream, not hang it."""
    from transformers import TextIteratorStreamer

    from llamafactory_kimi_audio.integration.serve_app import guard_streamed_generate
    from llamafactory_kimi_audio.models.modeling_kimi_audio import KimiAudioForCausalLM
    from llamafactory_kimi_audio.models.processing_kimi_audio import KimiAudioProcessor

    model = KimiAudioForCausalLM.from_pretrained(tiny_checkpoint.path).eval()
    processor = KimiAudioProcessor.from_pretrained(tiny_checkpoint.path)
    guard_streamed_generate(model)
    guard_streamed_generate(model)  # idempotent
    inputs = processor.asr_inputs([np.zeros(16000, dtype=np.float32)], [None])
    inputs["audio_input_features"] = inputs["audio_input_features"][..., :7]  # a shape the model cannot take
    streamer = TextIteratorStreamer(processor.tokenizer, skip_prompt=True, timeout=120)
    failures: list[BaseException] = []

    def run() -> None:
        try:
            model.generate(**inputs, streamer=streamer, max_new_tokens=2, do_sample=False)
        except Exception as err:
            failures.append(err)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    assert "".join(streamer) == ""  # ends instead of waiting (a hang would raise queue.Empty after the timeout)
    worker.join(timeout=120)
    assert len(failures) == 1
