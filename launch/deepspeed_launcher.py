"""Build the DeepSpeed launcher command: one node, a hostfile over ssh/pdsh, or one node of many.

The command is a list of arguments, never a shell string, so config values cannot inject shell syntax;
except in hostfile mode, where DeepSpeed's pdsh runner joins it into one string for the remote shell,
quoting badly: there the config files and ``--set`` items travel as one shell-safe token (``--args-b64``)
and the other words pdsh sends (this directory, this Python) must be shell-safe already.
Each rank runs ``python -m megadepth train ...``; the launcher sets RANK / LOCAL_RANK / WORLD_SIZE /
MASTER_ADDR / MASTER_PORT.

- single node: ``deepspeed --num_gpus K --master_port P ...``
- hostfile (ssh): ``deepspeed -H HOSTFILE [--num_nodes N] --num_gpus K --force_multi ... --args-b64 TOKEN``:
  every node's ranks start through pdsh, even for one host
- per node: ``deepspeed -H HOSTFILE --num_gpus K --no_ssh --node_rank R --master_addr A ...`` on each node;
  the hostfile only tells DeepSpeed how many nodes there are and how many ranks each runs
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from launch.hostfile import LaunchError
from megadepth.common.host import usable_cpus


@dataclass(frozen=True)
class LaunchSpec:
    """What to start on this node."""

    nproc_per_node: int
    config_files: tuple[str, ...]
    overrides: tuple[str, ...] = ()
    master_port: int = 29500
    use_gpu: bool = False  # This node's ranks use its GPUs (decided where the launcher runs: the node itself)
    cpu_only: bool = False  # train.device is 'cpu': the ranks use the CPU on whatever node runs the command
    extra_env: dict[str, str] = field(default_factory=dict)
    hostfile: str | None = None  # -H: the hostfile (hostfile and per-node launches); None: this node only
    num_nodes: int | None = None  # --num_nodes: use the first N hosts of the hostfile (None: all of them)
    node_rank: int | None = None  # --no_ssh --node_rank R: start only this node's ranks (per-node launches)
    master_addr: str | None = None  # node 0's address (None: DeepSpeed asks the first host, `hostname -I`)


def deepspeed_executable() -> list[str]:
    """The launcher, as a command: the `deepspeed` script beside this Python, else on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), "deepspeed")
    if os.path.exists(beside):
        return [beside]
    found = shutil.which("deepspeed")
    return [found] if found else [sys.executable, "-m", "deepspeed.launcher.runner"]


ARGS_B64 = "--args-b64"  # `megadepth train` option: its arguments as one shell-safe token (hostfile mode)
SHELL_SAFE = re.compile(r"[A-Za-z0-9_./,:@%+=-]+")  # what a POSIX shell takes literally (may reach pdsh)


def train_arguments(spec: LaunchSpec) -> list[str]:
    """What follows ``megadepth train`` on every rank (hostfile mode): the overrides, then the config files
    (``--set=ITEM`` and ``--`` keep every value an argument of its own whatever it starts with)."""
    return [*(f"--set={item}" for item in spec.overrides), "--", *spec.config_files]


def encode_train_args(args: list[str]) -> str:
    """One token of [A-Za-z0-9_=-] (URL-safe base64 of a JSON list): no shell changes it."""
    return base64.urlsafe_b64encode(json.dumps(args).encode()).decode("ascii")


def decode_train_args(token: str) -> list[str]:
    """The argument list ``encode_train_args`` made; ValueError (one line) for anything else."""
    try:
        raw = base64.b64decode(token.encode("ascii"), altchars=b"-_", validate=True)
        args = json.loads(raw.decode("utf-8"))
    except (UnicodeError, binascii.Error, ValueError):
        raise ValueError(f"{ARGS_B64} is not URL-safe base64 of a JSON list") from None
    if not isinstance(args, list) or not all(isinstance(a, str) and "\0" not in a for a in args):
        raise ValueError(f"{ARGS_B64} must decode to a JSON list of strings")
    return args


def check_remote_shell_safe(cwd: str, python: str) -> None:
    """Hostfile mode: DeepSpeed's pdsh runner puts ``cd CWD;`` and its Python's path into the remote shell
    command unquoted, so a space, quote, ``$`` or ``;`` there would split or run on every node."""
    for what, value in (("the current directory", cwd), ("this Python's path", python)):
        if not SHELL_SAFE.fullmatch(value):
            raise LaunchError(f"--hostfile: {what} {value!r} holds characters other than letters, digits and "
                              "._/,:@%+=- and DeepSpeed's pdsh runner does not quote it for the remote shell: "
                              "launch from (or install into) a path without them")


@functools.cache
def runner_has_option(option: str) -> bool:
    """Whether the installed DeepSpeed runner takes ``option`` (``--log_level`` is younger than the oldest
    DeepSpeed we allow, 0.16). Read from its source rather than imported: importing deepspeed costs seconds."""
    spec = importlib.util.find_spec("deepspeed")  # a top-level name: found, not imported
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        with contextlib.suppress(OSError):
            return f'"{option}"' in Path(folder, "launcher", "runner.py").read_text()
    return False


def build_command(spec: LaunchSpec) -> list[str]:
    """The launcher command line: ``nproc_per_node`` ranks on this node, or on each host of the hostfile."""
    if spec.nproc_per_node < 1:
        raise ValueError("--nproc-per-node must be at least 1")
    over_ssh = spec.hostfile is not None and spec.node_rank is None
    cmd = deepspeed_executable()
    if spec.hostfile is not None:
        cmd += ["-H", spec.hostfile]
        if spec.num_nodes is not None:
            cmd += ["--num_nodes", str(spec.num_nodes)]
    cmd += ["--num_gpus", str(spec.nproc_per_node)]
    if over_ssh:
        cmd += ["--force_multi"]  # through pdsh even for one host, not on this machine
        if runner_has_option("--log_level"):
            # no INFO log of pdsh's command line, which holds every exported variable
            cmd += ["--log_level", "warning"]
    if spec.node_rank is not None:
        if spec.hostfile is None:
            raise ValueError("a per-node launch needs a hostfile (DeepSpeed refuses --num_nodes > 1 without one)")
        cmd += ["--no_ssh", "--node_rank", str(spec.node_rank)]
    if spec.master_addr is not None:
        cmd += ["--master_addr", spec.master_addr]
    # ranks read LOCAL_RANK from the environment; no --local_rank=N pushed in front of our arguments
    cmd += ["--master_port", str(spec.master_port), "--no_local_rank", "--module", "megadepth", "train"]
    if over_ssh:
        return [*cmd, ARGS_B64, encode_train_args(train_arguments(spec))]
    cmd += list(spec.config_files)
    for item in spec.overrides:
        cmd += ["--set", item]
    return cmd


def portable_env(spec: LaunchSpec) -> dict[str, str]:
    """Environment additions any node needs, whatever its hardware (what a printed per-node command carries,
    as it may run on another node): the CPU accelerator when the config asks for the CPU."""
    env: dict[str, str] = dict(spec.extra_env)
    if spec.cpu_only:
        env.setdefault("DS_ACCELERATOR", "cpu")
    return env


def launcher_env(spec: LaunchSpec, cpu_count: int | None = None) -> dict[str, str]:
    """Environment additions for the ranks this launcher starts on this node: :func:`portable_env`, and
    when they run on its CPUs the CPU accelerator (no DeepSpeed auto-detection warning) and a fair thread
    share of the CPUs this process may use."""
    env = portable_env(spec)
    if not spec.use_gpu:
        env.setdefault("DS_ACCELERATOR", "cpu")
        cores = cpu_count or usable_cpus()
        env.setdefault("OMP_NUM_THREADS", str(max(1, cores // spec.nproc_per_node)))
    return env


def describe(cmd: list[str], env: dict[str, str]) -> str:
    """The exact command as a person would type it (for --dry-run and logs)."""
    prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(env.items()))
    return f"{prefix} {shlex.join(cmd)}".strip()


STOP_GRACE_S = 30.0  # after a stop signal, how long the launcher's processes get before SIGKILL

GUARD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "guard.py")


def guarded(cmd: list[str], grace_s: float = STOP_GRACE_S) -> list[str]:
    """``cmd`` run under launch/guard.py, which stops its whole process group when told to or when this
    process dies (even by SIGKILL); by path and in isolated mode: it needs nothing but the standard library."""
    return [sys.executable, "-I", GUARD, "--grace", repr(float(grace_s)), "--parent", str(os.getpid()), "--", *cmd]


def run(cmd: list[str], env: dict[str, str], grace_s: float = STOP_GRACE_S) -> int:
    """Run the launcher and wait. Returns its exit code, or 128 + the signal number when stopped by one.

    A stop signal reaches this process only, and the `deepspeed` runner would die of it without telling
    the launcher that stops the ranks. So the runner runs in its own process group led by a guard
    (launch/guard.py), which passes SIGINT/SIGTERM/SIGHUP/SIGQUIT to the whole group, SIGKILLs what is
    left after ``grace_s``, and does the same when this process dies without a word (``kill -9``).
    """
    received: list[int] = []
    started: list[subprocess.Popen] = []

    def forward(signum: int, _frame: object) -> None:
        received.append(signum)
        for proc in started:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signum)  # the guard acts on the first and ignores repeats

    previous = {}
    if threading.current_thread() is threading.main_thread():  # installed first: no signal slips past
        # SIGQUIT too: the own session means a terminal's Ctrl-\ no longer reaches the ranks directly
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
            previous[sig] = signal.signal(sig, forward)
    try:
        proc = subprocess.Popen(guarded(cmd, grace_s), env={**os.environ, **env}, start_new_session=True)
        started.append(proc)
        if received:  # arrived while it was starting
            forward(received.pop(), None)
        code = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received:
        return 128 + received[0]
    return code if code >= 0 else 128 - code
