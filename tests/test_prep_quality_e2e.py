"""The end-to-end part of the extraction quality benchmark (benchmarks/prep_quality_e2e.py) on the shipped
pages: WARC files written from them, megadepth's ``prep run`` on them in-process, and datatrove's own
pipeline on them where the reference environment exists; the figures are checked for sense, and each
pipeline's kept documents against what it decided on the same pages in the scored pass."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from benchmarks import prep_quality_e2e as e2e
from benchmarks.prep_quality import (
    REFERENCE_LABEL,
    REFERENCE_SCRIPT,
    Setting,
    default_reference_venv,
    parse_setting,
    run_setting,
    score_rows,
)
from benchmarks.prep_quality_pages import load_fixture
from megadepth.common.errors import DataError

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "prep_quality"
DOCS = 12  # the 9 pages, then 3 of them again: 2 WARC files
LIMIT = 30.0  # a generous extraction limit: wall-clock time on a shared machine; this checks sense, not speed


@pytest.fixture(scope="module")
def pages():
    return load_fixture(FIXTURE)


@pytest.fixture(scope="module")
def warcs(pages, tmp_path_factory):
    return e2e.write_warcs(pages, DOCS, tmp_path_factory.mktemp("warc"))


def test_warcs_hold_each_copy_under_its_own_url(pages, warcs) -> None:
    from fastwarc.warc import ArchiveIterator, WarcRecordType

    paths, copies = warcs
    assert len(paths) == 2 and sum(copies.values()) == DOCS and set(copies.values()) == {1, 2}
    urls = [r.headers["WARC-Target-URI"] for p in paths
            for r in ArchiveIterator(str(p), record_types=WarcRecordType.response, fsspec_args=False)]
    assert len(urls) == DOCS == len(set(urls))
    assert e2e.copy_url("https://a.example/x?q=1#frag", 3) == "https://a.example/x?q=1&megadepth_copy=3#frag"


def sane(run: e2e.EndToEnd) -> None:
    assert run.documents == DOCS and 0 < run.kept <= run.documents
    assert run.extract_cpu_s > 0 and run.total_cpu_s >= run.extract_cpu_s and run.wall_s > 0
    assert run.rate("extract") >= run.rate("total") > 0
    assert run.documents - run.kept == sum(run.drops.values())


def test_megadepth_end_to_end(pages, warcs, tmp_path) -> None:
    paths, copies = warcs
    setting = Setting("default", (f"extract.time_limit_s={LIMIT:g}",))
    outcomes, _ = run_setting(setting, pages, 0, progress=False)
    run = e2e.run_megadepth("default", setting.overrides, paths, tmp_path / "out")
    sane(run)
    # the pipeline decides on each copy as the scored pass did on the page (no charset given either way)
    assert run.kept == e2e.expected_kept(score_rows("default", pages, outcomes), "default", copies)
    # deduplication removes the copies: each kept page once
    assert run.after_dedup == sum(o.drop is None for o in outcomes)
    assert (tmp_path / "out" / "rejected").is_dir()
    lines = e2e.render([run], ["input: test"], REFERENCE_LABEL)
    assert any(line.startswith(f"| default | {DOCS} | {run.kept} |") for line in lines)
    assert any("no ratio" in line for line in lines)


def test_select() -> None:
    settings = [parse_setting("default:"), parse_setting("nolid:language.enabled=false")]
    assert [s.label for s in e2e.select("auto", settings, 800, False)] == ["default"]
    assert e2e.select("auto", settings, 800, True) == [] and e2e.select("auto", settings, 100, False) == []
    assert e2e.select("off", settings, 800, False) == []
    assert [s.label for s in e2e.select("nolid", settings, 10, True)] == ["nolid"]
    assert len(e2e.select("all", settings, 10, True)) == 2
    with pytest.raises(DataError, match="no setting labelled other"):
        e2e.select("other", settings, 800, False)


def _reference_ready() -> bool:
    python = default_reference_venv() / "bin" / "python"
    return python.is_file() and subprocess.run(
        [str(python), "-c", "import datatrove, warcio, cchardet, magic, orjson"], capture_output=True).returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _reference_ready(), reason="no FineWeb reference environment with the end-to-end packages "
                    "(benchmarks/prep_quality.py --setup-reference)")
def test_reference_end_to_end(pages, warcs, tmp_path) -> None:
    paths, _ = warcs
    ref = e2e.run_reference(default_reference_venv(), REFERENCE_SCRIPT, paths[0].parent, tmp_path / "ref", LIMIT)
    sane(ref)
    assert ref.detail["files"] == len(paths) and ref.detail["versions"]["datatrove"] == "0.10.1"
    assert ref.total_cpu_s > ref.detail["startup_cpu_s"] > 0
    ref.label = REFERENCE_LABEL
    mine = e2e.EndToEnd("default", DOCS, 1, 0.1, 0.2, 1.0)
    ratio = e2e.ratios([mine, ref], REFERENCE_LABEL)["default"]
    assert ratio["extract"] == pytest.approx(mine.rate("extract") / ref.rate("extract"))
