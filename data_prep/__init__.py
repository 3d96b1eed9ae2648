"""Data preparation: from raw text to tokenized Megatron ``.bin``/``.idx`` shards plus a manifest.

``text_shards`` is the small, single-process path (local text/JSONL files, or the embedded sample corpus
from ``sample_text``) that the README's first command runs.
"""
