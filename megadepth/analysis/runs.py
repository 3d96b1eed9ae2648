"""The report's input: the runs of a sweep directory (or of a plain directory of run directories), their
metric, and which axis plays which role (x, curve, seed, panels)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from megadepth.common.errors import ConfigError
from megadepth.common.typed_yaml import flatten, section
from megadepth.sweep.spec import METRICS, NON_RESULT_KEYS, NON_RESULT_SECTIONS
from megadepth.sweep.state import STATUSES, as_float, read_json, read_state

BLOWN_UP = 2.0
"""A finished run whose loss exceeds this many times ln(vocab_size), the loss of a uniform guess, blew
up and merely stayed finite: the report counts it as diverged."""

_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the C loader when there is one: many runs


@dataclass
class Run:
    id: str
    point: dict[str, Any]
    status: str
    value: float  # the metric; +inf diverged; nan missing
    error: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass
class Roles:
    """Which axis plays which part."""

    x: str
    curve: str | None
    seed: str | None
    panels: list[str]
    metric: str
    # role key (x, curve, seed) -> the linked keys that move with it: part of that role, not panels
    linked: dict[str, list[str]] = field(default_factory=dict)


def hashable(value: Any) -> Any:
    return tuple(hashable(v) for v in value) if isinstance(value, list) else value


def load_runs(root: Path, metric: str | None) -> tuple[list[Run], dict[str, Any]]:
    """The runs of a sweep directory (or of a directory of run directories) and the sweep's meta. A
    run's value is its metric: +inf when it diverged or is above BLOWN_UP ln(vocab); nan when unfinished."""
    if not root.is_dir():
        raise ConfigError(f"report: {root} is not a directory")
    index = read_json(root / "sweep.json")
    if index is not None and isinstance(index.get("runs"), list):
        _check_index(root / "sweep.json", index)
        run_root = root / "runs"
        meta = {"name": index.get("name", root.name), "axes": list(index.get("axes", [])),
                "report": dict(index.get("report") or {}), "metric": index.get("metric"), "source": "sweep.json"}
        entries = [(str(e["id"]), dict(e.get("point") or {})) for e in index["runs"] if "id" in e]
        recorded = {str(e["id"]): e for e in index["runs"] if "id" in e}
        groups = _spec_links(root / str(index.get("spec") or "sweep.yaml"), meta["axes"])
    else:
        run_root, meta, entries = _run_directories(root)
        groups, recorded = None, {}
    meta["linked"], meta["linked_source"] = (groups, "sweep spec") if groups is not None else \
        (_infer_links([p for _, p in entries], meta["axes"]), "inferred")
    runs: list[Run] = []
    from_index = 0
    for rid, point in entries:
        if not (run_root / rid).is_dir() and recorded.get(rid, {}).get("status") in ("completed", "diverged", "failed"):
            runs.append(_recorded_run(rid, point, recorded[rid]))
            from_index += 1
            continue
        state = read_state(run_root / rid, rid)
        runs.append(Run(rid, point, state.status, math.nan, state.error, state.summary))
    if from_index:
        meta["source"] = (f"sweep.json ({from_index} run(s) from its recorded results: their directories are "
                          "absent, so a finite loss above ln(vocab_size) cannot be checked)")
    metric_name = metric or meta.get("metric")
    if metric_name is None:  # a plain directory: eval loss where runs have it, else train loss
        has_eval = any(math.isfinite(as_float(r.summary.get("final_eval_loss"))) for r in runs
                       if r.status == "completed")
        metric_name = "final_eval_loss" if has_eval else "final_loss"
    if metric_name not in METRICS:
        raise ConfigError(f"report: --metric must be one of {', '.join(METRICS)}, got '{metric_name}'")
    for r in runs:
        r.value = math.inf if r.status == "diverged" else (as_float(r.summary.get(metric_name))
                                                            if r.status == "completed" else math.nan)
        if r.status == "completed" and r.value != r.value:
            r.status = "no metric"
        elif r.status == "completed" and math.isinf(r.value):
            r.status = "diverged"
        elif r.status == "completed":
            vocab = _vocab_size(run_root / r.id)
            if vocab is not None and r.value > BLOWN_UP * math.log(vocab):
                r.error = (f"{metric_name} {r.value:.4g} > {BLOWN_UP:g} ln(vocab_size {vocab}) = "
                           f"{BLOWN_UP * math.log(vocab):.4g}: blew up, counted as diverged")
                r.status, r.value = "diverged", math.inf
    meta["metric"] = metric_name
    return runs, meta


def _check_index(path: Path, index: dict[str, Any]) -> None:
    """A sweep.json the report can read: a clear error for a hand-edited or corrupt one, not a traceback."""
    problems = []
    if not isinstance(index.get("axes", []), list):
        problems.append("'axes' is not a list")
    if not isinstance(index.get("report") or {}, dict):
        problems.append("'report' is not a mapping")
    for k, entry in enumerate(index["runs"]):
        if not isinstance(entry, dict) or not isinstance(entry.get("point", {}), dict):
            problems.append(f"runs[{k}] is not a run (a mapping with 'id' and a 'point' mapping)")
        elif "status" in entry and entry["status"] not in STATUSES:
            problems.append(f"runs[{k}] has status {entry['status']!r} (one of {', '.join(STATUSES)})")
    if problems:
        raise ConfigError(f"report: {path} is not a sweep index megadepth wrote: {'; '.join(problems[:3])}")


def _recorded_run(rid: str, point: dict[str, Any], entry: dict[str, Any]) -> Run:
    """A run known only from sweep.json (its directory not copied, as for a sweep's published results): the
    status, error and metrics the sweep recorded when the run ended. Without its config the blown-up check
    against ln(vocab_size) cannot be made (the report's source says so)."""
    status = str(entry["status"])
    summary = {k: entry[k] for k in (*METRICS, "steps", "tokens", "wall_s") if k in entry}
    return Run(rid, point, status, math.nan, entry.get("error"), summary)


def _run_directories(root: Path) -> tuple[Path, dict[str, Any], list[tuple[str, dict[str, Any]]]]:
    """A directory without sweep.json: its run directories, and as axes the result-affecting config
    keys whose values differ between them."""
    run_root = root / "runs" if (root / "runs").is_dir() else root
    dirs = sorted(d for d in run_root.iterdir() if d.is_dir() and (d / "config.yaml").is_file())
    if not dirs:
        raise ConfigError(f"report: {root} is not a sweep directory (no sweep.json) and holds no run "
                          "directories (no */config.yaml); run `megadepth sweep SWEEP.yaml --out DIR` first")
    flat = {}
    for d in dirs:
        try:
            flat[d.name] = flatten(yaml.safe_load((d / "config.yaml").read_text(encoding="utf-8")) or {})
        except yaml.YAMLError:
            continue
    keys = sorted({k for f in flat.values() for k in f})
    axes = [k for k in keys if k not in NON_RESULT_KEYS and section(k) not in NON_RESULT_SECTIONS
            and len({repr(hashable(f.get(k))) for f in flat.values()}) > 1]
    meta = {"name": root.name, "axes": axes, "report": {}, "metric": None, "source": "run directories"}
    return run_root, meta, [(name, {k: f.get(k) for k in axes}) for name, f in flat.items()]


def _vocab_size(run_dir: Path) -> int | None:
    """model.vocab_size from a run's config.yaml, else its sweep_config.yaml; None when neither reads."""
    for name in ("config.yaml", "sweep_config.yaml"):
        try:
            data = yaml.load((run_dir / name).read_text(encoding="utf-8"), Loader=_YAML_LOADER)
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue
        model = data.get("model") if isinstance(data, dict) else None
        vocab = model.get("vocab_size") if isinstance(model, dict) else None
        if isinstance(vocab, int) and not isinstance(vocab, bool) and vocab > 1:
            return vocab
    return None


def _spec_links(spec_path: Path, axes: Sequence[str]) -> list[list[str]] | None:
    """The linked axes of a sweep, from its frozen spec's grid keys; None when the spec cannot be read."""
    try:
        data = yaml.safe_load(spec_path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    grid = data.get("grid") if isinstance(data, dict) else None
    if not isinstance(grid, dict):
        return None
    groups = [[k.strip() for k in str(name).split(",")] for name in grid]
    return [g for g in groups if len(g) > 1 and all(k in axes for k in g)]


def _values(points: Sequence[dict[str, Any]], key: str) -> list[str]:
    return [repr(hashable(p.get(key))) for p in points]


def _determines(points: Sequence[dict[str, Any]], a: str, b: str) -> bool:
    """Whether ``a``'s value fixes ``b``'s in every point (b is a function of a)."""
    seen: dict[str, str] = {}
    return all(seen.setdefault(va, vb) == vb for va, vb in zip(_values(points, a), _values(points, b), strict=True))


def _infer_links(points: Sequence[dict[str, Any]], axes: Sequence[str]) -> list[list[str]]:
    """Axes that move together without a spec saying so: varied keys in one-to-one correspondence."""
    varied = [k for k in axes if len(set(_values(points, k))) > 1]
    groups: list[list[str]] = []
    for key in varied:
        for group in groups:
            if _determines(points, group[0], key) and _determines(points, key, group[0]):
                group.append(key)
                break
        else:
            groups.append([key])
    return [g for g in groups if len(g) > 1]


def choose_roles(meta: dict[str, Any], x: str | None, curve: str | None, seed: str | None,
                 points: Sequence[dict[str, Any]] = ()) -> Roles:
    """Which axis is x, curve, seed and which are panels (linked keys move with their role key)."""
    axes = list(meta["axes"])
    groups: list[list[str]] = [list(g) for g in meta.get("linked") or []]
    rep = meta.get("report") or {}
    listing = f"axes: {', '.join(axes) or 'none'}"

    def moves_with(a: str, b: str) -> bool:
        return any(a in g and b in g and (_determines(points, a, b) or _determines(points, b, a)) for g in groups)

    x = x or rep.get("x") or "optimizer.lr"
    if x not in axes:
        raise ConfigError(f"report: the x axis '{x}' is not an axis of this sweep ({listing}); choose one with --x")
    taken: list[tuple[str, str]] = [("x", x)]

    def pick(role: str, given: str | None, default: str) -> str | None:
        key = given or rep.get(role) or default
        problem = None
        if key not in axes:
            problem = f"--{role} '{key}' is not an axis of this sweep"
        for other_role, other in taken:
            if key == other:
                problem = f"--{role} '{key}' is already the {other_role} axis; x, curve and seed must be different axes"
            elif moves_with(key, other):
                problem = (f"--{role} '{key}' is linked to the {other_role} axis '{other}' (they move together), so it "
                           f"cannot be the {role} axis")
        if problem is None:
            taken.append((role, key))
            return key
        if given:
            raise ConfigError(f"report: {problem} ({listing})")
        return None  # a default that does not fit this sweep: no such axis

    curve_axis = pick("curve", curve, "model.depth")
    seed_axis = pick("seed", seed, "train.seed")
    linked: dict[str, list[str]] = {}
    for _, key in taken:
        mates = [k for g in groups if key in g for k in g if k != key and _determines(points, key, k)]
        if mates:
            linked[key] = mates
    roles = {key for _, key in taken} | {k for mates in linked.values() for k in mates}
    panels = [a for a in axes if a not in roles]
    return Roles(x, curve_axis, seed_axis, panels, meta["metric"], linked)
