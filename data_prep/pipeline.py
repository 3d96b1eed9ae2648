"""The Common Crawl pipeline, end to end: plan (checks first), run locally, read the manifest.

>>> plan = plan_run(["crawl/*.warc.gz"], "data/cc", overrides=["tokenizer.vocab_size=32000"])
>>> manifest, walls = run_plan(plan, workers=8)

Everything that can be wrong with the request (inputs, output directory, config keys, remote inputs,
Parquet columns, tokenizer, extractor) is found by :func:`plan_run` before any work; what may only be a
surprise is a ``warning:`` line on stderr.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from data_prep.config import load_prep_config
from data_prep.credentials import ENV
from data_prep.hygiene import unread_warning
from data_prep.inputs import Resolved, check_remote, resolve
from data_prep.plan import Plan, make_plan
from data_prep.records import check_input_columns
from data_prep.runner import run_local
from data_prep.stages import MANIFEST, check_tokenizer

__all__ = ["plan_run", "run_plan"]


def plan_run(
    inputs: Sequence[str | Path],
    out: str | Path,
    *,
    config_files: Sequence[str | Path] = (),
    overrides: Sequence[str] = (),
    extra: Mapping | None = None,
    preset: str | None = None,
) -> Plan:
    """Resolve and check everything; returns the plan (nothing is written but the output probe)."""
    cfg = load_prep_config(config_files, overrides, extra, preset)
    resolved = resolve(inputs, cfg.read.paths_prefix, exclude=out)
    files = resolved.files
    check_remote(files)
    check_input_columns(files, cfg.read)
    if cfg.tokenizer.model:
        check_tokenizer(Path(cfg.tokenizer.model))
    if any(f.kind in ("warc", "arc") for f in files):
        from data_prep.extract import Extractor

        Extractor(cfg.extract)  # self-check: fails here, not on every page
    plan = make_plan(out, files, cfg, resolved.unread)  # checks the language model and codes too
    for line in plan_warnings(plan, resolved):
        print(f"warning: {line}", file=sys.stderr)
    return plan


def plan_warnings(plan: Plan, resolved: Resolved) -> list[str]:
    """What a user should know before the work starts, though nothing is wrong: files in the input
    folders that are not read, and credentials given in a URL (used by this command, stored nowhere)."""
    unread = unread_warning(plan.unread, "WARC/WET/ARC, Parquet, JSONL or Arrow", f"{plan.out}/plan.json")
    lines = [unread] if unread else []
    if resolved.credential_origins:
        lines.append(
            f"the user:password in the URL for {', '.join(resolved.credential_origins)} is used by this command "
            "only: plan.json and the outputs hold the URL without it. A later 'prep task' (Slurm) or a run "
            f"given the URL without it reads credentials from ${ENV} (https://USER:PASSWORD@HOST) or ~/.netrc"
        )
    return lines


def run_plan(plan: Plan, workers: int = 1, progress: bool = True) -> tuple[dict, dict[str, float]]:
    """Run (or resume) every stage locally; returns (manifest, wall seconds per stage)."""
    walls = run_local(plan, workers=workers, progress=progress)
    return json.loads((plan.out / MANIFEST).read_text()), walls

