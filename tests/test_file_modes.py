"""Files written atomically (temporary name, then rename) get the mode a plain ``open`` gives, 0o666 less
the umask, not mkstemp's 0600: on a shared cluster teammates must be able to read a run's summary,
config, checkpoint pointer and exported model. The umask is set in this process for each test and put
back afterwards (pytest runs tests in one thread)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from megadepth.common.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from megadepth.export.hf import _give_umask_modes
from megadepth.train.rundir import MetricsLog

MASKS = [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)]


@pytest.fixture(params=MASKS, ids=lambda m: oct(m[0]))
def expected_mode(request: pytest.FixtureRequest) -> Iterator[int]:
    """The umask of the parameter set for the test; yields the mode a new file must get under it."""
    mask, mode = request.param
    old = os.umask(mask)
    try:
        yield mode
    finally:
        os.umask(old)


def rewrite_metrics(path: Path) -> None:
    """A resume: metrics.jsonl is rewritten without the records past the checkpoint's step."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('{"step": 1}\n{"step": 2}\n')
    os.chmod(path, 0o600)  # as an earlier version left it
    MetricsLog(path, resume_step=1).close()
    assert path.read_text() == '{"step": 1}\n'


WRITERS: dict[str, Callable[[Path], None]] = {
    "atomic_write_text": lambda p: atomic_write_text(p, "step_00000003"),
    "atomic_write_json": lambda p: atomic_write_json(p, {"loss": 1.0}),
    "atomic_write_bytes": lambda p: atomic_write_bytes(p, b"\x00\x01"),
    "metrics_rewrite": rewrite_metrics,
}


@pytest.mark.parametrize("writer", list(WRITERS))
def test_atomic_writers_follow_the_umask(tmp_path: Path, expected_mode: int, writer: str) -> None:
    path = tmp_path / "sub" / "file"
    WRITERS[writer](path)
    assert path.stat().st_mode & 0o777 == expected_mode
    WRITERS[writer](path)  # replacing an existing file: the new one gets the umask's mode again
    assert path.stat().st_mode & 0o777 == expected_mode
    assert sorted(p.name for p in path.parent.iterdir()) == ["file"]  # no temporary left behind


def test_replacing_a_private_file_makes_it_readable(tmp_path: Path) -> None:
    """A summary.json an earlier version wrote as 0600 becomes 0644 when rewritten under umask 0o022."""
    path = tmp_path / "summary.json"
    path.write_text("{}")
    path.chmod(0o600)
    old = os.umask(0o022)
    try:
        atomic_write_json(path, {"status": "finished"})
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_export_folder_files_get_the_umask_mode(tmp_path: Path, expected_mode: int) -> None:
    """The export's own pass over its files: safetensors writes 0600 on its own."""
    (tmp_path / "model.safetensors").write_bytes(b"x")
    (tmp_path / "model.safetensors").chmod(0o600)
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "config.json").chmod(0o640)
    _give_umask_modes(tmp_path)
    assert {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()} == {
        "model.safetensors": expected_mode, "config.json": expected_mode}


def test_a_script_made_executable_after_writing_stays_executable(tmp_path: Path, expected_mode: int) -> None:
    """Slurm scripts are written atomically, then chmod 0o755 (sweep/slurm.py, data_prep/runner.py)."""
    script = tmp_path / "submit.sh"
    atomic_write_text(script, "#!/bin/sh\n")
    script.chmod(0o755)
    assert script.stat().st_mode & 0o777 == 0o755
