"""GPT sample index: checked by brute force against a token stream the test builds itself."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from megadepth.common.errors import DataError
from megadepth.data import sample_index
from megadepth.data.indexed import IndexedDatasetWriter
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


def _windows_of(docs: list[np.ndarray], order: np.ndarray, seq_len: int, count: int) -> list[tuple[int, ...]]:
    """The first ``count`` stream windows, cut here from the stream the test builds itself."""
    stream = _stream(docs, order)
    assert len(stream) >= count * seq_len + 1
    return [tuple(stream[k * seq_len : k * seq_len + seq_len + 1].tolist()) for k in range(count)]


def _expected_blocks(windows_per_epoch: int, max_block: int, count: int) -> list[range]:
    """The shuffle blocks covering windows ``0 .. count - 1``, from the rule in GPTDataset's docstring."""
    blocks: list[range] = []
    chunk = 0
    while not blocks or blocks[-1].stop < count:
        base = chunk * windows_per_epoch
        for lo in range(0, windows_per_epoch, max_block):
            blocks.append(range(base + lo, base + min(lo + max_block, windows_per_epoch)))
            if blocks[-1].stop >= count:
                break
        chunk += 1
    return blocks


@pytest.mark.parametrize("max_block", [None, 7, 25])
def test_shuffle_stays_inside_fixed_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, max_block: int | None) -> None:
    if max_block is not None:  # the real cap (2**20 windows) only bites on corpora too big for a test
        monkeypatch.setattr(sample_index, "_MAX_BLOCK", max_block)
    docs = _make_docs(2, 40)
    corpus = _corpus(tmp_path, docs)
    ids = np.arange(5, 35)  # a subset of documents, as a split would give
    seq_len = 8
    total = sum(len(docs[i]) for i in ids)
    per_epoch = (total - 1) // seq_len  # windows wholly inside one epoch's worth of stream
    block = min(per_epoch, max_block or per_epoch)
    num_samples = 2 * per_epoch + block // 2 + 1  # ends inside a block of the third chunk
    ds = GPTDataset(corpus, ids, seq_len, num_samples, seed=3)
    assert ds.windows_per_epoch == per_epoch and ds.block_size == block
    n = len(ids)
    epochs = [ds.doc_order[e * n : (e + 1) * n] for e in range(ds.num_epochs)]
    for order in epochs:
        assert sorted(order.tolist()) == ids.tolist()  # each epoch: every document once
    assert epochs[0].tolist() != epochs[1].tolist()  # epochs get their own order
    assert epochs[0].tolist() != ids.tolist()

    blocks = _expected_blocks(per_epoch, block, num_samples)
    windows = _windows_of(docs, ds.doc_order, seq_len, blocks[-1].stop)  # the index covers whole blocks
    samples = [tuple(ds[i].tolist()) for i in range(len(ds))]
    for b in blocks:
        mine = [samples[i] for i in b if i < num_samples]
        theirs = [windows[k] for k in b]
        if b.stop <= num_samples:
            assert sorted(mine) == sorted(theirs)  # a whole block: a permutation of its windows
        else:
            assert set(mine) <= set(theirs) and len(set(mine)) == len(mine)  # the cut block: distinct windows
        if len(b) > 3:
            assert mine != theirs[: len(mine)]  # and actually shuffled
        # The docstring's claim: a block may hold a document from two epochs, never more -- so no token
        # value (each is unique to one place in one document) is a label more than twice in a block.
        labels = Counter(t for w in theirs for t in w[1:])
        assert max(labels.values()) <= 2


def test_prefix_stable_across_totals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sample i is the same window whatever num_samples is: a run given more steps continues, not reshuffles."""
    docs = _make_docs(5, 60)
    corpus = _corpus(tmp_path, docs)
    ids = np.arange(60)
    for max_block in (None, 1, 6, 40):
        if max_block is not None:
            monkeypatch.setattr(sample_index, "_MAX_BLOCK", max_block)
        for seq_len in (4, 16, 300):  # 300: a tiny corpus relative to the window (one window per epoch)
            per_epoch = max(1, (sum(len(d) for d in docs) - 1) // seq_len)
            totals = sorted({1, per_epoch - 1 or 1, per_epoch, per_epoch + 1, (3 * per_epoch) // 2,
                             3 * per_epoch + 5, 7})
            made = {n: GPTDataset(corpus, ids, seq_len, n, seed=9) for n in totals}
            longest = made[totals[-1]]
            reference = [longest[i] for i in range(len(longest))]
            for n, ds in made.items():
                for i in range(n):
                    assert np.array_equal(ds[i], reference[i]), (max_block, seq_len, n, i)
            # Not trivially so: the samples are not the stream order.
            plain = GPTDataset(corpus, ids, seq_len, totals[-1], seed=9, shuffle=False)
            if per_epoch > 3:
                assert any(not np.array_equal(plain[i], reference[i]) for i in range(len(plain)))


def test_raised_steps_train_on_new_windows(tmp_path: Path) -> None:
    """The reported bug: 8 steps, then train.steps raised to 12 and resumed from 32 consumed samples."""
    docs = _make_docs(6, 80)
    corpus = _corpus(tmp_path, docs)
    ids = np.arange(80)
    seq_len, batch = 8, 4
    first = GPTDataset(corpus, ids, seq_len, 8 * batch, seed=0)
    raised = GPTDataset(corpus, ids, seq_len, 12 * batch, seed=0)
    assert 12 * batch <= raised.windows_per_epoch  # the whole run fits in one epoch
    trained = {tuple(first[i].tolist()) for i in range(8 * batch)}
    assert trained == {tuple(raised[i].tolist()) for i in range(8 * batch)}
    resumed = [tuple(raised[i].tolist()) for i in range(8 * batch, 12 * batch)]
    assert not trained & set(resumed)


@pytest.mark.parametrize("max_block", [None, 5])
def test_run_within_one_epoch_never_repeats_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, max_block: int | None) -> None:
    if max_block is not None:
        monkeypatch.setattr(sample_index, "_MAX_BLOCK", max_block)
    docs = _make_docs(7, 50)
    corpus = _corpus(tmp_path, docs)
    ids = np.arange(50)
    seq_len = 6
    total = sum(len(d) for d in docs)
    for n in ((total - 1) // seq_len, (total - 1) // seq_len - 3, 10):
        ds = GPTDataset(corpus, ids, seq_len, n, seed=4)
        samples = [ds[i] for i in range(n)]
        assert len({tuple(s.tolist()) for s in samples}) == n
        # Every token value occurs once in the corpus, so a label seen twice would be repeated data.
        labels = Counter(int(t) for s in samples for t in s[1:])
        assert max(labels.values()) == 1 and sum(labels.values()) == n * seq_len


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


def test_cache_per_total_and_format(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data, cache = tmp_path / "data", tmp_path / "cache"
    data.mkdir()
    corpus = _corpus(data, _make_docs(8, 50))
    ids = np.arange(50)
    short = GPTDataset(corpus, ids, 5, 40, seed=2, cache_dir=cache)
    long = GPTDataset(corpus, ids, 5, 700, seed=2, cache_dir=cache)
    assert not short.cache_hit and not long.cache_hit and short.cache_path != long.cache_path
    assert np.array_equal(long.shuffle_index[:40], short.shuffle_index)
    for n, built in ((40, short), (700, long)):
        again = GPTDataset(corpus, ids, 5, n, seed=2, cache_dir=cache)
        assert again.cache_hit
        assert [again[i].tolist() for i in range(n)] == [built[i].tolist() for i in range(n)]
    # A file under the right name whose arrays do not fit this index is rebuilt, not trusted.
    assert long.cache_path is not None
    sample_index.save_npz_atomic(
        long.cache_path,
        {"doc_order": long.doc_order, "sample_pos": long._sample_pos[:-1],
         "sample_offset": long._sample_offset[:-1], "shuffle_index": long.shuffle_index},
    )
    rebuilt = GPTDataset(corpus, ids, 5, 700, seed=2, cache_dir=cache)
    assert not rebuilt.cache_hit and np.array_equal(rebuilt._sample_pos, long._sample_pos)
    assert GPTDataset(corpus, ids, 5, 700, seed=2, cache_dir=cache).cache_hit
    # Another index format (or block cap) never reads the old files.
    monkeypatch.setattr(sample_index, "_INDEX_FORMAT", sample_index._INDEX_FORMAT + 1)
    assert not GPTDataset(corpus, ids, 5, 700, seed=2, cache_dir=cache).cache_hit
    monkeypatch.setattr(sample_index, "_MAX_BLOCK", 16)
    assert not GPTDataset(corpus, ids, 5, 700, seed=2, cache_dir=cache).cache_hit


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


def test_an_unwritable_cache_dir_warns_and_keeps_the_index_in_memory(sample_data: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """A cache is a shortcut: a cache_dir that cannot be made (below a file; a read-only shared folder)
    ended the run with a traceback. The index is the same as without a cache."""
    from megadepth.data import build_datasets

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    kwargs = dict(seq_len=32, seed=3, train_samples=40, valid_samples=8, valid_fraction=0.05)
    with_bad_cache, _ = build_datasets(sample_data, cache_dir=blocker / "cache", **kwargs)
    plain, _ = build_datasets(sample_data, **kwargs)
    assert [with_bad_cache[i].tolist() for i in range(40)] == [plain[i].tolist() for i in range(40)]
    err = capsys.readouterr().err
    assert "data.cache_dir" in err and "cannot be written" in err and err.count("warning") == 1
