"""Two nodes on this machine: two `megadepth launch` per-node invocations (node ranks 0 and 1, 2 processes
each, one master address and port) train to the same losses as one launcher with 4 processes; a node
that never comes up ends the other node's launcher with an error, leaving no process behind.

Every launcher runs in its own session (process group), with a free port and a deadline; whatever
happens, every group is killed at the end, so a failing side cannot leave ranks running.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import tiny_config

from megadepth.parallel.distributed import free_port

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

ROOT = Path(__file__).resolve().parents[1]
DEADLINE_S = 240


def _start(args: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_SILENT": "true", "GLOO_SOCKET_IFNAME": "lo"}
    with log.open("w") as out:  # the child keeps its own descriptor
        return subprocess.Popen([sys.executable, "-m", "megadepth", "launch", *args], cwd=cwd, env=env,
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _kill_groups(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)


def _wait(procs: list[subprocess.Popen], timeout: float) -> list[int | None]:
    """Wait until all exit, one fails (the others would wait for it in vain) or the deadline passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        codes = [p.poll() for p in procs]
        if all(c is not None for c in codes) or any(c not in (None, 0) for c in codes):
            break
        time.sleep(0.2)
    return [p.poll() for p in procs]


def _groups_gone(procs: list[subprocess.Popen], within_s: float = 15) -> bool:
    deadline = time.monotonic() + within_s
    while any(_group_alive(p.pid) for p in procs):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def _metrics(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def test_two_nodes_on_localhost_equal_one_node_of_four(sample_data: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(sample_data, tmp_path / "unused", train={"global_batch": 16},
                                              parallel={"timeout_s": 120})))

    # one node, 4 processes: the reference
    one = _start(["--nproc-per-node", "4", str(cfg), "--set", f"train.out_dir={tmp_path / 'one'}"], tmp_path,
                 tmp_path / "one.log")
    try:
        codes = _wait([one], DEADLINE_S)
        assert codes == [0], (tmp_path / "one.log").read_text()[-4000:]
        assert _groups_gone([one])
    finally:
        _kill_groups([one])

    # two nodes of 2 processes: node ranks 0 and 1, the same master address and port, started together
    port = free_port()
    two_dir = tmp_path / "two"
    nodes = [
        _start(["--nproc-per-node", "2", "--nnodes", "2", "--node-rank", str(rank), "--master-addr", "127.0.0.1",
                "--master-port", str(port), str(cfg), "--set", f"train.out_dir={two_dir}"],
               tmp_path, tmp_path / f"node{rank}.log")
        for rank in (0, 1)
    ]
    try:
        codes = _wait(nodes, DEADLINE_S)
        logs = [(tmp_path / f"node{rank}.log").read_text() for rank in (0, 1)]
        assert codes == [0, 0], "\n".join(log[-3000:] for log in logs)
        assert _groups_gone(nodes), "a launcher exited but left processes behind"
    finally:
        _kill_groups(nodes)

    for rank, log in enumerate(logs):
        assert f"node {rank} of 2: ranks {2 * rank}-{2 * rank + 1} of 4, rendezvous at 127.0.0.1:{port}" in log
        assert f"--no_ssh --node_rank {rank} --master_addr 127.0.0.1 --master_port {port}" in log

    ref, got = json.loads((tmp_path / "one" / "summary.json").read_text()), json.loads((two_dir / "summary.json").read_text())
    assert (ref["status"], got["status"], ref["world_size"], got["world_size"]) == ("completed", "completed", 4, 4)
    ref_m, got_m = _metrics(tmp_path / "one"), _metrics(two_dir)
    assert [r["step"] for r in ref_m] == [r["step"] for r in got_m] == [1, 2, 3]
    for a, b in zip(ref_m, got_m, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5), (a, b)
        assert b["consumed_tokens"] == a["consumed_tokens"]
    assert ref_m[0]["loss"] != ref_m[-1]["loss"]  # it trained
    assert got["final_eval_loss"] == pytest.approx(ref["final_eval_loss"], rel=1e-5)
    # each node resolved the same config (bar the run directory this test chose)
    ref_cfg, got_cfg = (yaml.safe_load((d / "config.yaml").read_text()) for d in (tmp_path / "one", two_dir))
    ref_cfg["train"].pop("out_dir"), got_cfg["train"].pop("out_dir")
    assert ref_cfg == got_cfg


def test_a_missing_node_ends_the_other_with_an_error(sample_data: Path, tmp_path: Path) -> None:
    """Node 1 never starts: node 0's ranks give up after parallel.timeout_s with a message, its launcher
    exits non-zero, and nothing of it keeps running."""
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(sample_data, tmp_path / "run", train={"global_batch": 16},
                                              parallel={"timeout_s": 5})))
    node0 = _start(["--nproc-per-node", "2", "--nnodes", "2", "--node-rank", "0", "--master-addr", "127.0.0.1",
                    "--master-port", str(free_port()), str(cfg)], tmp_path, tmp_path / "node0.log")
    try:
        (code,) = _wait([node0], DEADLINE_S)
        log = (tmp_path / "node0.log").read_text()
        assert code is not None, "node 0 still waits for node 1 after the deadline:\n" + log[-3000:]
        assert code != 0
        assert re.search(r"time[ds]?[ -]?out", log, re.IGNORECASE), log[-3000:]
        assert _groups_gone([node0]), "the launcher exited but left ranks behind"
    finally:
        _kill_groups([node0])
    assert not (tmp_path / "run" / "summary.json").exists() or \
        json.loads((tmp_path / "run" / "summary.json").read_text())["status"] != "completed"


# --- a hostfile launch (one launcher, every node over ssh/pdsh), the network replaced by this machine ---

_SSH = r"""#!/usr/bin/env bash
# ssh stand-in: every host is this machine; the command runs in a clean environment, as after a login
while [ $# -gt 0 ]; do case "$1" in -o|-p|-i|-l) shift 2;; -*) shift;; *) break;; esac; done
shift  # the host
[ $# -eq 0 ] && exit 0
exec env -i HOME="$HOME" PATH="$PATH" bash -c "$*"
"""

_PDSH = r"""#!/usr/bin/env bash
# pdsh stand-in: the joined command once per host of -w, %n = the host's index, in a clean environment
# (as ssh would give it), outputs prefixed "host: ", exit status the worst of them (-S)
set -o pipefail
hosts=""
while [ $# -gt 0 ]; do case "$1" in -w) hosts="$2"; shift 2;; -f) shift 2;; -*) shift;; *) break;; esac; done
cmd="$*"
IFS=, read -ra list <<< "$hosts"
pids=(); i=0
for h in "${list[@]}"; do
  env -i HOME="$HOME" PATH="$PATH" bash -c "${cmd//%n/$i}" 2>&1 | sed -u "s/^/$h: /" &
  pids+=($!); i=$((i + 1))
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=$?; done
exit $rc
"""


def _hostfile_launch(tmp_path: Path, hosts: str, args: list[str], log: Path) -> str:
    """`megadepth launch --hostfile` with ssh and pdsh stand-ins first on PATH; waits, checks that nothing
    is left running, and returns the log."""
    shims = tmp_path / "bin"
    shims.mkdir(exist_ok=True)
    for name, text in (("ssh", _SSH), ("pdsh", _PDSH)):
        (shims / name).write_text(text)
        (shims / name).chmod(0o755)
    hostfile = tmp_path / "hosts"
    hostfile.write_text(hosts)
    env_path = f"{shims}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    env = {**os.environ, "PATH": env_path, "PYTHONPATH": str(ROOT), "WANDB_SILENT": "true", "GLOO_SOCKET_IFNAME": "lo"}
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "megadepth", "launch", "--hostfile", str(hostfile),
                                 "--master-addr", "127.0.0.1", "--master-port", str(free_port()), *args],
                                cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        codes = _wait([proc], DEADLINE_S)
        text = log.read_text()
        assert codes == [0], text[-4000:]
        assert _groups_gone([proc]), "the launcher exited but left processes behind"
    finally:
        _kill_groups([proc])
    return text


def test_hostfile_launch_over_pdsh_equals_one_process(sample_data: Path, tmp_path: Path) -> None:
    """`megadepth launch --hostfile` with two hosts: DeepSpeed's runner starts both nodes' ranks through
    pdsh (each in a clean environment, as over ssh), and they train what one process with the same
    global batch trains. ssh and pdsh are stand-ins that run on this machine (no sshd here); everything
    else (our checks, DeepSpeed's runner and its exports, the per-node launchers) is the real path.

    pdsh runs one shell string on each host, which DeepSpeed joins without quoting: an override holding
    $(...), backquotes, quotes and ';' must reach every rank's resolved config literally, running nothing."""
    from distributed import run_ranks, train_rank

    base = tiny_config(sample_data, tmp_path / "unused", train={"global_batch": 16}, parallel={"timeout_s": 120})
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(base))
    run_ranks(train_rank, 1, {**base, "train": {**base["train"], "out_dir": str(tmp_path / "one")}})

    pwned = tmp_path / "PWNED"
    name = f"x $(touch {pwned}) `touch {pwned}` ' \" ; touch {pwned}; echo \\ %n"
    text = _hostfile_launch(tmp_path, "localhost slots=2\n127.0.0.1 slots=2\n",
                            ["--nproc-per-node", "2", str(cfg), "--set", f"train.out_dir={tmp_path / 'two'}",
                             "--set", f"wandb.name={name}"], tmp_path / "hostfile.log")
    assert "localhost: " in text and "127.0.0.1: " in text  # both nodes' launchers ran, through pdsh
    assert not pwned.exists(), "a remote shell ran part of an override"
    assert yaml.safe_load((tmp_path / "two" / "config.yaml").read_text())["wandb"]["name"] == name
    assert "cmd = pdsh" not in text  # DeepSpeed's INFO line with every exported variable (--log_level warning)
    got = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert got["status"] == "completed" and got["world_size"] == 4
    ref_m, got_m = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    assert [r["step"] for r in ref_m] == [r["step"] for r in got_m] == [1, 2, 3]
    for a, b in zip(ref_m, got_m, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5), (a, b)


def test_a_one_host_hostfile_runs_there_over_pdsh(sample_data: Path, tmp_path: Path) -> None:
    """A hostfile of one host means "run on that host": DeepSpeed would start a single host's ranks on this
    machine instead, unless told --force_multi. Here the stand-in pdsh prefixes what it ran with the host."""
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(sample_data, tmp_path / "run", parallel={"timeout_s": 120})))
    text = _hostfile_launch(tmp_path, "localhost slots=1\n", ["--nproc-per-node", "1", str(cfg)],
                            tmp_path / "one.log")
    assert "megadepth: 1 node(s) x 1 = 1 processes over ssh on localhost" in text
    assert re.search(r"^localhost: step 3/3 ", text, re.MULTILINE), text[-3000:]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "completed"
