"""``kimi-audio-lf doctor``: environment and checkpoint checks, each with the fix for a failure."""
