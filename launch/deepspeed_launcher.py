"""Build the DeepSpeed launcher command: one node, a hostfile over ssh/pdsh, or one node of many.

The command is a list of arguments, never a shell string: config values cannot inject shell syntax.
Each rank runs ``python -m megadepth train ...`` with the same config files and overrides; the
launcher sets RANK / LOCAL_RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT (``--no_local_rank``: no
``--local_rank=N`` argument is appended).

- single node: ``deepspeed --num_gpus K --master_port P ...``
- hostfile (ssh): ``deepspeed -H HOSTFILE [--num_nodes N] --num_gpus K [--master_addr A] ...``; DeepSpeed
  starts every node's ranks through pdsh
- per node (``--no_ssh``): ``deepspeed -H HOSTFILE --num_gpus K --no_ssh --node_rank R --master_addr A ...``
  run once on each node (Slurm tasks, Kubernetes pods); the hostfile only tells DeepSpeed how many
  nodes there are and how many ranks each runs
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field


@dataclass(frozen=True)
class LaunchSpec:
    """What to start on this node."""

    nproc_per_node: int
    config_files: tuple[str, ...]
    overrides: tuple[str, ...] = ()
    master_port: int = 29500
    use_gpu: bool = False
    extra_env: dict[str, str] = field(default_factory=dict)
    hostfile: str | None = None
    """-H: the hostfile (hostfile and per-node launches); None: this node only."""
    num_nodes: int | None = None
    """--num_nodes: use the first N hosts of the hostfile (None: all of them)."""
    node_rank: int | None = None
    """--no_ssh --node_rank R: start only this node's ranks (per-node launches)."""
    master_addr: str | None = None
    """--master_addr: node 0's address (None: DeepSpeed asks the first host with `hostname -I`)."""


def deepspeed_executable() -> list[str]:
    """The launcher, as a command: the `deepspeed` script beside this Python, else on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), "deepspeed")
    if os.path.exists(beside):
        return [beside]
    found = shutil.which("deepspeed")
    if found:
        return [found]
    return [sys.executable, "-m", "deepspeed.launcher.runner"]


def build_command(spec: LaunchSpec) -> list[str]:
    """The launcher command line: ``nproc_per_node`` ranks on this node, or on each host of the hostfile."""
    if spec.nproc_per_node < 1:
        raise ValueError("--nproc-per-node must be at least 1")
    cmd = deepspeed_executable()
    if spec.hostfile is not None:
        cmd += ["-H", spec.hostfile]
        if spec.num_nodes is not None:
            cmd += ["--num_nodes", str(spec.num_nodes)]
    cmd += ["--num_gpus", str(spec.nproc_per_node)]
    if spec.node_rank is not None:
        if spec.hostfile is None:
            raise ValueError("a per-node launch needs a hostfile (DeepSpeed refuses --num_nodes > 1 without one)")
        cmd += ["--no_ssh", "--node_rank", str(spec.node_rank)]
    if spec.master_addr is not None:
        cmd += ["--master_addr", spec.master_addr]
    cmd += ["--master_port", str(spec.master_port)]
    # ranks read LOCAL_RANK from the environment; no --local_rank=N pushed in front of our arguments
    cmd += ["--no_local_rank"]
    cmd += ["--module", "megadepth", "train", *spec.config_files]
    for item in spec.overrides:
        cmd += ["--set", item]
    return cmd


def launcher_env(spec: LaunchSpec, cpu_count: int | None = None) -> dict[str, str]:
    """Environment additions for the ranks: the CPU accelerator and a fair thread share without GPUs."""
    env: dict[str, str] = dict(spec.extra_env)
    if not spec.use_gpu:
        env.setdefault("DS_ACCELERATOR", "cpu")
        cores = cpu_count or os.cpu_count() or 1
        env.setdefault("OMP_NUM_THREADS", str(max(1, cores // spec.nproc_per_node)))
    return env


def describe(cmd: list[str], env: dict[str, str]) -> str:
    """The exact command as a person would type it (for --dry-run and logs)."""
    prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(env.items()))
    return f"{prefix} {shlex.join(cmd)}".strip()


STOP_GRACE_S = 30.0
"""After a stop signal, how long the launcher's processes get to end before the rest is SIGKILLed."""


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signum)


def _group_alive(pgid: int) -> bool:
    """Whether a process of the group still runs. Zombies do not count: an orphan re-parented to a PID 1
    that never reaps (a container without an init) stays in the group, dead, for good."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    if not os.path.isdir("/proc"):  # not Linux: trust kill(0)
        return True
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(os.path.join(entry.path, "stat")) as f:
                state, _ppid, pgrp = f.read().rsplit(")", 1)[1].split()[:3]  # the name may hold spaces
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if int(pgrp) == pgid and state not in ("Z", "X"):
            return True
    return False


def _end_group(pgid: int, grace_s: float) -> None:
    """Wait for every process of the group to end; SIGKILL whatever is left after ``grace_s``."""
    deadline = time.monotonic() + grace_s
    while _group_alive(pgid):
        if time.monotonic() > deadline:
            _signal_group(pgid, signal.SIGKILL)
            return
        time.sleep(0.1)


def run(cmd: list[str], env: dict[str, str], grace_s: float = STOP_GRACE_S) -> int:
    """Run the launcher and wait. Returns its exit code, or 128 + the signal number when stopped by one.

    A scheduler, ``kill`` or a container stop signals this process only, and must not orphan the ranks.
    Passing the signal to the `deepspeed` runner is not enough: on one node (and per node) it has no
    handler and dies without telling its child, ``deepspeed.launcher.launch``, which is what stops the
    ranks. So the launcher runs in its own session (process group) and SIGINT/SIGTERM/SIGHUP/SIGQUIT go to the
    whole group: runner, launcher, ranks (and, with a hostfile, the local pdsh/ssh; the runner's own
    handler still stops the remote ranks). Once signalled, the group gets ``grace_s`` to end, then SIGKILL.
    """
    received: list[int] = []
    group: list[int] = []  # the launcher's process group id, once started
    stopper: list[threading.Thread] = []

    def forward(signum: int, _frame: object) -> None:
        received.append(signum)
        for pgid in group:
            _signal_group(pgid, signum)
            if not stopper:  # runs beside the wait below: the runner itself may hang while stopping
                stopper.append(threading.Thread(target=_end_group, args=(pgid, grace_s), daemon=True))
                stopper[0].start()

    previous = {}
    if threading.current_thread() is threading.main_thread():  # installed first: no signal slips past
        # SIGQUIT too: the own session means a terminal's Ctrl-\ no longer reaches the ranks directly
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
            previous[sig] = signal.signal(sig, forward)
    try:
        proc = subprocess.Popen(cmd, env={**os.environ, **env}, start_new_session=True)
        group.append(proc.pid)
        if received:  # arrived while it was starting
            forward(received.pop(), None)
        code = proc.wait()
        for thread in stopper:
            thread.join()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received:
        return 128 + received[0]
    return code if code >= 0 else 128 - code
