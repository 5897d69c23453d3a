"""Data tools: converters from user formats to LLaMA-Factory sharegpt, validation, synthetic demo speech."""
