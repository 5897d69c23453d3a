"""Patch rows of the Web UI and of ``llamafactory-cli api`` (``patches.py`` holds the table). Each replaces a class
attribute or a function in the module that defines it; the API's importers (``api.app``) bind the replacements."""

from __future__ import annotations

from ..patching import Patch
from .run_guard import make_cli_guard
from .serve_app import make_serving_app
from .serve_audio import make_audio_requests, make_eager_stream
from .serve_protocol import make_audio_chat_request
from .serve_speech import make_spoken_answers
from .webui_args import make_extra_args_win
from .webui_chat import make_spoken_chat

WEBUI_RUNNER = "llamafactory.webui.runner"
WEBUI_CHATTER = "llamafactory.webui.chatter"
API_PROTOCOL = "llamafactory.api.protocol"  # `llamafactory-cli api`: imported by api.chat, then api.app
API_CHAT = "llamafactory.api.chat"
API_APP = "llamafactory.api.app"

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
    Patch(
        name="one_line_errors.api",
        trigger=API_APP,
        owner=API_APP,
        attribute="run_api",
        make_replacement=make_cli_guard,
        parameters=(),
        why="llamafactory-cli api with a kimi_audio recipe checks model_name_or_path and adapter_name_or_path "
        "before the model loads; a failure to start is one line and an exit code (integration/run_guard.py)",
    ),
]
