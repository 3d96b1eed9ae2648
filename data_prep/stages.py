"""What each unit of each stage does (see :mod:`data_prep.plan` for units, layout and markers), and the
per-process state the stages share; the units are in :mod:`data_prep.extract_stage`,
:mod:`data_prep.dedup_stages` and :mod:`data_prep.output_stages`.

extract    one input file -> ``docs/NNNNNN.parquet`` (:data:`DOC_COLUMNS`) + ``sig/NNNNNN.{keys,docs}.npy``
           (per key row: sorted 64-bit band / exact keys and their rows) + ``rejected/NNNNNN.parquet``.
buckets    one (key row, key range) -> ``edges/UNIT.npy``: each later document with a key linked to the first.
cluster    all edges -> union-find -> ``removed.npy`` (sorted global ids of all but each cluster's smallest)
           and ``duplicates.npy`` (each one's kind, exact or near, and kept copy).
tokenizer  trains sentencepiece on a hash sample of the kept text (or copies a given model).
tokenize   one group of input files -> ``shard_GGGGG.bin/.idx`` and ``documents/part-GGGGG.parquet`` (the
           same documents in the same order), and the duplicates left out -> ``rejected/GGGGG.parquet``.
finalize   links shards, document parts, rejected parts and the tokenizer into OUT/, ``manifest.json`` last.

A document's global id is its row in its input file's extract output plus the documents kept from all
earlier input files: smaller ids win in deduplication, whatever the number of workers.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from data_prep.plan import Plan
from megadepth.common.errors import DataError

__all__ = ["MANIFEST", "check_tokenizer", "run_unit"]

MANIFEST = "manifest.json"
TOKENIZER = "tokenizer.model"
DOCS_DIR = "documents"
DOC_COLUMNS = ("id", "url", "date", "text", "language", "language_score", "source")

# Objects that are costly to build (LID model, extractor) are kept per process, per plan.
_CACHE: dict[tuple[str, str], Any] = {}


def cached(plan: Plan, name: str, build):
    key = (plan.config_hash, name)
    if key not in _CACHE:
        _CACHE[key] = build()
    return _CACHE[key]


def _maybe_die(stage: str, unit: str) -> None:
    """Test hook: ``MEGADEPTH_PREP_DIE=stage:unit`` kills this process mid-unit, like a node failure."""
    if os.environ.get("MEGADEPTH_PREP_DIE") == f"{stage}:{unit}":
        os._exit(137)


def doc_schema():
    import pyarrow as pa

    types = {"text": pa.large_string(), "language_score": pa.float32()}
    return pa.schema([(name, types.get(name, pa.string())) for name in DOC_COLUMNS])


def offsets(plan: Plan) -> np.ndarray:
    """Global id of each input file's first kept document (and the total at the end), read from the
    extract markers once per process and plan: per unit it would be quadratic in the number of files."""

    def build() -> np.ndarray:
        kept = [plan.read_marker("extract", u)["kept"] for u in plan.units("extract")]
        return np.concatenate(([0], np.cumsum(kept, dtype=np.int64)))

    return cached(plan, "offsets", build)


def removed(plan: Plan) -> np.ndarray:
    if not plan.units("cluster"):
        return np.zeros(0, dtype=np.int64)
    return np.load(plan.stage_dir("cluster") / "removed.npy", mmap_mode="r")


def kept_rows(plan: Plan, i: int, offsets: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """Rows of input ``i``'s extract output that survive deduplication (a boolean mask)."""
    n = int(offsets[i + 1] - offsets[i])
    mask = np.ones(n, dtype=bool)
    a, b = np.searchsorted(removed, [offsets[i], offsets[i + 1]])
    mask[np.asarray(removed[a:b]) - offsets[i]] = False
    return mask


def kept_batches(plan: Plan, files, offsets: np.ndarray, removed: np.ndarray, columns: list[str] | None = None):
    """(input index, its first row, batch, the batch's dedup mask) for each batch of the extract documents of
    the input files ``files`` that kept any."""
    import pyarrow.parquet as pq

    for i in files:
        if offsets[i + 1] == offsets[i]:
            continue
        mask = kept_rows(plan, i, offsets, removed)
        pf = pq.ParquetFile(plan.stage_dir("extract") / "docs" / f"{i:06d}.parquet")
        row = 0
        for batch in pf.iter_batches(columns=columns, batch_size=plan.config.shards.row_group_docs):
            yield i, row, batch, mask[row : row + batch.num_rows]
            row += batch.num_rows


def check_tokenizer(path: Path):
    import sentencepiece as spm

    try:
        sp = spm.SentencePieceProcessor(model_proto=path.read_bytes())
    except (RuntimeError, OSError, TypeError) as e:
        raise DataError(f"{path}: not a readable sentencepiece model ({e})") from None
    if sp.eos_id() < 0:
        raise DataError(f"{path}: the tokenizer has no EOS piece (documents must end in EOS)")
    return sp


#: stage -> the module whose ``run_<stage>`` runs one of its units; imported when a unit runs
_MODULE = {"extract": "extract_stage", "buckets": "dedup_stages", "cluster": "dedup_stages",
           "tokenizer": "output_stages", "tokenize": "output_stages", "finalize": "output_stages"}


def run_unit(plan: Plan, stage: str, unit: str) -> dict:
    """Run one unit unless its done marker exists; write the marker last. Returns the marker's data."""
    if plan.is_done(stage, unit):
        return plan.read_marker(stage, unit)
    data = getattr(importlib.import_module(f"data_prep.{_MODULE[stage]}"), f"run_{stage}")(plan, unit)
    plan.write_marker(stage, unit, data)
    return data
