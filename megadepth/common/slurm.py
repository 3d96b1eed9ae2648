"""Slurm as megadepth writes for it: the batch scripts of launch, sweep and prep (:func:`render`), the values
their ``#SBATCH`` lines may hold (sbatch reads them itself, not a shell: a space ends a value), what a
partition's nodes offer as ``sinfo`` reports it, and the check of a job's requests against those nodes
(:func:`fit_problems`): sbatch answers a request no node can meet with "Requested node configuration is not
available", or queues it forever.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources

# ------------------------------------------------------------------------------------ #SBATCH values

SBATCH_VALUE = re.compile(r"[A-Za-z0-9._+,:@%=/-]+")
"""What a value in an #SBATCH line may hold: no whitespace, quotes or shell characters."""

SLURM_TIME = re.compile(r"\d+(:\d+){0,2}|\d+-\d+(:\d+){0,2}")
"""sbatch --time: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS (man sbatch)."""


def sbatch_value_problem(values: Mapping[str, str | None]) -> str | None:
    """The first problem with ``{flag: value}`` (None: unset) as one line, or None; callers raise it."""
    for flag, value in values.items():
        if value is None:
            continue
        if not SBATCH_VALUE.fullmatch(value):
            return (f"{flag} {value!r}: an #SBATCH value may only hold letters, digits and ._+,:@%=/- "
                    "(no spaces, quotes or shell characters)")
        if flag == "--time" and not SLURM_TIME.fullmatch(value):
            return (f"--time {value}: Slurm takes minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS "
                    "(e.g. 04:00:00 or 1-12:00:00)")
    return None


SCRIPT_PATH_REFUSED = {"\n": "a line break", "\r": "a carriage return", "\\": "a backslash", "%": "a '%'"}
"""Characters a path written shell-quoted into a batch script's ``#SBATCH --output=`` or comment line cannot
hold: a line break would turn the rest into a shell command, sbatch treats a backslash as an escape even
inside quotes, and it expands ``%`` in log file names (``%j``: the job id)."""


def script_path_problem(option: str, path: str) -> str | None:
    """Why ``path`` cannot be written into a generated Slurm script, as one line, or None."""
    for char, what in SCRIPT_PATH_REFUSED.items():
        if char in path:
            return (f"{option} {path!r} holds {what}, which a Slurm batch script cannot carry in its #SBATCH "
                    "--output line or comments: choose a directory without it")
    return None


def option_value(options: Sequence[str], long: str, short: str | None = None) -> str | None:
    """The last value of one sbatch option among single-word options (``--mem=8G``, ``-c4``, ``-c=4``), or None."""
    found = None
    for option in options:
        if option.startswith(f"{long}="):
            found = option.split("=", 1)[1]
        elif short and option.startswith(short) and not option.startswith("--") and len(option) > len(short):
            found = option[len(short):].removeprefix("=")
    return found


MEM_NONE = "none"
"""``--mem none`` (prep, sweep): no ``--mem`` line, so the partition's default (DefMemPerCPU) applies."""
MEM_HINT = f"--mem SIZE, or --mem {MEM_NONE} for the partition's default"

# ------------------------------------------------------------------------------------------- sinfo

FORMAT = "%P|%c|%m|%G|%D|%l"
"""Partition (``*``: the default), CPUs and memory (MB) per node, generic resources, nodes, time limit."""

_GRES_ITEM = re.compile(r"([^,(]+)(?:\([^)]*\))?")
"""One entry of a ``%G`` list: ``gpu``, ``gpu:4`` or ``gpu:a100:4``, maybe followed by ``(S:0-1)``."""

_SIZE = re.compile(r"(\d+)([KMGT]?)B?", re.IGNORECASE)
_UNIT_MB = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 * 1024}


@dataclass(frozen=True)
class NodeGroup:
    """Nodes of one partition that sinfo reports alike (one line of its output)."""

    partition: str
    default: bool  # the cluster's default partition
    cpus: int
    memory_mb: int
    gres: str  # sinfo's %G as printed, e.g. gpu:a100:4(S:0-1) or (null)
    nodes: int
    time_limit: str = ""  # sinfo's %l as printed (infinite; empty where not read)

    @property
    def gpus(self) -> int:
        """GPUs per node, from the generic resources (0 without a ``gpu`` entry)."""
        return gpus_in_gres(self.gres)


def gpus_in_gres(gres: str) -> int:
    """The number of GPUs a ``gpu[:type][:count]`` list of sinfo's ``%G`` names (a bare ``gpu`` is one)."""
    items = (m.group(1).strip().split(":") for m in _GRES_ITEM.finditer(gres or ""))
    return sum(int(p[-1]) if len(p) > 1 and p[-1].isdigit() else 1 for p in items if p[0] == "gpu")


def size_mb(text: str) -> int | None:
    """A Slurm memory size (``--mem=32G``; no unit means megabytes) in MB, or None if it is not one."""
    match = _SIZE.fullmatch(text.strip())
    return int(int(match.group(1)) * _UNIT_MB[match.group(2).upper()]) if match else None


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
    days, *rest = match.groups()
    numbers = [int(x) for x in rest if x is not None]
    if days is not None:  # D-HH[:MM[:SS]]
        hours, minutes, secs = (numbers + [0, 0])[:3]
        return ((int(days) * 24 + hours) * 60 + minutes) * 60 + secs
    units = {1: (60,), 2: (60, 1), 3: (3600, 60, 1)}[len(numbers)]  # minutes, MM:SS, HH:MM:SS
    return sum(n * unit for n, unit in zip(numbers, units, strict=True))


def parse(text: str) -> list[NodeGroup]:
    """sinfo's ``-h -o FORMAT`` output as NodeGroups (lines that do not parse left out; time limit optional)."""
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
    """The node groups of ``partition`` (None: the default partition's); None when sinfo cannot say, and an
    empty list when it lists no node of the named partition (no such partition)."""
    text = _run(["-h", "-o", FORMAT, *(["-p", partition] if partition else [])], sinfo, timeout_s)
    if text is None:
        return None
    groups = parse(text)
    return groups if partition else [g for g in groups if g.default] or groups or None


Query = Callable[[str | None], list[NodeGroup] | None]
"""What :func:`query` is to the callers that take a stand-in for it (tests): a partition's node groups."""


def partitions(*, sinfo: str = "sinfo", timeout_s: float = 20) -> list[str] | None:
    """The cluster's partition names as ``sinfo --all`` lists them (``*`` marks the default), or None."""
    text = _run(["--all", "-h", "-o", "%P"], sinfo, timeout_s)
    return None if text is None else list(dict.fromkeys(line.strip() for line in text.splitlines() if line.strip()))


def partition_option(options: Sequence[str]) -> str | None:
    """The partition among single-word ``#SBATCH`` options (``-pgpu``); None: the default partition."""
    return option_value(options, "--partition", "-p") or None


def describe(groups: Sequence[NodeGroup]) -> str:
    """``partition debug (1 node: 2 CPUs, 21000M, no GPU)``: what a message can name."""
    name = groups[0].partition if groups else "?"
    parts = [f"{g.nodes} node(s): {g.cpus} CPUs, {g.memory_mb}M, "
             + (f"{g.gpus} GPU(s) ({g.gres})" if g.gpus else "no GPU") for g in groups]
    return f"partition {name} ({'; '.join(parts)})"


def no_such_partition(said: str) -> str:
    """The line for a partition sinfo does not list; ``said``: the option as the user gave it."""
    names = partitions()
    listed = f" (it lists {', '.join(names)}; * marks the default)" if names else ""
    return f"{said}: sinfo lists no such partition{listed}"


# ----------------------------------------------------------------------------------------- the fit


def fit_problems(groups: Sequence[NodeGroup], *, partition: str | None = None, nodes: int | None = None,
                 mem: str | None = None, cpus: int | str | None = None, time: str | None = None,
                 gpus: int = 0, flag: str = "", hints: Mapping[str, str] | None = None) -> list[str]:
    """The requests of a job (each node of it, or each array task) that the nodes of its partition
    (``groups``; empty: sinfo lists no such partition) can never meet, one phrase each; empty if they fit.

    Each request is named as an option, ``{flag}--mem=32G`` (GPUs as ``--gres=gpu:N``), with the caller's
    hint of how to ask for less (``hints``, keyed by ``mem``, ``cpus``, ``time``, ``gpus``). A value that
    does not parse is left to sbatch. ``nodes`` (None: not asked) is checked once the rest fits."""
    if not groups:
        return [no_such_partition(f"{flag}--partition={partition}")]
    hints = hints or {}

    def note(kind: str, *first: str) -> str:
        inside = "; ".join(x for x in (*first, hints.get(kind)) if x)
        return f" ({inside})" if inside else ""

    mem_mb = size_mb(mem) if mem is not None else None
    cpus_n = int(cpus) if cpus is not None and str(cpus).isdigit() else None
    found = []
    if mem_mb is not None and mem_mb > max(g.memory_mb for g in groups):
        found.append(f"{flag}--mem={mem} is more memory than any node has{note('mem')}")
    if cpus_n is not None and cpus_n > max(g.cpus for g in groups):
        found.append(f"{flag}--cpus-per-task={cpus} is more CPUs than any node has{note('cpus')}")
    limits = [seconds(g.time_limit) for g in groups]  # None: infinite, or not read
    asked_s = seconds(time) if time is not None else None
    if asked_s is not None and None not in limits and asked_s > max(x or 0 for x in limits):
        found.append(f"{flag}--time={time} is longer than the partition's time limit"
                     f"{note('time', groups[0].time_limit)}")
    if gpus > max(g.gpus for g in groups):
        found.append(f"--gres=gpu:{gpus} is more GPUs than any node has{note('gpus')}")
    if not found and nodes is not None:
        total = sum(g.nodes for g in groups)
        able = sum(g.nodes for g in groups
                   if (mem_mb or 0) <= g.memory_mb and (cpus_n or 0) <= g.cpus and gpus <= g.gpus)
        if nodes > total:
            found.append(f"--nnodes {nodes} is more nodes than the partition has ({total})")
        elif nodes > able:
            found.append(f"--nnodes {nodes} but only {able} node(s) of the partition meet the requests")
    return found


def fit_refusal(groups: Sequence[NodeGroup], problems: Sequence[str], job: str) -> str:
    """One line for :func:`fit_problems`' answer: ``no node can run JOB: PROBLEMS: the nodes``."""
    return f"no node can run {job}: {'; '.join(problems)}: {describe(groups)}" if groups else problems[0]


# ---------------------------------------------------------------------------------------- templates

PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")


def render(template: str, **values: object) -> str:
    """``templates/TEMPLATE`` with each ``{{name}}`` replaced by ``values[name]`` in one pass, or RuntimeError."""
    text = resources.files("megadepth.common").joinpath("templates", template).read_text(encoding="utf-8")
    unfilled = set(PLACEHOLDER.findall(text)) - values.keys()
    if unfilled:
        raise RuntimeError(f"unfilled placeholder in {template}: {sorted(unfilled)}")
    return PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), text)
