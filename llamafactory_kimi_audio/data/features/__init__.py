"""The feature cache: per-clip model inputs filled ahead of training (``kimi-audio-lf precompute``) or by training
itself (write-through), read when a batch is collated; ``kimi-audio-lf cache``.
"""
