"""Training sentencepiece tokenizers (Llama's settings, reproducible byte for byte), loading them, and the
shard and manifest writer that ``prep run`` and ``prep text`` share.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from megadepth.common.errors import DataError
from megadepth.common.io import atomic_write_bytes, sha256_file
from megadepth.data import IndexedDatasetWriter, best_dtype

__all__ = ["MAX_SEED", "MAX_VOCAB_SIZE", "MIN_VOCAB_SIZE", "SPECIAL_IDS", "ShardWriter", "check_seed", "check_vocab_size",
           "install_shards", "load_tokenizer", "tokenizer_fields", "train_tokenizer", "write_manifest"]

#: sentencepiece drops (without a word) every training sentence longer than this many UTF-8 bytes.
MAX_SENTENCE_BYTES = 16384
#: Seeds sentencepiece's generator accepts (an unsigned 32-bit integer).
MAX_SEED = 2**32 - 1
#: The smallest vocabulary the trainer can make: 3 special pieces and 256 byte-fallback pieces come first,
#: then at least one character of the text (sentencepiece refuses less, after reading the text).
MIN_VOCAB_SIZE = 260
#: sentencepiece keeps the vocabulary size in a signed 32-bit field.
MAX_VOCAB_SIZE = 2**31 - 1
#: Fixed special ids so every tokenizer made here agrees: the trainer may rely on eos_id == 2.
SPECIAL_IDS = {"unk_id": 0, "bos_id": 1, "eos_id": 2, "pad_id": -1}


def _pieces(line: str, limit: int = MAX_SENTENCE_BYTES) -> Iterator[str]:
    """``line`` cut into pieces of at most ``limit`` UTF-8 bytes: before the last space or tab that fits,
    else (one huge word) at a character boundary. sentencepiece would drop a longer line whole."""
    data = line.encode("utf-8")
    while len(data) > limit:
        cut = limit
        while data[cut] & 0xC0 == 0x80:  # data[cut] continues a character: cut before that character
            cut -= 1
        space = max(data.rfind(b" ", 1, cut + 1), data.rfind(b"\t", 1, cut + 1))
        if space > 0:
            cut = space  # the space starts the next piece, as it starts a word's piece
        yield data[:cut].decode("utf-8")
        data = data[cut:]
    yield data.decode("utf-8")


def _sentences(documents: Iterable[str]) -> Iterator[str]:
    """sentencepiece trains on lines and silently drops those over its length limit (a file that is one
    long line would leave nothing to train on), so documents are split at newlines and long lines cut."""
    for doc in documents:
        for line in doc.split("\n"):
            # at most 4 UTF-8 bytes a character: a line that short fits as is
            pieces = (line,) if len(line) * 4 <= MAX_SENTENCE_BYTES else _pieces(line)
            yield from (piece for piece in pieces if piece.strip())


def check_seed(seed: int) -> int:
    """sentencepiece takes an unsigned 32-bit seed; outside that it fails with a pybind TypeError."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) <= MAX_SEED:
        raise ValueError(f"seed must be an integer in 0..{MAX_SEED}, got {seed!r}")
    return int(seed)


def check_vocab_size(vocab_size: int) -> int:
    """A vocabulary size the trainer can make, checked before anything is read or written."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)):
        raise DataError(f"vocab size must be an integer, got {vocab_size!r}")
    if not MIN_VOCAB_SIZE <= int(vocab_size) <= MAX_VOCAB_SIZE:
        raise DataError(
            f"vocab size {vocab_size}: could not train a tokenizer of that size; it must be in "
            f"{MIN_VOCAB_SIZE}..{MAX_VOCAB_SIZE} (3 special and 256 byte pieces, then the text's own)"
        )
    return int(vocab_size)


def _sp_message(e: Exception) -> str:
    """sentencepiece's own reason without its C++ source location prefix."""
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return msg.split("] ", 1)[1] if "] " in msg else msg


def train_tokenizer(
    documents: Iterable[str],
    out_prefix: str | Path,
    vocab_size: int,
    model_type: str = "bpe",
    seed: int = 0,
    *,
    max_sentences: int = 2_000_000,
) -> Path:
    """Train a sentencepiece model on ``documents``; writes ``OUT_PREFIX.model`` and returns its path.

    Llama's settings, so that decoding gives back the exact input text (identity normalisation,
    whitespace kept, byte fallback, digits split); special ids unk=0, bos=1, eos=2, no pad. The model is
    made in memory (no output path in it) with at most 2 threads: the same inputs and seed give the same bytes.
    """
    import sentencepiece as spm

    if model_type not in ("bpe", "unigram"):
        raise ValueError(f"model_type must be 'bpe' or 'unigram', got {model_type!r}")
    seed = check_seed(seed)
    vocab_size = check_vocab_size(vocab_size)
    out = Path(f"{os.fspath(out_prefix)}.model")
    out.parent.mkdir(parents=True, exist_ok=True)
    sentences = _sentences(documents)
    first = next(sentences, None)
    if first is None:
        raise DataError("no text to train a tokenizer on (all documents empty)")
    spm.set_random_generator_seed(seed)
    writer = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=itertools.chain((first,), sentences), model_writer=writer,
            vocab_size=int(vocab_size), model_type=model_type, byte_fallback=True,
            normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=True,
            allow_whitespace_only_pieces=True, split_digits=True, character_coverage=0.9995,
            max_sentence_length=MAX_SENTENCE_BYTES, input_sentence_size=int(max_sentences),
            shuffle_input_sentence=True, num_threads=min(2, os.cpu_count() or 1), minloglevel=2, **SPECIAL_IDS,
        )
    except RuntimeError as e:
        raise DataError(
            f"sentencepiece could not train a {model_type} tokenizer of {vocab_size} pieces: {_sp_message(e)}"
        ) from None
    atomic_write_bytes(out, writer.getvalue())
    return out


def load_tokenizer(path: Path) -> Any:
    import sentencepiece as spm

    if not path.is_file():
        raise DataError(f"{path}: tokenizer model not found")
    try:
        return spm.SentencePieceProcessor(model_proto=path.read_bytes())
    except (RuntimeError, OSError, TypeError) as e:
        raise DataError(f"{path}: not a readable sentencepiece model ({_sp_message(e)})") from None


class ShardWriter:
    """Documents encoded with ``sp``, each followed by EOS, into Megatron shards: ``name(n)`` is the n-th
    shard's prefix, a new one begun every ``docs_per_shard`` documents (None: one shard). ``shards`` lists
    the finished ones (prefix name, documents, tokens); :meth:`abort` drops the one being written."""

    def __init__(self, sp: Any, name: Callable[[int], Path], docs_per_shard: int | None = None) -> None:
        self.sp, self.name, self.docs_per_shard = sp, name, docs_per_shard
        self.eos = int(sp.eos_id())
        self.dtype = best_dtype(int(sp.get_piece_size()))
        self.shards: list[dict] = []
        self.encode_seconds = 0.0  # CPU seconds in sp.encode
        self._writer: IndexedDatasetWriter | None = None

    def add(self, texts: list[str], threads: int) -> np.ndarray:
        """Encode and write ``texts``; returns each document's length in tokens (EOS included)."""
        t = time.process_time()
        encoded = self.sp.encode(texts, num_threads=threads)
        self.encode_seconds += time.process_time() - t
        for ids in encoded:
            ids.append(self.eos)
        lengths = np.array([len(ids) for ids in encoded], dtype=np.int64)
        flat = np.fromiter(itertools.chain.from_iterable(encoded), dtype=self.dtype, count=int(lengths.sum()))
        start = 0
        for end in np.cumsum(lengths).tolist():
            if self._writer is None:
                self._writer = IndexedDatasetWriter(self.name(len(self.shards)), self.dtype)
            self._writer.add_document(flat[start:end])
            start = end
            if self.docs_per_shard is not None and self._writer.num_documents >= self.docs_per_shard:
                self.close()
        return lengths

    def close(self) -> None:
        """Finish the shard being written (if any)."""
        if (w := self._writer) is not None:
            w.finalize()
            self.shards.append({"prefix": w.prefix.name, "documents": w.num_documents, "tokens": w.num_tokens})
            self._writer = None

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.abort()
            self._writer = None


def tokenizer_fields(path: Path, sp: Any, trained: bool, source: str | None, model_type: str | None,
                     **extra: Any) -> dict:
    """A manifest's ``tokenizer``, ``vocab_size``, ``eos_id`` and ``dtype`` entries."""
    vocab, eos = int(sp.get_piece_size()), int(sp.eos_id())
    ids = {k: int(getattr(sp, k)()) for k in ("unk_id", "bos_id", "eos_id", "pad_id")}
    return {
        "tokenizer": {"file": path.name, "sha256": sha256_file(path), "trained": trained, "source": source,
                      "model_type": model_type, "vocab_size": vocab, **ids, **extra},
        "vocab_size": vocab,
        "eos_id": eos,
        "dtype": best_dtype(vocab).name,
    }


def install_shards(src: Path, out: Path, prefixes: list[str], place: Callable[[Path, Path], None]) -> None:
    """``out``'s shards become ``prefixes`` from ``src``: other shard files go (a previous run's extra shards
    would be mixed in), then each one's ``.bin`` and ``.idx`` (last: a shard is trusted once its ``.idx``
    exists) are placed with ``place`` (a rename or a link)."""
    for f in out.glob("shard_*"):
        if f.is_file() and f.name.endswith((".idx", ".bin", ".tmp")) and f.name.rsplit(".", 1)[0] not in prefixes:
            f.unlink()
    for prefix in prefixes:
        for suffix in (".bin", ".idx"):
            place(src / f"{prefix}{suffix}", out / f"{prefix}{suffix}")


def write_manifest(out: Path, manifest: dict) -> None:
    """``out/manifest.json``, atomically (written last: a directory with one is complete)."""
    atomic_write_bytes(out / "manifest.json", (json.dumps(manifest, indent=2) + "\n").encode())
