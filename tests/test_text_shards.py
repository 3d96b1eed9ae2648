"""Local text -> real sentencepiece tokenizer -> shards -> manifest; the embedded sample corpus; the CLI."""

from __future__ import annotations

import argparse
import codecs
import gzip
import hashlib
import io
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


def test_encodings_bom_and_nul_bytes(tmp_path: Path) -> None:
    """UTF-16/32 .txt with a BOM is decoded, a UTF-8 BOM is dropped, NUL-byte lines are skipped."""
    text = "Line 0 of a document saved by a Windows editor.\nLine 1, caf\u00e9 \u2713\n"
    (tmp_path / "a_u16le.txt").write_bytes(codecs.BOM_UTF16_LE + text.encode("utf-16-le"))
    (tmp_path / "b_u16be.txt").write_bytes(codecs.BOM_UTF16_BE + text.encode("utf-16-be"))
    (tmp_path / "c_u32.txt").write_bytes(codecs.BOM_UTF32_LE + text.encode("utf-32-le"))
    (tmp_path / "d_bom8.txt").write_bytes(codecs.BOM_UTF8 + text.encode("utf-8"))
    # UTF-16 without a BOM is valid UTF-8 full of NULs: every line of it is skipped, not kept as garbage.
    (tmp_path / "e_u16_nobom.txt").write_bytes("one\ntwo\n".encode("utf-16-le"))
    (tmp_path / "f_mixed.txt").write_bytes(b"kept line\nbinary\x00junk\nalso kept\n")
    (tmp_path / "g_bom.jsonl").write_bytes(
        codecs.BOM_UTF8 + b'{"text": "document 0"}\n{"text": "document 1"}\n{"text": "document 2"}\n'
    )
    stats: Counter = Counter()
    got = list(read_documents([tmp_path], stats=stats))
    assert got == [text, text, text, text, "kept line\nalso kept\n", "document 0", "document 1", "document 2"]
    # "one\ntwo\n" in UTF-16 LE cut at \n bytes: "o\0n\0e\0\n", "\0t\0w\0o\0\n", "\0" (3 lines), plus
    # f_mixed's one; nothing is left of e_u16_nobom.txt, an empty document.
    assert stats == Counter(nul_byte_line=4, empty=1)

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "u16.jsonl").write_bytes(codecs.BOM_UTF16_LE + '{"text": "x"}\n'.encode("utf-16-le"))
    with pytest.raises(DataError, match=r"u16\.jsonl: JSON Lines must be UTF-8.*UTF-16"):
        list(read_documents([bad / "u16.jsonl"]))
    (bad / "broken.txt").write_bytes(codecs.BOM_UTF16_LE + b"a\x00\x00\xdc")  # a lone low surrogate
    with pytest.raises(DataError, match=r"broken\.txt: starts with a UTF-16 byte order mark"):
        list(read_documents([bad / "broken.txt"]))


def test_txt_line_ends_are_normalised(tmp_path: Path) -> None:
    """CRLF (and old Mac CR) files split into paragraphs exactly as LF files do."""
    (tmp_path / "crlf.txt").write_bytes(b"first paragraph\r\n\r\nsecond\r\nline\r\n \r\n\r\nthird\r\n")
    (tmp_path / "cr.txt").write_bytes(b"first paragraph\r\rsecond\rline\r \r\rthird\r")
    (tmp_path / "lf.txt").write_bytes(b"first paragraph\n\nsecond\nline\n \n\nthird\n")
    for name in ("crlf", "cr", "lf"):
        got = list(read_documents([tmp_path / f"{name}.txt"], split_paragraphs=True))
        assert got == ["first paragraph", "second\nline", "third\n"], name
    assert list(read_documents([tmp_path / "crlf.txt"])) == ["first paragraph\n\nsecond\nline\n \n\nthird\n"]


def _no_eos_tokenizer(path: Path) -> Path:
    """A valid sentencepiece model without an EOS piece (trained directly, not through the code under test)."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_ascii_docs(50, 3)),
        model_writer=model,
        vocab_size=300,
        byte_fallback=True,
        eos_id=-1,
        minloglevel=2,
    )
    path.write_bytes(model.getvalue())
    return path


def test_failed_rerun_keeps_the_previous_output(tmp_path: Path) -> None:
    """A rerun that fails at any stage (tokenizer training, a given tokenizer's check, reading an input
    while shards are being written) leaves the previous output complete, byte for byte."""
    docs = _write_inputs(tmp_path / "in")
    out = tmp_path / "out"
    manifest = build_text_shards([tmp_path / "in"], out, vocab_size=400, progress=False)

    def snapshot() -> dict[str, bytes]:
        return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}

    before = snapshot()
    assert sorted(before) == ["manifest.json", "shard_00000.bin", "shard_00000.idx", "tokenizer.model"]

    with pytest.raises(DataError, match="could not train"):
        build_text_shards([tmp_path / "in"], out, vocab_size=10, progress=False)
    assert snapshot() == before

    no_eos = _no_eos_tokenizer(tmp_path / "no_eos.model")
    with pytest.raises(DataError, match="no EOS piece"):
        build_text_shards([tmp_path / "in"], out, tokenizer=no_eos, progress=False)
    assert snapshot() == before

    # Fails in the tokenize pass, after the first file's documents went into a shard.
    (tmp_path / "z_u16.jsonl").write_bytes(codecs.BOM_UTF16_LE + '{"text": "x"}\n'.encode("utf-16-le"))
    with pytest.raises(DataError, match="must be UTF-8"):
        build_text_shards(
            [tmp_path / "in", tmp_path / "z_u16.jsonl"],
            out,
            tokenizer=out / "tokenizer.model",
            docs_per_shard=10,
            progress=False,
        )
    assert snapshot() == before
    assert build_text_shards([tmp_path / "in"], out, vocab_size=400, progress=False) == manifest
    assert _decoded(out)[0] == docs


def test_long_lines_reach_tokenizer_training(tmp_path: Path) -> None:
    """Lines over sentencepiece's 16,384-byte limit are cut for training, not dropped."""
    rare = " ".join(["quuxolotl"] * 4000 + ["zyx"] * 10)  # one 40 kB line
    (tmp_path / "long.txt").write_text(rare)
    out = tmp_path / "only_long"
    build_text_shards([tmp_path / "long.txt"], out, vocab_size=270, progress=False)
    assert _decoded(out)[0] == [rare]

    # Mixed with ordinary documents, the long lines' text is learnt: the word as one piece, and the
    # characters of a line with no space at all (cut at character boundaries) as pieces of their own.
    blob = "".join(chr(0x4E00 + i % 7) + "\u00e9" for i in range(9000))  # 45,000 bytes
    (tmp_path / "blob.txt").write_text(blob)
    _write_inputs(tmp_path / "in")
    out = tmp_path / "mixed"
    build_text_shards(
        [tmp_path / "in", tmp_path / "long.txt", tmp_path / "blob.txt"], out, vocab_size=400, progress=False
    )
    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    assert sp.encode("quuxolotl", out_type=str) == ["\u2581quuxolotl"]
    assert all(sp.piece_to_id(c) != sp.unk_id() for c in "\u4e00\u4e06\u00e9")  # not byte fallback
    assert _decoded(out)[0][-2:] == [rare, blob]


def test_cli_seed_range(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A seed sentencepiece cannot take is one line, exit 2, before anything is written."""
    _write_inputs(tmp_path / "in")
    for seed in ("-1", str(2**32)):
        out = tmp_path / f"seed{seed}"
        args = _cli().parse_args(["text", "--input", str(tmp_path / "in"), "--out", str(out), "--seed", seed])
        assert args.func(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"error: seed must be an integer in 0..4294967295, got {seed}"]
        assert not out.exists()
    out = tmp_path / "seedmax"
    argv = ["text", "--input", str(tmp_path / "in"), "--out", str(out), "--vocab-size", "400"]
    args = _cli().parse_args([*argv, "--seed", str(2**32 - 1)])
    assert args.func(args) == 0
    assert json.loads((out / "manifest.json").read_text())["config"]["seed"] == 2**32 - 1


def test_cli_sample_refuses_pipeline_output_first(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``prep sample`` into a ``prep run`` output is refused before its source file is written there."""
    pipeline = tmp_path / "pipeline"
    pipeline.mkdir()
    (pipeline / "plan.json").write_text("{}")
    args = _cli().parse_args(["sample", "--out", str(pipeline)])
    assert args.func(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "prep run" in err[0]
    assert sorted(p.name for p in pipeline.rglob("*")) == ["plan.json"]  # no source/ left behind
