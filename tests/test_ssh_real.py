"""The hostfile (ssh) mode of docs/launching.md through a real sshd and DeepSpeed's real pdsh runner.

tests/cluster.py starts sshd on 127.0.0.1 with a host key and a user key made for the session; the
hostfile names ``localhost`` and ``127.0.0.1`` as two nodes, so every rank goes through pdsh, ssh, sshd
and a login shell, as on a cluster. (tests/test_launch_multinode.py runs the same launch with stand-ins
for ssh and pdsh, on machines without them.)
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from cluster import SshLoopback, free_port
from conftest import tiny_config
from test_launch_multinode import _groups_gone, _kill_groups, _metrics, _wait

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.distributed]

ROOT = Path(__file__).resolve().parents[1]
DEADLINE_S = 240


def _launch(ssh: SshLoopback, tmp_path: Path, hosts: str, args: list[str], log: Path) -> tuple[int | None, str]:
    """`megadepth launch --hostfile` with the session's ssh first on PATH; waits (deadline), kills whatever
    is left of its process group, returns (exit code, output)."""
    hostfile = tmp_path / "hosts"
    hostfile.write_text(hosts)
    env = {**ssh.env, "PYTHONPATH": str(ROOT), "WANDB_SILENT": "true"}
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "megadepth", "launch", "--hostfile", str(hostfile),
                                 "--master-addr", "127.0.0.1", "--master-port", str(free_port()), *args],
                                cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        (code,) = _wait([proc], DEADLINE_S)
        assert _groups_gone([proc]), "the launcher exited but left processes behind"
    finally:
        _kill_groups([proc])
    return code, log.read_text()


def test_hostfile_launch_over_real_ssh_and_pdsh_equals_one_process(ssh_loopback: SshLoopback, sample_data: Path,
                                                                   tmp_path: Path) -> None:
    """Two "nodes" (localhost, 127.0.0.1) of one rank each, started by DeepSpeed's pdsh runner over the
    real sshd, train what one process with the same global batch trains. Each node's ranks run in an ssh
    login's environment, not this one's; an override full of shell syntax crosses pdsh's remote shell
    literally, running nothing."""
    from distributed import run_ranks, train_rank

    base = tiny_config(sample_data, tmp_path / "unused", train={"global_batch": 8}, parallel={"timeout_s": 120})
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(base))
    run_ranks(train_rank, 1, {**base, "train": {**base["train"], "out_dir": str(tmp_path / "one")}})

    pwned = tmp_path / "PWNED"
    name = f"x $(touch {pwned}) `touch {pwned}` ' \" ; touch {pwned}; echo \\ %n"
    sessions = ssh_loopback.sessions_accepted()
    start = time.monotonic()
    code, text = _launch(ssh_loopback, tmp_path, "localhost slots=1\n127.0.0.1 slots=1\n",
                         ["--nproc-per-node", "1", str(cfg), "--set", f"train.out_dir={tmp_path / 'two'}",
                          "--set", f"wandb.name={name}"], tmp_path / "launch.log")
    assert code == 0, text[-4000:]
    print(f"hostfile launch over ssh: {time.monotonic() - start:.1f} s", file=sys.stderr)
    assert "megadepth: 2 node(s) x 1 = 2 processes over ssh on localhost, 127.0.0.1" in text, text[-3000:]
    # pdsh prefixes each host's output; ranks 0 and 1 each ran on one "node"
    assert re.search(r"^localhost: ", text, re.MULTILINE) and re.search(r"^127\.0\.0\.1: ", text, re.MULTILINE)
    # our probe of each host, DeepSpeed's check of the first, then pdsh's session on each: all through sshd
    assert ssh_loopback.sessions_accepted() - sessions >= 5
    assert not pwned.exists(), "a remote shell ran part of an override"
    assert yaml.safe_load((tmp_path / "two" / "config.yaml").read_text())["wandb"]["name"] == name
    got = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert got["status"] == "completed" and got["world_size"] == 2
    ref_m, got_m = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    assert [r["step"] for r in ref_m] == [r["step"] for r in got_m] == [1, 2, 3]
    for a, b in zip(ref_m, got_m, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5), (a, b)


def test_a_host_sshd_does_not_answer_is_named_before_anything_starts(
        ssh_loopback: SshLoopback, sample_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """127.0.0.2 is this machine too, but sshd listens on 127.0.0.1 only: the launch checks every host
    with the real ssh first and names the one that refuses, instead of leaving pdsh to fail mid-start."""
    from megadepth.cli import main

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(sample_data, tmp_path / "run", train={"global_batch": 8})))
    hostfile = tmp_path / "hosts"
    hostfile.write_text("localhost slots=1\n127.0.0.2 slots=1\n")
    monkeypatch.setenv("PATH", ssh_loopback.env["PATH"])
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["launch", "--hostfile", str(hostfile), "--nproc-per-node", "1", str(cfg)]) == 2
    err = capsys.readouterr().err.splitlines()[-1]  # after the global-batch warning
    assert err.startswith("megadepth: error: not reachable by passwordless ssh"), err
    assert "127.0.0.2: " in err and "Connection refused" in err and "localhost:" not in err, err
    assert not (tmp_path / "run").exists()
