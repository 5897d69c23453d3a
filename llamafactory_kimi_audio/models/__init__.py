"""Native Kimi-Audio for transformers (no LLaMA-Factory import here)."""
