"""Synthetic demo speech: a tiny vocabulary spoken by espeak-ng or a tone-word fallback (``kimi-audio-lf synth``)."""
