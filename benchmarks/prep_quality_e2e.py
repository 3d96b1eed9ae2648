"""End-to-end speed for the quality benchmark: from WARC files on disk to written output, on its pages.

benchmarks/prep_quality.py times the steps (decode, extract, language id, rules) in-process on decoded
pages. This module times whole pipelines on the same pages, written as Common Crawl WARC files
(:func:`write_warcs`: the pages cycled to ``--docs`` documents, one file per cycle, each copy under its
own URL, the page's bytes as served, no charset in the HTTP header):

* megadepth: ``data_prep.pipeline.plan_run`` + ``run_plan(workers=1)`` in this process, as
  ``megadepth prep run`` runs it, with the setting's overrides and a 1,024-piece tokenizer trained in the
  run. Two figures, both CPU seconds of this process: the extract stage as its manifest records it (read
  the WARC, decode, extract, language id, rules, PII masking, dedup keys, the documents' and the rejected
  documents' Parquet; the stage's per-process start-up, the language model's load, not included), which
  is the part the reference pipeline does, and the whole run (planning, every stage: extract, dedup,
  tokenizer training, tokenize, finalize; start-up included).
* the FineWeb reference: datatrove's own pipeline (``LocalPipelineExecutor`` with ``WarcReader``,
  Trafilatura, the four rule sets, ``JsonlWriter``; benchmarks/prep_quality_reference.py ``--warc``) in
  its environment: the executor's run (CPU seconds of the process and its extraction sandboxes), and the
  whole process (interpreter, imports, spaCy's tokenizer, the run).

Kept documents are checked against the scored pass: the pages each side kept in-process, times their
copies, is what the pipeline should keep (megadepth: before deduplication, which removes the copies).
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from megadepth.common.errors import DataError

#: the tokenizer the megadepth runs train (small: its training is part of the whole run, not the figure
#: under test)
VOCAB_SIZE = 1024


@dataclass
class EndToEnd:
    """One pipeline's run on the WARC files."""

    label: str
    documents: int  # documents read from the WARC files
    kept: int  # documents that passed extraction and the rules (megadepth: before deduplication)
    extract_cpu_s: float  # megadepth: the manifest's extract stage; reference: the executor's run
    total_cpu_s: float  # megadepth: plan_run + run_plan; reference: its whole process
    wall_s: float
    expected_kept: int | None = None  # from the scored pass: the pages kept there, times their copies
    after_dedup: int | None = None  # megadepth: documents in the shards
    tokenizer_s: float | None = None  # megadepth: tokenizer training (seconds, in the whole run)
    drops: dict[str, int] = field(default_factory=dict)
    detail: dict[str, Any] = field(default_factory=dict)

    def rate(self, what: str) -> float | None:
        cpu = self.extract_cpu_s if what == "extract" else self.total_cpu_s
        return self.documents / cpu if cpu > 0 and self.documents else None


def _cpu() -> float:
    """CPU seconds of this process (all its threads) and of its reaped children."""
    child = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + child.ru_utime + child.ru_stime


def copy_url(url: str, copy: int) -> str:
    """The page's URL with ``megadepth_copy=N`` in its query: each copy of a page is a distinct capture."""
    parts = urlsplit(url)
    query = f"{parts.query}&" if parts.query else ""
    return urlunsplit(parts._replace(query=f"{query}megadepth_copy={copy}"))


def write_warcs(pages: Sequence, n_docs: int, folder: Path) -> tuple[list[Path], Counter]:
    """The pages cycled to ``max(n_docs, len(pages))`` documents into ``folder``, one WARC file per cycle
    (request, response, metadata records per page, one gzip member each, as Common Crawl writes them);
    returns the files and how many copies of each page (by id) they hold."""
    from data_prep.corpus import warc_response, warcinfo, write_warc

    total = max(n_docs, len(pages))
    copies: Counter = Counter()
    paths: list[Path] = []
    cycle = 0
    while sum(copies.values()) < total:
        name = f"cycle-{cycle:03d}.warc.gz"
        records = [warcinfo(name)]
        for p in pages[: total - sum(copies.values())]:
            records += warc_response(copy_url(p.url, cycle), p.html, content_type="text/html")
            copies[p.id] += 1
        paths.append(write_warc(folder / name, records))
        cycle += 1
    return paths, copies


def run_megadepth(label: str, overrides: Sequence[str], paths: Sequence[Path], out: Path) -> EndToEnd:
    """``prep run`` in this process with one worker; CPU seconds from the manifest and of the process."""
    from data_prep.pipeline import plan_run, run_plan

    shutil.rmtree(out, ignore_errors=True)
    cpu0, wall0 = _cpu(), time.perf_counter()
    plan = plan_run([str(p) for p in paths], out, overrides=[*overrides, f"tokenizer.vocab_size={VOCAB_SIZE}"])
    manifest, walls = run_plan(plan, workers=1, progress=False)
    total_cpu, wall = _cpu() - cpu0, time.perf_counter() - wall0
    st = manifest["stages"]
    ex = st["extract_and_filter"]
    return EndToEnd(
        label=label, documents=ex["documents_in"], kept=ex["documents_out"], extract_cpu_s=ex["seconds"],
        total_cpu_s=total_cpu, wall_s=wall, after_dedup=manifest["documents"],
        tokenizer_s=st["tokenizer"]["seconds"], drops=dict(sorted(ex["dropped"].items(), key=lambda kv: -kv[1])),
        detail={"seconds_by_step": ex["seconds_by_step"], "wall_s_by_stage": {k: round(v, 3) for k, v in walls.items()},
                "records": st["read"]["records"], "skipped": st["read"]["skipped"], "tokens": manifest["tokens"],
                "rejected": manifest["rejected"]["documents"]},
    )  # fmt: skip


def run_reference(venv: Path, script: Path, warc_dir: Path, work: Path, timeout: float) -> EndToEnd:
    """datatrove's pipeline on the WARC files, in the reference environment (a subprocess)."""
    result = work / "result.json"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    wall0 = time.perf_counter()
    proc = subprocess.run([str(venv / "bin" / "python"), str(script), "--warc", str(warc_dir), "--work", str(work),
                           "--out", str(result), "--timeout", f"{timeout:g}"], capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        raise DataError(f"the FineWeb reference pipeline failed (exit {proc.returncode}):\n{tail}")
    r = json.loads(result.read_text(encoding="utf-8"))
    return EndToEnd(
        label="", documents=r["documents"], kept=r["kept"], extract_cpu_s=r["run_cpu_s"], total_cpu_s=r["total_cpu_s"],
        wall_s=time.perf_counter() - wall0, drops=r["drops"],
        detail={"files": r["files"], "startup_cpu_s": r["startup_cpu_s"], "run_wall_s": r["wall_s"],
                "versions": r["versions"], "steps": r["steps"]},
    )  # fmt: skip


def expected_kept(rows: Sequence[dict], label: str, copies: Counter) -> int | None:
    """The documents a pipeline should keep if it decides on each copy as on the page in the scored pass."""
    mine = [r for r in rows if r["setting"] == label]
    if not mine:
        return None
    return sum(copies[r["page"]] for r in mine if r["kept"])


def measure(settings: Sequence, pages: Sequence, n_docs: int, rows: Sequence[dict], reference_label: str,
            venv: Path | None, script: Path, timeout: float, log=None) -> tuple[list[EndToEnd], list[str]]:
    """WARC files of the pages, then each setting's ``prep run`` and (``venv`` given) the reference's
    pipeline on them; returns the runs (the reference last, labelled ``reference_label``) and notes (the
    settings not run)."""
    notes: list[str] = []
    runs: list[EndToEnd] = []
    with tempfile.TemporaryDirectory(prefix="prep_quality_e2e_") as tmp:
        root = Path(tmp)
        paths, copies = write_warcs(pages, n_docs, root / "warc")
        for s in settings:
            if s.resiliparse:
                notes.append(f"{s.label}: not run end to end (resiliparse options are not prep config keys)")
                continue
            if log:
                print(f"end to end: {s.label} ...", file=log, flush=True)
            run = run_megadepth(s.label, s.overrides, paths, root / "out" / "megadepth")
            run.expected_kept = expected_kept(rows, s.label, copies)
            runs.append(run)
        if venv is not None:
            if log:
                print("end to end: the FineWeb reference ...", file=log, flush=True)
            ref = run_reference(venv, script, root / "warc", root / "out" / "reference", timeout)
            ref.label = reference_label
            ref.expected_kept = expected_kept(rows, reference_label, copies)
            runs.append(ref)
        size = sum(p.stat().st_size for p in paths)
    notes.insert(0, f"input: {sum(copies.values())} documents ({len(pages)} pages cycled) in {len(paths)} WARC files "
                    f"(one per cycle), {size / 1e6:.1f} MB gzip")
    return runs, notes


def _f(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def ratios(runs: Sequence[EndToEnd], reference_label: str) -> dict[str, dict[str, float | None]]:
    """Each megadepth run's docs/s per core over the reference's: extract stage / executor run, whole run /
    whole process."""
    ref = next((r for r in runs if r.label == reference_label), None)
    out: dict[str, dict[str, float | None]] = {}
    if ref is None:
        return out
    for r in runs:
        if r is ref:
            continue
        out[r.label] = {w: (a / b if (a := r.rate(w)) and (b := ref.rate(w)) else None) for w in ("extract", "total")}
    return out


def select(spec: str, settings: Sequence, n_docs: int, fixture: bool) -> list:
    """The settings ``--end-to-end`` names: ``auto`` (the first setting, when ``n_docs >= 800`` and not
    ``--fixture``), ``off``, ``all``, or labels separated by commas."""
    if spec == "off" or (spec == "auto" and (fixture or n_docs < 800)):
        return []
    if spec == "auto":
        return list(settings[:1])
    if spec == "all":
        return list(settings)
    labels = [x.strip() for x in spec.split(",") if x.strip()]
    unknown = [x for x in labels if x not in {s.label for s in settings}]
    if unknown:
        raise DataError(f"--end-to-end: no setting labelled {', '.join(unknown)} (settings: "
                        f"{', '.join(s.label for s in settings)})")
    return [s for s in settings if s.label in labels]


def render(runs: Sequence[EndToEnd], notes: Sequence[str], reference_label: str) -> list[str]:
    """The report's section: a table of the runs and the megadepth / reference ratios."""
    ref = next((r for r in runs if r.label == reference_label), None)
    if ref is not None:
        versions = ", ".join(f"{k} {v}" for k, v in ref.detail["versions"].items())
        reference_note = (f"datatrove's LocalPipelineExecutor (tasks={ref.detail['files']}: one per WARC file, "
                          "workers=1) with WarcReader, Trafilatura(favour_precision=True), Gopher repetition, Gopher "
                          f"quality, C4 (no terminal-punct rule), FineWeb, JsonlWriter; no language id; {versions}")
    else:
        reference_note = "not run (no reference environment, or --reference off)"
    lines = ["", "## End to end: WARC files to written output", ""]
    lines += [f"- {n}" for n in notes]
    lines += [
        "- megadepth: `prep run` in-process (data_prep.pipeline.plan_run + run_plan, workers=1), the setting's "
        f"options and tokenizer.vocab_size={VOCAB_SIZE} (trained in the run). Extract stage: the manifest's "
        "extract_and_filter CPU seconds (read WARC, decode, extract, language id, rules, PII, dedup keys, documents "
        "+ rejected Parquet; not the language model's load); whole run: CPU seconds of the process for plan_run + "
        "run_plan (every stage, start-up, tokenizer training); kept: after the rules, before deduplication (which "
        "removes the cycled copies: 'in shards')",
        f"- {reference_label}: {reference_note}; extract stage column: the executor's run (CPU seconds of the "
        "process + its extraction sandboxes: read WARC, decode, extract, rules, JSON lines writing); whole run: the "
        "whole process (interpreter, imports, spaCy start-up, the run)",
        "- expected kept: the pages kept in the scored pass above, times their copies",
        "",
        "| setting | documents | kept | expected kept | in shards | extract-stage CPU s | docs/s per core (extract "
        "stage) | whole-run CPU s | docs/s per core (whole run) | wall s | main drop reasons |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        drops = ", ".join(f"{k} {v}" for k, v in list(r.drops.items())[:4])
        lines.append(f"| {r.label} | {r.documents} | {r.kept} | {r.expected_kept if r.expected_kept is not None else '–'} "
                     f"| {r.after_dedup if r.after_dedup is not None else '–'} | {_f(r.extract_cpu_s, 2)} | "
                     f"{_f(r.rate('extract'))} | {_f(r.total_cpu_s, 2)} | {_f(r.rate('total'))} | {_f(r.wall_s)} | "
                     f"{drops} |")
    rs = ratios(runs, reference_label)
    if rs:
        lines.append("")
        for label, q in rs.items():
            lines.append(f"- **{label} / {reference_label}, docs/s per core: {_f(q['extract'], 2)}x extract stage, "
                         f"{_f(q['total'], 2)}x whole run**")
    elif runs:
        lines += ["", f"- no ratio: {reference_label} not run"]
    return lines


def to_json(runs: Sequence[EndToEnd], notes: Sequence[str], reference_label: str) -> dict[str, Any]:
    return {"notes": list(notes),
            "runs": [{**asdict(r), "extract_docs_per_s": r.rate("extract"), "total_docs_per_s": r.rate("total")}
                     for r in runs],
            "ratios": ratios(runs, reference_label)}
