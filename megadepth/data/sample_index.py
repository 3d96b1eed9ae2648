"""GPT samples over a token stream of concatenated documents, in Megatron's style.

The stream of one dataset is its documents, in an order shuffled per epoch, laid end to end for as many
epochs as the requested number of samples needs. Sample window ``k`` covers stream positions
``[k * seq_len, k * seq_len + seq_len]`` (``seq_len + 1`` tokens), so consecutive windows share exactly
one token: the last input of one window is the first of the next, and every stream token except the
very first is a label exactly once. Windows cross document boundaries (documents end in EOS, so the model
learns where they stop); this is Megatron's packing and wastes no tokens on padding.

The windows are then shuffled in fixed blocks whose size depends only on the corpus, the documents and
``seq_len`` -- never on the number of samples asked for. So sample ``i`` is the same window whatever the
total (*prefix stability*): a run resumed with a larger ``train.steps`` continues on new data, and runs of
8 and 12 steps see the same data for their first 8 steps (Megatron's single permutation of all windows
reshuffles everything when the total changes).

Only ``(position in the document order, offset)`` per window start and the document order itself are
stored -- never a copy of the tokens -- so the index of a 1e10-token corpus is a few hundred MB at most.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import sys
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from megadepth.common.errors import DataError
from megadepth.common.io import atomic_write_bytes
from megadepth.data.indexed import IndexedDataset, bin_path, idx_path, index_exists

__all__ = ["DocumentCorpus", "GPTDataset", "split_documents"]

_INDEX_FORMAT = 2  # bump when the way the index is computed changes, so old caches are not reused

#: The most windows one shuffle block holds: bounds the index built beyond the last requested sample (a
#: block is always built whole) to about 16 MB; documents are shuffled over the whole epoch anyway.
_MAX_BLOCK = 2**20


class DocumentCorpus:
    """All documents of one or more shards (one per writer task), numbered 0..num_docs-1 across the shards
    in order: the sample index works on documents, so this view hides the shard boundaries."""

    def __init__(self, prefixes: Sequence[str | Path]) -> None:
        if not prefixes:
            raise DataError("no shards given: a corpus needs at least one .bin/.idx prefix")
        self.prefixes = [Path(p) for p in prefixes]
        self.shards = [IndexedDataset(p) for p in self.prefixes]
        dtypes = {s.dtype for s in self.shards}
        if len(dtypes) > 1:
            listing = ", ".join(f"{s.prefix.name}={s.dtype}" for s in self.shards)
            raise DataError(f"shards of one corpus use different token dtypes ({listing}): were they made "
                            "with different tokenizers?")
        self._dtype = self.shards[0].dtype
        if not np.issubdtype(self._dtype, np.integer):
            # Megatron's format allows float codes; token ids cast from floats would be truncated silently
            raise DataError(f"{self.shards[0].prefix}: tokens stored as {self._dtype}, not integers: not token data")
        self.doc_lengths = np.concatenate([s.sequence_lengths.astype(np.int64) for s in self.shards])
        self._shard_start = np.zeros(len(self.shards) + 1, dtype=np.int64)
        np.cumsum([len(s) for s in self.shards], out=self._shard_start[1:])

    @classmethod
    def from_path(cls, path: str | Path) -> DocumentCorpus:
        """A directory (every ``*.idx``/``*.bin`` pair in it, sorted by name) or one shard prefix. A ``.bin``
        without its ``.idx`` is an unfinished shard (the ``.idx`` is renamed last): refused, not skipped."""
        p = Path(path)
        if p.is_dir():
            idx = {f.name[: -len(".idx")] for f in p.glob("*.idx") if f.is_file()}
            bins = {f.name[: -len(".bin")] for f in p.glob("*.bin") if f.is_file()}
            if not idx and not bins:
                raise DataError(f"{p}: no .bin/.idx shards in this directory")
            orphans = sorted(bins - idx)
            if orphans:
                raise DataError(f"{p}: {orphans[0]}.bin has no .idx (an unfinished shard?"
                                f"{f' and {len(orphans) - 1} more' if len(orphans) > 1 else ''})")
            return cls([p / name for name in sorted(idx)])
        if p.suffix in (".idx", ".bin") and not index_exists(p):
            p = p.with_suffix("")
        if index_exists(p):
            return cls([p])
        if idx_path(p).exists() or bin_path(p).exists():
            return cls([p])  # one of the two files exists: IndexedDataset names the missing one
        raise DataError(f"{path}: no such data directory or shard prefix (expected DIR or DIR/PREFIX)")

    @property
    def num_docs(self) -> int:
        return len(self.doc_lengths)

    @property
    def num_tokens(self) -> int:
        return int(self.doc_lengths.sum())

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    def _locate(self, doc: int) -> tuple[int, int]:
        """The shard that holds global document ``doc``, and the document's number in that shard."""
        if not 0 <= doc < self.num_docs:
            raise IndexError(f"document {doc} out of range ({self.num_docs} documents)")
        s = int(np.searchsorted(self._shard_start, doc, side="right")) - 1
        return s, doc - int(self._shard_start[s])

    def shard_of(self, doc: int) -> tuple[Path, int]:
        """The shard prefix that holds ``doc`` and its number there: error messages name the file a bad
        token came from, not an index into the concatenation."""
        s, local = self._locate(doc)
        return self.prefixes[s], local

    def read(self, doc: int, offset: int, length: int) -> np.ndarray:
        """``length`` tokens of global document ``doc`` from ``offset`` (a view into the shard)."""
        s, local = self._locate(doc)
        return self.shards[s].get(local, offset, length)

    def identity(self) -> list[list[str | int]]:
        """File names and sizes of every shard: cheap to compute, part of the cache key."""
        return [[p.name, idx_path(p).stat().st_size, bin_path(p).stat().st_size] for p in self.prefixes]

    def __repr__(self) -> str:
        return f"DocumentCorpus(shards={len(self.shards)}, docs={self.num_docs}, tokens={self.num_tokens})"


def split_documents(num_docs: int, valid_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Contiguous train/valid split of document ids: the first part trains, the last part validates.

    Contiguous so that near-duplicate neighbours from one source file rarely straddle the split, and the
    split never depends on a seed. Valid gets ``round(num_docs * valid_fraction)`` documents, at least one
    when ``valid_fraction > 0`` and ``num_docs >= 2``; train keeps at least one.
    """
    if not 0.0 <= valid_fraction < 1.0:
        raise ValueError(f"valid_fraction must be in [0, 1), got {valid_fraction}")
    if num_docs < 0:
        raise ValueError(f"num_docs must be >= 0, got {num_docs}")
    n_valid = 0
    if valid_fraction > 0 and num_docs >= 2:
        n_valid = min(max(1, round(num_docs * valid_fraction)), num_docs - 1)
    ids = np.arange(num_docs, dtype=np.int64)
    return ids[: num_docs - n_valid], ids[num_docs - n_valid :]


def _sha256_array(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a, dtype="<i8").tobytes()).hexdigest()


def save_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write an ``.npz`` atomically: several ranks may build the same cache at once; the last rename wins
    with identical content, so a reader never sees a half-written file."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    try:
        atomic_write_bytes(path, buf.getvalue())
    except OSError as e:  # a cache is only a shortcut: the index just built is used from memory
        if path.parent not in _UNWRITABLE_CACHES:
            _UNWRITABLE_CACHES.add(path.parent)
            print(f"megadepth: warning: data.cache_dir {path.parent} cannot be written ({e.strerror or e}); "
                  "the sample index is kept in memory and rebuilt next time", file=sys.stderr)


_UNWRITABLE_CACHES: set[Path] = set()  # cache folders already warned about in this process (one warning each)


def load_or_build(path: Path | None, keys: Sequence[str], fits: Callable[[dict[str, np.ndarray]], bool],
                  build: Callable[[], tuple[np.ndarray, ...]]) -> tuple[tuple[np.ndarray, ...], bool]:
    """The arrays ``keys`` from the cache file ``path`` if ``fits`` accepts them, else ``build()``'s (saved
    there); and whether they came from the cache."""
    cached = load_npz(path, keys) if path is not None else None
    if cached is not None and fits(cached):
        return tuple(cached[k] for k in keys), True
    arrays = build()
    if path is not None:
        save_npz_atomic(path, dict(zip(keys, arrays, strict=True)))
    return arrays, False


def load_npz(path: Path, keys: Sequence[str]) -> dict[str, np.ndarray] | None:
    """Arrays from a cache file, or None when absent or unreadable (the caller rebuilds it)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in keys}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None


class GPTDataset:
    """``num_samples`` windows of ``seq_len + 1`` tokens (int64) over the documents ``doc_ids``.

    Randomness (all from ``seed``, independent numpy generators so one does not shift another):

    * Epoch ``e`` orders the documents with its own permutation (``default_rng([seed, 1, e])``), so
      adding epochs never changes the earlier ones.
    * The stream windows are shuffled in blocks. ``W = (tokens_per_epoch - 1) // seq_len`` is the number
      of windows that lie wholly inside one epoch's worth of stream; windows ``[c * W, (c + 1) * W)``
      form chunk ``c``, cut into blocks of at most ``_MAX_BLOCK`` windows. Block ``j`` of chunk ``c`` is
      permuted by its own generator (``default_rng([seed, 2, c, j])``) and samples take the blocks in
      stream order: sample ``i`` is a window of the block that holds stream window ``i``. Neither ``W``
      nor the blocks depend on ``num_samples``, so sample ``i`` is the same window for every
      ``num_samples > i`` (prefix stability). Blocks are always built whole, so the index covers up to
      one block more windows than it serves.

    A block never holds the same stream window twice. A chunk spans at most ``W * seq_len + 1 <=
    tokens_per_epoch`` stream tokens, so chunk 0 lies inside epoch 0: a run of at most one epoch never
    repeats data. A later chunk can straddle one epoch boundary, and then hold pieces of one document
    from both epochs: the repetition a second epoch implies anyway.

    ``shuffle=False`` turns both off (documents in ``doc_ids`` order, windows in stream order).

    ``vocab_size``, when given, is the model's vocabulary: a token outside ``[0, vocab_size)`` in a sample
    read raises a :class:`DataError` naming the shard (else a vocab-parallel embedding would mask it).
    """

    def __init__(self, corpus: DocumentCorpus, doc_ids: np.ndarray | Sequence[int], seq_len: int,
                 num_samples: int, seed: int, *, shuffle: bool = True, cache_dir: str | Path | None = None,
                 name: str | None = None, vocab_size: int | None = None) -> None:
        vocab = 1 if vocab_size is None else vocab_size
        for what, value, least in (("seq_len", seq_len, 1), ("num_samples", num_samples, 0), ("seed", seed, 0),
                                   ("vocab_size", vocab, 1)):
            if value < least:
                raise ValueError(f"{what} must be >= {least}, got {value}")
        self.corpus = corpus
        self.seq_len = int(seq_len)
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.vocab_size = None if vocab_size is None else int(vocab_size)
        more = " ..." if len(corpus.prefixes) > 3 else ""
        self.name = name or ", ".join(str(p) for p in corpus.prefixes[:3]) + more
        ids = np.asarray(doc_ids, dtype=np.int64)
        if ids.ndim != 1:
            raise ValueError("doc_ids must be 1-D")
        if ids.size and (ids.min() < 0 or ids.max() >= corpus.num_docs):
            raise ValueError(f"doc_ids outside [0, {corpus.num_docs})")
        self.doc_ids = ids
        self._lengths = corpus.doc_lengths
        self.tokens_per_epoch = int(self._lengths[ids].sum())
        if self.tokens_per_epoch < self.seq_len + 1:
            raise DataError(f"{self.name}: {len(ids)} documents hold {self.tokens_per_epoch} tokens, fewer "
                            f"than one sample of seq_len + 1 = {self.seq_len + 1}")
        # Windows wholly inside one epoch's worth of stream (>= 1: the epoch holds seq_len + 1 tokens).
        self.windows_per_epoch = (self.tokens_per_epoch - 1) // self.seq_len
        self.block_size = min(self.windows_per_epoch, _MAX_BLOCK)
        self.num_windows = self._windows_needed()
        # Stream positions 0 .. num_windows * seq_len must exist.
        needed = self.num_windows * self.seq_len + 1 if self.num_windows else 0
        self.num_epochs = math.ceil(needed / self.tokens_per_epoch)

        key = None if cache_dir is None else self._cache_key()[:32]
        self.cache_path = None if key is None else Path(cache_dir) / f"gpt_index_{key}.npz"
        arrays, self.cache_hit = load_or_build(
            self.cache_path, ("doc_order", "sample_pos", "sample_offset", "shuffle_index"),
            lambda c: len(c["shuffle_index"]) == num_samples and len(c["sample_pos"]) == self.num_windows,
            self._build,
        )
        self.doc_order, self._sample_pos, self._sample_offset, self.shuffle_index = arrays

    def _cache_key(self) -> str:
        """sha256 over everything the index depends on (never Python's salted ``hash()``)."""
        payload = {"format": _INDEX_FORMAT, "max_block": _MAX_BLOCK, "corpus": self.corpus.identity(),
                   "doc_lengths": _sha256_array(self._lengths), "doc_ids": _sha256_array(self.doc_ids),
                   "seq_len": self.seq_len, "num_samples": self.num_samples, "seed": self.seed,
                   "shuffle": self.shuffle}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def _blocks(self) -> Iterator[tuple[int, int, int, int]]:
        """``(chunk, block in chunk, first window, window count)`` of every shuffle block, in order."""
        w, k = self.windows_per_epoch, self.block_size
        chunk = 0
        while True:
            for j, lo in enumerate(range(0, w, k)):
                yield chunk, j, chunk * w + lo, min(k, w - lo)
            chunk += 1

    def _windows_needed(self) -> int:
        """Stream windows the index covers: the samples, rounded up to whole blocks when shuffling."""
        if not self.shuffle or self.num_samples == 0:
            return self.num_samples
        w = self.windows_per_epoch
        chunks, rest = divmod(self.num_samples, w)
        if rest == 0:
            return chunks * w
        # A chunk's blocks start at multiples of block_size; the partial one ends at the next boundary.
        return chunks * w + min(w, math.ceil(rest / self.block_size) * self.block_size)

    def _build(self) -> tuple[np.ndarray, ...]:
        """The document order, each window's start (position in that order, offset) and the sample order."""
        id_dtype = np.int32 if self.corpus.num_docs < 2**31 else np.int64
        ids = self.doc_ids.astype(id_dtype)
        if self.shuffle:
            orders = [
                np.random.default_rng([self.seed, 1, e]).permutation(ids) for e in range(self.num_epochs)
            ]
        else:
            orders = [ids] * self.num_epochs
        doc_order = np.concatenate(orders) if orders else np.empty(0, dtype=id_dtype)
        # ends[j]: stream position just past the j-th document of the order.
        ends = np.cumsum(self._lengths[doc_order], dtype=np.int64)
        starts = np.arange(self.num_windows, dtype=np.int64) * self.seq_len
        # The document holding position p is the first whose end is > p (skips empty documents).
        pos = np.searchsorted(ends, starts, side="right")
        offset = starts - (ends[pos] - self._lengths[doc_order[pos]]) if len(pos) else starts
        windows = (doc_order, pos.astype(np.int64), offset.astype(np.int64))
        if not self.shuffle:
            return (*windows, np.arange(self.num_samples, dtype=np.int64))
        # One generator per block, keyed by the block's place in the stream only: a block's permutation
        # is the same whichever later blocks exist. Loops once per block, i.e. about once per epoch.
        parts: list[np.ndarray] = []
        covered = 0
        for chunk, j, first, count in self._blocks():
            if covered >= self.num_windows:
                break
            parts.append(np.random.default_rng([self.seed, 2, chunk, j]).permutation(count) + first)
            covered = first + count
        assert covered == self.num_windows, (covered, self.num_windows)
        full = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
        return (*windows, full[: self.num_samples].astype(np.int64))

    def __len__(self) -> int:
        return self.num_samples

    def _pieces(self, k: int) -> Iterator[tuple[int, int, int]]:
        """``(document, offset, length)`` of each non-empty stretch of stream window ``k``, in order."""
        pos, off, left = int(self._sample_pos[k]), int(self._sample_offset[k]), self.seq_len + 1
        while left > 0:
            doc = int(self.doc_order[pos])
            take = min(int(self._lengths[doc]) - off, left)
            if take > 0:
                yield doc, off, take
                left -= take
            pos += 1
            off = 0

    def window(self, k: int) -> np.ndarray:
        """Stream window ``k`` (before the sample shuffle): ``seq_len + 1`` tokens as int64."""
        out = np.empty(self.seq_len + 1, dtype=np.int64)
        filled = 0
        for doc, off, take in self._pieces(k):
            out[filled : filled + take] = self.corpus.read(doc, off, take)
            filled += take
        if self.vocab_size is not None:
            hi = int(out.max())
            lo = int(out.min()) if self.corpus.dtype.kind == "i" else 0  # unsigned shards hold no negatives
            if hi >= self.vocab_size or lo < 0:
                self._raise_out_of_vocab(k, hi if hi >= self.vocab_size else lo)
        return out

    def _raise_out_of_vocab(self, k: int, token: int) -> None:
        """Raise the DataError for ``token`` in window ``k``, naming the shard and document it is in."""
        where = self.name
        for doc, off, take in self._pieces(k):
            if np.any(self.corpus.read(doc, off, take) == token):
                prefix, local = self.corpus.shard_of(doc)
                where = f"{bin_path(prefix)} (document {local}; {self.name})"
                break
        if token < 0:
            raise DataError(f"data: token id {token} in {where} is negative: a damaged shard?")
        raise DataError(f"data: token id {token} in {where} is >= model.vocab_size {self.vocab_size}: "
                        f"shards made with another tokenizer?")

    def __getitem__(self, i: int) -> np.ndarray:
        """Sample ``i``: ``seq_len + 1`` int64 tokens; inputs are ``[:-1]``, labels ``[1:]``."""
        if not -self.num_samples <= i < self.num_samples:
            raise IndexError(f"sample {i} out of range ({self.num_samples} samples)")
        return self.window(int(self.shuffle_index[i % self.num_samples]))

    def __repr__(self) -> str:
        return (f"GPTDataset({self.name!r}, samples={self.num_samples}, seq_len={self.seq_len}, "
                f"docs={len(self.doc_ids)}, epochs={self.num_epochs})")
