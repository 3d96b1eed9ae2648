"""Every dropped document accounted for: ``OUT/rejected/`` lists each page the pipeline dropped (URL
filter, extractor, language, each quality rule, both kinds of duplicate) with the first rule that dropped
it, the measured value and the threshold; the counts add up to the manifest's; the kept copy of a
duplicate is found from its row; text only on request; a killed run resumes to the same bytes; the
report names an example URL per rule; and when nothing survives, the error names each document."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from data_prep.config import (
    C4Config,
    FineWebConfig,
    GopherQualityConfig,
    GopherRepetitionConfig,
    load_prep_config,
)
from data_prep.corpus import article_html, language_text, prose_pages, warc_response, warcinfo, write_warc
from data_prep.filters import Rejection, c4_filter, fineweb_filter, gopher_quality, gopher_repetition
from data_prep.pipeline import plan_run, run_plan
from data_prep.report import format_report
from megadepth.common.errors import DataError

FIXTURES = Path(__file__).parent / "fixtures" / "commoncrawl"
ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ["tokenizer.vocab_size=400", "shards.row_group_docs=2", "url_filter.enabled=true",
            "url_filter.domains=[blocked.example]"]
#: Rules whose value must reach a minimum (a page fails below it); every other rule has a maximum.
MINIMUM_RULES = {"gopher_qual:short_doc", "gopher_qual:below_avg_word_length", "gopher_qual:below_alpha_threshold",
                 "gopher_qual:not_enough_stop_words", "c4:too_few_sentences", "fineweb:line_punct_ratio", "language"}
COLUMNS = ["id", "url", "source", "rule", "value", "threshold", "language", "language_score",
           "duplicate_of_source", "duplicate_of_row"]


def _build(root: Path) -> None:
    """Two WARC files: good pages, then one page for each way of being dropped, and in the second file
    an exact and a near copy of pages of the first."""
    pages = prose_pages()
    html = [article_html(t, ps) for t, ps in pages]
    a = [warcinfo("a.warc.gz")]
    for i in range(6):
        a += warc_response(f"https://site-a.example/{i}", html[i].encode())
    fr = article_html("Texte", [language_text("French", 150, s) for s in range(3)], lang="fr")
    a += warc_response("https://fr.example/", fr.encode())
    a += warc_response("https://blocked.example/page", html[6].encode())
    a += warc_response("https://empty.example/", b"<html><head><script>var x = 1;</script></head><body></body></html>")
    short = ("Welcome to our small bakery in the old town. We sell fresh bread and cakes every morning, bake "
             "pies on Fridays, and close early during winter holidays. Orders for weddings or birthdays are "
             "taken by phone until noon.")  # fewer than 50 words, none of its n-grams repeated
    a += warc_response("https://short.example/", article_html("Bakery", [short]).encode())
    a += warc_response("https://spam.example/", article_html("Deals", ["Buy cheap watches now, best price. " * 40]).encode())
    b = [warcinfo("b.warc.gz")]
    b += warc_response("https://mirror.example/3", article_html(pages[3][0], pages[3][1], site="Mirror").encode())
    for i in range(8, 11):
        b += warc_response(f"https://site-b.example/{i}", html[i].encode())
    near = list(pages[5][1])
    near[2] = near[2].replace("the", "this", 2) + " This sentence was added by the copy."
    b += warc_response("https://copy.example/5", article_html(pages[5][0], near).encode())
    # a copy of a page of the same file, kept after a removed one (mirror.example/3) in that file
    b += warc_response("https://mirror.example/9", article_html(pages[9][0], pages[9][1], site="Mirror").encode())
    write_warc(root / "a.warc.gz", a)
    write_warc(root / "b.warc.gz", b)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("rejected")
    _build(root / "in")
    plan = plan_run([root / "in"], root / "out", overrides=SETTINGS)
    manifest, _ = run_plan(plan, progress=False)
    return {"root": root, "out": root / "out", "manifest": manifest}


def _rows(out: Path) -> list[dict]:
    rows: list[dict] = []
    for part in sorted((out / "rejected").glob("*.parquet")):
        rows += pq.read_table(part).to_pylist()
    return rows


def test_every_dropped_document_has_one_row_with_its_first_rule(run) -> None:
    out, m = run["out"], run["manifest"]
    st = m["stages"]
    rows = _rows(out)
    names = sorted(p.name for p in (out / "rejected").glob("*.parquet"))
    # a part per unit, empty where it dropped nothing: every page of file b passes the rules, none of a has a
    # copy before it
    assert names == ["dedup-00000.parquet", "dedup-00001.parquet", "extract-000000.parquet", "extract-000001.parquet"]
    assert [pq.read_metadata(out / "rejected" / n).num_rows == 0 for n in names] == [True, False, False, True]
    # accounted for: every document read is either written or listed, once
    assert len(rows) == st["extract_and_filter"]["documents_in"] - m["documents"] == m["rejected"]["documents"]
    assert len({(r["source"], r["id"]) for r in rows}) == len(rows)
    want = Counter(st["extract_and_filter"]["dropped"])
    want.update({"dedup:exact": st["dedup"]["exact_duplicates"], "dedup:minhash": st["dedup"]["near_duplicates"]})
    assert Counter(r["rule"] for r in rows) == +want
    assert {k: v["count"] for k, v in m["rejected"]["by_rule"].items()} == dict(+want)
    by_url = {r["url"]: r for r in rows}
    assert by_url["https://blocked.example/page"]["rule"] == "url:domain"
    assert by_url["https://empty.example/"]["rule"] == "extract_empty"
    for url in ("https://blocked.example/page", "https://empty.example/"):  # language id never ran on them
        assert by_url[url]["language"] is None and by_url[url]["language_score"] is None
        assert by_url[url]["value"] is None and by_url[url]["threshold"] is None
    fr = by_url["https://fr.example/"]
    assert fr["rule"] == "language" and fr["language"] == "fr" and fr["language_score"] > 0.5
    assert fr["value"] is None and fr["threshold"] is None  # another language: no score to compare
    short = by_url["https://short.example/"]
    assert short["rule"] == "gopher_qual:short_doc" and short["threshold"] == 50 and 10 < short["value"] < 50
    assert short["language"] == "en" and short["language_score"] > 0.65
    assert by_url["https://spam.example/"]["rule"].startswith("gopher_rep:")
    for r in rows:  # every measured value is on the failing side of its threshold
        if r["value"] is not None and r["threshold"] is not None:
            assert (r["value"] <= r["threshold"]) if r["rule"] in MINIMUM_RULES else (r["value"] > r["threshold"]), r
    assert all(r.get("text") is None for r in rows) and "text" not in pq.read_schema(out / "rejected" / names[0]).names


def test_a_duplicate_row_finds_the_copy_that_was_kept(run) -> None:
    import pandas as pd

    out = run["out"]
    rejected = pd.read_parquet(out / "rejected")  # the folder, as the docs say
    docs = pd.read_parquet(out / "documents")
    assert list(rejected.columns) == COLUMNS
    for url, rule, original, where in (("https://mirror.example/3", "dedup:exact", "https://site-a.example/3", "a"),
                                       ("https://copy.example/5", "dedup:minhash", "https://site-a.example/5", "a"),
                                       ("https://mirror.example/9", "dedup:exact", "https://site-b.example/9", "b")):
        r = rejected[rejected.url == url].iloc[0]
        assert r.rule == rule and r.source.endswith("b.warc.gz") and r.duplicate_of_source.endswith(f"/{where}.warc.gz")
        kept = docs[docs.source == r.duplicate_of_source].iloc[int(r.duplicate_of_row)]
        assert kept.url == original
        assert url not in set(docs.url)
    assert rejected.duplicate_of_source.notna().sum() == int(rejected.rule.str.startswith("dedup:").sum())


def test_the_folder_opens_with_datasets(run) -> None:
    import datasets

    ds = datasets.load_dataset("parquet", data_dir=str(run["out"] / "rejected"), split="train")
    assert ds.num_rows == run["manifest"]["rejected"]["documents"] and ds.column_names == COLUMNS


def test_a_run_that_drops_nothing_still_has_a_dataset_of_rejected_documents(tmp_path: Path) -> None:
    """No drop: the folder holds empty parts with the schema, so the same reading code works on every run."""
    pages = prose_pages()
    recs = [warcinfo("a.warc.gz")]
    for i in range(12):
        recs += warc_response(f"https://site.example/{i}", article_html(*pages[i]).encode())
    write_warc(tmp_path / "in" / "a.warc.gz", recs)
    manifest, _ = run_plan(plan_run([tmp_path / "in"], tmp_path / "out", overrides=SETTINGS[:2]), progress=False)
    assert manifest["rejected"]["documents"] == 0 and list((tmp_path / "out" / "rejected").glob("*.parquet"))
    table = pq.read_table(tmp_path / "out" / "rejected")
    assert table.num_rows == 0 and table.column_names == COLUMNS


def test_the_report_names_an_example_url_per_rule(run) -> None:
    report = format_report(run["manifest"])
    line = next(x for x in report.splitlines() if "dropped by language" in x)
    assert line.rstrip().endswith("e.g. https://fr.example/")
    assert "e.g. https://blocked.example/page" in next(x for x in report.splitlines() if "url:domain" in x)
    assert "e.g. https://mirror.example/3" in next(x for x in report.splitlines() if "exact duplicates" in x)
    assert "e.g. https://copy.example/5" in next(x for x in report.splitlines() if "near duplicates" in x)
    assert "rejected/*.parquet" in report


def test_text_only_when_asked(run, tmp_path: Path) -> None:
    plan = plan_run([run["root"] / "in"], tmp_path / "o", overrides=[*SETTINGS, "rejected.keep_text=true"])
    manifest, _ = run_plan(plan, progress=False)
    rows = {r["url"]: r for r in _rows(tmp_path / "o")}
    assert manifest["rejected"]["text"] is True and len(rows) == manifest["rejected"]["documents"]
    assert language_text("French", 150, 0) in rows["https://fr.example/"]["text"]  # the page's text, as extracted
    assert rows["https://blocked.example/page"]["text"] is None and rows["https://empty.example/"]["text"] is None
    assert "Buy cheap watches" in rows["https://spam.example/"]["text"]
    assert rows["https://mirror.example/3"]["text"]  # the duplicate's (PII-masked) text
    # the rest is the same as without the text
    plain = {r["url"]: {k: r[k] for k in COLUMNS} for r in _rows(run["out"])}
    assert {u: {k: r[k] for k in COLUMNS} for u, r in rows.items()} == plain


def test_asking_for_text_on_a_finished_directory_never_leaves_it_out(run, tmp_path: Path) -> None:
    import shutil

    out = tmp_path / "o"
    shutil.copytree(run["out"], out)
    plan = plan_run([run["root"] / "in"], out, overrides=[*SETTINGS, "rejected.keep_text=true"])
    try:
        run_plan(plan, progress=False)
    except DataError as e:  # its extract units are reused: refused, naming the setting and the way out
        assert "rejected.keep_text" in str(e) and "new --out" in str(e)
        assert (out / "manifest.json").is_file() and _rows(out) == _rows(run["out"])  # left as it was
    else:  # or they are redone (the setting is part of the extract stage's hash)
        assert all(r["text"] is not None for r in _rows(out) if r["rule"] not in ("url:domain", "extract_empty"))


def test_a_killed_run_resumes_to_the_same_rejected_parts(run, tmp_path: Path) -> None:
    out = tmp_path / "o"
    base = [sys.executable, "-m", "megadepth", "prep", "run", "--no-progress", "--input", str(run["root"] / "in"),
            "--out", str(out)]
    for s in SETTINGS:
        base += ["--set", s]
    for where in ("extract:000000", "tokenize:00001"):  # killed in the middle of a unit
        proc = subprocess.run(base, env={**os.environ, "MEGADEPTH_PREP_DIE": where}, capture_output=True, text=True,
                              cwd=ROOT, timeout=300)
        assert proc.returncode == 137, proc.stderr[-2000:]
        assert not (out / "rejected").exists() and not (out / "manifest.json").exists()
    proc = subprocess.run(base, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"dropped documents in {out}/rejected/" in proc.stdout

    def digests(d: Path) -> dict[str, str]:
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((d / "rejected").iterdir())}

    assert digests(out) == digests(run["out"])
    assert not list(out.rglob("*.tmp"))


def test_when_nothing_survives_the_error_names_each_document(tmp_path: Path) -> None:
    with pytest.raises(DataError) as e:
        run_plan(plan_run([FIXTURES], tmp_path / "o"), progress=False)
    msg = str(e.value)
    assert "no document survived the pipeline (2 read; drop:language 2)" in msg
    for name in ("whirlwind.warc.gz", "whirlwind.warc.wet.gz"):
        line = next(x for x in msg.splitlines() if f"({name})" in x)
        assert line.strip().startswith("https://an.wikipedia.org/wiki/Escopete")
        assert "language es (0." in line and "first failing rule language" in line
    assert len(_rows(tmp_path / "o")) == 2  # and the rows are there to open
    with pytest.raises(DataError) as e:
        run_plan(plan_run([FIXTURES], tmp_path / "o2", overrides=["language.languages=null"]), progress=False)
    lines = [x for x in str(e.value).splitlines() if "Escopete" in x]
    assert len(lines) == 2 and all("gopher_qual:below_alpha_threshold = 0.7" in x and "(threshold 0.8)" in x
                                   for x in lines)


def test_each_rule_reports_its_value_and_threshold() -> None:
    words = "the cat sat on the mat and looked at the dog"
    text, why = gopher_quality(words, GopherQualityConfig())
    assert text is None and why == "short_doc" and isinstance(why, Rejection)
    assert (why.value, why.threshold) == (11, 50)
    assert c4_filter("One sentence only here. And a second.", C4Config())[1].value == 2
    why = fineweb_filter("Heading\nAnother heading\nA third one", FineWebConfig())[1]
    assert why == "line_punct_ratio" and (why.value, why.threshold) == (0.0, 0.12)
    lines = "\n".join(["The same line comes back again and again."] * 5 + ["One other line is here."])
    why = gopher_repetition(lines, GopherRepetitionConfig())[1]
    assert why == "dup_line_frac" and (why.value, why.threshold) == (pytest.approx(4 / 6), 0.3)
    assert c4_filter("Lorem ipsum dolor sit amet. " * 6, C4Config()) == (None, "lorem_ipsum")


def test_config_typos_and_presets_are_named() -> None:
    with pytest.raises(DataError, match=r"unknown prep config key 'rejected.keep_texts'.*did you mean 'rejected.keep_text'"):
        load_prep_config(overrides=["rejected.keep_texts=true"])
    with pytest.raises(DataError, match=r"unknown prep preset 'smok'.*did you mean 'smoke'"):
        load_prep_config(preset="smok")
    cfg = load_prep_config(preset="smoke", overrides=["tokenizer.vocab_size=300"])  # --set wins over the preset
    assert cfg.language.languages is None and not cfg.gopher_quality.enabled and cfg.tokenizer.vocab_size == 300
    assert cfg.rejected.keep_text is False
