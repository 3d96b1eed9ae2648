"""Local text -> real sentencepiece tokenizer -> shards -> manifest; the embedded sample corpus; the CLI."""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm

from data_prep.sample_text import python_docs_documents, write_sample_corpus
from data_prep.text_shards import add_cli, build_text_shards, prepare_sample_data, read_documents
from megadepth.data import DataError, DocumentCorpus, IndexedDataset

WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "seven",
    "wizards",
    "quietly",
    "hex",
    "jovial",
    "kings",
    "and",
    "bright",
    "vixens",
    "fly",
    "zigzag",
    "past",
    "quaint",
    "harbours",
    "of",
    "old",
    "2024",
    "1999",
    "42",
]


def _ascii_docs(n: int, seed: int) -> list[str]:
    """Deterministic ASCII documents with newlines, indentation and punctuation."""
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(n):
        lines = []
        for _ in range(int(rng.integers(1, 6))):
            words = [WORDS[int(i)] for i in rng.integers(0, len(WORDS), size=int(rng.integers(3, 15)))]
            indent = "    " if rng.random() < 0.2 else ""
            lines.append(indent + " ".join(words) + rng.choice([".", "!", "?", ":", ""]))
        docs.append("\n".join(lines))
    return docs


def _write_inputs(root: Path) -> list[str]:
    """The same documents spread over .txt, .jsonl and .jsonl.gz files; returns them in read order."""
    docs = _ascii_docs(120, 0)
    root.mkdir(parents=True, exist_ok=True)
    (root / "a.txt").write_text(docs[0])
    (root / "b.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs[1:60]))
    with gzip.open(root / "c.jsonl.gz", "wt") as f:
        f.writelines(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(docs[60:]))
    return docs


def _decoded(out: Path) -> tuple[list[str], list[list[int]]]:
    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    corpus = DocumentCorpus.from_path(out)
    ids = [corpus.read(i, 0, int(corpus.doc_lengths[i])).tolist() for i in range(corpus.num_docs)]
    return [sp.decode(t[:-1]) for t in ids], ids


def _files_state(out: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_mtime_ns, p.stat().st_ino) for p in sorted(out.rglob("*")) if p.is_file()}


def test_tiny_corpus_round_trip_and_manifest(tmp_path: Path) -> None:
    docs = _write_inputs(tmp_path / "in")
    inputs = [tmp_path / "in" / "a.txt", tmp_path / "in" / "b.jsonl", tmp_path / "in" / "c.jsonl.gz"]
    out = tmp_path / "out"
    manifest = build_text_shards(inputs, out, vocab_size=400, docs_per_shard=50, progress=False)

    decoded, ids = _decoded(out)
    assert decoded == docs  # exact text back, document by document, in input order
    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    assert sp.get_piece_size() == 400 and sp.eos_id() == 2
    for t in ids:
        assert t[-1] == 2 and 2 not in t[:-1]  # EOS ends every document, nowhere else
        assert max(t) < 400

    shards = sorted(p.name for p in out.glob("*.idx"))
    assert shards == ["shard_00000.idx", "shard_00001.idx", "shard_00002.idx"]  # 120 docs, 50 per shard
    assert manifest == json.loads((out / "manifest.json").read_text())
    assert manifest["vocab_size"] == 400 and manifest["eos_id"] == 2 and manifest["dtype"] == "uint16"
    assert manifest["documents"] == 120
    assert (
        manifest["tokenizer"]["sha256"] == hashlib.sha256((out / "tokenizer.model").read_bytes()).hexdigest()
    )
    assert [i["sha256"] for i in manifest["inputs"]] == [
        hashlib.sha256(p.read_bytes()).hexdigest() for p in inputs
    ]
    for entry in manifest["shards"]:
        shard = IndexedDataset(out / entry["prefix"])
        assert (entry["documents"], entry["tokens"]) == (len(shard), shard.num_tokens)
    assert manifest["tokens"] == sum(len(t) for t in ids)

    # Same call again: nothing is rewritten.
    before = _files_state(out)
    assert build_text_shards(inputs, out, vocab_size=400, docs_per_shard=50, progress=False) == manifest
    assert _files_state(out) == before

    # A different configuration rebuilds, and leftover shards of the old layout are removed.
    again = build_text_shards(inputs, out, vocab_size=400, docs_per_shard=100, progress=False)
    assert again["config_hash"] != manifest["config_hash"]
    assert sorted(p.name for p in out.glob("*.idx")) == ["shard_00000.idx", "shard_00001.idx"]
    assert _decoded(out)[0] == docs

    # A given tokenizer is copied and used as is: same ids as the trained one gave.
    out2 = tmp_path / "out2"
    m2 = build_text_shards(inputs, out2, tokenizer=out / "tokenizer.model", progress=False)
    assert m2["tokenizer"]["trained"] is False
    assert m2["tokenizer"]["sha256"] == manifest["tokenizer"]["sha256"]
    assert _decoded(out2)[1] == ids


def test_tokenizer_training_is_deterministic(tmp_path: Path) -> None:
    _write_inputs(tmp_path / "in")
    for name in ("x", "y"):
        build_text_shards([tmp_path / "in"], tmp_path / name, vocab_size=400, progress=False)
    assert (tmp_path / "x" / "tokenizer.model").read_bytes() == (
        tmp_path / "y" / "tokenizer.model"
    ).read_bytes()
    assert (tmp_path / "x" / "shard_00000.bin").read_bytes() == (
        tmp_path / "y" / "shard_00000.bin"
    ).read_bytes()


def test_bad_records_are_skipped_and_counted(tmp_path: Path) -> None:
    good = ["first good document", "second good document"]
    lines = [
        json.dumps({"text": good[0]}).encode(),
        b"{not json",
        b'{"text": "caf\xff"}',  # not UTF-8
        json.dumps({"body": "no text field"}).encode(),
        json.dumps({"text": "   "}).encode(),
        json.dumps({"text": good[1]}).encode(),
    ]
    (tmp_path / "d.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    full = gzip.compress(("".join(json.dumps({"text": f"gz doc {i}"}) + "\n" for i in range(200))).encode())
    (tmp_path / "e.jsonl.gz").write_bytes(full[: len(full) // 2])  # truncated download
    (tmp_path / "f.txt").write_bytes(b"para one\n\n\n  \npara \xfe two\npara two\n\nthree")
    stats: Counter = Counter()
    got = list(read_documents([tmp_path], split_paragraphs=True, stats=stats))
    assert got[:2] == good
    gz = [d for d in got if d.startswith("gz doc")]
    assert 0 < len(gz) < 200 and gz == [f"gz doc {i}" for i in range(len(gz))]
    assert got[2 + len(gz) :] == ["para one", "para two", "three"]
    assert stats == Counter(bad_json_line=1, bad_utf8_line=2, no_text_field=1, empty=1, corrupt_file=1)
    with pytest.raises(DataError, match="no such file"):
        list(read_documents([tmp_path / "missing.jsonl"]))
    (tmp_path / "g.csv").write_text("a,b")
    with pytest.raises(DataError, match="unsupported"):
        list(read_documents([tmp_path / "g.csv"]))


def test_sample_corpus_is_the_python_docs() -> None:
    from pydoc_data.topics import topics

    docs = python_docs_documents()
    assert docs == python_docs_documents()
    assert len(docs) >= len(topics) == 79
    assert 300_000 < sum(map(len, docs)) < 600_000
    assert max(map(len, docs)) < 20_000
    # Nothing lost or reordered: the non-whitespace characters are the topics' own, in sorted-key order.
    squash = re.compile(r"\s+")
    assert squash.sub("", "".join(docs)) == squash.sub("", "".join(topics[k] for k in sorted(topics)))


def test_prepare_sample_data(tmp_path: Path) -> None:
    out = tmp_path / "sample"
    manifest = prepare_sample_data(out, vocab_size=1024, progress=False)
    docs = python_docs_documents()
    assert manifest["documents"] == len(docs) and manifest["vocab_size"] == 1024
    decoded, ids = _decoded(out)
    assert decoded == docs  # identity normalisation + byte fallback: exact text back, Unicode included
    assert sum(map(len, ids)) == manifest["tokens"] > 100_000
    before = _files_state(out)
    assert prepare_sample_data(out, vocab_size=1024, progress=False) == manifest
    assert _files_state(out) == before
    jsonl = tmp_path / "corpus.jsonl"
    write_sample_corpus(jsonl)
    assert [json.loads(x)["text"] for x in jsonl.read_text().splitlines()] == docs


def _cli() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="megadepth prep")
    add_cli(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write_inputs(tmp_path / "in")
    args = _cli().parse_args(
        ["text", "--input", str(tmp_path / "in"), "--out", str(tmp_path / "o"), "--vocab-size", "400"]
    )
    assert args.func(args) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "120 documents" in out[0]

    args = _cli().parse_args(["text", "--input", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "o2")])
    assert args.func(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope.txt" in err[0]

    (tmp_path / "bad.model").write_bytes(b"garbage")
    args = _cli().parse_args(
        [
            "text",
            "--input",
            str(tmp_path / "in"),
            "--out",
            str(tmp_path / "o3"),
            "--tokenizer",
            str(tmp_path / "bad.model"),
        ]
    )
    assert args.func(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.model" in err[0]
    assert not (tmp_path / "o3").exists()

    args = _cli().parse_args(
        ["text", "--input", str(tmp_path / "in"), "--out", str(tmp_path / "o4"), "--vocab-size", "100"]
    )
    assert args.func(args) == 2  # sentencepiece's own complaint, as one line
    assert "vocab" in capsys.readouterr().err.lower()

    args = _cli().parse_args(["sample", "--out", str(tmp_path / "s"), "--vocab-size", "600"])
    assert args.func(args) == 0
    assert (tmp_path / "s" / "manifest.json").is_file()
