"""Converters: ASR tables, Kimi JSONL, sharegpt, Kaldi, folders and public corpora (``corpora/``) into LLaMA-Factory
sharegpt datasets with audio, checked row by row (``kimi-audio-lf convert``).
"""
