"""Hostfiles: the MPI-style list of nodes the DeepSpeed launcher starts ranks on.

One node per line, ``HOSTNAME slots=N`` (N processes: GPUs, or CPU ranks), ``#`` comments and blank
lines allowed. DeepSpeed's own parser is lenient (``slots=8x`` reads as 8, anything after the slot count
is ignored); this one accepts only what DeepSpeed reads the same way and says which line is wrong.
"""

from __future__ import annotations

import os
import re
import socket
import tempfile
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path


class LaunchError(ValueError):
    """Bad launch input (options, hostfile, hosts): one line, said before any process starts."""


# letters, digits, dots, dashes, underscores: what ssh, pdsh -w lists and DeepSpeed's
# --include syntax (which splits on '@', ':' and ',') all take literally
_HOST = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
_SLOTS = re.compile(r"^slots=(?P<n>\S*)$")


@dataclass(frozen=True)
class Host:
    """One node of a hostfile: its name, how many processes it can take, and where it was written."""

    name: str
    slots: int
    line: int = 0


def parse_hostfile_text(text: str, source: str = "hostfile") -> list[Host]:
    """The hosts of a hostfile, in order; raises LaunchError naming the file and line of any mistake."""
    hosts: list[Host] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{source} line {number}"
        name, *rest = line.split(None, 1)
        if not _HOST.fullmatch(name):
            raise LaunchError(f"{where}: bad host name {name!r} (letters, digits, '.', '-' and '_' only; no "
                              "user@ or :port)")
        slots_match = _SLOTS.match(rest[0].strip() if rest else "")
        if slots_match is None:
            raise LaunchError(f"{where}: expected 'HOSTNAME slots=N', got {line!r}")
        value = slots_match.group("n")
        if not value.isdigit() or int(value) < 1:
            raise LaunchError(f"{where}: bad slot count {value!r} for {name} (a whole number of processes, >= 1)")
        key = name.lower()  # host names are case-insensitive: LOCALHOST is localhost
        if key in seen:
            raise LaunchError(f"{where}: duplicate entry for {name} (first on line {seen[key]})")
        seen[key] = number
        hosts.append(Host(name, int(value), number))
    if not hosts:
        raise LaunchError(f"{source} lists no hosts (one 'HOSTNAME slots=N' per line)")
    return hosts


def read_hostfile(path: str | os.PathLike) -> list[Host]:
    """Parse the hostfile at ``path``; a missing or unreadable file is a LaunchError too."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise LaunchError(f"hostfile {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LaunchError(f"hostfile {path} cannot be read ({exc})") from None
    return parse_hostfile_text(text, source=f"hostfile {path}")


def format_hostfile(hosts: Iterable[Host]) -> str:
    return "".join(f"{h.name} slots={h.slots}\n" for h in hosts)


def check_slots(hosts: list[Host], nproc_per_node: int, source: str = "hostfile") -> None:
    """Every host must offer at least ``nproc_per_node`` slots (DeepSpeed would start that many anyway)."""
    short = [h for h in hosts if h.slots < nproc_per_node]
    if short:
        listing = ", ".join(f"{h.name} (line {h.line}) slots={h.slots}" for h in short)
        raise LaunchError(f"{source}: --nproc-per-node is {nproc_per_node} but {listing} "
                          f"{'has' if len(short) == 1 else 'have'} fewer slots")


def _resolves(name: str) -> bool:
    try:
        socket.getaddrinfo(name, None)
    except (socket.gaierror, UnicodeError, OSError):
        return False
    return True


def check_resolvable(hosts: list[Host], source: str = "hostfile") -> None:
    """Each host name must resolve to an address here (ssh and pdsh reach hosts by name)."""
    with ThreadPoolExecutor(max_workers=min(32, len(hosts))) as pool:
        ok = list(pool.map(_resolves, [h.name for h in hosts]))
    bad = [h for h, good in zip(hosts, ok, strict=True) if not good]
    if bad:
        listing = ", ".join(f"{h.name} (line {h.line})" for h in bad)
        raise LaunchError(f"{source}: unknown host{'s' if len(bad) > 1 else ''} {listing}: the name does not resolve")


def generated_hosts(nnodes: int, slots: int) -> list[Host]:
    """Placeholder nodes ``node0 .. node{N-1}`` for per-node launches: DeepSpeed needs a hostfile to
    accept more than one node, but with --no_ssh it only counts the entries (names need not resolve)."""
    return [Host(f"node{i}", slots, i + 1) for i in range(nnodes)]


def write_private_hostfile(hosts: list[Host]) -> Path:
    """A per-node launch's generated hostfile, in a new temporary file only this user can read or replace
    (mkstemp: a fixed name could be made first by another user). The caller removes it afterwards."""
    nnodes, slots = len(hosts), hosts[0].slots if hosts else 0
    fd, name = tempfile.mkstemp(prefix=f"megadepth-hostfile-{nnodes}x{slots}-")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(format_hostfile(hosts))
    except BaseException:
        os.unlink(name)
        raise
    return Path(name)
