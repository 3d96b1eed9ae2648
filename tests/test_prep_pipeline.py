"""The Common Crawl pipeline end to end on real pages: output contract, duplicates collapsing, shards that
decode back to the kept text and that Megatron and our trainer read, the same bytes from 1 or 2 workers
and from Slurm array tasks run locally, byte-identical resume after a kill, and the CLI's errors."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sentencepiece as spm

from data_prep.corpus import article_html, language_text, prose_pages, warc_response, warcinfo, write_warc
from data_prep.pipeline import plan_run, run_plan
from megadepth.data import DocumentCorpus, IndexedDataset

FIXTURES = Path(__file__).parent / "fixtures" / "commoncrawl"
ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ["tokenizer.vocab_size=400", "shards.row_group_docs=4"]


def _build_inputs(root: Path) -> dict:
    """Three WARC files of real pages (gzip members / one gzip stream / plain with damage), the real
    Common Crawl WARC and WET, and a Parquet source. Includes an exact and a near duplicate across files,
    pages in French and German, a spammy page, and personal data to mask."""
    pages = prose_pages()
    assert len(pages) >= 24
    html = [article_html(t, ps) for t, ps in pages]
    a = [warcinfo("a.warc.gz")]
    for i in range(0, 10):
        a += warc_response(f"https://site-a.example/{i}", html[i].encode())
    a += warc_response("https://fr.example/", article_html("Texte", [language_text("French", 150, s) for s in range(3)], lang="fr").encode())
    a += warc_response("https://de.example/", article_html("Text", [language_text("German", 150, s) for s in range(3)], lang="de").encode())
    contact = list(pages[10][1])
    contact[1] += " Questions go to jane.roe@mail.example.org, and the mirror server is at 8.8.4.4."
    a += warc_response("https://site-a.example/contact", article_html(pages[10][0], contact).encode())
    b = [warcinfo("b.warc.gz")]
    for i in range(11, 20):
        b += warc_response(f"https://site-b.example/{i}", html[i].encode())
    # the same article on another site (other navigation, same text): an exact duplicate
    b += warc_response("https://mirror.example/3", article_html(pages[3][0], pages[3][1], site="Mirror").encode())
    # the same article with a few words changed: a near duplicate
    near = list(pages[5][1])
    near[2] = near[2].replace("the", "this", 2) + " This sentence was added by the copy."
    b += warc_response("https://copy.example/5", article_html(pages[5][0], near).encode())
    spam = article_html("Deals", ["Buy cheap watches now, best price, buy now. " * 40])
    b += warc_response("https://spam.example/", spam.encode())
    c = [r for i in range(20, 24) for r in warc_response(f"https://site-c.example/{i}", html[i].encode())]
    c.insert(6, b"WARC/1.0\r\nWARC-Type: response\r\nContent-Length: 99999\r\n\r\ngarbage")  # malformed
    root.mkdir(parents=True, exist_ok=True)
    write_warc(root / "a.warc.gz", a)
    write_warc(root / "b.warc.gz", b, "stream")
    write_warc(root / "c.warc", c, "none")
    shutil.copy(FIXTURES / "whirlwind.warc.gz", root)
    shutil.copy(FIXTURES / "whirlwind.warc.wet.gz", root)
    pq.write_table(
        pa.table({"text": ["\n\n".join(pages[24][1]), "\n\n".join(pages[0][1])], "url": ["hf://a", "hf://b"]}),
        root / "d.parquet",
    )
    return {"pages": pages}


@pytest.fixture(scope="module")
def run1(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("prep")
    info = _build_inputs(root / "in")
    plan = plan_run([root / "in"], root / "out1", overrides=SETTINGS)
    manifest, _ = run_plan(plan, workers=1, progress=False)
    return {"root": root, "out": root / "out1", "manifest": manifest, "plan": plan, **info}


def _files(out: Path) -> dict[str, str]:
    """sha256 of every shard, document part and the tokenizer."""
    names = [*out.glob("shard_*"), *out.glob("documents/*.parquet"), out / "tokenizer.model"]
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(names)}


def _documents(out: Path) -> list[dict]:
    rows: list[dict] = []
    for part in sorted((out / "documents").glob("*.parquet")):
        rows += pq.read_table(part).to_pylist()
    return rows


def test_output_contract_and_counts(run1) -> None:
    out, m = run1["out"], run1["manifest"]
    assert (out / "manifest.json").is_file() and (out / "tokenizer.model").is_file()
    assert m["vocab_size"] == 400 and m["dtype"] == "uint16" and m["eos_id"] == 2
    assert m["tokenizer"]["sha256"] == hashlib.sha256((out / "tokenizer.model").read_bytes()).hexdigest()
    assert m["config_hash"] in m["stage_hashes"].values()
    assert (out / "work" / f"tokenize-{m['config_hash']}").is_dir()  # the config hash is in the path
    assert [Path(i["path"]).name for i in m["inputs"]] == sorted(
        ["a.warc.gz", "b.warc.gz", "c.warc", "d.parquet", "whirlwind.warc.gz", "whirlwind.warc.wet.gz"]
    )
    st = m["stages"]
    assert st["read"]["skipped"]["skip:record_request"] > 20 and st["read"]["skipped"]["corrupt:record"] >= 1
    dropped = st["extract_and_filter"]["dropped"]
    assert dropped["language"] == 4  # French, German, and the Aragonese page as WARC and as WET
    assert sum(v for k, v in dropped.items() if k.startswith("gopher_rep")) >= 1  # the spam page
    assert st["dedup"]["exact_duplicates"] >= 1  # mirror.example/3: same text, other site around it
    # copy.example/5 (words changed), and the Parquet copy of page 0 (no title line): near duplicates
    assert st["dedup"]["near_duplicates"] >= 2
    assert st["tokenize"]["pii_masked"] == {"emails": 1, "ipv4": 1}
    docs = _documents(out)
    assert m["documents"] == len(docs) == st["dedup"]["documents_out"]
    urls = [d["url"] for d in docs]
    for gone in ("https://mirror.example/3", "https://copy.example/5", "hf://b", "https://spam.example/"):
        assert gone not in urls
    for kept in ("https://site-a.example/3", "https://site-a.example/5", "https://site-a.example/0", "hf://a"):
        assert kept in urls  # the earliest copy (input order) survives
    contact = next(d for d in docs if d["url"] == "https://site-a.example/contact")
    assert "jane.roe" not in contact["text"] and "email@example.com" in contact["text"] or (
        "firstname.lastname@example.org" in contact["text"]
    )
    assert "8.8.4.4" not in contact["text"]
    assert {d["language"] for d in docs} == {"en"} and min(d["language_score"] for d in docs) > 0.65
    assert all(d["source"].endswith((".warc.gz", ".warc", ".parquet")) for d in docs)
    print(json.dumps(st, indent=1))


def test_shards_decode_to_the_kept_text_and_train(run1) -> None:
    out, m = run1["out"], run1["manifest"]
    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    docs = _documents(out)
    corpus = DocumentCorpus.from_path(out)  # what `megadepth train` reads through data.path
    assert corpus.num_docs == len(docs) and corpus.num_tokens == m["tokens"]
    for i, d in enumerate(docs):
        ids = corpus.read(i, 0, int(corpus.doc_lengths[i])).tolist()
        assert ids[-1] == 2 and 2 not in ids[:-1] and len(ids) == d["tokens"]
        assert sp.decode(ids[:-1]) == d["text"]  # byte fallback + identity normalisation: exact text
    for s in m["shards"]:
        assert len(IndexedDataset(out / s["prefix"])) == s["documents"]
    import datasets

    ds = datasets.load_dataset("parquet", data_dir=str(out / "documents"), split="train")
    assert ds.num_rows == len(docs) and {"id", "url", "text", "language", "source"} <= set(ds.column_names)
    from megadepth.data.builder import build_datasets

    train, valid = build_datasets(str(out), seq_len=16, seed=0, train_samples=50, valid_samples=5, valid_fraction=0.1)
    assert len(train) == 50 and len(valid) == 5
    sample = np.asarray(train[0])
    assert sample.shape == (17,) and sample.max() < m["vocab_size"]


def test_given_tokenizer_gives_the_same_shards(run1, tmp_path: Path) -> None:
    out = run1["out"]
    plan = plan_run([run1["root"] / "in"], tmp_path / "o", overrides=[*SETTINGS, f"tokenizer.model={out / 'tokenizer.model'}"])
    m, _ = run_plan(plan, progress=False)
    assert m["tokenizer"]["trained"] is False
    assert _files(tmp_path / "o") == _files(out)


@pytest.mark.slow
def test_two_workers_and_slurm_array_tasks_give_identical_bytes(run1, tmp_path: Path) -> None:
    plan = plan_run([run1["root"] / "in"], tmp_path / "w2", overrides=SETTINGS)
    run_plan(plan, workers=2, progress=False)
    expect = _files(run1["out"])
    assert _files(tmp_path / "w2") == expect

    out = tmp_path / "slurm"
    cmd = [sys.executable, "-m", "megadepth", "prep", "slurm", "--input", str(run1["root"] / "in"), "--out", str(out),
           "--tasks", "3", "--partition", "cpu"]
    for s in SETTINGS:
        cmd += ["--set", s]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    submit = (out / "slurm" / "submit.sh").read_text()
    stages = re.findall(r"sbatch --parsable .*?(\w+)\.sbatch\)", submit)
    assert stages == ["extract", "buckets", "cluster", "tokenizer", "tokenize", "finalize"]
    assert "--dependency=afterok" in submit
    for stage in stages:  # what Slurm would do: every array task of a stage, then the next stage
        script = out / "slurm" / f"{stage}.sbatch"
        text = script.read_text()
        assert "#SBATCH --partition=cpu" in text and "--rank" not in text
        last = int(text.split("#SBATCH --array=0-")[1].split()[0])
        procs = [
            subprocess.Popen(["bash", str(script)], env={**os.environ, "SLURM_ARRAY_TASK_ID": str(r)},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for r in range(last + 1)
        ]
        for p in procs:
            _, err = p.communicate(timeout=180)
            assert p.returncode == 0, (stage, err[-2000:])
    assert _files(out) == expect
    m = json.loads((out / "manifest.json").read_text())
    assert m["documents"] == run1["manifest"]["documents"]
    assert len(list((out / "work").glob("extract-*/done/extract/tasks/*-of-3"))) == 3  # per-task markers


@pytest.mark.slow
def test_resume_after_kill_is_byte_identical(run1, tmp_path: Path) -> None:
    out = tmp_path / "killed"
    base = [sys.executable, "-m", "megadepth", "prep", "run", "--no-progress", "--input", str(run1["root"] / "in"),
            "--out", str(out)]
    for s in SETTINGS:
        base += ["--set", s]
    for where in ("extract:000001", "tokenize:00001"):  # a node dies in the middle of a unit
        proc = subprocess.run(base, env={**os.environ, "MEGADEPTH_PREP_DIE": where}, capture_output=True,
                              text=True, cwd=ROOT, timeout=300)
        assert proc.returncode == 137, proc.stderr[-2000:]
        assert not (out / "manifest.json").exists()
        leftovers = list(out.rglob("*.tmp"))
        assert leftovers  # half-written files were left behind, as after a real kill
    proc = subprocess.run(base, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _files(out) == _files(run1["out"])
    assert "exact duplicates removed" in proc.stdout and "tokens written" in proc.stdout


_MEGATRON = textwrap.dedent(
    """
    import json, sys, warnings
    warnings.filterwarnings("ignore")
    from megatron.core.datasets.indexed_dataset import IndexedDataset
    out = {}
    for prefix in json.loads(sys.argv[1]):
        ds = IndexedDataset(prefix)
        out[prefix] = [ds[i].tolist() for i in range(len(ds))]
    print("RESULT" + json.dumps(out))
    """
)


@pytest.mark.slow
def test_megatron_reads_the_shards(run1) -> None:
    out, m = run1["out"], run1["manifest"]
    prefixes = [str(out / s["prefix"]) for s in m["shards"]]
    proc = subprocess.run([sys.executable, "-c", _MEGATRON, json.dumps(prefixes)], capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("RESULT"))[len("RESULT"):])
    for p in prefixes:
        ours = IndexedDataset(p)
        assert seen[p] == [ours[i].tolist() for i in range(len(ours))]


def _cli(capsys, *args: str) -> subprocess.CompletedProcess:
    """``megadepth prep ARGS`` in this process (its parser is slow to import in a fresh one)."""
    from megadepth.cli import main

    capsys.readouterr()
    rc = main(["prep", *args])
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, rc, out, err)


def test_cli_errors_come_before_any_work(run1, tmp_path: Path, capsys) -> None:
    inp = str(run1["root"] / "in")
    p = _cli(capsys, "run", "--input", str(tmp_path / "missing.warc.gz"), "--out", str(tmp_path / "o"))
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "missing.warc.gz" in p.stderr
    assert not (tmp_path / "o").exists()
    (tmp_path / "file").write_text("x")
    p = _cli(capsys, "run", "--input", inp, "--out", str(tmp_path / "file" / "o"))
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "not writable" in p.stderr
    p = _cli(capsys, "run", "--input", inp, "--out", str(tmp_path / "file"))
    assert p.returncode == 2 and "not a directory" in p.stderr
    p = _cli(capsys, "run", "--input", inp, "--out", str(tmp_path / "o"), "--set", "dedup.band=3")
    assert p.returncode == 2 and "did you mean 'dedup.bands'" in p.stderr and not (tmp_path / "o").exists()
    p = _cli(capsys, "run", "--input", inp, "--out", str(tmp_path / "o"), "--tokenizer", str(tmp_path / "file"))
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1
    p = _cli(capsys, "task", "--stage", "tokenize", "--rank", "0", "--world-size", "1", "--out", str(tmp_path / "none"))
    assert p.returncode == 2 and "no plan" in p.stderr
    p = _cli(capsys, "task", "--stage", "finalize", "--world-size", "1", "--out", str(run1["out"]))
    assert p.returncode == 2 and "SLURM_ARRAY_TASK_ID" in p.stderr
    paths = tmp_path / "warc.paths.gz"
    paths.write_bytes(gzip.compress(b"a.warc.gz\n"))
    p = _cli(capsys, "slurm", "--input", str(paths), "--out", str(tmp_path / "s"), "--tasks", "2")
    assert p.returncode == 2 and "prefix" in p.stderr
    p = _cli(capsys, "slurm", "--input", str(paths), "--prefix", inp, "--out", str(tmp_path / "s"), "--tasks", "2")
    assert p.returncode == 0 and (tmp_path / "s" / "slurm" / "submit.sh").is_file()


def test_a_stage_refuses_to_run_before_its_inputs(run1, tmp_path: Path) -> None:
    from data_prep.runner import run_task
    from megadepth.common.errors import DataError

    off = ["language.languages=null", "gopher_repetition.enabled=false", "gopher_quality.enabled=false",
           "c4.enabled=false", "fineweb.enabled=false"]  # every rule can be switched off
    plan = plan_run([FIXTURES / "whirlwind.warc.gz"], tmp_path / "o", overrides=off)
    plan.save()
    with pytest.raises(DataError, match="stage 'extract' is not finished"):
        run_task(tmp_path / "o", "tokenize", 0, 1)
    run_task(tmp_path / "o", "extract", 0, 1)
    assert len(list((tmp_path / "o" / "work").glob("extract-*/docs/*.parquet"))) == 1
    assert np.load(next((tmp_path / "o" / "work").glob("extract-*/sig/000000.keys.npy"))).shape == (15, 1)


def test_trafilatura_engine_extracts_real_pages() -> None:
    from collections import Counter

    from data_prep.config import ExtractConfig, ReadConfig
    from data_prep.extract import Extractor, decode_html
    from data_prep.inputs import InputFile
    from data_prep.records import read_documents

    doc = next(read_documents(InputFile(str(FIXTURES / "whirlwind.warc.gz"), "warc"), ReadConfig(), Counter()))
    html = decode_html(doc.html, doc.charset)
    for engine in ("resiliparse", "trafilatura"):
        text = Extractor(ExtractConfig(engine=engine))(html, Counter())
        assert "Escopete ye un municipio" in text, engine
        assert "Ferramientas personals" not in text  # navigation dropped
