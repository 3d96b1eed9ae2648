"""Megatron indexed format: exact bytes, round trips, damage detection, and Megatron-LM's own reader."""

from __future__ import annotations

import json
import pickle
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from megadepth.common.errors import DataError
from megadepth.data.indexed import IndexedDataset, IndexedDatasetWriter, best_dtype, index_exists

MAGIC = b"MMIDIDX\x00\x00"


def _random_docs(seed: int, n: int, high: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    docs = [rng.integers(0, high, size=int(rng.integers(1, 300))) for _ in range(n)]
    docs[3] = np.zeros(0, dtype=np.int64)  # an empty document must survive too
    return docs


def _write(prefix: Path, docs: list, dtype) -> None:
    with IndexedDatasetWriter(prefix, dtype) as w:
        for d in docs:
            w.add_document(d)


@pytest.mark.parametrize(("dtype", "high"), [(np.uint16, 65535), (np.int32, 2**31 - 1)])
def test_round_trip(tmp_path: Path, dtype, high: int) -> None:
    docs = _random_docs(0, 50, high)
    docs[0] = np.array([0, high, high - 1])  # the extremes of the range
    prefix = tmp_path / "shard"
    _write(prefix, docs, dtype)
    assert index_exists(prefix)
    ds = IndexedDataset(prefix)
    assert len(ds) == len(docs)
    assert ds.dtype == np.dtype(dtype)
    assert ds.num_tokens == sum(len(d) for d in docs)
    assert ds.sequence_lengths.dtype == np.int32
    assert ds.sequence_lengths.tolist() == [len(d) for d in docs]
    assert ds.document_indices.tolist() == list(range(len(docs) + 1))
    for i, d in enumerate(docs):
        assert ds[i].tolist() == [int(x) for x in d]
    assert ds[-1].tolist() == [int(x) for x in docs[-1]]
    assert ds.get(0, offset=1, length=2).tolist() == [high, high - 1]
    assert ds.get(1, offset=2).tolist() == [int(x) for x in docs[1][2:]]
    with pytest.raises(IndexError):
        ds[len(docs)]
    with pytest.raises(IndexError):
        ds.get(0, offset=2, length=5)
    again = pickle.loads(pickle.dumps(ds))
    assert again[5].tolist() == ds[5].tolist()


@pytest.mark.parametrize(("dtype", "code", "fmt"), [(np.uint16, 8, "H"), (np.int32, 4, "i")])
def test_byte_layout_field_by_field(tmp_path: Path, dtype, code: int, fmt: str) -> None:
    docs = [[5, 6, 7], [1000], [], [9, 8]]
    prefix = tmp_path / "s"
    _write(prefix, docs, dtype)
    item = struct.calcsize("<" + fmt)
    expected_idx = (
        MAGIC
        + struct.pack("<Q", 1)  # version
        + struct.pack("<B", code)
        + struct.pack("<Q", 4)  # sequences
        + struct.pack("<Q", 5)  # document indices
        + struct.pack("<4i", 3, 1, 0, 2)  # lengths
        + struct.pack("<4q", 0, 3 * item, 4 * item, 4 * item)  # byte pointers
        + struct.pack("<5q", 0, 1, 2, 3, 4)  # document indices
    )
    assert (tmp_path / "s.idx").read_bytes() == expected_idx
    assert (tmp_path / "s.bin").read_bytes() == struct.pack("<6" + fmt, 5, 6, 7, 1000, 9, 8)


def test_best_dtype() -> None:
    assert best_dtype(2048) == np.uint16
    assert best_dtype(65499) == np.uint16
    assert best_dtype(65500) == np.int32
    assert best_dtype(256000) == np.int32


def test_writer_rejects_ids_that_do_not_fit(tmp_path: Path) -> None:
    with IndexedDatasetWriter(tmp_path / "s", np.uint16) as w, pytest.raises(ValueError, match="do not fit"):
        w.add_document([1, 70000])
    with pytest.raises(ValueError, match="not in Megatron"):
        IndexedDatasetWriter(tmp_path / "t", np.uint32)


def test_failed_writer_leaves_no_index(tmp_path: Path) -> None:
    prefix = tmp_path / "shard"
    _write(prefix, [[1, 2, 3]], np.uint16)  # an older complete shard at the same prefix
    with pytest.raises(RuntimeError, match="boom"), IndexedDatasetWriter(prefix, np.uint16) as w:
        w.add_document([4, 5])
        # Mid-write the old index is already gone, so it can never be paired with a new .bin.
        assert not (tmp_path / "shard.idx").exists()
        raise RuntimeError("boom")
    assert not (tmp_path / "shard.idx").exists()
    assert not index_exists(prefix)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    with pytest.raises(DataError, match="missing"):
        IndexedDataset(prefix)


def _corrupt_cases():
    def patch(offset: int, data: bytes):
        def f(idx: Path, bin_: Path) -> None:
            b = bytearray(idx.read_bytes())
            b[offset : offset + len(data)] = data
            idx.write_bytes(bytes(b))

        return f

    def truncate(which: str, n: int):
        def f(idx: Path, bin_: Path) -> None:
            p = idx if which == "idx" else bin_
            p.write_bytes(p.read_bytes()[:n])

        return f

    def append_bin(idx: Path, bin_: Path) -> None:
        bin_.write_bytes(bin_.read_bytes() + b"\x00\x00")

    def remove(which: str):
        def f(idx: Path, bin_: Path) -> None:
            (idx if which == "idx" else bin_).unlink()

        return f

    return {
        "bad magic": (patch(0, b"XXIDIDX"), "magic"),
        "version 2": (patch(9, struct.pack("<Q", 2)), "version"),
        "dtype code 9": (patch(17, struct.pack("<B", 9)), "dtype code"),
        "header cut": (truncate("idx", 20), "truncated"),
        "arrays cut": (truncate("idx", -5), "truncated"),
        "bin too short": (truncate("bin", -2), "bytes"),
        "bin too long": (append_bin, "bytes"),
        "pointer damaged": (patch(34 + 4 * 3 + 8, struct.pack("<q", 7)), "pointers"),
        "missing idx": (remove("idx"), "missing"),
        "missing bin": (remove("bin"), "missing"),
    }


@pytest.mark.parametrize("case", list(_corrupt_cases()))
def test_damaged_files_give_data_error(tmp_path: Path, case: str) -> None:
    damage, words = _corrupt_cases()[case]
    prefix = tmp_path / "shard"
    _write(prefix, [[1, 2, 3], [4, 5], [6]], np.uint16)
    damage(tmp_path / "shard.idx", tmp_path / "shard.bin")
    with pytest.raises(DataError, match=words) as info:
        IndexedDataset(prefix)
    assert "shard" in str(info.value)  # names the file
    assert "\n" not in str(info.value)


_MEGATRON_SCRIPT = textwrap.dedent(
    """
    import json, sys, warnings
    warnings.filterwarnings("ignore")
    import numpy, torch
    from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder
    args = json.loads(sys.argv[1])
    out = {}
    for prefix in args["read"]:
        ds = IndexedDataset(prefix)
        out[prefix] = {
            "dtype": numpy.dtype(ds.index.dtype).name,
            "docs": [ds[i].tolist() for i in range(len(ds))],
            "document_indices": ds.document_indices.tolist(),
            "part": ds.get(1, offset=1, length=2).tolist(),
        }
    b = IndexedDatasetBuilder(args["write"] + ".bin", dtype=numpy.uint16)
    for doc in args["docs_to_write"]:
        b.add_item(torch.tensor(doc, dtype=torch.int64))
        b.end_document()
    b.finalize(args["write"] + ".idx")
    print("RESULT" + json.dumps(out))
    """
)


def test_megatron_reads_our_files_and_we_read_theirs(tmp_path: Path) -> None:
    written = {}
    for name, dtype, high in [("u16", np.uint16, 65535), ("i32", np.int32, 2**31 - 1)]:
        docs = [[int(x) for x in d] for d in _random_docs(1, 20, high) if len(d)]
        _write(tmp_path / name, docs, dtype)
        written[str(tmp_path / name)] = (np.dtype(dtype).name, docs)
    theirs_docs = [[1, 2, 3], [65000], [7, 7, 7, 7]]
    args = {"read": list(written), "write": str(tmp_path / "theirs"), "docs_to_write": theirs_docs}
    proc = subprocess.run(
        [sys.executable, "-c", _MEGATRON_SCRIPT, json.dumps(args)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT"))
    seen = json.loads(line[len("RESULT") :])
    for prefix, (dtype_name, docs) in written.items():
        assert seen[prefix]["dtype"] == dtype_name
        assert seen[prefix]["docs"] == docs
        assert seen[prefix]["document_indices"] == list(range(len(docs) + 1))
        assert seen[prefix]["part"] == docs[1][1:3]
    ours = IndexedDataset(tmp_path / "theirs")
    assert ours.dtype == np.uint16
    assert [ours[i].tolist() for i in range(len(ours))] == theirs_docs


def test_float_tokens_are_not_token_data(tmp_path: Path) -> None:
    """Megatron's format has float dtype codes; a float shard cast to token ids would truncate silently
    (-0.5 becoming token 0 passes every vocabulary check)."""
    from megadepth.data.sample_index import DocumentCorpus

    prefix = tmp_path / "shard"
    _write(prefix, [[1, 2, 3], [4, 5]], np.int32)
    idx = tmp_path / "shard.idx"
    raw = bytearray(idx.read_bytes())
    assert raw[17] == 4  # int32's code, 4 bytes per token like float32's
    DocumentCorpus([prefix])  # integers: fine
    raw[17] = 7  # float32
    idx.write_bytes(bytes(raw))
    assert IndexedDataset(prefix).dtype == np.float32  # a valid Megatron file...
    with pytest.raises(DataError, match="float32, not integers"):
        DocumentCorpus([prefix])  # ...but not tokens
