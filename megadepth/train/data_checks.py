"""Start-up checks of the data against the model: tokenizer readable, vocabularies that agree."""

from __future__ import annotations

import hashlib
from pathlib import Path

from megadepth.config.load import ConfigError
from megadepth.config.schema import Config
from megadepth.data import DataError, find_tokenizer, read_data_manifest


def _data_dirs(path: str | list) -> list[str]:
    if isinstance(path, str):
        return [path]
    return [str(p) for p in path[1::2]]


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_tokenizer(config: Config) -> Path | None:
    """The tokenizer the run uses, checked: it loads, fits model.vocab_size, and matches the shards.

    Returns its path (None when neither data.tokenizer nor a tokenizer.model beside the data exists;
    training on pre-tokenized shards does not need one).
    """
    first = _data_dirs(config.data.path)[0]
    if not Path(first).exists() and not Path(f"{first}.idx").exists():
        raise DataError(f"data.path: {first} does not exist (neither a data directory nor a shard prefix)")
    manifest = read_data_manifest(first) if Path(first).is_dir() else None
    if manifest and int(manifest.get("vocab_size", 0)) > config.model.vocab_size:
        raise ConfigError(
            f"the shards in {first} use a vocabulary of {manifest['vocab_size']} tokens but model.vocab_size "
            f"is {config.model.vocab_size}"
        )
    path = Path(config.data.tokenizer) if config.data.tokenizer else find_tokenizer(first)
    if path is None:
        return None
    if not path.is_file():
        raise DataError(f"data.tokenizer: {path} does not exist")
    import sentencepiece as spm

    try:
        sp = spm.SentencePieceProcessor(model_file=str(path))
    except (RuntimeError, OSError) as exc:
        raise DataError(f"data.tokenizer: {path} is not a readable sentencepiece model ({exc})") from None
    if sp.get_piece_size() > config.model.vocab_size:
        raise ConfigError(
            f"tokenizer {path} has {sp.get_piece_size()} pieces but model.vocab_size is "
            f"{config.model.vocab_size}; raise model.vocab_size"
        )
    expected = ((manifest or {}).get("tokenizer") or {}).get("sha256")
    if expected and sha256_file(path) != expected:
        raise DataError(
            f"tokenizer {path} is not the one the shards in {first} were made with (sha256 differs from "
            "manifest.json)"
        )
    return path
