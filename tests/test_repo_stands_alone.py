"""The repository stands alone: no code, config, doc or comment points to files outside it (the project's
planning notes are not shipped), so a reader never meets a reference they cannot follow."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# names of files that exist only outside the repository, and phrases that point at them
OUTSIDE = re.compile(r"\b(?:BENCHMARKS|DESIGN|PARAMETRIZATIONS|DATA|DEEPSPEED_CPU|CLUSTER_CPU)\.md\b"
                     r"|design notes|not part of this repository|\.\./shared/")


def test_no_file_cites_files_outside_the_repository() -> None:
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    offenders = []
    for name in tracked.splitlines():
        path = ROOT / name
        if path.name == Path(__file__).name or path.suffix in (".png", ".bin", ".idx", ".gz", ".model"):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        offenders += [f"{name}:{i}: {line.strip()}" for i, line in enumerate(text.splitlines(), 1)
                      if OUTSIDE.search(line)]
    assert not offenders, "\n".join(offenders)
