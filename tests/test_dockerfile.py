"""The Dockerfile's security properties, read from the file (no Docker daemon on the test machines): the
default image runs unprivileged and without an ssh server, sshd lives only in the hostfile target, and the
base image is either pinned by digest or its tag's risk is stated with the way to pin it."""

from __future__ import annotations

import re
from pathlib import Path

DOCKERFILE = Path(__file__).resolve().parents[1] / "Dockerfile"


def _stages() -> list[tuple[str, list[str]]]:
    """(stage name, its instructions with continuation lines joined), in file order."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            match = re.match(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?", line, re.IGNORECASE)
            assert match
            stages.append((match.group(2) or match.group(1), [line]))
        elif stages:
            stages[-1][1].append(line)
    return stages


def _chain(name: str, stages: list[tuple[str, list[str]]]) -> list[str]:
    """The instructions a stage runs, its parents' first."""
    by_name = dict(stages)
    parent = re.match(r"FROM\s+(\S+)", by_name[name][0], re.IGNORECASE).group(1)  # type: ignore[union-attr]
    return (_chain(parent, stages) if parent in by_name else []) + by_name[name]


def test_the_default_image_runs_as_an_unprivileged_user_without_sshd() -> None:
    stages = _stages()
    default = stages[-1][0]  # `docker build .` builds the last stage
    steps = _chain(default, stages)
    users = [s.split(None, 1)[1].strip() for s in steps if s.upper().startswith("USER ")]
    assert users and users[-1] not in ("root", "0", "0:0"), users
    assert not any("openssh-server" in s or "sshd" in s for s in steps if s.upper().startswith("RUN "))


def test_sshd_is_only_in_the_hostfile_target() -> None:
    stages = _stages()
    names = [name for name, _ in stages]
    assert "hostfile" in names
    with_sshd = [name for name, steps in stages if any("openssh-server" in s for s in steps)]
    assert with_sshd == ["hostfile"]


def test_the_base_image_is_pinned_or_its_risk_is_stated() -> None:
    text = DOCKERFILE.read_text()
    base = re.search(r"^ARG BASE_IMAGE=(\S+)", text, re.MULTILINE)
    assert base, "the base image is a build argument, so a digest can be passed"
    if "@sha256:" not in base.group(1):
        assert re.search(r"tag.*moved", text) and "--build-arg BASE_IMAGE=" in text and "@sha256:" in text
