"""GPT sample index: checked by brute force against a token stream the test builds itself."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from megadepth.data.indexed import DataError, IndexedDatasetWriter
from megadepth.data.sample_index import DocumentCorpus, GPTDataset, split_documents


def _make_docs(seed: int, n: int, total_mod: tuple[int, int] | None = None) -> list[np.ndarray]:
    """Documents whose tokens are all distinct (a token's value says where it came from).

    ``total_mod=(m, r)`` adjusts the last document so the total length is ``r`` modulo ``m``.
    """
    rng = np.random.default_rng(seed)
    lengths = [int(x) for x in rng.integers(0, 40, size=n)]
    lengths[1] = 0  # empty documents must be skipped, not break windows
    if total_mod is not None:
        m, r = total_mod
        lengths[-1] += (r - sum(lengths)) % m
    docs, start = [], 1
    for length in lengths:
        docs.append(np.arange(start, start + length, dtype=np.int64))
        start += length
    return docs


def _corpus(tmp_path: Path, docs: list[np.ndarray], shards: int = 2) -> DocumentCorpus:
    """Spread the documents over several shards in one directory."""
    bounds = np.linspace(0, len(docs), shards + 1).astype(int)
    for s in range(shards):
        with IndexedDatasetWriter(tmp_path / f"shard_{s:05d}", np.int32) as w:
            for d in docs[bounds[s] : bounds[s + 1]]:
                w.add_document(d)
    return DocumentCorpus.from_path(tmp_path)


def _stream(docs: list[np.ndarray], order: np.ndarray) -> np.ndarray:
    return np.concatenate([docs[int(d)] for d in order])


def test_corpus_reads_across_shards(tmp_path: Path) -> None:
    docs = _make_docs(0, 30)
    corpus = _corpus(tmp_path, docs, shards=3)
    assert corpus.num_docs == 30
    assert corpus.num_tokens == sum(len(d) for d in docs)
    assert corpus.doc_lengths.dtype == np.int64
    assert corpus.doc_lengths.tolist() == [len(d) for d in docs]
    for i, d in enumerate(docs):
        assert corpus.read(i, 0, len(d)).tolist() == d.tolist()
    assert corpus.read(29, 2, 3).tolist() == docs[29][2:5].tolist()
    # A prefix, and a prefix given with its extension, open one shard.
    assert DocumentCorpus.from_path(tmp_path / "shard_00001").num_docs == 10
    assert DocumentCorpus.from_path(tmp_path / "shard_00001.idx").num_docs == 10


def test_corpus_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no .bin/.idx"):
        DocumentCorpus.from_path(tmp_path)
    with pytest.raises(DataError, match="no such"):
        DocumentCorpus.from_path(tmp_path / "nothing_here")
    _corpus(tmp_path, _make_docs(0, 4), shards=1)
    (tmp_path / "shard_00009.bin").write_bytes(b"\x00" * 8)  # an unfinished shard
    with pytest.raises(DataError, match="shard_00009.bin has no .idx"):
        DocumentCorpus.from_path(tmp_path)


def test_split_documents() -> None:
    train, valid = split_documents(10, 0.1)
    assert train.tolist() == list(range(9)) and valid.tolist() == [9]
    train, valid = split_documents(10, 0.0)
    assert train.tolist() == list(range(10)) and valid.tolist() == []
    train, valid = split_documents(2, 0.001)  # at least one valid document
    assert train.tolist() == [0] and valid.tolist() == [1]
    train, valid = split_documents(1, 0.5)  # cannot split one document
    assert train.tolist() == [0] and valid.tolist() == []
    train, valid = split_documents(100, 0.25)
    assert len(valid) == 25 and valid[0] == 75 and train.dtype == np.int64
    with pytest.raises(ValueError):
        split_documents(10, 1.0)


@pytest.mark.parametrize(("seq_len", "epochs"), [(7, 1), (7, 3), (16, 3), (1, 1)])
def test_labels_exactly_once_and_one_token_overlap(tmp_path: Path, seq_len: int, epochs: int) -> None:
    # Choose the corpus size so that `epochs` whole epochs split into windows with nothing left over:
    # epochs * total - 1 must be a multiple of seq_len.
    r = next(r for r in range(seq_len) if (epochs * r - 1) % seq_len == 0) if seq_len > 1 else 0
    docs = _make_docs(1, 25, (seq_len, r) if seq_len > 1 else None)
    total = sum(len(d) for d in docs)
    assert (epochs * total - 1) % seq_len == 0
    corpus = _corpus(tmp_path, docs)
    ids = np.arange(len(docs))
    num_samples = (epochs * total - 1) // seq_len
    ds = GPTDataset(corpus, ids, seq_len, num_samples, seed=0, shuffle=False)
    assert ds.num_epochs == epochs
    assert ds.tokens_per_epoch == total
    assert ds.doc_order.tolist() == np.tile(ids, epochs).tolist()

    stream = _stream(docs, np.tile(ids, epochs))  # built here, independently of the dataset
    samples = [ds[k] for k in range(len(ds))]
    for k, s in enumerate(samples):
        assert s.dtype == np.int64 and s.shape == (seq_len + 1,)
        assert s.tolist() == stream[k * seq_len : k * seq_len + seq_len + 1].tolist()
    for a, b in zip(samples, samples[1:], strict=False):
        assert a[-1] == b[0]  # consecutive windows share exactly one token
    labels = Counter(int(t) for s in samples for t in s[1:])
    # Every token of the corpus is a label once per epoch, except the stream's very first token.
    first = int(stream[0])
    for token in range(1, total + 1):
        assert labels[token] == epochs - (token == first), token
    assert sum(labels.values()) == epochs * total - 1


def test_shuffled_dataset_is_a_permutation_of_the_stream_windows(tmp_path: Path) -> None:
    docs = _make_docs(2, 40)
    corpus = _corpus(tmp_path, docs)
    ids = np.arange(5, 35)  # a subset of documents, as a split would give
    seq_len = 8
    total = sum(len(docs[i]) for i in ids)
    num_samples = (3 * total) // seq_len - 1  # into a third epoch
    ds = GPTDataset(corpus, ids, seq_len, num_samples, seed=3)
    assert ds.num_epochs == 3
    n = len(ids)
    blocks = [ds.doc_order[e * n : (e + 1) * n] for e in range(ds.num_epochs)]
    for block in blocks:
        assert sorted(block.tolist()) == ids.tolist()  # each epoch: every document once
    assert blocks[0].tolist() != blocks[1].tolist()  # epochs get their own order
    assert blocks[0].tolist() != ids.tolist()
    stream = _stream(docs, ds.doc_order)
    windows = sorted(
        tuple(stream[k * seq_len : k * seq_len + seq_len + 1].tolist()) for k in range(num_samples)
    )
    samples = [tuple(ds[i].tolist()) for i in range(len(ds))]
    assert sorted(samples) == windows
    assert samples != [
        tuple(stream[k * seq_len : k * seq_len + seq_len + 1].tolist()) for k in range(num_samples)
    ]


def test_deterministic_per_seed(tmp_path: Path) -> None:
    corpus = _corpus(tmp_path, _make_docs(3, 30))
    ids = np.arange(30)
    a = GPTDataset(corpus, ids, 5, 100, seed=11)
    b = GPTDataset(corpus, ids, 5, 100, seed=11)
    c = GPTDataset(corpus, ids, 5, 100, seed=12)
    sa = [a[i].tolist() for i in range(100)]
    assert sa == [b[i].tolist() for i in range(100)]
    assert sa != [c[i].tolist() for i in range(100)]
    assert a.doc_order.tolist() != c.doc_order.tolist()
    # More samples add epochs without changing the earlier epochs' document order.
    longer = GPTDataset(corpus, ids, 5, 1000, seed=11)
    assert longer.doc_order[: len(a.doc_order)].tolist() == a.doc_order.tolist()


def test_too_little_data(tmp_path: Path) -> None:
    docs = [np.arange(1, 6), np.arange(6, 9)]  # 8 tokens
    corpus = _corpus(tmp_path, docs, shards=1)
    with pytest.raises(DataError, match="fewer than one sample"):
        GPTDataset(corpus, np.arange(2), 8, 10, seed=0)
    ds = GPTDataset(corpus, np.arange(2), 7, 10, seed=0)  # just enough for one window
    assert len(ds) == 10
    assert ds.num_epochs == 9  # stream positions 0..70 need ceil(71 / 8) epochs; windows cross epochs
    with pytest.raises(DataError):
        GPTDataset(corpus, np.arange(0), 4, 10, seed=0)


def test_cache_hit_returns_identical_arrays(tmp_path: Path) -> None:
    data, cache = tmp_path / "data", tmp_path / "cache"
    data.mkdir()
    corpus = _corpus(data, _make_docs(4, 50))
    ids = np.arange(45)
    first = GPTDataset(corpus, ids, 6, 300, seed=5, cache_dir=cache)
    assert not first.cache_hit
    files = list(cache.glob("*.npz"))
    assert len(files) == 1
    second = GPTDataset(corpus, ids, 6, 300, seed=5, cache_dir=cache)
    assert second.cache_hit
    for name in ("doc_order", "shuffle_index", "_sample_pos", "_sample_offset"):
        assert np.array_equal(getattr(first, name), getattr(second, name))
    assert [first[i].tolist() for i in range(300)] == [second[i].tolist() for i in range(300)]
    # Anything that changes the index changes the key.
    assert not GPTDataset(corpus, ids, 6, 300, seed=6, cache_dir=cache).cache_hit
    assert not GPTDataset(corpus, ids[:-1], 6, 300, seed=5, cache_dir=cache).cache_hit
    assert not GPTDataset(corpus, ids, 7, 300, seed=5, cache_dir=cache).cache_hit
    assert len(list(cache.glob("*.npz"))) == 4
    # A damaged cache file is rebuilt, not trusted.
    files[0].write_bytes(b"not a zip")
    third = GPTDataset(corpus, ids, 6, 300, seed=5, cache_dir=cache)
    assert not third.cache_hit
    assert np.array_equal(third.shuffle_index, first.shuffle_index)


class _LengthsOnly:
    """A corpus of ~1e8 tokens that exists only as document lengths (building the index reads no tokens)."""

    def __init__(self, lengths: np.ndarray) -> None:
        self.doc_lengths = lengths
        self.num_docs = len(lengths)
        self.prefixes = [Path("synthetic")]


def test_index_of_1e8_tokens_builds_quickly() -> None:
    lengths = np.random.default_rng(0).integers(1, 4000, size=50_000).astype(np.int64)
    assert lengths.sum() > 9e7
    t0 = time.perf_counter()
    ds = GPTDataset(_LengthsOnly(lengths), np.arange(len(lengths)), 128, 2_000_000, seed=1)  # type: ignore[arg-type]
    elapsed = time.perf_counter() - t0
    assert ds.num_epochs == 3
    assert elapsed < 5.0, elapsed  # a per-token Python loop would take minutes
    # Spot-check window starts against cumulative lengths computed here.
    ends = np.cumsum(lengths[ds.doc_order])
    for k in (0, 1, 777_777, 1_999_999):
        pos, off = int(ds._sample_pos[k]), int(ds._sample_offset[k])
        start_of_doc = int(ends[pos - 1]) if pos else 0
        assert start_of_doc + off == k * 128
        assert 0 <= off < lengths[ds.doc_order[pos]]
