"""What a Slurm partition's nodes offer, as ``sinfo`` reports it: CPUs, memory and GPUs per node.

The scripts megadepth writes for Slurm ask for resources (``launch --slurm``: GPUs per node; ``sweep
--executor slurm``: CPUs, memory and GPUs per array task). What the machine that writes them has says
nothing about the compute nodes (a login node has no GPU; a laptop no Slurm at all), so the requests are
decided from the config and from the cluster, read here, and a request sbatch refuses is explained against
the same numbers ("--mem=32G, but the nodes of partition debug have at most 21000M").

``sinfo`` is asked once, with a time limit; where it is missing or fails (no Slurm client, no controller
reachable) :func:`query` returns None and callers fall back to what the config says, saying so.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

FORMAT = "%P|%c|%m|%G|%D|%l"
"""Partition (``*`` marks the default), CPUs per node, memory per node in MB, generic resources, nodes, the
partition's time limit (``infinite``, ``30:00``, ``1-00:00:00``)."""

_GRES_ITEM = re.compile(r"([^,(]+)(?:\([^)]*\))?")
"""One entry of a ``%G`` list: ``gpu``, ``gpu:4`` or ``gpu:a100:4``, possibly followed by ``(S:0-1)``
(whose parentheses may hold commas too)."""

_SIZE = re.compile(r"(\d+)([KMGT]?)B?", re.IGNORECASE)
_UNIT_MB = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 * 1024}


@dataclass(frozen=True)
class NodeGroup:
    """Nodes of one partition that sinfo reports alike (one line of its output)."""

    partition: str
    default: bool
    """The cluster's default partition: where a job without ``--partition`` goes."""
    cpus: int
    memory_mb: int
    gres: str
    """sinfo's ``%G`` as printed, e.g. ``gpu:a100:4(S:0-1)`` or ``(null)``."""
    nodes: int
    time_limit: str = ""
    """sinfo's ``%l`` as printed: the partition's MaxTime (``infinite``; empty where not read)."""

    @property
    def gpus(self) -> int:
        """GPUs per node, from the generic resources (0 without a ``gpu`` entry)."""
        return gpus_in_gres(self.gres)


def gpus_in_gres(gres: str) -> int:
    """The number of GPUs a ``gpu[:type][:count]`` list of sinfo's ``%G`` names (a bare ``gpu`` is one)."""
    total = 0
    for match in _GRES_ITEM.finditer(gres or ""):
        parts = match.group(1).strip().split(":")
        if parts[0] == "gpu":
            total += int(parts[-1]) if len(parts) > 1 and parts[-1].isdigit() else 1
    return total


def size_mb(text: str) -> int | None:
    """A Slurm memory size (``--mem=32G``; no unit means megabytes) in MB, or None if it is not one."""
    match = _SIZE.fullmatch(text.strip())
    if not match:
        return None
    return int(int(match.group(1)) * _UNIT_MB[match.group(2).upper()])


def _number(text: str) -> int:
    """sinfo's counts may end in ``+`` (more on some nodes of the line); the leading digits, else 0."""
    match = re.match(r"\d+", text.strip())
    return int(match.group()) if match else 0


def seconds(text: str) -> int | None:
    """A Slurm time (``--time``, sinfo's ``%l``: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS) in
    seconds; None for ``infinite``/``UNLIMITED`` or anything else that is not one."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if not match:
        return None
    days, first, second, third = match.groups()
    numbers = [int(x) for x in (first, second, third) if x is not None]
    if days is not None:  # D-HH[:MM[:SS]]
        hours, minutes, secs = (numbers + [0, 0])[:3]
        return ((int(days) * 24 + hours) * 60 + minutes) * 60 + secs
    if len(numbers) == 3:
        return (numbers[0] * 60 + numbers[1]) * 60 + numbers[2]
    if len(numbers) == 2:  # MM:SS
        return numbers[0] * 60 + numbers[1]
    return numbers[0] * 60  # minutes


def longest_time(groups: Sequence[NodeGroup]) -> int | None:
    """The longest time limit among ``groups``' partitions in seconds; None where one has none (or it was
    not read)."""
    limits = [seconds(g.time_limit) for g in groups]
    return None if not limits or None in limits else max(x for x in limits if x is not None)


def parse(text: str) -> list[NodeGroup]:
    """sinfo's ``-h -o FORMAT`` output as NodeGroups (lines that do not parse are left out; the time limit
    is optional, as in the format's first five fields alone)."""
    groups = []
    for line in text.splitlines():
        fields = line.strip().split("|")
        if len(fields) not in (5, 6) or not fields[0]:
            continue
        name = fields[0]
        groups.append(NodeGroup(partition=name.rstrip("*"), default=name.endswith("*"), cpus=_number(fields[1]),
                                memory_mb=_number(fields[2]), gres=fields[3].strip(), nodes=_number(fields[4]),
                                time_limit=fields[5].strip() if len(fields) == 6 else ""))
    return groups


def _run(args: list[str], sinfo: str, timeout_s: float) -> str | None:
    """sinfo's standard output, or None where it cannot answer (not installed, no controller, too slow)."""
    exe = shutil.which(sinfo)
    if exe is None:
        return None
    try:
        done = subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout_s,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def query(partition: str | None = None, *, sinfo: str = "sinfo", timeout_s: float = 20) -> list[NodeGroup] | None:
    """The node groups of ``partition`` (None: the default partition's); None when sinfo cannot say (not
    installed, no controller reachable), and an empty list when it answers but lists no node of the named
    partition: no such partition (sinfo exits 0 and prints nothing for one)."""
    args = ["-h", "-o", FORMAT]
    if partition:
        args += ["-p", partition]
    text = _run(args, sinfo, timeout_s)
    if text is None:
        return None
    groups = parse(text)
    if not partition:
        default = [g for g in groups if g.default]
        return default or groups or None
    return groups


def partitions(*, sinfo: str = "sinfo", timeout_s: float = 20) -> list[str] | None:
    """The cluster's partition names as sinfo lists them (``*`` marks the default; ``--all``: hidden ones and
    those of other groups too), or None where it cannot."""
    text = _run(["--all", "-h", "-o", "%P"], sinfo, timeout_s)
    if text is None:
        return None
    return list(dict.fromkeys(line.strip() for line in text.splitlines() if line.strip()))


def partition_option(options: Sequence[str]) -> str | None:
    """The partition among ``#SBATCH`` options given as single words (``--partition=gpu``, ``-pgpu``,
    ``-p=gpu``); the last one wins, as it does for sbatch. None: the default partition."""
    found = None
    for option in options:
        if option.startswith("--partition="):
            found = option.split("=", 1)[1]
        elif option.startswith("-p") and not option.startswith("--") and len(option) > 2:
            found = option[2:].removeprefix("=")
    return found or None


def describe(groups: Sequence[NodeGroup]) -> str:
    """``partition debug (1 node: 2 CPUs, 21000M, no GPU)``: what a message can name."""
    name = groups[0].partition if groups else "?"
    parts = []
    for g in groups:
        gpus = f"{g.gpus} GPU(s) ({g.gres})" if g.gpus else "no GPU"
        parts.append(f"{g.nodes} node(s): {g.cpus} CPUs, {g.memory_mb}M, {gpus}")
    return f"partition {name} ({'; '.join(parts)})"
