"""Training sentencepiece tokenizers (Llama's settings, reproducible byte for byte) and loading them.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from megadepth.common.errors import DataError
from megadepth.common.io import atomic_write_bytes

__all__ = ["MAX_SEED", "MAX_VOCAB_SIZE", "MIN_VOCAB_SIZE", "SPECIAL_IDS", "check_seed", "check_vocab_size", "load_tokenizer", "train_tokenizer"]

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
            if len(line) * 4 <= MAX_SENTENCE_BYTES:  # at most 4 UTF-8 bytes a character: fits as is
                if line.strip():
                    yield line
                continue
            for piece in _pieces(line):
                if piece.strip():
                    yield piece


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

    Settings follow Llama's tokenizer, chosen so that decoding gives back the exact input text:
    identity normalisation, whitespace kept as is, byte fallback (no unknown tokens, newlines and rare
    characters become byte pieces), digits split. Special ids are fixed: unk=0, bos=1, eos=2, no pad.
    The model is produced in memory (so the output path is not embedded in it) and the same inputs and
    seed give byte-identical models; threads are capped at 2 to keep that and the machine usable.
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

    def all_sentences() -> Iterator[str]:
        yield first
        yield from sentences

    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=all_sentences(),
            model_writer=writer,
            vocab_size=int(vocab_size),
            model_type=model_type,
            byte_fallback=True,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=True,
            allow_whitespace_only_pieces=True,
            split_digits=True,
            character_coverage=0.9995,
            max_sentence_length=MAX_SENTENCE_BYTES,
            input_sentence_size=int(max_sentences),
            shuffle_input_sentence=True,
            num_threads=min(2, os.cpu_count() or 1),
            minloglevel=2,
            **SPECIAL_IDS,
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
