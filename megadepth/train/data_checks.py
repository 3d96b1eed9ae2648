"""Start-up checks of the data against the model: tokenizer readable, vocabularies that agree."""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

from megadepth.config.load import ConfigError
from megadepth.config.schema import Config
from megadepth.data import DataError, DocumentCorpus, find_tokenizer, read_data_manifest
from megadepth.data.builder import parse_data_path
from megadepth.data.sample_index import split_documents


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _split_sizes(comp: str, valid_fraction: float) -> tuple[int, int, int, int, int]:
    """(documents, train documents, train tokens, valid documents, valid tokens) of one component, split
    as build_datasets splits it. Cached per process by the resolved path and the name, size and mtime of
    every ``.idx`` file (a sweep checks many grid points on the same data, and opening a large corpus
    reads every document size): another working directory or rewritten shards miss the cache."""
    path = Path(comp).resolve()
    idx = sorted(path.glob("*.idx")) if path.is_dir() else [path.with_name(path.name + ".idx")]
    stats = tuple((f.name, st.st_size, st.st_mtime_ns) for f in idx if (st := _stat(f)) is not None)
    return _split_sizes_cached(str(comp), str(path), stats, valid_fraction)


def _stat(path: Path) -> os.stat_result | None:
    try:
        return path.stat()
    except OSError:
        return None


@functools.lru_cache(maxsize=32)
def _split_sizes_cached(comp: str, _resolved: str, _stats: tuple, valid_fraction: float
                        ) -> tuple[int, int, int, int, int]:
    corpus = DocumentCorpus.from_path(comp)
    train_ids, valid_ids = split_documents(corpus.num_docs, valid_fraction)
    lengths = corpus.doc_lengths
    return (corpus.num_docs, len(train_ids), int(lengths[train_ids[0]:train_ids[-1] + 1].sum()) if len(train_ids)
            else 0, len(valid_ids), int(lengths[valid_ids[0]:valid_ids[-1] + 1].sum()) if len(valid_ids) else 0)


def _check_fits(comp: str, config: Config) -> None:
    """Each split of one data.path component holds at least one sample, as the sample index will need
    (split as build_datasets splits it: the last valid_fraction of the documents, with evaluation on)."""
    want_valid = config.data.valid_fraction > 0 and config.train.eval_samples > 0
    docs, n_train, train_tokens, n_valid, valid_tokens = _split_sizes(
        str(comp), config.data.valid_fraction if want_valid else 0.0)
    if want_valid and n_valid == 0:
        raise DataError(f"{comp}: {docs} document(s) is too few to hold out validation documents "
                        "(set valid_fraction to 0, or add data)")
    need = config.model.seq_len + 1
    for split, n, tokens in (("train", n_train, train_tokens), ("valid", n_valid, valid_tokens)):
        if (split == "train" or want_valid) and tokens < need:
            raise DataError(f"{comp} ({split}): {n} documents hold {tokens} tokens, fewer than one sample "
                            f"of seq_len + 1 = {need}")


def check_tokenizer(config: Config) -> Path | None:
    """The data and the tokenizer the run uses, checked: every data.path component holds readable shards;
    the tokenizer loads, fits model.vocab_size, and matches the shards.

    Returns its path (None when neither data.tokenizer nor a tokenizer.model beside the data exists;
    training on pre-tokenized shards does not need one).
    """
    components = [p for _, p in parse_data_path(config.data.path)]
    manifests = {}
    for comp in components:
        if not Path(comp).exists() and not Path(f"{comp}.idx").exists():
            raise DataError(f"data.path: {comp} does not exist (neither a data directory nor a shard prefix)")
        folder = Path(comp) if Path(comp).is_dir() else Path(comp).parent
        if (folder / "plan.json").is_file() and not (folder / "manifest.json").is_file():
            # prep writes manifest.json last (and removes it first when it rewrites the shards)
            raise DataError(f"data.path: {folder} is an unfinished 'megadepth prep run' (no manifest.json yet); "
                            "run the prep command again to finish it")
        # the shards themselves (index headers and document sizes; no token is read): an empty folder,
        # a file that is not a shard or a damaged .idx fails here, in --dry-run and before a sweep starts
        _check_fits(comp, config)
        manifest = read_data_manifest(comp)
        manifests[comp] = manifest
        if manifest and int(manifest.get("vocab_size", 0)) > config.model.vocab_size:
            raise ConfigError(
                f"the shards in {comp} use a vocabulary of {manifest['vocab_size']} tokens but "
                f"model.vocab_size is {config.model.vocab_size}"
            )
    path = Path(config.data.tokenizer) if config.data.tokenizer else find_tokenizer(config.data.path)
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
    digest = sha256_file(path)
    for comp, manifest in manifests.items():
        expected = ((manifest or {}).get("tokenizer") or {}).get("sha256")
        if expected and digest != expected:
            raise DataError(
                f"tokenizer {path} is not the one the shards in {comp} were made with (sha256 differs from "
                "manifest.json)"
            )
    return path
