"""From ``data.path`` to the train and validation datasets the trainer iterates.

``data.path`` is one data directory / shard prefix, or a Megatron-style blend: a list alternating weight
and path, ``[0.7, "dirA", 0.3, "dirB/shard_00000"]`` (weights may be strings of numbers, as they are
when they come from a command line).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from megadepth.common.errors import DataError
from megadepth.data.blend import BlendedDataset
from megadepth.data.sample_index import DocumentCorpus, GPTDataset, split_documents

__all__ = ["BLEND_MARGIN", "build_datasets", "data_fingerprint", "find_tokenizer", "parse_data_path",
           "read_data_manifest"]

#: Blend components get ``ceil(weight * n * BLEND_MARGIN) + 1`` samples. The blend never takes more
#: than ``ceil(weight * n)`` from one (see blend.py), so this is headroom, not a correction.
BLEND_MARGIN = 1.005

DataPath = str | os.PathLike | Sequence[Any]

_SPLIT_CODES = {"train": 0, "valid": 1}


def _as_weight(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, int | float | str):
        return None
    try:
        return float(x)
    except ValueError:
        return None


def parse_data_path(path: DataPath) -> list[tuple[float, str]]:
    """``[(weight, path), ...]`` from a single path or a weight/path list (weights not normalised)."""
    if isinstance(path, str | os.PathLike):
        return [(1.0, os.fspath(path))]
    items = list(path)
    if len(items) == 1 and _as_weight(items[0]) is None:
        return [(1.0, os.fspath(items[0]))]
    if not items or len(items) % 2:
        raise DataError(f"data path {items!r}: expected one path or a list alternating weight and path "
                        f"(e.g. [0.7, 'dirA', 0.3, 'dirB'])")
    out: list[tuple[float, str]] = []
    for k in range(0, len(items), 2):
        w, p = _as_weight(items[k]), items[k + 1]
        if w is None or not isinstance(p, str | os.PathLike) or _as_weight(p) is not None:
            raise DataError(f"data path entry {k // 2} ({items[k]!r}, {p!r}): expected a number followed by "
                            "a path")
        if not math.isfinite(w) or w <= 0:
            raise DataError(f"data path {os.fspath(p)}: weight must be a positive number, got {items[k]!r}")
        out.append((w, os.fspath(p)))
    return out


def _derive_seed(seed: int, split: str, component: int) -> int:
    """Independent seeds per split and blend component, so their shuffles do not coincide."""
    state = np.random.SeedSequence([int(seed), _SPLIT_CODES[split], component]).generate_state(1)
    return int(state[0])


def build_datasets(
    path: DataPath,
    *,
    seq_len: int,
    seed: int,
    train_samples: int,
    valid_samples: int,
    valid_fraction: float,
    cache_dir: str | Path | None = None,
    vocab_size: int | None = None,
) -> tuple[Any, Any | None]:
    """The train dataset and the validation dataset (None when ``valid_fraction`` or ``valid_samples`` is 0).

    Each path's documents are split contiguously (the last ``valid_fraction`` validate). One path gives a
    :class:`GPTDataset` per split; several give :class:`BlendedDataset` s of components sized
    ``ceil(weight * n * BLEND_MARGIN) + 1``. Sample ``i`` does not depend on the number of samples asked
    for: component samples are prefix-stable and the blend schedule is greedy, so raising a run's steps
    and resuming continues on new data. ``vocab_size`` (the model's) checks every sample read against it.
    """
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    components = parse_data_path(path)
    want_valid = valid_fraction > 0 and valid_samples > 0
    total_w = sum(w for w, _ in components)
    splits: dict[str, list[GPTDataset]] = {"train": [], "valid": []}
    for i, (w, p) in enumerate(components):
        corpus = DocumentCorpus.from_path(p)
        train_ids, valid_ids = split_documents(corpus.num_docs, valid_fraction if want_valid else 0.0)
        if want_valid and len(valid_ids) == 0:
            raise DataError(f"{p}: {corpus.num_docs} document(s) is too few to hold out validation documents "
                            f"(set valid_fraction to 0, or add data)")
        for split, ids, n in (("train", train_ids, train_samples), ("valid", valid_ids, valid_samples)):
            if split == "valid" and not want_valid:
                continue
            size = n if len(components) == 1 else math.ceil(w / total_w * n * BLEND_MARGIN) + 1
            splits[split].append(
                GPTDataset(corpus, ids, seq_len, size, _derive_seed(seed, split, i), cache_dir=cache_dir,
                           name=f"{p} ({split})", vocab_size=vocab_size)
            )

    def combine(parts: list[GPTDataset], n: int) -> Any:
        if len(parts) == 1:
            return parts[0]
        return BlendedDataset(parts, [w for w, _ in components], n, cache_dir=cache_dir)

    train = combine(splits["train"], train_samples)
    valid = combine(splits["valid"], valid_samples) if want_valid else None
    return train, valid


def data_fingerprint(path: DataPath) -> list[dict[str, Any]]:
    """What the data order depends on, per component of ``data.path``: its document count, token count,
    the sha256 of its document lengths and, for a blend, its share of the weights (not the path: a moved
    directory is the same data). A checkpoint records it, so a resume on other data is caught."""
    components = parse_data_path(path)
    total = sum(w for w, _ in components)
    out = []
    for w, p in components:
        corpus = DocumentCorpus.from_path(p)
        digest = hashlib.sha256()  # of all document lengths as little-endian int64, one shard at a time
        for shard in corpus.shards:
            digest.update(np.ascontiguousarray(shard.sequence_lengths, dtype="<i8").tobytes())
        entry: dict[str, Any] = {"documents": corpus.num_docs, "tokens": corpus.num_tokens,
                                 "lengths_sha256": digest.hexdigest()}
        if len(components) > 1:
            entry["share"] = w / total
        out.append(entry)
    return out


def _data_dirs(path: DataPath) -> list[Path]:
    """The directory that holds each component (a prefix's parent)."""
    return [Path(p) if Path(p).is_dir() else Path(p).parent for _, p in parse_data_path(path)]


def read_data_manifest(path: DataPath) -> dict | None:
    """``manifest.json`` of the data directory (for a blend: of its first component; for a shard prefix:
    next to the shard), or None."""
    m = _data_dirs(path)[0] / "manifest.json"
    if not m.is_file():
        return None
    try:
        data = json.loads(m.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{m}: unreadable manifest ({e})") from None
    if not isinstance(data, dict):
        raise DataError(f"{m}: manifest is not a JSON object")
    return data


def find_tokenizer(path: DataPath) -> Path | None:
    """``tokenizer.model`` next to the data, or None. For a blend every component that has one must have
    the same file (by sha256): token ids from different tokenizers cannot be mixed."""
    found: list[tuple[Path, str]] = []
    for d in _data_dirs(path):
        t = d / "tokenizer.model"
        if t.is_file():
            found.append((t, hashlib.sha256(t.read_bytes()).hexdigest()))
    if not found:
        return None
    first, digest = found[0]
    for other, other_digest in found[1:]:
        if other_digest != digest:
            raise DataError(f"blend components use different tokenizers: {first} and {other}")
    return first
