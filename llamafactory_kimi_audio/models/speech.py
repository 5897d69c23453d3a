"""Speech output: the two streams of a single id stream that holds assistant speech turns, and their loss.

A speech turn (``models/layout.py``, speech-output spec §1.3 and §5) is ``SPEECH_START x_1 … x_{D+N} MSG_END``
in the single id stream, where ``x`` is the *text* stream of each row (``t_k``, ``text_eos``, blanks). The audio
stream of the turn follows from the span alone::

    row s (SPEECH_START):  audio assistant_msg_start, text blank
    rows s+1 … s+D:        audio blank (the MIMO delay D = kimia_mimo_audiodelaytokens)
    rows s+D+1 … s+D+N:    audio code c_0 … c_{N-1} (from the target audio; no Whisper rows: is_continuous False)
    row e (MSG_END):       audio msg_end (the audio end), text blank

Audio targets are the code rows and row ``e`` (N + 1 per turn); text targets are the labelled rows whose text id is
neither blank nor an audio-stream id (``t_k`` and ``text_eos``: n + 1 per turn).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import InputError

IGNORE_INDEX = -100


@dataclass
class Streams:
    """The official two streams of a batch, before the codes of audio frames are filled in."""

    audio_ids: torch.Tensor  # [B, L]
    text_ids: torch.Tensor  # [B, L]
    input_frames: torch.Tensor  # [B, L] bool: user audio frames (code + Whisper row)
    output_frames: torch.Tensor  # [B, L] bool: assistant speech code rows (code only)
    num_input_frames: int
    num_output_frames: int = 0
    audio_target_rows: torch.Tensor | None = None  # [B, L] bool: rows whose audio id is an audio target

    @property
    def has_speech(self) -> bool:
        return self.audio_target_rows is not None


def split_streams(input_ids: torch.Tensor, ids, text_from: int | None = None) -> Streams:
    """Single id stream → (audio ids, text ids, frame masks); ``ids`` is the model's ``StreamIds``."""
    in_audio_stream = torch.isin(input_ids, torch.tensor(ids.audio_stream, device=input_ids.device)) | (
        input_ids >= ids.offset
    )
    is_frame = (input_ids == ids.placeholder) | (input_ids >= ids.offset)
    if text_from is not None:  # generated ids (decoding without KV cache) are text whatever their value
        generated = torch.arange(input_ids.shape[1], device=input_ids.device) >= text_from
        in_audio_stream, is_frame = in_audio_stream & ~generated, is_frame & ~generated
    audio_ids = torch.where(in_audio_stream, input_ids, ids.blank)
    text_ids = torch.where(in_audio_stream, ids.blank, input_ids)
    is_start = input_ids == ids.speech_start
    num_input, num_starts = torch.stack([is_frame.sum(), is_start.sum()]).tolist()  # one device sync, as before
    if not num_starts:
        return Streams(audio_ids, text_ids, is_frame, torch.zeros_like(is_frame), num_input)
    audio_ids = torch.where(input_ids == ids.speech_start, ids.assistant_start, audio_ids)
    text_ids = torch.where(input_ids == ids.speech_start, ids.blank, text_ids)
    output_frames = torch.zeros_like(is_frame)
    targets = torch.zeros_like(is_frame)
    num_output = 0
    for row, start in is_start.nonzero().tolist():
        if text_from is not None and start >= text_from:
            continue  # a generated id is text whatever its value
        end = speech_span_end(input_ids[row, :text_from], start, ids)
        if end is None:
            continue  # a prompt that ends with the role row of the reply
        output_frames[row, start + ids.delay + 1 : end] = True
        targets[row, start + ids.delay + 1 : end + 1] = True
        num_output += end - start - ids.delay - 1
    return Streams(audio_ids, text_ids, is_frame, output_frames, num_input, num_output, targets)


def speech_span_end(row_ids: torch.Tensor, start: int, ids) -> int | None:
    """Position of the ``MSG_END`` that closes the speech turn opened at ``start``; ``None`` for a final role row."""
    ends = (row_ids[start + 1 :] == ids.msg_end).nonzero()
    if len(ends) == 0:
        if start == row_ids.shape[0] - 1 or bool((row_ids[start + 1 :] == ids.pad).all()):
            return None
        raise InputError(
            "a speech turn has no closing msg_end: the sample was cut (raise cutoff_len to fit the spoken answer)"
        )
    end = start + 1 + int(ends[0])
    if end - start - ids.delay - 1 < 1:
        raise InputError(
            f"a speech turn has {end - start - 1} rows, fewer than the {ids.delay} delay rows + 1 audio frame; "
            "the checkpoint's kimia_mimo_audiodelaytokens must match the one the data was prepared with"
        )
    return end


def audio_labels(streams: Streams, labels: torch.Tensor) -> torch.Tensor | None:
    """Audio-stream targets [B, L] (``IGNORE_INDEX`` elsewhere), or ``None`` when the batch has none."""
    if not streams.has_speech:
        return None
    wanted = streams.audio_target_rows & (labels.to(streams.audio_ids.device) != IGNORE_INDEX)
    if not bool(wanted.any()):
        return None
    return torch.where(wanted, streams.audio_ids, IGNORE_INDEX)


def text_labels(labels: torch.Tensor, ids) -> torch.Tensor:
    """Labels of the text head when a batch has speech turns: blank fill, audio-stream ids and the surrogate are
    no text targets (in ASR-only batches every label is one, and this function is not called)."""
    excluded = torch.tensor([ids.blank, ids.speech_start, *ids.audio_stream], device=labels.device)
    keep = (labels != IGNORE_INDEX) & ~torch.isin(labels, excluded) & (labels < ids.offset)
    return torch.where(keep, labels, IGNORE_INDEX)


def head_ce(head, hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CE (fp32, full vocabulary) of ``head`` at positions whose next label is set: (losses, [B, L-1] selection)."""
    shift_labels = labels[:, 1:].to(hidden.device)
    selected = shift_labels != IGNORE_INDEX
    logits = head(hidden[:, :-1][selected]).float()
    return F.cross_entropy(logits, shift_labels[selected], reduction="none"), selected


def per_utterance(
    token_loss: torch.Tensor, selected: torch.Tensor, segments: torch.Tensor, total: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum and count of ``token_loss`` per utterance; ``segments`` [B, L-1] numbers the utterance of each label."""
    index = segments[selected]
    sums = torch.zeros(total, device=token_loss.device).index_add(0, index, token_loss)
    counts = torch.zeros(total, dtype=torch.long, device=token_loss.device).index_add(0, index, torch.ones_like(index))
    return sums, counts


def utterance_numbers(labels: torch.Tensor, segments: torch.Tensor | None, device) -> tuple[torch.Tensor, int]:
    """[B, L-1] utterance number of each label (one per row, or per packed utterance) and the number of slots."""
    total = labels.shape[0] if segments is None else segments.numel()
    if segments is None:
        segments = torch.arange(labels.shape[0], device=device)[:, None].expand_as(labels)
    return segments[:, 1:].to(device), total  # a label belongs to the utterance of the token it predicts


def speech_loss(model, hidden, mimo_hidden, labels, audio_targets, segments, reduction: str) -> torch.Tensor:
    """Spec §2.3: mean over utterances of ``A_i + T_i``, each stream ``Σ CE / (count + 1e-4)`` (official formula);
    ``token`` reduction: ``Σ CE_text / |T| + Σ CE_audio / |A|`` over the batch."""
    text_loss, text_sel = head_ce(model.lm_head, hidden, text_labels(labels, model._ids))
    audio_loss, audio_sel = head_ce(model.mimo_output, mimo_hidden, audio_targets)
    if reduction == "token":
        return text_loss.sum() / text_sel.sum().clamp(min=1) + audio_loss.sum() / audio_sel.sum().clamp(min=1)
    numbers, total = utterance_numbers(labels, segments, hidden.device)
    text_sum, text_count = per_utterance(text_loss, text_sel, numbers, total)
    audio_sum, audio_count = per_utterance(audio_loss, audio_sel, numbers, total)
    has = (text_count + audio_count) > 0
    per_sample = text_sum[has] / (text_count[has] + 1e-4) + audio_sum[has] / (audio_count[has] + 1e-4)
    return per_sample.mean()
