"""URL filtering: blocklist semantics, the extract stage dropping and counting, and the plan's hashes."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from data_prep import stages
from data_prep.config import UrlFilterConfig, load_prep_config
from data_prep.corpus import article_html, prose_pages, warc_response, warcinfo, write_warc
from data_prep.pipeline import plan_run
from data_prep.runner import run_task
from data_prep.urls import UrlFilter
from megadepth.common.errors import DataError

RULES_OFF = ["language.languages=null", "gopher_repetition.enabled=false", "gopher_quality.enabled=false",
             "c4.enabled=false", "fineweb.enabled=false"]


def _blocklist(tmp_path: Path, text: str, name: str = "domains") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_domains_cover_subdomains_only(tmp_path: Path) -> None:
    lst = _blocklist(tmp_path, "# UT1-style list\nblocked.example\n\n*.wild.example  # a wildcard entry\n"
                               "https://Shop.Example/cart?id=1#top\n")
    f = UrlFilter(UrlFilterConfig(enabled=True, blocklists=(str(lst),), domains=("Inline.Example.",)))
    assert f.reason("https://blocked.example/a") == "domain"
    assert f.reason("http://WWW.Blocked.Example:8080/x") == "domain"
    assert f.reason("https://a.b.blocked.example/") == "domain"
    assert f.reason("https://deep.wild.example/") == "domain"
    assert f.reason("https://inline.example/page") == "domain"
    assert f.reason("https://notblocked.example/") is None
    assert f.reason("https://blocked.example.org/") is None
    assert f.reason("https://shop.example/cart?id=1") == "url"
    assert f.reason("HTTPS://SHOP.EXAMPLE/cart?id=1#other") == "url"
    assert f.reason("https://shop.example/cart?id=2") is None
    assert f.reason("") is None and f.reason("not a url") is None


def test_banned_words_are_tokens_and_subwords_are_substrings() -> None:
    f = UrlFilter(UrlFilterConfig(enabled=True, banned_words=("casino",), banned_subwords=("xxx",)))
    assert f.reason("https://example.com/best-casino-deals") == "word"
    assert f.reason("https://casino.example.com/") == "word"
    assert f.reason("https://example.com/casinos") is None  # a token, not a substring
    assert f.reason("https://freexxxvideos.example/") == "subword"
    assert f.reason("https://example.com/boxxed") is None


def _warc(path: Path, urls: list[str]) -> None:
    pages = prose_pages()
    records = [warcinfo(path.name)]
    for i, url in enumerate(urls):
        title, paragraphs = pages[i % len(pages)]
        records += warc_response(url, article_html(title, paragraphs).encode())
    write_warc(path, records)


def test_extract_drops_and_counts_and_the_plan_hashes_the_lists(tmp_path: Path) -> None:
    urls = ["https://keep.example/1", "https://www.blocked.example/2", "https://sub.blocked.example/3",
            "https://keep.example/cart?id=7", "https://keep.example/best-casino-deals", "https://keep.example/5"]
    _warc(tmp_path / "in.warc.gz", urls)
    lst = _blocklist(tmp_path, "blocked.example\nhttps://keep.example/cart?id=7\n")
    on = [*RULES_OFF, "url_filter.enabled=true", f"url_filter.blocklists=[{lst}]",
          "url_filter.banned_words=[casino]"]
    plan = plan_run([tmp_path / "in.warc.gz"], tmp_path / "o", overrides=on)
    plan.save()
    run_task(tmp_path / "o", "extract", 0, 1)
    stats = plan.read_marker("extract", "000000")["stats"]
    assert stats["drop:url:domain"] == 2 and stats["drop:url:url"] == 1 and stats["drop:url:word"] == 1
    assert stats["docs_in"] == len(urls)
    docs = pq.read_table(next((tmp_path / "o" / "work").glob("extract-*/docs/000000.parquet")))
    assert docs.column("url").to_pylist() == ["https://keep.example/1", "https://keep.example/5"]

    # the extract hash follows the lists' content, not their path; off leaves the hash as it was
    plain = plan_run([tmp_path / "in.warc.gz"], tmp_path / "p", overrides=RULES_OFF)
    off = plan_run([tmp_path / "in.warc.gz"], tmp_path / "p", overrides=[*RULES_OFF, f"url_filter.blocklists=[{lst}]"])
    assert off.hashes["extract"] == plain.hashes["extract"] != plan.hashes["extract"]
    moved = _blocklist(tmp_path, lst.read_text(), "moved")
    same = plan_run([tmp_path / "in.warc.gz"], tmp_path / "q",
                    overrides=[*on[:-2], f"url_filter.blocklists=[{moved}]", "url_filter.banned_words=[casino]"])
    assert same.hashes["extract"] == plan.hashes["extract"]

    # a list edited after planning is refused, not mixed
    lst.write_text("other.example\n")
    plan.marker("extract", "000000").unlink()  # as if the task had died before finishing
    stages._CACHE.clear()  # and were rerun in a fresh process
    with pytest.raises(DataError, match="changed since the plan was made"):
        run_task(tmp_path / "o", "extract", 0, 1)
    changed = plan_run([tmp_path / "in.warc.gz"], tmp_path / "r", overrides=on)
    assert changed.hashes["extract"] != plan.hashes["extract"]


def test_bad_url_filter_settings_fail_before_any_work(tmp_path: Path) -> None:
    _warc(tmp_path / "in.warc.gz", ["https://a.example/"])
    with pytest.raises(DataError, match="no such file"):
        plan_run([tmp_path / "in.warc.gz"], tmp_path / "o",
                 overrides=["url_filter.enabled=true", f"url_filter.blocklists=[{tmp_path / 'missing'}]"])
    with pytest.raises(DataError, match="no blocklists"):
        plan_run([tmp_path / "in.warc.gz"], tmp_path / "o", overrides=["url_filter.enabled=true"])
    with pytest.raises(DataError, match="did you mean 'url_filter.blocklists'"):
        load_prep_config(overrides=["url_filter.blocklist=[x]"])


def test_cli_flag_turns_the_filter_on(tmp_path: Path, capsys) -> None:
    from megadepth.cli import main

    _warc(tmp_path / "in.warc.gz", ["https://a.example/"])
    lst = _blocklist(tmp_path, "a.example\n")
    assert main(["prep", "run", "--input", str(tmp_path / "in.warc.gz"), "--out", str(tmp_path / "o"),
                 "--url-blocklist", str(lst), "--print-config"]) == 0
    shown = json.loads(capsys.readouterr().out)["url_filter"]
    assert shown["enabled"] is True and shown["blocklists"] == [str(lst.resolve())]
    assert not (tmp_path / "o").exists()  # printing the config plans; it writes nothing
