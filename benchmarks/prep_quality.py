"""Extraction quality benchmark: what megadepth's Common Crawl steps keep of real pages, against FineWeb's.

Scores each extractor setting on real web pages whose correct text is known (benchmarks/prep_quality_pages.py:
trafilatura's and newspaper4k's test pages, the Python documentation), with megadepth's own code, exactly
as ``megadepth prep run`` runs it: ``decode_html``, ``Extractor``, ``LanguageIdentifier``, ``build_filters``
(data_prep), configured by ``--set``-style overrides. Per page: recall and precision of the reference
lines (benchmarks/prep_quality_score.py states the rule), kept or dropped, and the first rule that dropped
it with the value that failed. Per setting: docs/s per core (CPU seconds of this process) of extraction
alone and of the steps (decode, extract, language id, rules) on at least ``--docs`` documents, the pages
cycled so that start-up is amortised (reported apart).

The FineWeb reference (datatrove's Trafilatura extractor and the same four rule sets, no language id) runs
in the same invocation on the same decoded pages, in its own environment (``--setup-reference``); without
that environment the report says "reference not set up" and scores megadepth alone.

    python benchmarks/prep_quality.py --setup-reference          # once: the reference's environment
    python benchmarks/prep_quality.py --out quality.md           # + quality.pages.csv, quality.json
    python benchmarks/prep_quality.py --setting "caps:extract.alt_texts=true" \
                                      --setting "traf:extract.engine=trafilatura"
    python benchmarks/prep_quality.py --fixture                   # the small shipped subset, seconds
    python benchmarks/prep_quality.py --time-limit 10             # a busy machine: no wall-clock time-outs

A setting is ``LABEL:KEY=VALUE,KEY=VALUE``: KEY is a prep config key as ``--set`` takes it
(``extract.engine=trafilatura``, ``extract.alt_texts=true``, ``language.enabled=false``) or
``resiliparse.OPTION``, an argument of resiliparse's ``extract_plain_text`` that the config does not hold
(``comments``, ...).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.prep_quality_pages import (  # noqa: E402 - after the path set-up, for direct runs
    ARCHIVES,
    Page,
    default_pages_cache,
    load_fixture,
    load_pages,
)
from benchmarks.prep_quality_score import score_full, score_snippets  # noqa: E402
from megadepth.common.errors import DataError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "prep_quality"
REFERENCE_SCRIPT = Path(__file__).resolve().parent / "prep_quality_reference.py"
#: The reference's environment: datatrove's newest release when this was written (FineWeb's rules live
#: there), the newest trafilatura its "processing" extra allows, spaCy for its English word tokenizer, and
#: lxml's cleaner module, which trafilatura needs with lxml >= 5.2.
#: The end-to-end run (benchmarks/prep_quality_e2e.py) adds what datatrove's WarcReader and JsonlWriter import
#: (python-magic needs the system's libmagic).
REFERENCE_REQUIREMENTS = ("datatrove==0.10.1", "trafilatura==1.11.0", "lxml_html_clean==0.4.7", "spacy==3.8.7",
                          "warcio==1.8.1", "faust-cchardet==3.2.0", "python-magic==0.4.27", "orjson==3.13.0")
REFERENCE_LABEL = "fineweb-reference"

#: The settings scored when none is given: megadepth's default and the options one might toggle.
DEFAULT_SETTINGS = (
    "default:",
    "no-language-id:language.enabled=false",
    "main_content=false:extract.main_content=false",
    "inline_separators=false:extract.inline_separators=false",
    "tidy_whitespace=false:extract.tidy_whitespace=false",
    "repeated_lines=false:repeated_lines.enabled=false",
    "alt_texts=true:extract.alt_texts=true",
    "list_bullets=false:extract.list_bullets=false",
    "noscript=true:extract.noscript=true",
    "form_fields=true:extract.form_fields=true",
    "links=true:extract.links=true",
    "preserve_formatting=false:extract.preserve_formatting=false",
    "no-rules:gopher_repetition.enabled=false,gopher_quality.enabled=false,c4.enabled=false,fineweb.enabled=false",
    "trafilatura:extract.engine=trafilatura",
    "trafilatura-no-language-id:extract.engine=trafilatura,language.enabled=false",
)
#: Groups of pages the table reports apart (besides all pages).
GROUPS = ("en web", "en docs", "other languages")


# ------------------------------------------------------------------------------------------ settings


@dataclass(frozen=True)
class Setting:
    """A labelled variant of the pipeline: prep config overrides and resiliparse options."""

    label: str
    overrides: tuple[str, ...] = ()
    resiliparse: tuple[tuple[str, Any], ...] = ()

    @property
    def spec(self) -> str:
        opts = [*self.overrides, *(f"resiliparse.{k}={json.dumps(v)}" for k, v in self.resiliparse)]
        return ",".join(opts) or "(defaults)"


def parse_setting(spec: str) -> Setting:
    """``LABEL:KEY=VALUE,...`` (``LABEL:`` alone: the defaults) -> :class:`Setting`."""
    import yaml

    label, sep, rest = spec.partition(":")
    if not sep:
        label, rest = spec, spec
    overrides: list[str] = []
    res: list[tuple[str, Any]] = []
    for item in filter(None, (x.strip() for x in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise DataError(f"--setting {spec!r}: {item!r} is not KEY=VALUE")
        if key.startswith("resiliparse."):
            res.append((key.removeprefix("resiliparse."), yaml.safe_load(value)))
        else:
            overrides.append(item)
    if label == REFERENCE_LABEL:
        raise DataError(f"--setting: the label {REFERENCE_LABEL!r} is the reference's")
    return Setting(label.strip() or "default", tuple(overrides), tuple(res))


class Tools:
    """The pipeline's own objects for one setting (what data_prep.stages builds per process)."""

    def __init__(self, setting: Setting) -> None:
        from data_prep.config import load_prep_config
        from data_prep.extract import Extractor
        from data_prep.filters import build_filters
        from data_prep.langid import LanguageIdentifier

        self.cfg = load_prep_config(overrides=setting.overrides)
        self.extractor = Extractor(self.cfg.extract)
        if setting.resiliparse:
            if self.cfg.extract.engine != "resiliparse":
                raise DataError(f"setting {setting.label}: resiliparse options need extract.engine=resiliparse")
            from resiliparse.extract.html2text import extract_plain_text

            from data_prep.extract import resiliparse_options

            opts = {**resiliparse_options(self.cfg.extract), **dict(setting.resiliparse)}
            # options the config does not hold go straight to the function the Extractor wraps, keeping
            # its time limit, error handling and start-up check
            self.extractor._fn = lambda html: extract_plain_text(html, **opts)
            self.extractor._self_check()
        self.lid = LanguageIdentifier(self.cfg.language) if self.cfg.language.enabled else None
        self.filters = build_filters(self.cfg)

    def reset_caches(self) -> None:
        """trafilatura remembers text it saw to drop repeats: cleared between cycles of the same pages."""
        if self.cfg.extract.engine == "trafilatura":
            import trafilatura.meta

            trafilatura.meta.reset_caches()


# ------------------------------------------------------------------------------------------ running


@dataclass
class Outcome:
    """What the pipeline did with one page."""

    text: str | None  # the extraction
    out: str | None  # the kept document (after C4's line removal); None when dropped
    drop: str | None  # "extract:empty", "language", "fineweb:char_dup_ratio", ...
    value: str = ""  # the measured value that failed, e.g. "0.034 > 0.01", "de 0.98"
    language: str = ""
    filter_input: str | None = None  # the text the dropping rule saw (to measure its value afterwards)
    extract_cpu_s: float = 0.0  # decode + extract
    steps_cpu_s: float = 0.0  # decode + extract + language id + rules


def run_page(tools: Tools, html: bytes) -> Outcome:
    """One page through the steps of ``prep run``'s extract stage (data_prep.stages), in their order,
    with the CPU time of extraction and of all steps."""
    from data_prep.extract import decode_html

    t0 = time.process_time()
    stats: Counter = Counter()
    text = tools.extractor(decode_html(html, None, stats), stats)
    t1 = time.process_time()
    if text is None:
        why = next((k.removeprefix("drop:") for k in stats if k.startswith("drop:extract_")), "extract_empty")
        out = Outcome(None, None, why.replace("extract_", "extract:"))
    else:
        out = _steps(tools, text)
    out.extract_cpu_s = t1 - t0
    out.steps_cpu_s = time.process_time() - t0
    return out


def _steps(tools: Tools, text: str) -> Outcome:
    """Language id and the quality rules on an extracted text."""
    lang = ""
    if tools.lid is not None:
        lang, score = tools.lid.identify(text)
        if not tools.lid.keep(lang, score):
            return Outcome(text, None, "language", f"{lang} {score:.2f}", lang)
    cur = text
    for name, f in tools.filters:
        new, why = f(cur)
        if new is None:
            return Outcome(text, None, f"{name}:{why}", language=lang, filter_input=cur)
        cur = new
    return Outcome(text, cur, None, language=lang)


@dataclass
class Timing:
    docs: int = 0
    extract_cpu_s: float = 0.0  # decode + extract
    steps_cpu_s: float = 0.0  # decode + extract + language id + rules
    startup_cpu_s: float = 0.0
    wall_s: float = 0.0

    def rate(self, what: str) -> float | None:
        cpu = self.extract_cpu_s if what == "extract" else self.steps_cpu_s
        return self.docs / cpu if cpu > 0 and self.docs else None


def run_setting(setting: Setting, pages: Sequence[Page], n_docs: int, progress: bool) -> tuple[list[Outcome], Timing]:
    """The first pass gives each page's outcome; the pages are cycled until ``n_docs`` documents are timed."""
    from tqdm import tqdm

    cpu0 = time.process_time()
    tools = Tools(setting)
    timing = Timing(startup_cpu_s=time.process_time() - cpu0)
    outcomes: list[Outcome] = []
    total = max(n_docs, len(pages))
    wall0 = time.perf_counter()
    with tqdm(total=total, desc=setting.label, unit="doc", disable=not progress, leave=False) as bar:
        while timing.docs < total:
            for page in pages[: total - timing.docs]:
                outcome = run_page(tools, page.html)
                timing.extract_cpu_s += outcome.extract_cpu_s
                timing.steps_cpu_s += outcome.steps_cpu_s
                timing.docs += 1
                if len(outcomes) < len(pages):
                    outcomes.append(outcome)
                bar.update()
            tools.reset_caches()
    timing.wall_s = time.perf_counter() - wall0
    for o in outcomes:
        if o.filter_input is not None and o.drop:
            o.value = rule_value(tools.cfg, o.drop, o.filter_input)
            o.filter_input = None
    return outcomes, timing


# ------------------------------------------------------------------------------------------ rule values

#: (filter, reason) -> the config field whose threshold the reason compares against.
_RULE_FIELDS = {
    ("gopher_rep", "dup_line_frac"): "dup_line_frac",
    ("gopher_rep", "dup_para_frac"): "dup_para_frac",
    ("gopher_rep", "dup_line_char_frac"): "dup_line_char_frac",
    ("gopher_rep", "dup_para_char_frac"): "dup_para_char_frac",
    ("gopher_qual", "short_doc"): "min_doc_words",
    ("gopher_qual", "long_doc"): "max_doc_words",
    ("gopher_qual", "below_avg_word_length"): "min_avg_word_length",
    ("gopher_qual", "above_avg_word_length"): "max_avg_word_length",
    ("gopher_qual", "too_many_hashes"): "max_symbol_word_ratio",
    ("gopher_qual", "too_many_ellipsis"): "max_symbol_word_ratio",
    ("gopher_qual", "too_many_bullets"): "max_bullet_lines_ratio",
    ("gopher_qual", "too_many_end_ellipsis"): "max_ellipsis_lines_ratio",
    ("gopher_qual", "below_alpha_threshold"): "min_alpha_words_ratio",
    ("gopher_qual", "not_enough_stop_words"): "min_stop_words",
    ("c4", "too_few_sentences"): "min_num_sentences",
    ("fineweb", "line_punct_ratio"): "line_punct_thr",
    ("fineweb", "short_line_ratio"): "short_line_thr",
    ("fineweb", "char_dup_ratio"): "char_duplicates_ratio",
    ("fineweb", "list_ratio"): "new_line_ratio",
}
_SECTIONS = {"gopher_rep": "gopher_repetition", "gopher_qual": "gopher_quality", "c4": "c4", "fineweb": "fineweb"}


def rule_value(cfg, drop: str, text: str) -> str:
    """The value a page had for the rule that dropped it, found with the rule itself: the threshold at
    which megadepth's own filter stops failing with that reason (bisection; the filters report only the
    reason). ``"0.034 > 0.01"`` for a maximum, ``"31 < 50"`` for a minimum; "" for a rule with no threshold."""
    from data_prep import filters as F

    name, _, reason = drop.partition(":")
    section = _SECTIONS.get(name)
    if section is None:
        return ""
    sec = getattr(cfg, section)
    fn: Callable = {"gopher_rep": F.gopher_repetition, "gopher_qual": F.gopher_quality, "c4": F.c4_filter,
                    "fineweb": F.fineweb_filter}[name]
    field_name = _RULE_FIELDS.get((name, reason))
    entry = None
    if field_name is None and reason.startswith("top_") and reason.endswith("_gram"):
        field_name, entry = "top_n_grams", int(reason[4:-5])
    elif field_name is None and reason.startswith("duplicated_") and reason.endswith("_n_grams"):
        field_name, entry = "dup_n_grams", int(reason[11:-8])
    if field_name is None:
        return ""
    current = getattr(sec, field_name)
    if entry is not None:
        current = dict(current)[entry]

    def fails(thr: float) -> bool:
        if entry is None:
            new = sec.model_copy(update={field_name: thr})
        else:
            pairs = tuple((n, thr if n == entry else f) for n, f in getattr(sec, field_name))
            new = sec.model_copy(update={field_name: pairs})
        return fn(text, new)[1] == reason

    is_min = field_name.startswith("min_") or field_name == "line_punct_thr"
    integer = isinstance(current, int) and not isinstance(current, bool)
    if is_min:  # fails above the value: the largest threshold that passes
        lo, hi = 0, current  # passes at 0 (nothing is below 0), fails at the configured threshold
    else:  # fails below the value: the smallest threshold that passes
        lo, hi = current, max(1.0, float(current))
        while fails(hi) and hi < 1e9:
            hi *= 2
    if integer:
        lo, hi = int(lo), int(hi)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if fails(mid) != is_min:
                lo = mid
            else:
                hi = mid
        value: float = lo if is_min else hi
        return f"{value} {'<' if is_min else '>'} {current}"
    for _ in range(40):
        mid = (lo + hi) / 2
        if fails(mid) != is_min:
            lo = mid
        else:
            hi = mid
    value = lo if is_min else hi
    return f"{value:.3g} {'<' if is_min else '>'} {current:g}"


# ------------------------------------------------------------------------------------------ reference


def default_reference_venv() -> Path:
    return default_pages_cache() / "reference-venv"


def setup_reference(venv: Path, index_url: str | None) -> None:
    """The reference's own environment (a virtualenv with the pinned datatrove stack), from the registry."""
    if not (venv / "bin" / "python").is_file():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    cmd = [str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check",
           *REFERENCE_REQUIREMENTS]
    if index_url:
        cmd += ["--index-url", index_url]
    subprocess.run(cmd, check=True)
    print(f"reference environment ready: {venv}")


def run_reference(venv: Path, pages: Sequence[Page], n_docs: int, timeout: float) -> tuple[list[Outcome], Timing, dict]:
    """datatrove's FineWeb steps on the same decoded pages, in the reference environment (a subprocess)."""
    from data_prep.extract import decode_html

    with tempfile.TemporaryDirectory(prefix="prep_quality_") as tmp:
        inp, out = Path(tmp) / "pages.jsonl", Path(tmp) / "out.jsonl"
        with inp.open("w", encoding="utf-8") as f:
            for p in pages:
                f.write(json.dumps({"id": p.id, "html": decode_html(p.html, None, Counter())}) + "\n")
        wall0 = time.perf_counter()
        proc = subprocess.run([str(venv / "bin" / "python"), str(REFERENCE_SCRIPT), "--pages", str(inp), "--out",
                               str(out), "--docs", str(n_docs), "--timeout", str(timeout)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
            raise DataError(f"the FineWeb reference failed (exit {proc.returncode}):\n{tail}")
        rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    meta = rows.pop()
    by_id = {r["id"]: r for r in rows}
    outcomes = [Outcome(by_id[p.id]["text"], by_id[p.id]["out"], by_id[p.id]["drop"], by_id[p.id].get("value", ""))
                for p in pages]
    t = meta["timing"]
    timing = Timing(docs=t["docs"], steps_cpu_s=t["cpu_s"], startup_cpu_s=t["startup_cpu_s"],
                    wall_s=time.perf_counter() - wall0)
    return outcomes, timing, meta["versions"]


def rules_agreement(pages: Sequence[Page], outcomes: Sequence[Outcome], rows: list[dict]) -> tuple[int, list[str]]:
    """megadepth's quality rules (the defaults, no language id) on the text datatrove's extractor gave:
    whether they keep / drop each page as datatrove's rules did, so a difference in the rules shows apart
    from a difference in extraction. Adds ``megadepth_rules`` (its first drop, or "kept") to ``rows``."""
    from data_prep.config import load_prep_config
    from data_prep.filters import build_filters

    filters = build_filters(load_prep_config())
    agree = 0
    differ: list[str] = []
    for p, o, row in zip(pages, outcomes, rows, strict=True):
        if o.text is None:
            continue
        cur, ours = o.text, "kept"
        for name, f in filters:
            new, why = f(cur)
            if new is None:
                ours = f"{name}:{why}"
                break
            cur = new
        theirs = o.drop or "kept"
        row["megadepth_rules"] = ours
        if (ours == "kept") == (theirs == "kept"):
            agree += 1
        else:
            differ.append(f"{p.id}: datatrove {theirs}, megadepth {ours}")
    return agree, differ


# ------------------------------------------------------------------------------------------ scoring


def label_languages(pages: Sequence[Page]) -> None:
    """Each page's language: fastText (megadepth's identifier, every language allowed) on the page's whole
    visible text, so the label does not depend on the extractor being scored."""
    from resiliparse.extract.html2text import extract_plain_text

    from data_prep.config import LanguageConfig
    from data_prep.extract import decode_html
    from data_prep.langid import LanguageIdentifier

    lid = LanguageIdentifier(LanguageConfig(languages=None))
    for p in pages:
        visible = extract_plain_text(decode_html(p.html, None, Counter()), main_content=False)
        p.language = lid.identify(visible)[0] if visible.strip() else "unknown"


def group_of(page: Page) -> str:
    if page.language != "en":
        return "other languages"
    return "en docs" if page.genre == "docs" else "en web"


def score_rows(label: str, pages: Sequence[Page], outcomes: Sequence[Outcome]) -> list[dict]:
    """One row per page: the scores of its extraction and of its kept document."""
    rows = []
    for p, o in zip(pages, outcomes, strict=True):
        row: dict[str, Any] = {"setting": label, "page": p.id, "collection": p.collection, "site": p.site,
                               "language": p.language, "group": group_of(p), "reference": p.kind,
                               "kept": o.drop is None, "drop": o.drop or "", "drop_value": o.value,
                               "chars": len(o.text or "")}
        if p.kind == "full":
            s = score_full(p.reference, o.text)
            row.update(recall=s.recall, precision=s.precision, ref_lines=s.ref_lines,
                       out_recall=score_full(p.reference, o.out).recall)
        else:
            s2 = score_snippets(p.with_, p.without, o.text)
            row.update(snippet_recall=s2.recall, must_not_absent=s2.clean, leaked=" | ".join(s2.leaked),
                       out_snippet_recall=score_snippets(p.with_, (), o.out).recall)
        rows.append(row)
    return rows


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def summarise(rows: Sequence[dict]) -> dict[str, Any]:
    """Averages over pages (each page weighs the same) and the drop reasons."""
    drops = Counter(r["drop"] for r in rows if r["drop"])
    return {
        "pages": len(rows),
        "recall": _mean(r.get("recall") for r in rows),
        "precision": _mean(r.get("precision") for r in rows),
        "snippet_recall": _mean(r.get("snippet_recall") for r in rows),
        "must_not_absent": _mean(r.get("must_not_absent") for r in rows),
        "kept": sum(r["kept"] for r in rows),
        "keep_rate": sum(r["kept"] for r in rows) / len(rows) if rows else None,
        "out_recall": _mean(r.get("out_recall") for r in rows),
        "out_snippet_recall": _mean(r.get("out_snippet_recall") for r in rows),
        "drops": dict(drops.most_common()),
    }


# ------------------------------------------------------------------------------------------ report


def _f(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def render(header: list[str], summaries: dict[str, dict[str, dict]], timings: dict[str, Timing],
           specs: dict[str, str]) -> str:
    lines = [*header, ""]
    lines += ["| setting | pages | recall | precision | snippet recall | must-not absent | kept | keep rate | "
              "output recall | main drop reasons |", "|---|---|---|---|---|---|---|---|---|---|"]
    for label, groups in summaries.items():
        for group, s in groups.items():
            if not s["pages"]:
                continue
            drops = ", ".join(f"{k} {v}" for k, v in list(s["drops"].items())[:4])
            lines.append(f"| {label} [{group}] | {s['pages']} | {_f(s['recall'])} | {_f(s['precision'])} | "
                         f"{_f(s['snippet_recall'])} | {_f(s['must_not_absent'])} | {s['kept']} | "
                         f"{_f(s['keep_rate'])} | {_f(s['out_recall'])} | {drops} |")
    lines += ["", "| setting | documents | extract docs/s per core | steps docs/s per core | start-up CPU s | wall s "
              "| options |", "|---|---|---|---|---|---|---|"]
    for label, t in timings.items():
        lines.append(f"| {label} | {t.docs} | {_f(t.rate('extract'), 1)} | {_f(t.rate('steps'), 1)} | "
                     f"{_f(t.startup_cpu_s, 2)} | {_f(t.wall_s, 1)} | {specs[label]} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--setting", action="append", default=None, metavar="LABEL:KEY=VALUE,...",
                    help="a setting to score (repeatable); default: megadepth's default and its options")
    ap.add_argument("--sources", default="trafilatura,newspaper,pydocs",
                    help="page collections, comma-separated: " + ", ".join(a.key for a in ARCHIVES))
    ap.add_argument("--fixture", action="store_true", help="the small shipped subset instead (no download)")
    ap.add_argument("--limit", type=int, default=0, help="the first N pages only (a quick look)")
    ap.add_argument("--docs", type=int, default=800,
                    help="documents per speed figure, the pages cycled (default 800, start-up amortised)")
    ap.add_argument("--time-limit", type=float, default=None, metavar="S",
                    help="per-page extraction limit in seconds for every setting and the reference (default: the "
                         "pipeline's extract.time_limit_s, 2 s); a wall-clock limit, so raise it on a busy machine")
    ap.add_argument("--cache", type=Path, default=None, help=f"archive cache (default {default_pages_cache()})")
    ap.add_argument("--index-url", default=None, help="a PyPI mirror for the archives and the reference")
    ap.add_argument("--reference", choices=("auto", "off"), default="auto",
                    help="auto: run the FineWeb reference when its environment exists")
    ap.add_argument("--reference-venv", type=Path, default=None,
                    help=f"the reference's environment (default {default_reference_venv()})")
    ap.add_argument("--setup-reference", action="store_true", help="create the reference's environment and exit")
    ap.add_argument("--end-to-end", default="auto", metavar="auto|off|all|LABEL,...",
                    help="also time whole pipelines from WARC files of the pages to written output: these settings' "
                         "prep run and the reference's datatrove pipeline (benchmarks/prep_quality_e2e.py); auto: "
                         "the first setting when --docs >= 800 and not --fixture")
    ap.add_argument("--out", type=Path, default=None, help="Markdown report; beside it FILE.pages.csv, FILE.json")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    venv = args.reference_venv or default_reference_venv()
    try:
        if args.setup_reference:
            setup_reference(venv, args.index_url)
            return 0
        settings = [parse_setting(s) for s in (args.setting or DEFAULT_SETTINGS)]
        if args.time_limit is not None:
            settings = [Setting(s.label, (f"extract.time_limit_s={args.time_limit:g}", *s.overrides), s.resiliparse)
                        for s in settings]
        labels = [s.label for s in settings]
        if len(set(labels)) != len(labels):
            raise DataError(f"--setting: labels must differ ({labels})")
        if args.fixture:
            pages = load_fixture(FIXTURE)
        else:
            sources = [s.strip() for s in args.sources.split(",") if s.strip()]
            pages = load_pages(args.cache or default_pages_cache(), sources, index_url=args.index_url, log=sys.stderr)
        if args.limit:
            pages = pages[: args.limit]
        label_languages(pages)
        return _run(args, argv, settings, pages, venv)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _run(args, argv, settings: list[Setting], pages: list[Page], venv: Path) -> int:
    progress = not args.no_progress and sys.stderr.isatty()
    n_docs = max(args.docs, len(pages))
    all_rows: list[dict] = []
    timings: dict[str, Timing] = {}
    specs: dict[str, str] = {}
    for setting in settings:
        outcomes, timing = run_setting(setting, pages, n_docs, progress)
        all_rows += score_rows(setting.label, pages, outcomes)
        timings[setting.label] = timing
        specs[setting.label] = setting.spec
    ref_note = "reference not set up (run benchmarks/prep_quality.py --setup-reference)"
    if args.reference == "off":
        ref_note = "reference: off (--reference off)"
    elif (venv / "bin" / "python").is_file():
        from data_prep.config import ExtractConfig

        limit = args.time_limit if args.time_limit is not None else ExtractConfig().time_limit_s
        outcomes, timing, versions = run_reference(venv, pages, n_docs, limit)
        ref_rows = score_rows(REFERENCE_LABEL, pages, outcomes)
        agree, differ = rules_agreement(pages, outcomes, ref_rows)
        all_rows += ref_rows
        timings[REFERENCE_LABEL] = timing
        specs[REFERENCE_LABEL] = (f"datatrove Trafilatura(favour_precision=True, timeout={limit:g}) + Gopher "
                                  "repetition, Gopher quality, C4 (no terminal-punct rule), FineWeb; no language id")
        ref_note = "reference: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + (
            "; docs/s counts the extraction sandbox's CPU too")
        ref_note += (f"\n- rules check: megadepth's rules (no language id) on the reference's extracted text decide as "
                     f"datatrove's on {agree} of {agree + len(differ)} pages")
        ref_note += "".join(f"; {d}" for d in differ[:8]) + (" ..." if len(differ) > 8 else "")
    e2e_lines, e2e_json = _end_to_end(args, settings, pages, n_docs, all_rows, venv if REFERENCE_LABEL in timings
                                      else None)
    summaries: dict[str, dict[str, dict]] = {}
    by_setting: dict[str, list[dict]] = defaultdict(list)
    for r in all_rows:
        by_setting[r["setting"]].append(r)
    for label, rows in by_setting.items():
        summaries[label] = {"all": summarise(rows)}
        for g in GROUPS:
            summaries[label][g] = summarise([r for r in rows if r["group"] == g])
    collections = Counter(p.collection for p in pages)
    timeouts = Counter(r["setting"] for r in all_rows if r["drop"] == "extract:timeout")
    langs = Counter(p.language for p in pages)
    cycles = n_docs / len(pages) if pages else 0
    header = [
        "# Extraction quality benchmark",
        "",
        "command: `" + shlex.join([sys.executable.rsplit("/", 1)[-1], "benchmarks/prep_quality.py",
                                   *(argv if argv is not None else sys.argv[1:])]) + "`",
        "",
        f"- pages: {len(pages)} ({', '.join(f'{k} {v}' for k, v in collections.items())}) from "
        f"{len({p.site for p in pages})} sites; languages: {', '.join(f'{k} {v}' for k, v in langs.most_common(6))}; "
        f"groups: {', '.join(f'{g} {sum(group_of(p) == g for p in pages)}' for g in GROUPS)}",
        f"- speed: {n_docs} documents per setting, the {len(pages)} pages cycled {cycles:.1f} times; CPU seconds of "
        f"the process (time.process_time) per core; {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.2f} at the end",
        f"- {ref_note}",
        "- extraction time-outs (scored pass): " + (", ".join(f"{k} {v}" for k, v in timeouts.items()) or "none"),
        "- recall/precision: reference lines found (>= 90 % of their word 3-grams) in the extraction / extraction "
        "lines found in the reference, pages with a whole-text reference; snippet recall and must-not absent: "
        "pages with snippets; output recall: recall of the kept document (0 when dropped)",
    ]
    report = render(header, summaries, timings, specs) + "".join(f"{line}\n" for line in e2e_lines)
    print(report)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report, encoding="utf-8")
        stem = args.out.with_suffix("")
        fields = ["setting", "page", "collection", "site", "language", "group", "reference", "recall", "precision",
                  "ref_lines", "snippet_recall", "must_not_absent", "leaked", "kept", "drop", "drop_value",
                  "out_recall", "out_snippet_recall", "chars", "megadepth_rules"]
        with open(f"{stem}.pages.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            for r in all_rows:
                w.writerow({k: r.get(k, "") for k in fields})
        summary = {"header": header, "summaries": summaries,
                   "timings": {k: {**vars(t), "extract_docs_per_s": t.rate("extract"),
                                   "steps_docs_per_s": t.rate("steps")} for k, t in timings.items()},
                   "settings": specs, "pages": [{"id": p.id, "site": p.site, "url": p.url, "language": p.language,
                                                 "licence": p.licence, "reference": p.kind} for p in pages],
                   "rows": all_rows, "end_to_end": e2e_json}
        Path(f"{stem}.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False), encoding="utf-8")
    return 0


def _end_to_end(args, settings, pages, n_docs, rows, venv: Path | None) -> tuple[list[str], dict | None]:
    """The end-to-end section (benchmarks/prep_quality_e2e.py) for the settings ``--end-to-end`` names."""
    from benchmarks import prep_quality_e2e as e2e
    from data_prep.config import ExtractConfig

    chosen = e2e.select(args.end_to_end, settings, n_docs, args.fixture)
    if not chosen:
        return [], None
    limit = args.time_limit if args.time_limit is not None else ExtractConfig().time_limit_s
    log = sys.stderr if not args.no_progress else None
    runs, notes = e2e.measure(chosen, pages, n_docs, rows, REFERENCE_LABEL, venv, REFERENCE_SCRIPT, limit, log)
    return e2e.render(runs, notes, REFERENCE_LABEL), e2e.to_json(runs, notes, REFERENCE_LABEL)


if __name__ == "__main__":
    sys.exit(main())
