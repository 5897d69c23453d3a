"""One explicit path for a clip: the collator lists a batch's clips as typed records (``audio_clips``: input or
speech-output target, cache hit or the key to store under), the model hands what ``frame_inputs`` encoded to its
feature sink once per batch, one entry per clip, and write-through is connected by a TrainerCallback for the length
of ``train()``: no method of the model is replaced on the instance."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from llamafactory_kimi_audio.data.features import collate_inputs
from llamafactory_kimi_audio.data.features.cache_format import clip_key
from llamafactory_kimi_audio.data.features.collate_inputs import CLIPS_KEY, AudioClip
from llamafactory_kimi_audio.data.features.feature_cache import FeatureCache, encoder_identity

QUESTION_FRAMES, ANSWER_FRAMES = 6, 10


@pytest.fixture(scope="module")
def setup(tiny_checkpoint, tmp_path_factory):
    """LLaMA-Factory's SFT collator with the kimi_audio template, the model, and two spoken-reply samples."""
    from lf_pipeline import conv, encode, load_tiny, sft_collator

    workdir = tmp_path_factory.mktemp("feature_sink")
    module, template, model = load_tiny(tiny_checkpoint.path)
    tok = module["tokenizer"]
    collator = sft_collator(template, model, module, pad_to_multiple_of=None, attn_implementation="eager")
    features = []
    for index, text in enumerate(("abc", "efg")):
        rng = np.random.default_rng(index)
        question, answer = workdir / f"q{index}.wav", workdir / f"a{index}.wav"
        sf.write(question, (0.3 * rng.standard_normal(QUESTION_FRAMES * 1280)).astype(np.float32), 16000)
        sf.write(answer, (0.3 * rng.standard_normal(ANSWER_FRAMES * 1280)).astype(np.float32), 16000)
        audios = [str(question), str(answer)]
        ids, labels = encode(template, tok, module["processor"], conv("<audio>", f"{text}<audio>"), audios)
        features.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels, "audios": audios})
    return workdir, collator, model, features


@pytest.fixture
def records(monkeypatch):
    """The collator describes its batches, as in a training process (restored after the test)."""
    monkeypatch.setattr(collate_inputs, "_records", True)


@pytest.fixture
def feature_cache(setup, monkeypatch):
    from llamafactory_kimi_audio import settings

    workdir = setup[0]
    monkeypatch.setenv("KIMI_AUDIO_FEATURE_CACHE", str(workdir / "cache"))
    settings.reload()
    yield workdir / "cache"
    monkeypatch.delenv("KIMI_AUDIO_FEATURE_CACHE")
    settings.reload()


def test_the_batch_lists_its_clips_as_typed_records(setup, records) -> None:
    _, collator, _, features = setup
    batch = collator([dict(f) for f in features])
    clips = batch[CLIPS_KEY]
    assert isinstance(clips, list) and all(isinstance(clip, AudioClip) for clip in clips)
    assert [clip.name for clip in clips] == [audio for f in features for audio in f["audios"]]
    assert [clip.target for clip in clips] == [False, True, False, True]  # the plugin's decision, once
    assert not any(clip.hit or clip.key for clip in clips)  # no feature cache
    assert not [key for key, value in batch.items() if isinstance(value, torch.Tensor) and value.dtype == torch.uint8]


def test_other_callers_get_no_records(setup) -> None:
    _, collator, _, features = setup
    assert CLIPS_KEY not in collator([dict(f) for f in features])  # chat / API / evaluation: model inputs only


def test_the_sink_gets_each_clip_once_and_write_through_stores_it(setup, records, feature_cache) -> None:
    from llamafactory_kimi_audio.integration.feature_cache_hook import write_through_callback

    _, collator, model, features = setup
    batch = collator([dict(f) for f in features])
    assert [bool(clip.key) for clip in batch[CLIPS_KEY]] == [True] * 4  # all missing from the empty cache
    before = dict(model.__dict__)
    callback = write_through_callback()
    callback.on_train_begin(None, None, None, model=model)
    sink, calls = model.feature_sink, []
    model.set_feature_sink(lambda encoded, clips: (calls.append((encoded, clips)), sink(encoded, clips)))
    with torch.no_grad():
        model(**batch)
    assert len(calls) == 1  # one hand-over per batch
    encoded, clips = calls[0]
    assert clips == batch[CLIPS_KEY]  # the collator's records, handed on unchanged
    assert [len(clip.codes) for clip in encoded] == [QUESTION_FRAMES, ANSWER_FRAMES] * 2
    assert [clip.target for clip in encoded] == [False, True, False, True]
    assert [None if clip.rows is None else clip.rows.shape[0] for clip in encoded] == [QUESTION_FRAMES, None] * 2
    counters = sink.counters
    assert (counters.hits, counters.misses, counters.writes) == (0, 4, 4)
    written = FeatureCache(str(feature_cache), encoder_identity(model.config._name_or_path))
    for clip, features_of in zip(batch[CLIPS_KEY], encoded):
        codes, rows = written.read(written.find(clip_key(clip.name)), clip.name)
        assert torch.equal(codes, features_of.codes.cpu()) and (rows is None) == clip.target  # targets: codes only
    callback.on_train_end(None, None, None)
    assert model.feature_sink is None
    # no instance overrides: the instance is as LLaMA-Factory loaded it (whose patch_model binds GenerationMixin's
    # generate on the instance itself), nothing of write-through is left on it
    assert not {"forward", "frame_inputs", "feature_sink"} & set(model.__dict__)
    assert model.__dict__.keys() == before.keys() and model.__dict__.get("generate") is before.get("generate")


def test_clips_are_split_at_row_ends() -> None:
    """Two clips that touch across a row boundary of the batch are still two clips."""
    from llamafactory_kimi_audio.models.feature_sink import clip_sizes, split_clips

    is_frame = torch.tensor([[0, 1, 1, 0, 1], [1, 1, 0, 0, 0], [0, 0, 0, 1, 1]], dtype=torch.bool)
    assert clip_sizes(is_frame) == [2, 1, 2, 2]
    is_input = torch.tensor([True, True, False, True, True, True, True])
    clips = split_clips(is_frame, torch.arange(7), torch.arange(6)[:, None].float(), is_input)
    assert [clip.codes.tolist() for clip in clips] == [[0, 1], [2], [3, 4], [5, 6]]
    rows = [None if clip.rows is None else clip.rows[:, 0].tolist() for clip in clips]
    assert rows == [[0, 1], None, [2, 3], [4, 5]]


def test_the_guard_names_the_clips_of_a_non_finite_step(setup) -> None:
    """``nonfinite_guard.record`` keeps the loss with the names in the batch's ``audio_clips``; ``.check`` raises."""
    from types import SimpleNamespace

    from llamafactory_kimi_audio.errors import InputError, NonFiniteTrainingError
    from llamafactory_kimi_audio.integration.nonfinite import make_check, make_record

    model = setup[2]

    class Trainer:  # the two methods the rows wrap, as the Trainer calls them
        state = SimpleNamespace(global_step=3)
        control = SimpleNamespace(should_log=True, should_evaluate=False, should_save=False)
        control.should_training_stop = False

        def compute_loss(self, model, inputs, num_items_in_batch=None):
            return torch.tensor(float("nan"))

        def _maybe_log_save_evaluate(self, tr_loss, grad_norm, model, *args):
            return None

    Trainer.compute_loss = make_record(Trainer.compute_loss)
    Trainer._maybe_log_save_evaluate = make_check(Trainer._maybe_log_save_evaluate)
    trainer, batch = Trainer(), {CLIPS_KEY: [AudioClip("q0.wav"), AudioClip("a0.wav", target=True)]}
    model.train()
    try:
        trainer.compute_loss(model, batch, num_items_in_batch=4)
    finally:
        model.eval()
    with pytest.raises(NonFiniteTrainingError) as raised:
        trainer._maybe_log_save_evaluate(None, torch.tensor(1.0), model)
    assert isinstance(raised.value, InputError) and raised.value.exit_code == 2
    message = "training stopped at step 3: the loss is nan on the batch of clips q0.wav, a0.wav, which would"
    assert str(raised.value).startswith(message)
