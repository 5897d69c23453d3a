"""The ``kimi_audio`` template and ``KimiAudioPlugin`` registered in LLaMA-Factory and encoding turns as LLaMA-Factory
drives them (in-process, CPU). Expected ids are written row by row from the table of the architecture spec §5.3
(single id stream: every official position holds its audio-stream token or its text-stream token, the other stream
being blank), with the special ids of ``template_spec``: instruction before / after the audio, the default
instruction, multi-turn labels, text-only turns, ``cutoff_len`` that would cut an audio span, and the refused system
prompt.
"""

from __future__ import annotations

import dataclasses

import llamafactory.data.template as T  # noqa: N812 - the name LLaMA-Factory's own tests use
import pytest
from lf_pipeline import IGNORE, conv
from llamafactory.data.mm_plugin import PLUGINS, get_mm_plugin
from llamafactory.data.processor.supervised import SupervisedDatasetProcessor
from llamafactory.hparams import DataArguments
from llamafactory.model.model_utils.visual import COMPOSITE_MODELS
from template_spec import DEFAULT_INSTRUCTION, INSTRUCTION, SPEC, enc, encode_sample

from llamafactory_kimi_audio import settings
from llamafactory_kimi_audio.integration.mm_plugin import KimiAudioPlugin
from llamafactory_kimi_audio.integration.template import INSTRUCTION_ENV, KimiAudioTemplate


def test_kimi_template_and_plugin_are_registered(template, plugin):
    assert "kimi_audio" in T.TEMPLATES
    assert T.TEMPLATES["kimi_audio"] is template
    assert isinstance(template, KimiAudioTemplate)
    assert isinstance(plugin, KimiAudioPlugin)
    assert plugin.audio_token and plugin.image_token is None and plugin.video_token is None
    assert PLUGINS["kimi_audio"] is KimiAudioPlugin
    assert isinstance(get_mm_plugin("kimi_audio", audio_token=plugin.audio_token), KimiAudioPlugin)
    assert COMPOSITE_MODELS["moonshot_kimia"].vision_model_keys == ["whisper_encoder", "mimo"]


def test_tokenizer_and_processor_from_load_tokenizer(tok, processor, template):
    assert type(tok).__name__ == "KimiAudioTokenizer"
    assert "Processor" in type(processor).__name__
    assert processor.feature_extractor is not None and processor.audio_sampling_rate == 16000
    assert tok.eos_token == SPEC["text_eos"][0]  # replace_eos with the template's stop word
    assert template.get_stop_token_ids(tok) == [tok.convert_tokens_to_ids(SPEC["text_eos"][0])]


def encode_one_turn(template, tok, processor, messages, wav) -> tuple[list[int], list[int]]:
    """(prompt, response) ids of one user turn with the audio ``wav`` = (path, frames)."""
    processed = template.mm_plugin.process_messages(messages, [], [], [wav[0]], processor)
    return template.encode_oneturn(tok, processed)


def audio_span(ids, frames: int) -> list[int]:
    return [ids["media_begin"], *[ids["ph"]] * frames, ids["media_end"]]


def test_instruction_before_audio(template, tok, processor, ids, wav_a):
    prompt, response = encode_one_turn(template, tok, processor, conv(f"{INSTRUCTION}<audio>", "one two"), wav_a)
    assert prompt == [
        ids["user_start"],
        *enc(tok, INSTRUCTION),
        *audio_span(ids, wav_a[1]),
        ids["ct"],
        ids["msg_end"],
        ids["assistant_start"],
    ]
    assert response == [*enc(tok, "one two"), ids["text_eos"]]
    official_length = len(enc(tok, INSTRUCTION)) + wav_a[1] + len(enc(tok, "one two")) + 8  # L of §5.3
    assert len(prompt) + len(response) + 1 == official_length  # all but the final msg_end (nothing predicted from it)


def test_instruction_after_audio_has_no_ct(template, tok, processor, ids, wav_a):
    prompt, response = encode_one_turn(template, tok, processor, conv(f"<audio>{INSTRUCTION}", "red"), wav_a)
    assert prompt == [
        ids["user_start"],
        *audio_span(ids, wav_a[1]),
        *enc(tok, INSTRUCTION),
        ids["msg_end"],
        ids["assistant_start"],
    ]
    assert ids["ct"] not in prompt
    assert response == [*enc(tok, "red"), ids["text_eos"]]


def test_audio_only_turn_gets_the_default_instruction(template, tok, processor, ids, wav_a, monkeypatch):
    path, n = wav_a
    messages = [{"role": "user", "content": "<audio>"}, {"role": "assistant", "content": "blue"}]
    processed = template.mm_plugin.process_messages(messages, [], [], [path], processor)
    audio_part = [*audio_span(ids, n), ids["ct"]]
    prompt, _ = template.encode_oneturn(tok, processed)
    end = [ids["msg_end"], ids["assistant_start"]]
    assert prompt == [ids["user_start"], *enc(tok, DEFAULT_INSTRUCTION), *audio_part, *end]
    monkeypatch.setenv(INSTRUCTION_ENV, "Transcribe.")
    settings.reload()  # settings are read once per process
    try:
        prompt, _ = template.encode_oneturn(tok, processed)
    finally:
        monkeypatch.undo()
        settings.reload()
    assert prompt == [ids["user_start"], *enc(tok, "Transcribe."), *audio_part, *end]


def test_multi_turn_layout_and_labels(template, tok, processor, ids, wav_a, wav_b):
    (path_a, n_a), (path_b, n_b) = wav_a, wav_b
    messages = [
        {"role": "user", "content": f"{INSTRUCTION}<audio>"},
        {"role": "assistant", "content": "one two"},
        {"role": "user", "content": "<audio>"},
        {"role": "assistant", "content": "three"},
    ]
    processed, pairs = encode_sample(template, tok, processor, messages, [path_a, path_b])
    turn1 = [ids["user_start"], *enc(tok, INSTRUCTION), ids["media_begin"], *[ids["ph"]] * n_a, ids["media_end"]]
    turn1 += [ids["ct"], ids["msg_end"], ids["assistant_start"]]
    # the assistant's closing msg_end opens the next user turn (§5.2: msg_end because the role changes)
    turn2 = [ids["msg_end"], ids["user_start"], *enc(tok, DEFAULT_INSTRUCTION), ids["media_begin"]]
    turn2 += [*[ids["ph"]] * n_b, ids["media_end"], ids["ct"], ids["msg_end"], ids["assistant_start"]]
    assert pairs == [
        (turn1, [*enc(tok, "one two"), ids["text_eos"]]),
        (turn2, [*enc(tok, "three"), ids["text_eos"]]),
    ]
    # labels through LLaMA-Factory's own supervised processor: transcript + text_eos only (§5.4)
    data_args = DataArguments(template="kimi_audio", cutoff_len=1024)
    proc = SupervisedDatasetProcessor(template=template, tokenizer=tok, processor=processor, data_args=data_args)
    input_ids, labels = proc._encode_data_example(messages[:-1], messages[-1:], None, None, [], [], [path_a, path_b])
    flat = [i for pair in pairs for part in pair for i in part]
    assert input_ids == flat
    expected_labels = [IGNORE] * len(turn1) + pairs[0][1] + [IGNORE] * len(turn2) + pairs[1][1]
    assert labels == expected_labels
    labelled = [i for i in labels if i != IGNORE]
    assert labelled == [*enc(tok, "one two"), ids["text_eos"], *enc(tok, "three"), ids["text_eos"]]


def test_text_only_user_turn(template, tok, processor, ids):
    messages = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}]
    processed = template.mm_plugin.process_messages(messages, [], [], [], processor)
    assert processed == messages
    prompt, response = template.encode_oneturn(tok, processed)
    assert prompt == [ids["user_start"], *enc(tok, "hello"), ids["msg_end"], ids["assistant_start"]]
    assert response == [*enc(tok, "hi"), ids["text_eos"]]


@pytest.mark.parametrize("kind", ["supervised", "unsupervised"])
def test_cutoff_len_cutting_an_audio_span_fails_at_preprocessing(kind, template, tok, processor, wav_a):
    import llamafactory.train.sft.workflow  # noqa: F401 - the hook that installs the guard
    from llamafactory.data.processor.unsupervised import UnsupervisedDatasetProcessor

    cls = SupervisedDatasetProcessor if kind == "supervised" else UnsupervisedDatasetProcessor
    path, n = wav_a
    messages = conv("<audio>Transcribe", "one two")
    needed = 1 + (n + 2) + len(enc(tok, "Transcribe")) + 2 + len(enc(tok, "one two")) + 1
    for cutoff in (needed, needed + 5):
        data_args = DataArguments(template="kimi_audio", cutoff_len=cutoff)
        proc = cls(template=template, tokenizer=tok, processor=processor, data_args=data_args)
        input_ids, labels = proc._encode_data_example(messages[:1], messages[1:], None, None, [], [], [path])
        assert len(input_ids) + (len(labels) if kind == "unsupervised" else 0) == needed
    data_args = DataArguments(template="kimi_audio", cutoff_len=12)
    proc = cls(template=template, tokenizer=tok, processor=processor, data_args=data_args)
    with pytest.raises(ValueError, match=rf"cutoff_len=12 cuts its audio.*at least {needed}") as info:
        proc._encode_data_example(messages[:1], messages[1:], None, None, [], [], [path])
    assert path in str(info.value) and "<audio>Transcribe" in str(info.value)
    # text-only samples are truncated as LLaMA-Factory always does
    text = conv("a b c d " * 20, "ok")
    input_ids, labels = proc._encode_data_example(text[:1], text[1:], None, None, [], [], [])
    assert len(input_ids) + (len(labels) if kind == "unsupervised" else 0) <= 12


def test_system_prompt_is_rejected(template, tok, processor, wav_a):
    messages = [{"role": "user", "content": "<audio>"}, {"role": "assistant", "content": "x"}]
    processed = template.mm_plugin.process_messages(messages, [], [], [wav_a[0]], processor)
    with pytest.raises(ValueError, match="no system role"):
        template.encode_oneturn(tok, processed, system="You are a helpful assistant.")
    with pytest.raises(ValueError, match="no system role"):
        dataclasses.replace(template, default_system="Be brief.").encode_multiturn(tok, processed)
