"""The errors of reading audio, with the fixes their messages end with; below ``audio`` and ``audio_spans``."""

from __future__ import annotations

from ..errors import InputError

TRUNCATED_FIX = "copy the file again from its source or re-export it (or delete its row)"
NONFINITE_FIX = "re-export the clip from its source, or delete its row: training on it would make the model NaN"


class AudioError(InputError):
    """An audio input that cannot be used; the message names the file and the fix."""


class TruncatedAudioError(AudioError):
    """The file holds fewer samples than its header declares."""


class NonFiniteAudioError(AudioError):
    """The decoded samples hold NaN or ±inf (float WAV/AIFF from a broken pipeline)."""


class SpanError(AudioError):
    """A segment span that does not fit its file (negative, reversed, empty, or past the end)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason  # the converter's issue code: negative_span, reversed_span, empty_span, segment_past_end
