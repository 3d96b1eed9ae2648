"""Sweep specs (format: docs/transfer.md): a base config, grid axes over any config key, a budget and a
metric -> grid points, all checked before any run starts.

A run id is a readable slug plus the first 10 hex digits of sha256 over the point's canonical JSON: the
same on every machine, and unchanged when points are added to the grid."""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from megadepth.common.errors import ConfigError
from megadepth.common.typed_yaml import (
    TypedYaml,
    deep_merge,
    did_you_mean,
    field_at,
    flatten,
    leaf,
    lookup,
    nest,
    section,
    suggest,
)
from megadepth.config.load import CONFIG, apply_override, parse_override, read_yaml, resolve_batch, validate
from megadepth.config.schema import RENAMED_KEYS, Config

METRICS = ("final_eval_loss", "final_loss")

# Keys whose value does not change what a run computes: ignored when comparing a finished run's config.
NON_RESULT_KEYS = ("train.out_dir", "train.progress", "train.resume", "data.num_workers", "data.cache_dir",
                   "parallel.timeout_s")
NON_RESULT_SECTIONS = ("wandb",)
FORBIDDEN_AXES = ("train.out_dir", "wandb.group", "wandb.name")
# Keys the sweep sets for every run: refused in 'config:' and --set (they would be silently replaced),
# dropped from 'base:' files (shared configs written for standalone runs), as for axis keys.
SWEEP_DECIDES = ("train.steps", "train.out_dir", "train.progress", "wandb.name")


class _SpecSection(BaseModel):
    """Frozen, no unknown keys, field docstrings as descriptions; a number where text belongs is text."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True,
                              coerce_numbers_to_str=True)


class Budget(_SpecSection):
    """The length of every run: one of ``steps`` or ``tokens``."""

    steps: int | None = None
    tokens: int | None = None
    """Tokens per run: each point trains tokens // (its global batch x seq_len) steps."""

    @model_validator(mode="before")
    @classmethod
    def _one_whole_number(cls, data: Any) -> Any:
        if not isinstance(data, Mapping) or len(data) != 1:
            raise ValueError(f"budget must be {{steps: N}} or {{tokens: N}}, got {data!r}")
        (kind, value), = data.items()
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"budget.{kind} must be a whole number, got {value!r}")
        if value < 1:
            raise ValueError(f"budget.{kind} must be at least 1 (got {value}): a run needs at least one optimizer step")
        return data


class Report(_SpecSection):
    """The report's default roles (config keys): x optimised, a curve per value of curve, seed averaged."""

    x: str = "optimizer.lr"
    curve: str = "model.depth"
    seed: str = "train.seed"


class SweepSpecModel(_SpecSection):
    """A sweep spec file, as written; :func:`parse_spec` adds the checks that need the config schema."""

    name: str | None = None
    """W&B group and report title (letters, digits and . _ + -); default: the spec file's name."""
    description: str = ""
    base: list[str] = []
    """Config files (a name or a list of names), relative to the spec, merged left to right."""
    config: dict[str, Any] = {}
    """Config values on top of the base files (any section; not the keys the sweep or an axis sets)."""
    grid: dict[str, Any] = {}
    """Axis -> values; the grid is their product, in this order. An axis is a config key, or linked keys
    joined by commas; its values a list, or {values: [...]}, {log2: [...]}, {log2_range: [start, stop(, step)]}."""
    budget: Budget | None = None
    """The length of every run; none only where a train.steps axis sets it."""
    metric: str = "final_eval_loss"
    report: Report = Report()

    @field_validator("base", mode="before")
    @classmethod
    def _file_names(cls, value: Any) -> Any:
        value = [value] if isinstance(value, str) else value
        if not isinstance(value, list) or not all(isinstance(b, str) and b for b in value):
            raise ValueError(f"'base' must be a config file name or a list of file names, got {value!r}")
        return value

    @field_validator("config", "grid", mode="before")
    @classmethod
    def _mappings(cls, value: Any, info: Any) -> Any:
        if value is None:  # "config:" left empty
            return {}
        if not isinstance(value, dict):
            what = ("a mapping of config sections" if info.field_name == "config" else
                    "a mapping of config keys to lists of values")
            raise ValueError(f"'{info.field_name}' must be {what}, got {value!r}")
        return value

    @field_validator("config")
    @classmethod
    def _config_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            CONFIG.check_keys(value)
        except ConfigError as exc:
            raise ValueError(f"config: {exc}") from None
        return value

    @field_validator("metric", mode="before")
    @classmethod
    def _known_metric(cls, value: Any) -> Any:
        if value not in METRICS:
            raise ValueError(f"metric '{value}' is not one of {', '.join(METRICS)}{did_you_mean(str(value), METRICS)}")
        return value


SPEC = TypedYaml(SweepSpecModel, ConfigError, "sweep spec")
"""The sweep spec's loader (file reading, unknown keys, pydantic errors), shared with configs."""


@dataclass(frozen=True)
class Point:
    """One grid point: its axis values, its id and its fully validated config (out_dir not yet set)."""

    index: int
    values: dict[str, Any]
    id: str
    label: str
    config: Config


@dataclass
class SweepSpec:
    """A parsed, checked sweep spec. ``config`` holds the merged base config (``base`` files inlined)."""

    name: str
    config: dict[str, Any]
    axes: list[tuple[tuple[str, ...], list[tuple[Any, ...]]]]
    budget: dict[str, int]
    metric: str = "final_eval_loss"
    report: dict[str, str] = field(default_factory=lambda: Report().model_dump())
    description: str = ""
    source: str = ""

    @property
    def axis_keys(self) -> list[str]:
        return [key for keys, _ in self.axes for key in keys]

    def frozen(self) -> dict[str, Any]:
        """A self-contained spec (no ``base`` files): what DIR/sweep.yaml holds and Slurm tasks read."""
        grid = {",".join(keys): [v[0] if len(keys) == 1 else list(v) for v in values]
                for keys, values in self.axes}
        return {"name": self.name, **({"description": self.description} if self.description else {}),
                "config": self.config, "grid": grid, "budget": dict(self.budget), "metric": self.metric,
                "report": dict(self.report)}

    def frozen_yaml(self) -> str:
        return yaml.safe_dump(self.frozen(), sort_keys=False)

    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.frozen(), sort_keys=True).encode()).hexdigest()


def check_axis_keys(keys: Sequence[str], where: str) -> None:
    """Axes (and the report's roles) must be config keys the sweep does not set itself."""
    for key in keys:
        if key in FORBIDDEN_AXES:
            raise ConfigError(f"{where}: '{key}' cannot be a sweep axis (the sweep sets it for every run)")
        if key not in CONFIG.keys and field_at(Config, key) is not None:
            raise ConfigError(f"{where}: '{key}' is not a config key (axes name one setting, e.g. 'model.depth')")
    unknown = [(key, "", suggest(key, CONFIG.keys)) for key in dict.fromkeys(keys) if field_at(Config, key) is None]
    if unknown:
        raise ConfigError(f"{where}: {CONFIG.unknown_keys_message(unknown)}")


def _expand_values(key: str, raw: Any, where: str) -> list[Any]:
    """An axis' values: a list, or {values: [...]}, {log2: [e...]}, {log2_range: [start, stop(, step)]}."""
    if isinstance(raw, Mapping):
        if len(raw) != 1:
            raise ConfigError(f"{where}: axis '{key}' must be a list or one of values/log2/log2_range, got {dict(raw)}")
        (kind, arg), = raw.items()
        numbers = isinstance(arg, list) and all(isinstance(e, (int, float)) and not isinstance(e, bool)
                                                for e in arg)
        if kind == "values":
            values = arg
        elif kind == "log2":
            if not numbers:
                raise ConfigError(f"{where}: axis '{key}': log2 takes a list of exponents, got {arg!r}")
            values = [2.0 ** e for e in arg]
        elif kind == "log2_range":
            if not numbers or len(arg) not in (2, 3):
                raise ConfigError(f"{where}: axis '{key}': log2_range takes [start, stop] or [start, stop, step], "
                                  f"got {arg!r}")
            start, stop, step = [*arg, 1][:3]
            if step <= 0:
                raise ConfigError(f"{where}: axis '{key}': log2_range step must be positive, got {step}")
            count = math.floor((stop - start) / step + 1e-9) + 1
            values = [2.0 ** (start + i * step) for i in range(max(count, 0))]
        else:
            raise ConfigError(f"{where}: axis '{key}': unknown value form '{kind}'"
                              f"{did_you_mean(kind, ['values', 'log2', 'log2_range'])}")
    else:
        values = raw
    if not isinstance(values, list):
        # a bare value is almost always a forgotten list (or a key meant for 'config:'); say which form works
        form = yaml.safe_dump([values if not isinstance(raw, Mapping) else raw.get("values")],
                              default_flow_style=True, width=10**6).strip()
        raise ConfigError(f"{where}: axis '{key}' must list its values, e.g. '{key}: {form}' (or use "
                          f"{{values: [...]}}, {{log2: [...]}}, {{log2_range: [start, stop]}}), got {raw!r}")
    if not values:
        raise ConfigError(f"{where}: axis '{key}' has no values (the grid would be empty)")
    return values


def _parse_axes(grid: Mapping[str, Any], where: str) -> list[tuple[tuple[str, ...], list[tuple[Any, ...]]]]:
    if not grid:
        raise ConfigError(f"{where}: the grid is empty: 'grid:' needs at least one axis, e.g. "
                          "'optimizer.lr: {log2_range: [-10, -5]}'")
    linked = {name: tuple(k.strip() for k in name.split(",")) for name in grid}
    all_keys = [key for keys in linked.values() for key in keys]
    check_axis_keys(all_keys, f"{where}: grid axis")
    twice = next((key for i, key in enumerate(all_keys) if key in all_keys[:i]), None)
    if twice is not None:
        raise ConfigError(f"{where}: grid axis '{twice}' appears twice")
    axes: list[tuple[tuple[str, ...], list[tuple[Any, ...]]]] = []
    for name, keys in linked.items():
        values = _expand_values(name, grid[name], where)
        for value in values:
            if len(keys) > 1 and not (isinstance(value, list) and len(value) == len(keys)):
                raise ConfigError(f"{where}: linked axes '{name}' take lists of {len(keys)} values, got {value!r}")
        seen_rows: set[str] = set()
        for value in values:
            text = json.dumps(value, sort_keys=True)
            if text in seen_rows:
                raise ConfigError(f"{where}: grid axis '{name}' lists {text} more than once")
            seen_rows.add(text)
        axes.append((keys, [tuple(v) if len(keys) > 1 else (v,) for v in values]))
    return axes


_DECIDED = {
    "train.out_dir": "the sweep decides it (every run writes DIR/runs/<id>/; choose DIR with --out)",
    "wandb.name": "every run is named by its run id in W&B "
                  "(set wandb.group, or the spec's name, for the group)",
    "train.progress": "runs of a sweep draw no progress bars (several run at once); "
                      "the sweep shows its own counter",
}


def _decided_by(key: str, budget: Mapping[str, int]) -> str:
    """Why the sweep, not the config, sets ``key`` (one of SWEEP_DECIDES)."""
    if key in _DECIDED:
        return _DECIDED[key]
    if budget:
        (kind, value), = budget.items()
        return f"the budget decides the run length (budget: {{{kind}: {value}}}); change the budget instead"
    return "the grid's train.steps axis decides the run length; change its values instead"


def _replaced_by_sweep(key: str, value: Any) -> bool:
    """Whether the sweep would replace this value of ``key`` (train.progress: false is what it sets)."""
    return key in SWEEP_DECIDES and not (key == "train.progress" and value is False)


def _drop(data: dict[str, Any], key: str) -> dict[str, Any]:
    """``data`` without the dotted ``key`` (a copy where it was present)."""
    head, _, rest = key.partition(".")
    if head not in data:
        return data
    out = dict(data)
    if rest:
        if isinstance(out[head], Mapping):
            out[head] = _drop(dict(out[head]), rest)
    else:
        del out[head]
    return out


def parse_spec(data: Mapping[str, Any], *, source: str = "<spec>", base_dir: Path | None = None,
               overrides: Sequence[str] = (), name: str | None = None, frozen: bool = False) -> SweepSpec:
    """Check a spec mapping, inlining ``base`` files; ``frozen``: a sweep.yaml, read like base files."""
    where = source
    try:  # an empty key (``report:``) is its default, as if it were not there; an empty metric is refused
        spec = SPEC.validate({k: v for k, v in data.items() if v is not None or k == "metric"})
    except ConfigError as exc:
        keys = f" (a sweep spec has {', '.join(SweepSpecModel.model_fields)})" if "unknown sweep spec key" in str(exc) else ""
        raise ConfigError(f"{where}: {exc}{keys}") from None
    axes = _parse_axes(spec.grid, where)
    axis_keys = [k for keys, _ in axes for k in keys]
    budget = spec.budget.model_dump(exclude_none=True) if spec.budget else {}
    if not budget and "train.steps" not in axis_keys:
        raise ConfigError(f"{where}: the sweep needs a budget: 'budget: {{steps: N}}' or 'budget: {{tokens: N}}' "
                          "(or a train.steps axis)")
    if budget and "train.steps" in axis_keys:
        raise ConfigError(f"{where}: budget.{next(iter(budget))} and a train.steps axis both set the run length; "
                          "keep one")
    config: dict[str, Any] = {}
    for path in spec.base:
        config = deep_merge(config, read_yaml((base_dir or Path(".")) / Path(path).expanduser()))
    for key, value in ({} if frozen else flatten(spec.config)).items():
        if _replaced_by_sweep(key, value):
            raise ConfigError(f"{where}: config {key} would be ignored: {_decided_by(key, budget)}")
        if key in axis_keys:
            raise ConfigError(f"{where}: config {key} would be ignored: '{key}' is a sweep axis, every run takes "
                              "its value from the grid; remove it from 'config:'")
    config = deep_merge(config, spec.config)
    # from base files (or a frozen spec): dropped, so DIR/sweep.yaml holds no values no run uses
    for key in (*SWEEP_DECIDES, *axis_keys):
        config = _drop(config, key)
    for item in overrides:
        key, value = parse_override(item)
        if key in axis_keys:
            raise ConfigError(f"--set {key}: '{key}' is a sweep axis; change its values in the grid instead")
        if _replaced_by_sweep(key, value):
            raise ConfigError(f"--set {key} would be ignored: {_decided_by(key, budget)}")
        config = apply_override(config, key, value)
    report = spec.report.model_dump()
    for role, key in report.items():
        check_axis_keys([key], f"{where}: report.{role}")
    spec_name = spec.name or name or "sweep"
    if not re.fullmatch(r"[A-Za-z0-9._+-]+", spec_name):
        raise ConfigError(f"{where}: name '{spec_name}' may only hold letters, digits and . _ + -")
    return SweepSpec(name=spec_name, config=config, axes=axes, budget=budget, metric=spec.metric, report=report,
                     description=spec.description, source=source)


def load_spec(path: str | Path, overrides: Sequence[str] = (), *, frozen: bool = False) -> SweepSpec:
    """Read a sweep spec file (YAML, ``safe_load``); ``frozen``: it is a sweep directory's sweep.yaml."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep spec not found: {path}")
    data = SPEC.load_file(path)
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: a sweep spec must be a mapping with {', '.join(SweepSpecModel.model_fields)}")
    return parse_spec(data, source=str(path), base_dir=path.parent, overrides=overrides, name=path.stem,
                      frozen=frozen)


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def point_label(values: Mapping[str, Any]) -> str:
    """Human-readable form of a point, e.g. ``sp depth=8 lr=2^-7 seed=1``."""

    def part(name: str, value: Any) -> str:
        if name == "name" and isinstance(value, str):
            return value
        if isinstance(value, float) and value > 0 and float(math.log2(value)).is_integer():
            return f"{name}=2^{int(math.log2(value))}"
        return f"{name}={_fmt(value)}"

    return " ".join(part(label_name(key), value) for key, value in values.items())


def label_name(key: str) -> str:
    """An axis as labels show it: its leaf ('depth'), with the inner section for keys nested deeper
    ('muon.lr', which the leaf alone would show as if it were optimizer.lr). Run ids keep the leaf: an id,
    once written, must not change."""
    parts = key.split(".")
    return ".".join(parts[1:]) if len(parts) > 2 else parts[-1]


def point_id(values: Mapping[str, Any]) -> str:
    """Deterministic run id: readable slug + sha256 of the canonical JSON of the point."""
    canonical = json.dumps(dict(values), sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:10]
    # sorted: reordering the axes keeps every id
    parts = [_fmt(v) if leaf(k) == "name" and isinstance(v, str) else f"{leaf(k)}{_fmt(v)}"
             for k, v in sorted(values.items())]
    slug = re.sub(r"[^A-Za-z0-9._+-]+", "-", "_".join(parts)).strip("-_")[:72]
    return f"{slug}-{digest}" if slug else digest


def steps_for(config: Config, budget: Mapping[str, int]) -> int:
    """Optimizer steps for a point: budget.steps, or budget.tokens / (global batch x seq_len), one process."""
    if "steps" in budget:
        return int(budget["steps"])
    if "tokens" in budget:
        _, global_batch = resolve_batch(config, 1)
        per_step = global_batch * config.model.seq_len
        steps = budget["tokens"] // per_step
        if steps < 1:
            raise ConfigError(f"budget.tokens ({budget['tokens']}) is less than one optimizer step "
                              f"({per_step} tokens = {global_batch} sequences x {config.model.seq_len})")
        return int(steps)
    return config.train.steps


def resolve_point(spec: SweepSpec, raw: Mapping[str, Any]) -> Config:
    """The validated config of the point with axis values ``raw``, train.steps from the budget."""
    data = copy.deepcopy(spec.config)
    for key, value in raw.items():
        data = deep_merge(data, nest(key, value))
    config = validate(data)
    if spec.budget:
        config = validate(deep_merge(data, {"train": {"steps": steps_for(config, spec.budget)}}))
    return config


def expand(spec: SweepSpec) -> list[Point]:
    """The grid points in order (product of the axes as listed), each with its validated config."""
    points: list[Point] = []
    ids: dict[str, str] = {}
    for index, combo in enumerate(itertools.product(*[rows for _, rows in spec.axes])):
        raw = {key: value for (keys, _), row in zip(spec.axes, combo, strict=True)
               for key, value in zip(keys, row, strict=True)}
        label = point_label(raw)
        try:
            config = resolve_point(spec, raw)
        except ConfigError as exc:
            raise ConfigError(f"grid point {label}: {exc}") from None
        dumped = config.model_dump(mode="json")
        # canonical: as the validated config holds it (an older spelling under the key that replaced it)
        values = {key: lookup(dumped, RENAMED_KEYS.get(key, key)) for key in raw}
        pid = point_id(values)
        if pid in ids:
            raise ConfigError(f"grid points {ids[pid]} and {label} are the same run")
        ids[pid] = label
        points.append(Point(index=index, values=values, id=pid, label=label, config=config))
    if spec.metric == "final_eval_loss":
        bad = next((p for p in points if p.config.train.eval_samples == 0 or p.config.data.valid_fraction == 0), None)
        if bad is not None:
            raise ConfigError(f"metric final_eval_loss needs an evaluation, but grid point {bad.label} has "
                              "train.eval_samples or data.valid_fraction 0 (or use metric: final_loss)")
    return points


def diff_configs(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted result-affecting keys whose values differ (keys only one side has are not compared)."""
    out: list[str] = []
    for key in sorted(set(old) & set(new)):
        dotted = f"{prefix}{key}"
        if dotted in NON_RESULT_KEYS or (not prefix and key in NON_RESULT_SECTIONS):
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out.extend(diff_configs(a, b, f"{dotted}."))
        elif a != b and not (isinstance(a, list) and isinstance(b, tuple | list) and list(a) == list(b)):
            out.append(dotted)
    return out


def _show(value: Any) -> str:
    """A value in a one-line message: repr for scalars (like the config diff), flow YAML for the rest."""
    if isinstance(value, (Mapping, list)):
        return yaml.safe_dump(value, default_flow_style=True, sort_keys=True, width=10**6).strip()
    return repr(value)


def _config_difference(old: SweepSpec, new: SweepSpec) -> str | None:
    """``key: A there, B now`` for the shared config of two specs with the same axes, or None."""
    raw = {key: value for keys, rows in old.axes for key, value in zip(keys, rows[0], strict=True)}
    try:
        before = resolve_point(old, raw).model_dump(mode="json")
        after = resolve_point(new, raw).model_dump(mode="json")
        # a changed budget is reported as such, not again as the train.steps it leads to
        changed = [k for k in diff_configs(before, after) if not (k == "train.steps" and old.budget != new.budget)]
    except ConfigError:
        # not valid under one of them (or a schema that changed since): compare the raw configs
        before, after = old.config, new.config
        a, b = flatten(before), flatten(after)
        changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in NON_RESULT_KEYS
                         and k not in raw and section(k) not in NON_RESULT_SECTIONS)
    if not changed:
        return None
    more = f", and {len(changed) - 1} more key(s)" if len(changed) > 1 else ""
    return f"{changed[0]}: {_show(lookup(before, changed[0]))} there, {_show(lookup(after, changed[0]))} now{more}"


def spec_differences(old: SweepSpec, new: SweepSpec) -> list[str]:
    """What makes ``new`` a different sweep from ``old``, each as ``what: A there, B now``; empty when
    it only adds, drops or reorders axis values (every run stays valid)."""
    out: list[str] = []
    if old.name != new.name:
        out.append(f"name: {old.name!r} there, {new.name!r} now")
    if set(old.axis_keys) != set(new.axis_keys):
        out.append(f"grid axes: {_show(sorted(old.axis_keys))} there, {_show(sorted(new.axis_keys))} now")
    if old.budget != new.budget:
        out.append(f"budget: {_show(old.budget)} there, {_show(new.budget)} now")
    if old.metric != new.metric:
        out.append(f"metric: {old.metric} there, {new.metric} now")
    if old.report != new.report:
        out.append(f"report: {_show(old.report)} there, {_show(new.report)} now")
    if set(old.axis_keys) == set(new.axis_keys):  # else the points are not comparable, and it differs anyway
        config = _config_difference(old, new)
        if config:
            out.append(config)
    return out
