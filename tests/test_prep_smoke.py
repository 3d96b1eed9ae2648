"""The documented check of the install: the bundled Common Crawl page through ``prep run --preset smoke``
and then a few training steps, run as the exact command lines docs/data_prep.md gives (only the output
folders moved to a temporary directory), in fresh processes as a user would."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "data_prep.md"


def _documented_commands() -> tuple[list[str], list[str]]:
    """The two lines of the bash block under 'Checking the install', split as the shell would."""
    text = DOCS.read_text()
    section = text.split("## Checking the install", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "docs/data_prep.md lost the smoke-test commands"
    prep, train = (shlex.split(line) for line in block.group(1).strip().splitlines())
    assert prep[:3] == ["megadepth", "prep", "run"] and "--preset" in prep and train[:2] == ["megadepth", "train"]
    return prep, train


def test_the_documented_smoke_commands_prepare_and_train(tmp_path: Path) -> None:
    prep, train = _documented_commands()
    out = tmp_path / "smoke"
    prep = [sys.executable, "-m", *prep[:prep.index("--out") + 1], str(out), *prep[prep.index("--out") + 2:]]
    proc = subprocess.run([*prep, "--no-progress"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    # the WARC's page and the WET's copy of it (its repeated navigation lines dropped by repeated_lines)
    assert manifest["documents"] == 2 and manifest["tokens"] > 1000
    assert manifest["vocab_size"] == 400 and manifest["config"]["language"]["languages"] is None
    rejected = [r for p in sorted((out / "rejected").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    assert rejected == [] and manifest["stages"]["extract_and_filter"]["documents_in"] == 2
    assert sorted(p.name for p in (out / "rejected").glob("*.parquet"))  # the (empty) parts are there

    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", *train, "--set", f"data.path={out}", "--set", f"train.out_dir={run_dir}",
           "--set", "train.progress=false"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=420)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed", summary
    steps = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert len(steps) == 5 and all(0 < s["loss"] < 10 for s in steps)


def test_the_smoke_config_matches_the_preset() -> None:
    """The train config's vocabulary is the preset's tokenizer size, and it reads what the prep line writes."""
    import yaml

    from data_prep.config import PRESETS

    prep, train = _documented_commands()
    cfg = yaml.safe_load((ROOT / train[2]).read_text())
    assert cfg["model"]["vocab_size"] == PRESETS[prep[prep.index("--preset") + 1]]["tokenizer"]["vocab_size"]
    assert cfg["data"]["path"] == prep[prep.index("--out") + 1]
    assert prep[prep.index("--input") + 1] == "tests/fixtures/commoncrawl" and (ROOT / "tests/fixtures/commoncrawl").is_dir()
