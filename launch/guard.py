"""The guard: a small session leader between `megadepth launch` and the DeepSpeed runner.

The runner runs in a process group of its own, so that a stop signal reaches it, its per-node launcher
and every rank at once. When `megadepth launch` itself is SIGKILLed, nothing would pass anything on and
the ranks would train on, orphaned. So the group's leader is this guard:

- it asks the kernel for SIGTERM when its parent dies (``PR_SET_PDEATHSIG``; elsewhere it polls ``getppid``);
- on SIGINT/SIGTERM/SIGHUP/SIGQUIT it signals its whole group once, gives it ``--grace`` seconds, then
  SIGKILLs the others one by one (not the group, so that it outlives the escalation);
- when the command ends by itself, whatever it left behind in the group gets the same treatment;
- it exits with the command's exit code, 128 + N when a signal N ended it.

Usage: ``python -I launch/guard.py --grace S --parent PID -- CMD [ARG...]``. Standard library only: it is
run by path in isolated mode, independent of where the project is importable from.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
POLL_S = 0.1


def set_parent_death_signal(signum: int) -> bool:
    """Ask Linux to send ``signum`` to this process when its parent thread ends (`megadepth launch` starts
    the guard from its main thread); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def group_members(pgid: int, exclude: int | None = None) -> list[int] | None:
    """Live processes of group ``pgid`` (zombies do not count: an orphan re-parented to a PID 1 that never
    reaps stays in the group, dead, for good); None where there is no /proc to read."""
    if not os.path.isdir("/proc"):
        return None
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == exclude:
            continue
        try:
            with open(os.path.join(entry.path, "stat")) as f:
                state, _ppid, pgrp = f.read().rsplit(")", 1)[1].split()[:3]  # the name may hold spaces
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if int(pgrp) == pgid and state not in ("Z", "X"):
            found.append(int(entry.name))
    return found


def _others(pgid: int, child: subprocess.Popen) -> list[int]:
    """The group's live processes but this one (without /proc: the child, if it still runs)."""
    members = group_members(pgid, exclude=os.getpid())
    if members is None:
        return [child.pid] if child.poll() is None else []
    return members


def _kill_others(pgid: int, child: subprocess.Popen, within_s: float = 5.0) -> None:
    """SIGKILL every other process of the group, again until none is left (one may fork meanwhile)."""
    deadline = time.monotonic() + within_s
    while (left := _others(pgid, child)) and time.monotonic() < deadline:
        for pid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


def guard(cmd: Sequence[str], grace_s: float, parent: int | None) -> int:
    """Run ``cmd`` in this process group and keep the group from outliving a stop or the parent."""
    pgid = os.getpgrp()
    stop: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        if not stop:  # the first decides; our own copy of the forwarded signal comes back here too
            stop.append(signum)

    for sig in STOP_SIGNALS:
        signal.signal(sig, on_signal)
    set_parent_death_signal(signal.SIGTERM)

    def parent_gone() -> bool:  # also covers a parent that died before the prctl above
        return parent is not None and os.getppid() != parent

    if parent_gone():
        return 128 + signal.SIGTERM
    # the child gets default handlers back at exec (caught signals are reset; none is ignored here)
    child = subprocess.Popen(list(cmd))
    deadline: float | None = None
    while True:
        if not stop and parent_gone():
            stop.append(signal.SIGTERM)
        if stop and deadline is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, stop[0])
            deadline = time.monotonic() + grace_s
        if child.returncode is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=POLL_S)
        else:  # reaped already: wait() would return at once
            time.sleep(POLL_S)
        if deadline is None and child.returncode is None:
            continue
        if not _others(pgid, child):
            break
        if deadline is None:
            stop.append(signal.SIGTERM)  # the command ended but left processes behind: stop them too
        elif time.monotonic() > deadline:
            _kill_others(pgid, child)
            break
    code = child.wait()
    return code if code >= 0 else 128 - code


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="guard", description="run CMD; stop its process group with it")
    parser.add_argument("--grace", type=float, default=30.0, help="seconds between the stop signal and SIGKILL")
    parser.add_argument("--parent", type=int, default=None, help="the expected parent pid (its death stops CMD)")
    parser.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD [ARG...]")
    args = parser.parse_args(argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        parser.error("no command given")
    return guard(cmd, args.grace, args.parent)


if __name__ == "__main__":
    sys.exit(main())
