"""Token ids outside model.vocab_size are a DataError naming the shard, raised when the sample is read."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from megadepth.data import (
    DataError,
    DocumentCorpus,
    GPTDataset,
    IndexedDatasetWriter,
    MicroBatchSampler,
    build_datasets,
    make_loader,
)

VOCAB = 2048


def _write_shards(folder: Path, bad: tuple[int, int, int, int] | None, dtype: type = np.uint16) -> list[list[np.ndarray]]:
    """Two shards of 6 documents of in-vocabulary ids; ``bad = (shard, doc, position, id)`` plants one id."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    shards: list[list[np.ndarray]] = []
    for s in range(2):
        docs = [rng.integers(0, VOCAB, size=int(rng.integers(30, 60))).astype(np.int64) for _ in range(6)]
        if bad is not None and bad[0] == s:
            docs[bad[1]][bad[2]] = bad[3]
        with IndexedDatasetWriter(folder / f"shard_{s:05d}", dtype) as w:
            for d in docs:
                w.add_document(d)
        shards.append(docs)
    return shards


def _holds(ds: GPTDataset, docs: list[np.ndarray], i: int, token: int) -> bool:
    """Whether sample ``i`` covers ``token``, worked out from the documents written here."""
    stream = np.concatenate([docs[int(d)] for d in ds.doc_order])
    k = int(ds.shuffle_index[i])
    return bool(np.any(stream[k * ds.seq_len : k * ds.seq_len + ds.seq_len + 1] == token))


def test_out_of_range_id_is_a_data_error_naming_the_shard(tmp_path: Path) -> None:
    shards = _write_shards(tmp_path / "d", bad=(1, 3, 5, 40000))
    docs = shards[0] + shards[1]
    corpus = DocumentCorpus.from_path(tmp_path / "d")
    # Building the index reads no tokens: the bad id is found when its sample is read, not at start-up.
    ds = GPTDataset(corpus, np.arange(len(docs)), 16, 60, seed=1, name="d (train)", vocab_size=VOCAB)
    unchecked = GPTDataset(corpus, np.arange(len(docs)), 16, 60, seed=1)
    expected = re.escape(
        f"data: token id 40000 in {tmp_path / 'd' / 'shard_00001.bin'} (document 3; d (train)) is >= "
        f"model.vocab_size {VOCAB}: shards made with another tokenizer?"
    )
    bad_samples = [i for i in range(len(ds)) if _holds(ds, docs, i, 40000)]
    assert bad_samples  # the planted id is in the run
    for i in range(len(ds)):
        if i in bad_samples:
            with pytest.raises(DataError, match=expected):
                ds[i]
            assert 40000 in unchecked[i]  # without vocab_size the id goes through (what the model then saw)
        else:
            assert np.array_equal(ds[i], unchecked[i])


def test_clean_shards_and_the_last_valid_id(tmp_path: Path) -> None:
    shards = _write_shards(tmp_path / "d", bad=(0, 2, 0, VOCAB - 1))  # the largest id that is allowed
    docs = shards[0] + shards[1]
    corpus = DocumentCorpus.from_path(tmp_path / "d")
    ds = GPTDataset(corpus, np.arange(len(docs)), 16, 60, seed=1, vocab_size=VOCAB)
    plain = GPTDataset(corpus, np.arange(len(docs)), 16, 60, seed=1)
    assert all(np.array_equal(ds[i], plain[i]) for i in range(len(ds)))
    assert any(_holds(ds, docs, i, VOCAB - 1) for i in range(len(ds)))
    # One more than the vocabulary allows is refused.
    small = GPTDataset(corpus, np.arange(len(docs)), 16, 60, seed=1, vocab_size=VOCAB - 1)
    first = next(i for i in range(len(small)) if _holds(small, docs, i, VOCAB - 1))
    with pytest.raises(DataError, match=f"token id {VOCAB - 1} in .*shard_00000.bin .*>= model.vocab_size {VOCAB - 1}"):
        small[first]


def test_negative_id_in_a_signed_shard(tmp_path: Path) -> None:
    shards = _write_shards(tmp_path / "d", bad=(0, 4, 7, -3), dtype=np.int32)
    docs = shards[0] + shards[1]
    ds = GPTDataset(DocumentCorpus.from_path(tmp_path / "d"), np.arange(len(docs)), 16, 60, seed=2, vocab_size=VOCAB)
    bad = next(i for i in range(len(ds)) if _holds(ds, docs, i, -3))
    with pytest.raises(DataError, match=r"token id -3 in .*shard_00000.bin \(document 4; .*is negative"):
        ds[bad]


@pytest.mark.parametrize("workers", [0, 1])
def test_trainer_path_raises_through_build_and_loader(tmp_path: Path, workers: int) -> None:
    """build_datasets(vocab_size=...) and the loader the trainer iterates; train and valid alike."""
    _write_shards(tmp_path / "d", bad=(1, 5, 3, 40000))  # in the last document: the validation split
    _write_shards(tmp_path / "clean", bad=None)
    train, valid = build_datasets(tmp_path / "d", seq_len=16, seed=0, train_samples=64, valid_samples=8,
                                  valid_fraction=0.1, vocab_size=VOCAB)
    assert valid is not None
    with pytest.raises(DataError, match="token id 40000 in .*shard_00001.bin .*model.vocab_size 2048"):
        for i in range(len(valid)):
            valid[i]
    batches = list(make_loader(train, MicroBatchSampler(len(train), 0, 4, 0, 1), num_workers=workers))
    assert len(batches) == 16  # the training documents are clean
    blend = [0.5, str(tmp_path / "clean"), 0.5, str(tmp_path / "d")]
    mixed, _ = build_datasets(blend, seq_len=16, seed=0, train_samples=400, valid_samples=0, valid_fraction=0.0,
                              vocab_size=VOCAB)
    with pytest.raises(DataError, match="^data: token id 40000 in .*d/shard_00001.bin .*model.vocab_size 2048") as info:
        for _ in make_loader(mixed, MicroBatchSampler(len(mixed), 0, 4, 0, 1), num_workers=workers):
            pass
    # from a worker process too, the message is the reader's own line, not torch's traceback text
    assert "\n" not in str(info.value) and "Caught" not in str(info.value)
