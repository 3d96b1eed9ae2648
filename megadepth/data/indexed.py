"""Megatron-LM's indexed dataset format: ``PREFIX.bin`` (raw tokens) + ``PREFIX.idx`` (the index).

Written and read here rather than through megatron-core (a large import graph for a 30-byte header and
three arrays); Megatron-LM's own ``IndexedDataset`` reads our files unchanged (a test proves it).

``.idx`` layout (all little-endian)::

    9 bytes   magic  b"MMIDIDX\\x00\\x00"
    <Q        version (1)
    <B        dtype code (1 uint8, 2 int8, 3 int16, 4 int32, 5 int64, 6 float64, 7 float32, 8 uint16)
    <Q        sequence count  S
    <Q        document-index count  D  (= S + 1 here: one sequence per document)
    int32[S]  sequence lengths, in tokens
    int64[S]  sequence byte offsets into .bin
    int64[D]  document indices (sequence index where each document starts; first 0, last S)

A *document* in this module is one Megatron *sequence*: files we write hold one sequence per document,
and Megatron's GPT dataset also packs sequences, never looking at the document indices.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from types import TracebackType

import numpy as np

from megadepth.common.errors import DataError

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
_HEADER = struct.Struct("<9sQBQQ")  # magic, version, dtype code, sequence count, document-index count
HEADER_SIZE = _HEADER.size  # 34

#: Megatron's dtype codes (``megatron.core.datasets.indexed_dataset.DType``).
DTYPE_CODES: dict[int, np.dtype] = {1: np.dtype(np.uint8), 2: np.dtype(np.int8), 3: np.dtype(np.int16),
                                    4: np.dtype(np.int32), 5: np.dtype(np.int64), 6: np.dtype(np.float64),
                                    7: np.dtype(np.float32), 8: np.dtype(np.uint16)}
_CODE_OF: dict[np.dtype, int] = {dt: code for code, dt in DTYPE_CODES.items()}


def best_dtype(vocab_size: int) -> np.dtype:
    """The smallest token dtype Megatron uses for a vocabulary: uint16 below 65,500 ids (Megatron's cut-off,
    not 65,536), else int32."""
    if vocab_size <= 0:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    return np.dtype(np.uint16) if vocab_size < 65500 else np.dtype(np.int32)


def idx_path(prefix: str | Path) -> Path:
    """``PREFIX.idx``: appended, not ``with_suffix``, because prefixes may contain dots."""
    return Path(f"{os.fspath(prefix)}.idx")


def bin_path(prefix: str | Path) -> Path:
    return Path(f"{os.fspath(prefix)}.bin")


def index_exists(prefix: str | Path) -> bool:
    """True when both files of a shard exist (the ``.idx`` is written last, so it marks completion)."""
    return idx_path(prefix).is_file() and bin_path(prefix).is_file()


def _byte_offsets(lengths: np.ndarray, itemsize: int) -> np.ndarray:
    """Where each sequence starts in the ``.bin``: the bytes of the sequences before it."""
    offsets = np.zeros(len(lengths), dtype=np.int64)
    if len(lengths) > 1:
        np.cumsum(lengths[:-1].astype(np.int64) * itemsize, out=offsets[1:])
    return offsets


def _as_dtype(dtype: np.dtype | type | str) -> np.dtype:
    dt = np.dtype(dtype)
    if dt.byteorder == ">" or dt not in _CODE_OF:
        allowed = ", ".join(str(d) for d in DTYPE_CODES.values())
        raise ValueError(f"dtype {dt} is not in Megatron's indexed format (allowed: {allowed})")
    return np.dtype(dt.name)


class IndexedDatasetWriter:
    """Writes one shard, one document at a time, without holding the tokens in memory.

    Data goes to temporary names, renamed into place at :meth:`finalize`, the ``.idx`` LAST: readers only
    trust a shard whose ``.idx`` exists, so a crash never leaves a shard that looks complete. An existing
    ``.idx`` at the prefix is removed up front, never to be paired with a new ``.bin``.
    """

    def __init__(self, prefix: str | Path, dtype: np.dtype | type | str) -> None:
        self.prefix = Path(prefix)
        self.dtype = _as_dtype(dtype)
        self._code = _CODE_OF[self.dtype]
        self._bin_final = bin_path(prefix)
        self._idx_final = idx_path(prefix)
        self._bin_tmp = Path(f"{self._bin_final}.tmp")
        self._idx_tmp = Path(f"{self._idx_final}.tmp")
        self._lengths: list[int] = []
        self._done = False
        self._idx_final.unlink(missing_ok=True)
        # Kept open across add_document calls; closed by finalize() or abort().
        self._bin_file = open(self._bin_tmp, "wb")  # noqa: SIM115
        info = np.iinfo(self.dtype) if np.issubdtype(self.dtype, np.integer) else None
        self._range = None if info is None else (int(info.min), int(info.max))

    @property
    def num_documents(self) -> int:
        return len(self._lengths)

    @property
    def num_tokens(self) -> int:
        return sum(self._lengths)

    def add_document(self, tokens: np.ndarray | list[int]) -> None:
        """Append one document (a 1-D sequence of token ids).

        Values outside the dtype's range are rejected instead of silently wrapping (a vocabulary larger
        than uint16 written as uint16 would otherwise corrupt every id above 65,535).
        """
        if self._done:
            raise RuntimeError(f"{self.prefix}: add_document after finalize/abort")
        arr = np.asarray(tokens)
        if arr.ndim != 1:
            raise ValueError(f"{self.prefix}: a document must be 1-D, got shape {arr.shape}")
        if arr.size and self._range is not None:
            if not np.issubdtype(arr.dtype, np.integer):
                raise ValueError(f"{self.prefix}: token ids must be integers, got {arr.dtype}")
            lo, hi = int(arr.min()), int(arr.max())
            if lo < self._range[0] or hi > self._range[1]:
                raise ValueError(f"{self.prefix}: token ids [{lo}, {hi}] do not fit {self.dtype} "
                                 f"[{self._range[0]}, {self._range[1]}]")
        if arr.size > np.iinfo(np.int32).max:
            raise ValueError(f"{self.prefix}: a document of {arr.size} tokens exceeds the int32 length field")
        self._bin_file.write(np.ascontiguousarray(arr, dtype=self.dtype.newbyteorder("<")).tobytes())
        self._lengths.append(int(arr.size))

    def finalize(self) -> None:
        """Close the ``.bin``, write the ``.idx``, and rename both into place (``.idx`` last)."""
        if self._done:
            return
        self._bin_file.flush()
        os.fsync(self._bin_file.fileno())
        self._bin_file.close()
        lengths = np.asarray(self._lengths, dtype="<i4")
        pointers = _byte_offsets(lengths, self.dtype.itemsize).astype("<i8")
        doc_idx = np.arange(len(lengths) + 1, dtype="<i8")
        with open(self._idx_tmp, "wb") as f:
            f.write(_HEADER.pack(MAGIC, VERSION, self._code, len(lengths), len(doc_idx)))
            f.writelines([lengths.tobytes(), pointers.tobytes(), doc_idx.tobytes()])
            f.flush()
            os.fsync(f.fileno())
        os.replace(self._bin_tmp, self._bin_final)
        os.replace(self._idx_tmp, self._idx_final)
        self._done = True

    def abort(self) -> None:
        """Drop everything written so far (temporary files only; nothing was renamed yet)."""
        if self._done:
            return
        self._bin_file.close()
        self._bin_tmp.unlink(missing_ok=True)
        self._idx_tmp.unlink(missing_ok=True)
        self._done = True

    def __enter__(self) -> IndexedDatasetWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.finalize()
        else:
            self.abort()


class IndexedDataset:
    """Memory-mapped reader of one shard; validates the files (cheap vectorised checks) so that damage is a
    ``DataError``. Pickling keeps only the prefix and re-opens the maps: DataLoader workers copy no tokens.
    """

    def __init__(self, prefix: str | Path) -> None:
        self.prefix = Path(prefix)
        self._open()

    def _open(self) -> None:
        ip, bp = idx_path(self.prefix), bin_path(self.prefix)
        missing = [str(p) for p in (ip, bp) if not p.is_file()]
        if missing:
            raise DataError(f"{self.prefix}: missing {' and '.join(missing)}")
        idx_size = ip.stat().st_size
        if idx_size < HEADER_SIZE:
            raise DataError(f"{ip}: truncated index ({idx_size} bytes, the header alone is {HEADER_SIZE})")
        with open(ip, "rb") as f:
            magic, version, code, n_seq, n_doc = _HEADER.unpack(f.read(HEADER_SIZE))
        if magic != MAGIC:
            raise DataError(f"{ip}: not a Megatron indexed file (magic {magic!r}, expected {MAGIC!r})")
        if version != VERSION:
            raise DataError(f"{ip}: unsupported index version {version} (only {VERSION} is known)")
        if code not in DTYPE_CODES:
            raise DataError(f"{ip}: unknown dtype code {code} (known: {sorted(DTYPE_CODES)})")
        self._dtype = DTYPE_CODES[code]
        expected = HEADER_SIZE + 12 * n_seq + 8 * n_doc
        # Megatron's multimodal files append one int8 mode per sequence; tolerate exactly that.
        if idx_size < expected:
            raise DataError(f"{ip}: truncated index ({idx_size} bytes, {n_seq} sequences and {n_doc} "
                            f"document indices need {expected})")
        if idx_size not in (expected, expected + n_seq):
            raise DataError(f"{ip}: {idx_size - expected} unexpected bytes after the index arrays")
        self._idx_map = np.memmap(ip, mode="r", dtype=np.uint8)
        off = HEADER_SIZE
        self._lengths = np.frombuffer(self._idx_map, dtype="<i4", count=n_seq, offset=off)
        off += 4 * n_seq
        self._pointers = np.frombuffer(self._idx_map, dtype="<i8", count=n_seq, offset=off)
        off += 8 * n_seq
        self._doc_idx = np.frombuffer(self._idx_map, dtype="<i8", count=n_doc, offset=off)

        if n_doc < 1 or self._doc_idx[0] != 0 or self._doc_idx[-1] != n_seq:
            raise DataError(f"{ip}: document indices must start at 0 and end at the sequence count {n_seq}")
        if n_doc > 1 and np.any(np.diff(self._doc_idx) < 0):
            raise DataError(f"{ip}: document indices are not non-decreasing")
        if n_seq and int(self._lengths.min()) < 0:
            raise DataError(f"{ip}: negative sequence length")
        item = self._dtype.itemsize
        expect_ptr = _byte_offsets(self._lengths, item)
        if not np.array_equal(expect_ptr, self._pointers):
            raise DataError(f"{ip}: sequence pointers do not match the sequence lengths")
        self._num_tokens = int(self._lengths.astype(np.int64).sum())
        bin_size = bp.stat().st_size
        if bin_size != self._num_tokens * item:
            raise DataError(f"{bp}: {bin_size} bytes, but the index describes {self._num_tokens} tokens of "
                            f"{self._dtype} = {self._num_tokens * item} bytes")
        # np.memmap cannot map an empty file.
        if bin_size:
            self._tokens = np.memmap(bp, mode="r", dtype=self._dtype.newbyteorder("<"))
        else:
            self._tokens = np.empty(0, dtype=self._dtype)
        self._starts = expect_ptr // item

    def __getstate__(self) -> dict[str, Path]:
        return {"prefix": self.prefix}

    def __setstate__(self, state: dict[str, Path]) -> None:
        self.prefix = state["prefix"]
        self._open()

    def __len__(self) -> int:
        return len(self._lengths)

    def __getitem__(self, i: int) -> np.ndarray:
        """Document ``i`` (negative indices count from the end), a read-only view of the map."""
        return self.get(i)

    def get(self, i: int, offset: int = 0, length: int | None = None) -> np.ndarray:
        """``length`` tokens of document ``i`` from ``offset`` (to its end when ``length`` is None)."""
        n = len(self._lengths)
        if not -n <= i < n:
            raise IndexError(f"document {i} out of range for {self.prefix} ({n} documents)")
        i %= n
        doc_len = int(self._lengths[i])
        if length is None:
            length = doc_len - offset
        if offset < 0 or length < 0 or offset + length > doc_len:
            raise IndexError(f"{self.prefix}: tokens [{offset}, {offset + length}) outside document {i} of "
                             f"{doc_len}")
        start = int(self._starts[i]) + offset
        return self._tokens[start : start + length]

    @property
    def sequence_lengths(self) -> np.ndarray:
        """Tokens per document, int32 (read-only view of the index)."""
        return self._lengths

    @property
    def document_indices(self) -> np.ndarray:
        """Megatron's document indices, int64: ``[0, 1, ..., len(self)]`` for files we write."""
        return self._doc_idx

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    @property
    def num_tokens(self) -> int:
        return self._num_tokens

    def __repr__(self) -> str:
        return f"IndexedDataset({str(self.prefix)!r}, docs={len(self)}, tokens={self.num_tokens})"
