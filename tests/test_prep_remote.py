"""Remote inputs through fsspec's HTTP filesystem, served from this machine (no network needed): a
Common Crawl paths file resolved against an http:// prefix gives what the same files give locally."""

from __future__ import annotations

import functools
import gzip
import http.server
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from data_prep import stages
from data_prep.corpus import article_html, prose_pages, warc_response, warcinfo, write_warc
from data_prep.pipeline import plan_run, run_plan
from data_prep.runner import run_task
from megadepth.common.errors import DataError

FIXTURES = Path(__file__).parent / "fixtures" / "commoncrawl"
RULES_OFF = ["language.languages=null", "gopher_repetition.enabled=false", "gopher_quality.enabled=false",
             "c4.enabled=false", "fineweb.enabled=false"]


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[tuple[Path, str]]:
    """A directory of WARC files (one with a damaged record) behind http://127.0.0.1:PORT/."""
    root = tmp_path_factory.mktemp("www")
    pages = prose_pages()
    good = [warcinfo("good.warc.gz")]
    for i in range(6):
        good += warc_response(f"https://site.example/{i}", article_html(*pages[i]).encode())
    write_warc(root / "crawl" / "good.warc.gz", good)
    bad = [r for i in range(6, 9) for r in warc_response(f"https://other.example/{i}", article_html(*pages[i]).encode())]
    bad.insert(3, b"WARC/1.0\r\nWARC-Type: response\r\nContent-Length: 99999\r\n\r\ngarbage")
    write_warc(root / "crawl" / "damaged.warc", bad, "none")
    shutil.copy(FIXTURES / "whirlwind.warc.wet.gz", root / "crawl")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        thread.join()


def _extract(inputs: list[str], out: Path, prefix: str | None = None) -> list[dict]:
    """Plan, run the extract stage; each input's (stats, documents)."""
    overrides = RULES_OFF + ([f"read.paths_prefix={prefix}"] if prefix else [])
    plan = plan_run(inputs, out, overrides=overrides)
    plan.save()
    stages._CACHE.clear()
    run_task(out, "extract", 0, 1)
    result = []
    for unit in plan.units("extract"):
        docs = pq.read_table(next((out / "work").glob(f"extract-*/docs/{unit}.parquet"))).to_pylist()
        result.append({"stats": plan.read_marker("extract", unit)["stats"],
                       "docs": [{k: v for k, v in d.items() if k != "source"} for d in docs]})
    return result


def test_paths_file_over_http_equals_local_files(served, tmp_path: Path) -> None:
    root, url = served
    keys = ["crawl/damaged.warc", "crawl/good.warc.gz", "crawl/whirlwind.warc.wet.gz"]
    paths = tmp_path / "warc.paths.gz"
    paths.write_bytes(gzip.compress("".join(k + "\n" for k in keys).encode()))
    remote = _extract([str(paths)], tmp_path / "remote", prefix=url)
    local = _extract([str(root / k) for k in keys], tmp_path / "local")
    assert remote == local
    by_name = dict(zip(keys, remote, strict=True))
    assert len(by_name["crawl/good.warc.gz"]["docs"]) == 6
    assert by_name["crawl/damaged.warc"]["stats"]["corrupt:record"] >= 1  # the lenient parser, remotely too
    assert len(by_name["crawl/damaged.warc"]["docs"]) >= 2
    assert len(by_name["crawl/whirlwind.warc.wet.gz"]["docs"]) == 1


def test_upper_case_scheme_is_a_remote_input(served, tmp_path: Path) -> None:
    """"HTTP://host/x" is the same URL as "http://host/x" (schemes are case-insensitive), not a local path."""
    root, url = served
    upper = "HTTP://" + url.removeprefix("http://")
    assert _extract([upper + "crawl/good.warc.gz"], tmp_path / "u") == _extract([str(root / "crawl/good.warc.gz")],
                                                                                 tmp_path / "l")
    paths = tmp_path / "warc.paths.gz"
    paths.write_bytes(gzip.compress(b"crawl/good.warc.gz\n"))
    assert len(_extract([str(paths)], tmp_path / "p", prefix=upper)[0]["docs"]) == 6


def test_unreachable_or_missing_remote_input_fails_before_work(served, tmp_path: Path) -> None:
    _, url = served
    paths = tmp_path / "warc.paths.gz"
    paths.write_bytes(gzip.compress(b"crawl/nope.warc.gz\n"))
    with pytest.raises(DataError, match="does not exist"):
        plan_run([str(paths)], tmp_path / "o", overrides=[f"read.paths_prefix={url}"])
    with pytest.raises(DataError, match="cannot reach"):
        plan_run(["http://127.0.0.1:9/crawl/x.warc.gz"], tmp_path / "o")  # port 9: nothing listens
    assert not (tmp_path / "o" / "plan.json").exists()


def test_missing_fsspec_backend_is_named_before_work(tmp_path: Path) -> None:
    """s3:// needs s3fs, which megadepth does not install (botocore's weight): a one-line error."""
    import importlib.util

    assert importlib.util.find_spec("s3fs") is None, "this test expects an environment without s3fs"
    with pytest.raises(DataError, match="s3:// needs a package that is not installed"):
        plan_run(["s3://commoncrawl/crawl-data/CC-MAIN-2024-22/x.warc.gz"], tmp_path / "o")


def test_a_file_missing_after_planning_fails_its_unit_and_a_rerun_reads_it(served, tmp_path: Path) -> None:
    """A 404 or a dropped connection is not damage: the unit gets no done marker, the run ends with one
    error naming the file, and the same command run again reads it (nothing is lost for good)."""
    root, url = served
    keys = ["crawl/good.warc.gz", "crawl/late.warc.gz"]  # 'late' appears on the server only later
    paths = tmp_path / "warc.paths.gz"
    paths.write_bytes(gzip.compress("".join(k + "\n" for k in keys).encode()))
    overrides = [*RULES_OFF, f"read.paths_prefix={url}", "tokenizer.vocab_size=500"]
    plan = plan_run([str(paths)], tmp_path / "o", overrides=overrides)  # checks only the first input
    with pytest.raises(DataError, match=r"prep extract: 1 of 2 units failed: .*late.warc.gz: cannot be read.*"
                                        r"run the same command again"):
        run_plan(plan, progress=False)
    assert plan.is_done("extract", "000000") and not plan.is_done("extract", "000001")
    shutil.copy(FIXTURES / "whirlwind.warc.wet.gz", root / "crawl" / "late.warc.gz")
    try:
        manifest, _ = run_plan(plan_run([str(paths)], tmp_path / "o", overrides=overrides), progress=False)
    finally:
        (root / "crawl" / "late.warc.gz").unlink()
    assert manifest["stages"]["read"]["documents_out"] == 6 + 1 and manifest["stages"]["read"]["damaged_files"] == []
