"""From `megadepth launch` options to one checked plan: which mode, which hosts, how many ranks.

Three modes (docs/launching.md):
- single node: ``--nproc-per-node K`` alone;
- hostfile (ssh): ``--hostfile H``: this one launcher starts every node's ranks through ssh/pdsh;
- per node: ``--node-rank R`` with ``--nnodes N --master-addr A`` (or a ``--hostfile``): one launcher per
  node, none of them uses ssh; what Slurm tasks and Kubernetes pods run.

Everything here is checked before a process starts; mistakes are LaunchError, one line each.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import shutil
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from launch.hostfile import Host, LaunchError, check_resolvable, check_slots, generated_hosts, read_hostfile

DEFAULT_MULTI_NODE_PORT = 29500  # when several nodes must agree on a port and none was given (torch's)


@dataclass(frozen=True)
class LaunchRequest:
    """The launch options as given on the command line (None: not given)."""

    nproc_per_node: int
    hostfile: str | None = None
    nnodes: int | None = None
    node_rank: int | None = None
    master_addr: str | None = None
    master_port: int | None = None


@dataclass(frozen=True)
class LaunchPlan:
    """A checked launch: the nodes taking part, this node's place, and the rendezvous address."""

    mode: str  # "single", "hostfile" or "per-node"
    nproc_per_node: int
    hosts: tuple[Host, ...]
    hostfile: Path | None  # DeepSpeed's -H (None in single-node mode, and where the launcher writes one)
    hostfile_generated: bool  # the launcher writes a private one of ``hosts`` (per-node, no --hostfile)
    num_nodes: int | None  # DeepSpeed's --num_nodes: only the first N hosts of a longer hostfile take part
    node_rank: int | None
    master_addr: str | None
    master_port: int

    @property
    def nnodes(self) -> int:
        return len(self.hosts)

    @property
    def world_size(self) -> int:
        """Total ranks: DeepSpeed starts ``nproc_per_node`` on every node taking part."""
        return self.nnodes * self.nproc_per_node

    def summary(self) -> str:
        k, world = self.nproc_per_node, self.world_size
        if self.mode == "single":
            return f"{k} process(es) on this node"
        if self.mode == "hostfile":
            names = ", ".join(h.name for h in self.hosts)
            return f"{self.nnodes} node(s) x {k} = {world} processes over ssh on {names}"
        first = self.node_rank * k
        return (f"node {self.node_rank} of {self.nnodes}: ranks {first}-{first + k - 1} of {world}, "
                f"rendezvous at {self.master_addr}:{self.master_port}")


_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


def check_master_addr(addr: str) -> None:
    """--master-addr must be a host name or an IPv4/IPv6 address: it reaches DeepSpeed's command lines (and
    in hostfile mode a remote shell), where an option-like or shell-like value would be misread."""
    if not addr.strip():
        raise LaunchError("--master-addr is empty")
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(addr)
        return
    name = addr[:-1] if addr.endswith(".") else addr
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in name.split(".")):
        raise LaunchError(f"--master-addr {addr!r} is not a host name or an IPv4/IPv6 address")


def _hostfile_hosts(path: str, nnodes: int | None, nproc: int) -> tuple[list[Host], int | None]:
    hosts = read_hostfile(path)
    num_nodes = None
    if nnodes is not None:
        if nnodes > len(hosts):
            raise LaunchError(f"--nnodes {nnodes} but hostfile {path} lists only {len(hosts)} host(s)")
        if nnodes < len(hosts):
            hosts, num_nodes = hosts[:nnodes], nnodes
    check_slots(hosts, nproc, source=f"hostfile {path}")
    return hosts, num_nodes


def _check_numbers(req: LaunchRequest) -> None:
    """The option values every launch checks alike (before the hostfile is read)."""
    for value, option in ((req.nproc_per_node, "--nproc-per-node"), (req.nnodes, "--nnodes")):
        if value is not None and value < 1:
            raise LaunchError(f"{option} must be at least 1 (got {value})")
    if req.node_rank is not None and req.node_rank < 0:
        raise LaunchError(f"--node-rank must be 0 or more (got {req.node_rank})")
    if req.master_port is not None and not 1 <= req.master_port <= 65535:
        raise LaunchError(f"--master-port must be a TCP port, 1-65535 (got {req.master_port})")


def plan_launch(req: LaunchRequest, free_port: Callable[[], int], resolve_hosts: bool = True) -> LaunchPlan:
    """Check the combination of options and the hostfile; no process is started, no file written."""
    _check_numbers(req)
    if req.master_addr is not None:
        check_master_addr(req.master_addr)
    k = req.nproc_per_node

    if req.node_rank is not None:  # per node: one launcher on each node, no ssh
        if req.hostfile is not None:
            hosts, num_nodes = _hostfile_hosts(req.hostfile, req.nnodes, k)  # names need not resolve
            hostfile, generated = Path(req.hostfile), False
        elif req.nnodes is None:
            raise LaunchError("--node-rank needs --nnodes (how many nodes take part) or a --hostfile")
        else:
            hosts, num_nodes = generated_hosts(req.nnodes, k), None
            hostfile, generated = None, True
        if req.node_rank >= len(hosts):
            raise LaunchError(f"--node-rank {req.node_rank} is out of range for {len(hosts)} node(s) "
                              f"(0..{len(hosts) - 1})")
        if req.master_addr is None and len(hosts) > 1:
            raise LaunchError("--node-rank needs --master-addr: node 0's address, the same on every node")
        master_addr = req.master_addr or "127.0.0.1"
        return LaunchPlan("per-node", k, tuple(hosts), hostfile, generated, num_nodes, req.node_rank,
                          master_addr, req.master_port or DEFAULT_MULTI_NODE_PORT)

    if req.hostfile is not None:  # one launcher for all nodes, over ssh
        hosts, num_nodes = _hostfile_hosts(req.hostfile, req.nnodes, k)
        if resolve_hosts:
            check_resolvable(hosts, source=f"hostfile {req.hostfile}")
        return LaunchPlan("hostfile", k, tuple(hosts), Path(req.hostfile), False, num_nodes, None,
                          req.master_addr, req.master_port or DEFAULT_MULTI_NODE_PORT)

    if req.nnodes is not None and req.nnodes > 1:
        raise LaunchError(f"--nnodes {req.nnodes} needs --node-rank and --master-addr (one launcher per "
                          "node) or a --hostfile (one launcher for all nodes, over ssh)")
    if req.master_addr is not None:
        raise LaunchError("--master-addr is for multi-node launches: add --nnodes and --node-rank, or a --hostfile")
    return LaunchPlan("single", k, (Host("localhost", k),), None, False, None, None, None,
                      req.master_port or free_port())


def check_ssh_mode(plan: LaunchPlan, connect_timeout_s: int = 10) -> None:
    """What a hostfile launch needs on this machine: pdsh (also for one host: the ranks start there, not
    here) and passwordless ssh to every host (DeepSpeed itself checks only the first)."""
    if plan.mode != "hostfile":
        return
    if shutil.which("pdsh") is None:
        raise LaunchError("pdsh is not installed: the DeepSpeed launcher starts every host's ranks through "
                          "it (apt-get install pdsh), or start one launcher per node with "
                          "--nnodes/--node-rank/--master-addr")
    if shutil.which("ssh") is None:
        raise LaunchError("ssh is not installed: a --hostfile launch reaches the hosts through ssh")

    def probe(host: Host) -> str | None:
        cmd = ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={connect_timeout_s}", host.name, "true"]
        try:
            done = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  timeout=connect_timeout_s + 5)
        except subprocess.TimeoutExpired:
            return "timed out"
        if done.returncode == 0:
            return None
        lines = [x for x in done.stderr.strip().splitlines() if x.strip()]
        return lines[-1].strip() if lines else f"exit code {done.returncode}"

    with ThreadPoolExecutor(max_workers=min(32, plan.nnodes)) as pool:
        failures = [(h, why) for h, why in zip(plan.hosts, pool.map(probe, plan.hosts), strict=True) if why]
    if failures:
        listing = "; ".join(f"{h.name}: {why}" for h, why in failures)
        raise LaunchError("not reachable by passwordless ssh (ssh -o BatchMode=yes HOST true) from this "
                          f"machine: {listing}")


def check_slurm_request(req: LaunchRequest) -> int:
    """The options a `--slurm` script takes; returns its world size. Hosts, node rank and master address
    come from the job, so giving them is a mistake."""
    given = [opt for opt, value in (("--hostfile", req.hostfile), ("--node-rank", req.node_rank),
                                    ("--master-addr", req.master_addr)) if value is not None]
    if given:
        raise LaunchError(f"--slurm takes the hosts, node ranks and master address from the job; drop {given[0]}")
    if req.nnodes is None:
        raise LaunchError("--slurm needs --nnodes (how many nodes the job asks for)")
    _check_numbers(req)
    return req.nnodes * req.nproc_per_node


def check_local_devices(device: str, nproc: int, cuda_devices: int, cpus: int, *, elsewhere: bool) -> list[str]:
    """What this machine's devices say about ``nproc`` ranks of ``train.device`` = ``device`` started here.
    Ranks that cannot run here are a LaunchError, unless ``elsewhere`` (a printed per-node command may run
    on another node): then a warning. Returns the warnings, one line each (also for CPU ranks outnumbering
    the CPUs this process may use)."""
    problems = []
    if device == "cuda" and cuda_devices == 0:
        problems.append("train.device is 'cuda' but no CUDA device is available on this machine")
    elif device != "cpu" and 0 < cuda_devices < nproc:
        problems.append(f"--nproc-per-node {nproc} but this node has {cuda_devices} CUDA device(s)")
    if problems and not elsewhere:
        raise LaunchError(problems[0])
    warnings = [f"megadepth: WARNING: {p}: run the printed command on a node that has enough" for p in problems]
    if (device == "cpu" or cuda_devices == 0) and nproc > cpus:
        where = "if run here, " if elsewhere and device != "cpu" else ""
        warnings.append(f"megadepth: WARNING: {where}{nproc} CPU process(es) per node but this machine lets them use "
                        f"only {cpus} CPU(s): they will share them, slowly (fewer --nproc-per-node, or GPUs)")
    return warnings
