"""``KimiAudioPlugin`` on the audio of a sample (in-process, CPU): as many placeholders as the audio has frames
after resampling to 16 kHz (files of several rates, channel counts and sample formats, and arrays); a placeholder /
audio count mismatch or a missing Kimi-Audio processor named in a one-line error; and plugin + processor surviving
pickle / dill with a stable hash for the ``datasets`` cache.
"""

from __future__ import annotations

import math
import pickle

import dill
import numpy as np
import pytest
from template_spec import INSTRUCTION, write_wav

from llamafactory_kimi_audio.errors import InputError, ModelError

WAV_CASES = {  # name: (sample rate, frames, channels, subtype)
    "8k": (8000, 10_403, 1, "PCM_16"),
    "44k1": (44_100, 33_961, 1, "PCM_16"),
    "48k_stereo": (48_000, 52_807, 2, "PCM_16"),
    "16k_int16_exact": (16_000, 3 * 1280, 1, "PCM_16"),
    "16k_int16_plus1": (16_000, 3 * 1280 + 1, 1, "PCM_16"),
    "22k05_float32": (22_050, 20_000, 1, "FLOAT"),
    "16k_float32": (16_000, 12_345, 1, "FLOAT"),
}


@pytest.mark.parametrize("case", list(WAV_CASES))
def test_placeholder_count_follows_the_resampled_length(case, wav_dir, plugin, processor, ids, tok):
    sr, frames, channels, subtype = WAV_CASES[case]
    path = write_wav(wav_dir, case, sr, frames, channels, subtype)
    length_16k = math.ceil(frames * 16000 / sr)  # resample_poly output length
    expected = (length_16k - 1) // 1280 + 1
    messages = [{"role": "user", "content": "<audio>"}, {"role": "assistant", "content": "x"}]
    content = plugin.process_messages(messages, [], [], [path], processor)[0]["content"]
    assert content.count(plugin.audio_token) == expected
    # the collate-time features give exactly as many frames as there are placeholders
    from llamafactory_kimi_audio.fileio.audio import load_audio

    assert len(load_audio(path)) == length_16k
    chunk_tokens = processor.audio_inputs([load_audio(path)], with_semantic=False)["audio_chunk_tokens"]
    assert int(chunk_tokens.sum()) == expected


def test_placeholder_count_for_arrays(plugin, processor):
    wave_8k = np.zeros(4001, dtype=np.float32)
    messages = [{"role": "user", "content": "<audio>"}]
    by_dict = plugin.process_messages(messages, [], [], [{"array": wave_8k, "sampling_rate": 8000}], processor)
    assert by_dict[0]["content"].count(plugin.audio_token) == (8002 - 1) // 1280 + 1
    fake = plugin.process_messages(messages, [], [], [np.zeros(1600)], processor)  # the collator's fake audio
    assert fake[0]["content"].count(plugin.audio_token) == 2


@pytest.mark.parametrize("placeholders, n_audios", [(2, 1), (0, 1), (1, 2), (1, 0)])
def test_placeholder_audio_mismatch_names_the_sample(plugin, processor, wav_a, wav_b, placeholders, n_audios):
    content = "<audio>" * placeholders + "say the magic words"
    messages = [{"role": "user", "content": content}, {"role": "assistant", "content": "abracadabra"}]
    audios = [wav_a[0], wav_b[0]][:n_audios]
    with pytest.raises(InputError) as info:  # exit code 2 through the run guard
        plugin.process_messages(messages, [], [], audios, processor)
    text = str(info.value)
    assert "say the magic words" in text
    assert f"{placeholders} <audio>" in text and f"{n_audios} audio" in text
    for path in audios:
        assert path in text


def test_kimi_template_without_a_kimi_processor_says_so(plugin):
    """A non-Kimi model under template kimi_audio has no Kimi-Audio processor: say that, not LLaMA-Factory's
    "Audio feature extractor was not found"."""
    messages = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}]
    with pytest.raises(ModelError, match="template kimi_audio needs a Kimi-Audio checkpoint"):
        plugin.process_messages(messages, [], [], [], None)


@pytest.mark.parametrize("module", [pickle, dill], ids=["pickle", "dill"])
def test_plugin_and_processor_round_trip(module, plugin, processor, tok, wav_a):
    messages = [{"role": "user", "content": "<audio>hi"}, {"role": "assistant", "content": "x"}]
    plugin2 = module.loads(module.dumps(plugin))
    assert plugin2 == plugin and type(plugin2) is type(plugin)
    processor2 = module.loads(module.dumps(processor))
    assert type(processor2) is type(processor)
    assert plugin2.process_messages(messages, [], [], [wav_a[0]], processor2) == plugin.process_messages(
        messages, [], [], [wav_a[0]], processor
    )
    text = f"{INSTRUCTION} 一 二 三"
    assert processor2.tokenizer.encode(text, add_special_tokens=False) == tok.encode(text, add_special_tokens=False)
    assert processor2.tokenizer.eos_token == tok.eos_token
    assert processor2.feature_extractor.to_dict() == processor.feature_extractor.to_dict()
    assert processor2.audio_sampling_rate == processor.audio_sampling_rate
    assert processor2.layout.asr_prompt(3, "a") == processor.layout.asr_prompt(3, "a")


def test_processor_hash_is_stable_for_the_datasets_cache(processor, plugin):
    from datasets.fingerprint import Hasher

    assert Hasher.hash(processor) == Hasher.hash(pickle.loads(pickle.dumps(processor)))
    assert Hasher.hash(plugin) == Hasher.hash(dill.loads(dill.dumps(plugin)))
