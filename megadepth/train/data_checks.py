"""Start-up checks of the data against the model: tokenizer readable, vocabularies that agree."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

from megadepth.common.errors import ConfigError
from megadepth.common.io import sha256_file
from megadepth.config.schema import Config
from megadepth.data import DataError, DocumentCorpus, find_tokenizer, read_data_manifest
from megadepth.data.builder import parse_data_path
from megadepth.data.sample_index import split_documents
from megadepth.parallel.distributed import read_env


def _split_sizes(comp: str, valid_fraction: float) -> tuple[int, int, int, int, int]:
    """(documents, train documents, train tokens, valid documents, valid tokens) of one component, split
    as build_datasets splits it. Cached by the resolved path and each ``.idx`` file's name, size and mtime
    (a sweep checks many grid points on the same data; rewritten shards miss the cache)."""
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


def _without_validation(config: Config) -> str:
    """The settings that turn validation off together (valid_fraction 0 alone is refused with eval_every)."""
    return "data.valid_fraction: 0" + (" and train.eval_every: 0" if config.train.eval_every else "")


def _check_fits(comp: str, config: Config) -> None:
    """Each split of one data.path component holds at least one sample, as the sample index will need."""
    want_valid = config.data.valid_fraction > 0 and config.train.eval_samples > 0
    docs, n_train, train_tokens, n_valid, valid_tokens = _split_sizes(
        str(comp), config.data.valid_fraction if want_valid else 0.0)
    if want_valid and n_valid == 0:
        raise DataError(f"{comp}: {docs} document(s) is too few to hold out validation documents; set "
                        f"{_without_validation(config)} (train without validation), or add documents")
    fraction, need = config.data.valid_fraction, config.model.seq_len + 1
    fixes = {"train": "lower model.seq_len, or add data" + (
                 f", or lower data.valid_fraction ({fraction})" if n_valid else ""),
             "valid": f"raise data.valid_fraction ({fraction}), lower model.seq_len, or set "
                      f"{_without_validation(config)} (train without validation)"}
    for split, n, tokens in (("train", n_train, train_tokens), ("valid", n_valid, valid_tokens)):
        if (split == "train" or want_valid) and tokens < need:
            raise DataError(f"{comp} ({split}): {n} documents hold {tokens} tokens, fewer than one sample "
                            f"of seq_len + 1 = {need}; {fixes[split]}")


def check_tokenizer(config: Config) -> Path | None:
    """Check the data and the tokenizer: every data.path component holds readable shards; the tokenizer
    loads, fits model.vocab_size, and matches the shards. Returns its path (None: there is none, which
    pre-tokenized shards do not need)."""
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
        # the shards' index headers and document sizes: a damaged or missing shard fails here, in --dry-run too
        _check_fits(comp, config)
        manifest = manifests[comp] = read_data_manifest(comp)
        if manifest and int(manifest.get("vocab_size", 0)) > config.model.vocab_size:
            raise ConfigError(f"the shards in {comp} use a vocabulary of {manifest['vocab_size']} tokens but "
                              f"model.vocab_size is {config.model.vocab_size}: token ids would fall outside the "
                              f"embedding; set model.vocab_size: {manifest['vocab_size']}")
    path = Path(config.data.tokenizer) if config.data.tokenizer else find_tokenizer(config.data.path)
    if path is None:
        sizes = [int(m["vocab_size"]) for m in manifests.values() if m and m.get("vocab_size")]
        if sizes:
            _warn_once(unused_vocab_warning(config, max(sizes), f"the shards in {components[0]} use a vocabulary "
                                                                f"of {max(sizes)} tokens (manifest.json)"))
        return None
    if not path.is_file():
        raise DataError(f"data.tokenizer: {path} does not exist")
    import sentencepiece as spm

    try:
        sp = spm.SentencePieceProcessor(model_file=str(path))
    except (RuntimeError, OSError) as exc:
        raise DataError(f"data.tokenizer: {path} is not a readable sentencepiece model ({exc})") from None
    if sp.get_piece_size() > config.model.vocab_size:
        raise ConfigError(f"tokenizer {path} has {sp.get_piece_size()} pieces but model.vocab_size is "
                          f"{config.model.vocab_size}: token ids would fall outside the embedding; set "
                          f"model.vocab_size: {sp.get_piece_size()}")
    digest = sha256_file(path)
    for comp, manifest in manifests.items():
        expected = ((manifest or {}).get("tokenizer") or {}).get("sha256")
        if expected and digest != expected:
            raise DataError(f"tokenizer {path} is not the one the shards in {comp} were made with (sha256 "
                            "differs from manifest.json)")
    _warn_once(unused_vocab_warning(config, sp.get_piece_size(),
                                    f"the tokenizer {path} has {sp.get_piece_size()} pieces"))
    return path


def unused_vocab_warning(config: Config, tokens: int, source: str) -> str | None:
    """The warning for a model.vocab_size larger than the ``tokens`` of the tokenizer (or manifest) than
    padding to model.vocab_multiple explains, else None; ``source`` says where ``tokens`` comes from. Not
    an error (room for a larger tokenizer), but mostly a model config meant for other data, whose unused
    rows cost parameters and compute and raise the initial loss, silently."""
    m = config.model
    multiple = m.vocab_multiple
    needed = -(-tokens // multiple) * multiple
    if m.vocab_size <= needed:
        return None
    extra = m.padded_vocab - needed
    params = extra * m.width * (1 if m.tie_embeddings else 2)
    rows = "embedding rows" if m.tie_embeddings else "embedding and head rows"
    return (f"megadepth: warning: model.vocab_size is {m.vocab_size} but {source}: {extra} {rows} "
            f"({params:,} parameters) and {extra} logits per position stand for ids the data never holds "
            f"(padding to model.vocab_multiple {multiple} needs only {needed} rows); set model.vocab_size: "
            f"{tokens} unless the room is meant for a larger tokenizer")


_warned: set[str] = set()


def _warn_once(message: str | None) -> None:
    """Print a start-up warning on stderr once per process (a sweep checks every grid point), main rank only."""
    if message is None or message in _warned:
        return
    _warned.add(message)
    if read_env().is_main:
        print(message, file=sys.stderr)
