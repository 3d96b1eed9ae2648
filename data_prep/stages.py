"""What each unit of each stage does (see :mod:`data_prep.plan` for units, layout and markers), and the
per-process state the stages share. The units themselves: :mod:`data_prep.extract_stage` (extract),
:mod:`data_prep.dedup_stages` (buckets, cluster), :mod:`data_prep.output_stages` (tokenizer, tokenize,
finalize).

extract    one input file -> ``docs/NNNNNN.parquet`` (id, url, date, text, language, language_score,
           source) + ``sig/NNNNNN.{keys,docs}.npy`` (per key row: sorted 64-bit band / exact keys and
           the row each belongs to) + ``rejected/NNNNNN.parquet`` (the pages dropped, see
           :mod:`data_prep.rejected`). Read -> select -> decode -> HTML to text -> language -> Gopher
           repetition -> Gopher quality -> C4 -> FineWeb -> PII masking -> dedup keys.
buckets    one (key row, key range) -> ``edges/UNIT.npy``: pairs of global document ids whose keys are
           equal (each later document linked to the first one with that key).
cluster    all edges -> union-find -> ``removed.npy``: sorted global ids of every document that is not
           the smallest id of its cluster. Exact-key edges are joined first so the two kinds of
           duplicate are counted apart (``duplicates.npy``: each one's kind and kept copy).
tokenizer  trains sentencepiece on an order-independent hash sample of the kept text (or copies a given
           model) -> ``tokenizer.model``.
tokenize   one group of input files -> encode + EOS -> ``shard_GGGGG.bin/.idx`` and
           ``documents/part-GGGGG.parquet`` with the same documents in the same order, and the
           duplicates it leaves out -> ``rejected/GGGGG.parquet``.
finalize   links shards, document parts, rejected parts and the tokenizer into OUT/, writes
           ``manifest.json`` last.

A document's global id is its row in its input file's extract output plus the number of documents
kept from all earlier input files; smaller ids win in deduplication, so the earliest copy in input
order survives, whatever the number of workers.
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


def check_tokenizer(path: Path):
    import sentencepiece as spm

    try:
        sp = spm.SentencePieceProcessor(model_proto=path.read_bytes())
    except (RuntimeError, OSError, TypeError) as e:
        raise DataError(f"{path}: not a readable sentencepiece model ({e})") from None
    if sp.eos_id() < 0:
        raise DataError(f"{path}: the tokenizer has no EOS piece (documents must end in EOS)")
    return sp


#: stage -> (module, function) running one of its units; imported when a unit runs
_RUN = {
    "extract": ("data_prep.extract_stage", "run_extract"),
    "buckets": ("data_prep.dedup_stages", "run_buckets"),
    "cluster": ("data_prep.dedup_stages", "run_cluster"),
    "tokenizer": ("data_prep.output_stages", "run_tokenizer"),
    "tokenize": ("data_prep.output_stages", "run_tokenize"),
    "finalize": ("data_prep.output_stages", "run_finalize"),
}


def run_unit(plan: Plan, stage: str, unit: str) -> dict:
    """Run one unit unless its done marker exists; write the marker last. Returns the marker's data."""
    if plan.is_done(stage, unit):
        return plan.read_marker(stage, unit)
    module, fn = _RUN[stage]
    data = getattr(importlib.import_module(module), fn)(plan, unit)
    plan.write_marker(stage, unit, data)
    return data
