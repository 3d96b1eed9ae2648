"""Blending, the data-parallel sampler, the loader, and build_datasets."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from megadepth.data import (
    BlendedDataset,
    DataError,
    GPTDataset,
    IndexedDatasetWriter,
    MicroBatchSampler,
    blend_schedule,
    build_datasets,
    find_tokenizer,
    make_loader,
    parse_data_path,
    read_data_manifest,
)

WEIGHT_SETS = [
    [0.7, 0.3],
    [1, 1, 1],
    [0.5, 0.25, 0.125, 0.125],
    [0.9, 0.02, 0.02, 0.02, 0.02, 0.02],
    # Weights for which Webster's (k + 0.5) / w merge misses quota (a prefix off by more than 1).
    [0.001, 0.001, 0.001, 0.001, 0.001, 0.001, 0.001, 0.993],
    list(np.random.default_rng(0).dirichlet(np.ones(5))),
]


@pytest.mark.parametrize("weights", WEIGHT_SETS)
def test_blend_counts_within_one_sample_on_every_prefix(weights: list[float]) -> None:
    n = 20_000
    idx = blend_schedule(weights, n)
    w = np.asarray(weights, dtype=np.float64) / np.sum(weights)
    counts = np.zeros(len(w), dtype=np.int64)
    worst = 0.0
    for i, d in enumerate(idx.tolist()):  # counted here, one sample at a time
        counts[d] += 1
        worst = max(worst, float(np.abs(counts - (i + 1) * w).max()))
    assert worst < 1.0


def test_blend_is_deterministic_and_scale_free() -> None:
    a = blend_schedule([0.6, 0.3, 0.1], 5000)
    assert np.array_equal(a, blend_schedule([0.6, 0.3, 0.1], 5000))
    assert np.array_equal(a, blend_schedule([6, 3, 1], 5000))
    assert np.array_equal(a[:1234], blend_schedule([0.6, 0.3, 0.1], 1234))  # prefixes agree


class _Tagged:
    """Sample j of dataset d is (d, j)."""

    def __init__(self, d: int, n: int) -> None:
        self.d, self.n = d, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, j: int) -> tuple[int, int]:
        assert 0 <= j < self.n
        return (self.d, j)


def test_blended_dataset_maps_to_consecutive_component_samples(tmp_path: Path) -> None:
    n = 1000
    weights = [0.5, 0.3, 0.2]
    comps = [_Tagged(d, math.ceil(w * n) + 1) for d, w in enumerate(weights)]
    ds = BlendedDataset(comps, weights, n, cache_dir=tmp_path)
    assert not ds.cache_hit
    seen = [ds[i] for i in range(n)]
    for d in range(3):
        js = [j for dd, j in seen if dd == d]
        assert js == list(range(len(js)))  # each component read in order, none skipped or repeated
        assert abs(len(js) - weights[d] * n) < 1
    again = BlendedDataset(comps, weights, n, cache_dir=tmp_path)
    assert again.cache_hit and [again[i] for i in range(n)] == seen


def test_blend_errors() -> None:
    with pytest.raises(DataError, match="has 10 samples"):
        BlendedDataset([_Tagged(0, 10), _Tagged(1, 100)], [0.5, 0.5], 100)
    with pytest.raises(DataError, match="> 0"):
        BlendedDataset([_Tagged(0, 10), _Tagged(1, 100)], [0.0, 1.0], 10)
    with pytest.raises(DataError, match="> 0"):
        blend_schedule([-1.0, 2.0], 10)
    with pytest.raises(DataError, match="weights"):
        BlendedDataset([_Tagged(0, 10)], [0.5, 0.5], 10)


def _run_sampler(total: int, consumed: int, micro_batch: int, dp_size: int) -> list[list[list[int]]]:
    """Per micro-step, every rank's indices."""
    per_rank = [list(MicroBatchSampler(total, consumed, micro_batch, r, dp_size)) for r in range(dp_size)]
    assert len({len(x) for x in per_rank}) == 1
    return [list(step) for step in zip(*per_rank, strict=True)]


def test_sampler_layouts_see_the_same_global_batches() -> None:
    total, micro_batch = 100, 3
    one_rank = _run_sampler(total, 0, micro_batch, 1)  # 1 rank, grad accumulation 2
    two_ranks = _run_sampler(total, 0, micro_batch, 2)  # 2 ranks, grad accumulation 1
    global_one = [sorted(one_rank[2 * s][0] + one_rank[2 * s + 1][0]) for s in range(len(one_rank) // 2)]
    global_two = [sorted(step[0] + step[1]) for step in two_ranks]
    assert global_one == global_two
    assert global_two[0] == list(range(6)) and global_two[1] == list(range(6, 12))
    assert two_ranks[0] == [[0, 1, 2], [3, 4, 5]]  # rank r takes the r-th chunk
    # 100 samples hold 16 full micro-steps of 6; the remainder is dropped.
    assert len(two_ranks) == 16 and len(MicroBatchSampler(total, 0, micro_batch, 0, 2)) == 16


def test_sampler_resumes_from_consumed_samples() -> None:
    total, micro_batch, dp, accum = 200, 2, 2, 3
    full = _run_sampler(total, 0, micro_batch, dp)
    steps_done = 5
    consumed = steps_done * accum * micro_batch * dp
    resumed = _run_sampler(total, consumed, micro_batch, dp)
    assert resumed == full[steps_done * accum :]
    assert list(MicroBatchSampler(10, 10, 2, 0, 1)) == []
    with pytest.raises(ValueError):
        MicroBatchSampler(10, 0, 2, 2, 2)


def _write_dir(path: Path, seed: int, n_docs: int, vocab: int = 1000) -> None:
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    with IndexedDatasetWriter(path / "shard_00000", np.uint16) as w:
        for _ in range(n_docs):
            w.add_document(rng.integers(0, vocab, size=int(rng.integers(20, 200))))


def test_make_loader_yields_long_tensors(tmp_path: Path) -> None:
    import torch

    _write_dir(tmp_path / "d", 0, 50)
    train, _ = build_datasets(
        str(tmp_path / "d"), seq_len=16, seed=1, train_samples=64, valid_samples=0, valid_fraction=0.0
    )
    sampler = MicroBatchSampler(len(train), 8, 4, 1, 2)
    for workers in (0, 1):
        batches = list(make_loader(train, sampler, num_workers=workers))
        assert len(batches) == (64 - 8) // 8
        b = batches[0]
        assert b.dtype == torch.int64 and tuple(b.shape) == (4, 17)
        expect = np.stack([train[i] for i in range(8 + 4, 8 + 8)])  # rank 1's chunk of the first step
        assert b.numpy().tolist() == expect.tolist()


def test_build_single_path(tmp_path: Path) -> None:
    _write_dir(tmp_path / "d", 0, 100)
    train, valid = build_datasets(
        tmp_path / "d", seq_len=32, seed=7, train_samples=200, valid_samples=20, valid_fraction=0.1
    )
    assert isinstance(train, GPTDataset) and isinstance(valid, GPTDataset)
    assert len(train) == 200 and len(valid) == 20
    assert train.doc_ids.tolist() == list(range(90)) and valid.doc_ids.tolist() == list(range(90, 100))
    assert train[0].shape == (33,)
    again, _ = build_datasets(
        tmp_path / "d", seq_len=32, seed=7, train_samples=200, valid_samples=20, valid_fraction=0.1
    )
    assert [again[i].tolist() for i in range(20)] == [train[i].tolist() for i in range(20)]
    for vf, vs in ((0.0, 20), (0.1, 0)):
        _, none = build_datasets(
            tmp_path / "d", seq_len=32, seed=7, train_samples=10, valid_samples=vs, valid_fraction=vf
        )
        assert none is None


def test_build_blend(tmp_path: Path) -> None:
    _write_dir(tmp_path / "a", 1, 80)
    _write_dir(tmp_path / "b", 2, 80)
    path = ["0.7", str(tmp_path / "a"), 0.3, str(tmp_path / "b" / "shard_00000")]
    n = 500
    train, valid = build_datasets(
        path,
        seq_len=16,
        seed=0,
        train_samples=n,
        valid_samples=50,
        valid_fraction=0.1,
        cache_dir=tmp_path / "c",
    )
    assert isinstance(train, BlendedDataset) and isinstance(valid, BlendedDataset)
    assert [len(d) for d in train.datasets] == [
        math.ceil(0.7 * n * 1.005) + 1,
        math.ceil(0.3 * n * 1.005) + 1,
    ]
    assert len(train) == n and len(valid) == 50
    assert abs(int((train.dataset_index == 0).sum()) - 0.7 * n) < 1
    assert train[n - 1].shape == (17,)
    # Components of one blend and the two splits get different seeds, hence different shuffles.
    assert train.datasets[0].seed != train.datasets[1].seed != valid.datasets[0].seed


@pytest.mark.parametrize("blend", [False, True])
def test_build_is_prefix_stable_across_totals(tmp_path: Path, blend: bool) -> None:
    """Raising train.steps (hence train_samples) must not change the samples already trained on."""
    _write_dir(tmp_path / "a", 1, 30)
    _write_dir(tmp_path / "b", 2, 12)
    _write_dir(tmp_path / "c", 3, 20)
    path: list = [0.5, str(tmp_path / "a"), 0.2, str(tmp_path / "b"), 0.3, str(tmp_path / "c")]
    if not blend:
        path = [str(tmp_path / "a")]
    totals = (96, 150, 1000)  # 1000 samples of 16 tokens: several epochs of every component
    built = {
        n: build_datasets(path, seq_len=16, seed=4, train_samples=n, valid_samples=0, valid_fraction=0.0)[0]
        for n in totals
    }
    longest = built[totals[-1]]
    if blend:
        sizes = [[len(d) for d in built[n].datasets] for n in totals]
        assert sizes[0] != sizes[1] != sizes[2]  # the components themselves are sized from n
        epochs = [d.num_epochs for d in longest.datasets]
        assert min(epochs) > 1
    for n in totals[:-1]:
        assert [built[n][i].tolist() for i in range(n)] == [longest[i].tolist() for i in range(n)], n


def test_parse_data_path_errors() -> None:
    assert parse_data_path("x") == [(1.0, "x")]
    assert parse_data_path(["x"]) == [(1.0, "x")]
    assert parse_data_path([1, "a", "2.5", "b"]) == [(1.0, "a"), (2.5, "b")]
    for bad in ([0.5, "a", 0.5], ["a", 0.5], [0.5, 0.5], [0, "a"], [-1, "a", 2, "b"], []):
        with pytest.raises(DataError):
            parse_data_path(bad)


def test_manifest_and_tokenizer_lookup(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    _write_dir(a, 0, 5)
    _write_dir(b, 1, 5)
    assert read_data_manifest(a) is None and find_tokenizer(a) is None
    (a / "manifest.json").write_text(json.dumps({"vocab_size": 1000}))
    (a / "tokenizer.model").write_bytes(b"model-a")
    assert read_data_manifest(a) == {"vocab_size": 1000}
    assert read_data_manifest(a / "shard_00000") == {"vocab_size": 1000}  # next to a prefix
    assert find_tokenizer(a) == a / "tokenizer.model"
    assert find_tokenizer([0.5, str(a), 0.5, str(b)]) == a / "tokenizer.model"
    (b / "tokenizer.model").write_bytes(b"model-b")
    with pytest.raises(DataError, match="different tokenizers"):
        find_tokenizer([0.5, str(a), 0.5, str(b)])
    (a / "manifest.json").write_text("{broken")
    with pytest.raises(DataError, match="manifest"):
        read_data_manifest(a)
