"""Loading YAML configs: merge files left to right, apply ``--set`` overrides, validate.

All checks happen here, before any process group, model or data is touched, so a typo costs a second
and not a queued cluster job. YAML is read with ``yaml.safe_load`` only.
"""

from __future__ import annotations

import difflib
import types
from collections.abc import Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from megadepth.config.schema import Config

INCLUDE_KEY = "include"
"""A top-level YAML key listing other YAML files (relative to this one) merged before this file."""


class ConfigError(ValueError):
    """A config that cannot be used; the message names the key and, for typos, the nearest valid one."""


class _UniqueKeySafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (plain YAML keeps the last one
    silently, so a second ``lr:`` further down a file would quietly win)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # ``<<: *defaults``: merged by SafeLoader below; explicit keys may override it
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):
                raise yaml.constructor.ConstructorError(
                    None, None, f"a key must be a name, not a {type(key).__name__}", key_node.start_mark
                )
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key '{key}' is given twice in one mapping", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_UniqueKeySafeLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _UniqueKeySafeLoader.construct_mapping
)


def safe_load_unique(text: str) -> Any:
    """``yaml.safe_load`` that refuses duplicate keys (and structures nested too deeply to build)."""
    try:
        return yaml.load(text, Loader=_UniqueKeySafeLoader)  # noqa: S506 - a SafeLoader subclass
    except RecursionError:
        raise yaml.YAMLError("nested too deeply to read") from None


def load_yaml_file(path: Path) -> Any:
    """A YAML file's content through :func:`safe_load_unique`; anything that makes it unreadable (not UTF-8,
    not YAML, a read error) is a one-line ConfigError naming the file."""
    try:
        return safe_load_unique(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.object[exc.start:exc.start + 1]!r}); "
                          "save it as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(" ".join(f"{path}: not valid YAML: {exc}".split())) from None


def _section_model(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model behind a field annotation, if the field is a nested section."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) is not None:
        for arg in get_args(annotation):
            model = _section_model(arg)
            if model is not None:
                return model
    return None


def all_keys(model: type[BaseModel] = Config, prefix: str = "") -> list[str]:
    """Every dotted leaf key of the schema, e.g. ``model.depth``."""
    keys: list[str] = []
    for name, field in model.model_fields.items():
        sub = _section_model(field.annotation)
        if sub is not None:
            keys.extend(all_keys(sub, f"{prefix}{name}."))
        else:
            keys.append(f"{prefix}{name}")
    return keys


def _suggest(key: str, candidates: Iterable[str]) -> str:
    """The nearest valid key: a correctly spelled key in the wrong section first ('train.lr' ->
    'optimizer.lr'), then the closest dotted key, then the closest leaf name. A key without a section
    ('seed', 'mode') is first looked up as a leaf ('train.seed', 'wandb.mode'), then as the start of one
    ('warmup' -> 'schedule.warmup_steps'), then as a misspelled section or leaf."""
    candidates = list(candidates)
    depth = key.count(".") + 1
    # compare against keys (and section names) of the same nesting depth
    pool = sorted({".".join(c.split(".")[:depth]) for c in candidates})
    leaf = key.rsplit(".", 1)[-1]
    by_leaf: dict[str, str] = {}
    for c in pool:
        by_leaf.setdefault(c.rsplit(".", 1)[-1], c)
    if depth > 1 and leaf in by_leaf:
        best = [by_leaf[leaf]]
    else:
        best = difflib.get_close_matches(key, pool, n=1, cutoff=0.6)
    if key == INCLUDE_KEY:
        return f"; '{INCLUDE_KEY}' lists other files at the top of a config file, it is not a key to set"
    if depth == 1:
        # a key one level too high (a mis-indented `seed: 5`, `--set lr=0.1`, `mode: offline`): the full
        # keys it ends, before any section it resembles
        full = sorted(c for c in candidates if c.rsplit(".", 1)[-1] == key)
        if full:
            return f"; did you mean {' or '.join(repr(c) for c in full[:3])} (keys live in their section)?"
        if not best:
            started = sorted(c for c in candidates if c.rsplit(".", 1)[-1].startswith(key + "_"))
            if started:
                return f"; did you mean {' or '.join(repr(c) for c in started[:3])}?"
    if not best and depth == 1:
        if difflib.get_close_matches(key, [INCLUDE_KEY], n=1, cutoff=0.7):
            return f"; did you mean '{INCLUDE_KEY}'?"
        leaves = {c.rsplit(".", 1)[-1]: c for c in sorted(candidates, reverse=True)}
        near = difflib.get_close_matches(key, list(leaves), n=1, cutoff=0.75)
        if near:
            return f"; did you mean '{leaves[near[0]]}'?"
    if not best:
        leaf_match = difflib.get_close_matches(leaf, list(by_leaf), n=1, cutoff=0.7)
        best = [by_leaf[leaf_match[0]]] if leaf_match else []
    return f"; did you mean '{best[0]}'?" if best else ""


UnknownKey = tuple[str, str, str]
"""(dotted key, where it was given, the hint of :func:`_suggest`): one unknown key, reported with the others."""


def _unknown_keys(data: Mapping[str, Any], model: type[BaseModel], prefix: str, source: str,
                  found: list[UnknownKey]) -> None:
    """Append every unknown key of ``data`` to ``found`` with the dotted name and a suggestion (pydantic
    would only say 'extra'), so that two typos cost one try, not two. A section given as something other
    than a mapping is refused at once: the keys under it cannot be read."""
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        field = model.model_fields.get(key)
        if field is None:
            found.append((dotted, source, _suggest(dotted, all_keys())))
            continue
        sub = _section_model(field.annotation)
        if sub is not None:
            if not isinstance(value, Mapping):
                raise ConfigError(f"config key '{dotted}'{source} must be a mapping of "
                                  f"{', '.join(sub.model_fields)}; got {value!r}")
            _unknown_keys(value, sub, f"{dotted}.", source, found)


def unknown_keys_message(found: Sequence[UnknownKey]) -> str:
    """One line for all unknown keys: the familiar sentence for one; for several, their count, then each
    key with where it was given and its nearest valid key."""
    if len(found) == 1:
        key, source, hint = found[0]
        return f"unknown config key '{key}'{source}{hint}"
    items = [f"'{key}'{source}{': ' + hint.removeprefix('; ') if hint else ''}" for key, source, hint in found]
    return f"{len(found)} unknown config keys: " + "; ".join(items)


def _check_keys(data: Mapping[str, Any], model: type[BaseModel], prefix: str, source: str) -> None:
    """Reject unknown keys, all of them in one message (see :func:`unknown_keys_message`)."""
    found: list[UnknownKey] = []
    _unknown_keys(data, model, prefix, source, found)
    if found:
        raise ConfigError(unknown_keys_message(found))


def deep_merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``update`` into a copy of ``base``; mappings merge recursively, everything else replaces."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def read_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read one YAML file (and the files it includes) into a plain dict; its unknown keys (and those of
    the files it includes) are refused together."""
    found: list[UnknownKey] = []
    data = _read_yaml(Path(path), found, _seen)
    if found:
        raise ConfigError(unknown_keys_message(found))
    return data


def _read_yaml(path: Path, found: list[UnknownKey], _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """:func:`read_yaml`, collecting unknown keys in ``found`` instead of raising for them."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    resolved = path.resolve()
    if resolved in _seen:
        raise ConfigError(f"config include cycle: {' -> '.join(str(p) for p in (*_seen, resolved))}")
    data = load_yaml_file(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of sections, got {type(data).__name__}")
    includes = data.pop(INCLUDE_KEY, [])
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(inc, str) and inc for inc in includes):
        raise ConfigError(f"{path}: '{INCLUDE_KEY}' must be a file name or a list of file names, got {includes!r}")
    merged: dict[str, Any] = {}
    for inc in includes:
        merged = deep_merge(merged, _read_yaml(path.parent / Path(inc).expanduser(), found, (*_seen, resolved)))
    _unknown_keys(data, Config, "", f" (in {path})", found)
    return deep_merge(merged, data)


def _leaf_annotation(key: str) -> Any:
    """The type annotation of a dotted leaf key (None if there is no such key)."""
    model: type[BaseModel] | None = Config
    field = None
    for part in key.split("."):
        if model is None or part not in model.model_fields:
            return None
        field = model.model_fields[part]
        model = _section_model(field.annotation)
    return field.annotation if field is not None else None


def _is_text_field(annotation: Any) -> bool:
    """A field that holds a string (optionally None) and nothing else: its --set value is taken as typed."""
    origin = get_origin(annotation)
    if origin is None:
        return annotation is str
    if origin not in (Union, types.UnionType):  # list[str], tuple[str, ...]: YAML lists
        return False
    args = set(get_args(annotation))
    return str in args and args <= {str, type(None)}


def parse_override(item: str) -> tuple[str, Any]:
    """``a.b=c`` -> (``a.b``, value); the value is parsed as YAML, so ``20`` is an int and ``[1,2]`` a list,
    except for text fields, where ``--set wandb.name=123`` means the name "123"."""
    if "=" not in item:
        raise ConfigError(f"override '{item}' must look like section.key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if _is_text_field(_leaf_annotation(key)) and raw.strip() not in ("null", "~"):
        return key, raw
    try:
        value = safe_load_unique(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        if "nested too deeply" in str(exc):
            raise ConfigError(f"--set {key}: the value is nested too deeply to read") from None
        value = raw
    annotation = _leaf_annotation(key)
    if (annotation is not None and str in get_args(annotation)
            and not isinstance(value, (str, list, dict, bool)) and value is not None):
        # a text-or-list field (data.path): --set data.path=2024 or =2024-06-01 (a YAML date) names a folder
        value = raw.strip()
    return key, value


def _unknown_override(key: str) -> UnknownKey | None:
    """The unknown-key entry of an override's key (None for a valid key); a section is refused at once."""
    valid = all_keys()
    if key in valid:
        return None
    section = [k for k in valid if k.startswith(key + ".")]
    if section:
        raise ConfigError(f"'{key}' is a config section, not a key: set its keys one by one, e.g. "
                          f"--set {section[0]}=...")
    return key, " (in --set)", _suggest(key, valid)


def apply_override(data: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """Set one dotted key, refusing keys the schema does not have."""
    unknown = _unknown_override(key)
    if unknown is not None:
        raise ConfigError(unknown_keys_message([unknown]))
    parts = key.split(".")
    update: dict[str, Any] = {parts[-1]: value}
    for part in reversed(parts[:-1]):
        update = {part: update}
    return deep_merge(data, update)


def _describe_errors(exc: ValidationError) -> str:
    lines = []
    keys = all_keys()
    for err in exc.errors():
        # keep the part of the location that names a config key (pydantic appends union branch tags)
        parts: list[str] = []
        for part in err["loc"]:
            candidate = ".".join([*parts, str(part)])
            if any(k == candidate or k.startswith(candidate + ".") for k in keys) or isinstance(part, int):
                parts.append(str(part))
        loc = ".".join(parts)
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "value_error" or not loc:
            # a section's own check names the field only ("mode: ..."): put the section in front
            field = msg.split(":", 1)[0]
            lines.append(f"{loc}.{msg}" if loc and f"{loc}.{field}" in keys else msg)
        else:
            lines.append(f"{loc}: {msg} (got {err.get('input')!r})")
    # one line per problem; de-duplicate union branches that say the same thing
    return "; ".join(dict.fromkeys(lines))


def validate(data: Mapping[str, Any]) -> Config:
    """Turn a merged dict into a frozen :class:`Config`, with readable errors."""
    _check_keys(data, Config, "", "")
    try:
        return Config.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(f"invalid config: {_describe_errors(exc)}") from None


DEFAULT_RUN_ROOT = "runs"
"""Where a run directory goes when no file or --set names train.out_dir (see :func:`default_out_dir`)."""


def default_out_dir(paths: Sequence[str | Path]) -> str | None:
    """``runs/<stems of the config files, joined by '+'>``: ``runs/quickstart`` for configs/quickstart.yaml,
    ``runs/gpt-124m+completep`` for the model and parametrization files combined; None without files.

    Every run used to share ``runs/default``, where a second experiment resumed (or was refused by) the
    first one's checkpoints. The name comes from the command line alone (file names, not their folders or
    contents), so every rank and node of a job, and a rerun of the same command after a preemption,
    find the same directory; runs that differ only in --set values, or whose files share names in other
    folders, still share it, so name those. Long names keep their first 100 bytes and a digest."""
    stems = list(dict.fromkeys(Path(p).stem for p in paths))
    if not stems:
        return None
    name = "+".join(stems)
    if len(name.encode()) > 120:  # a file name may hold 255 bytes: keep a readable head and a digest of the rest
        import hashlib

        head = name.encode()[:100].decode("utf-8", errors="ignore")
        name = f"{head}-{hashlib.sha256(name.encode()).hexdigest()[:12]}"
    return f"{DEFAULT_RUN_ROOT}/{name}"


def load_config(paths: Sequence[str | Path], overrides: Sequence[str] = ()) -> Config:
    """Merge ``paths`` left to right, apply ``overrides`` (``a.b=c``) in order, validate. Unknown keys in
    every file and override are reported together; train.out_dir, when nothing sets it, is named after
    the files (:func:`default_out_dir`)."""
    found: list[UnknownKey] = []
    data: dict[str, Any] = {}
    for path in paths:
        data = deep_merge(data, _read_yaml(Path(path), found))
    for item in overrides:
        key, value = parse_override(item)
        unknown = _unknown_override(key)
        if unknown is not None:
            found.append(unknown)
            continue
        data = apply_override(data, key, value)
    if found:
        raise ConfigError(unknown_keys_message(found))
    train = data.get("train")
    derived = default_out_dir(paths)
    if derived is not None and (train is None or isinstance(train, Mapping) and "out_dir" not in train):
        data = deep_merge(data, {"train": {"out_dir": derived}})
    return validate(data)


def to_yaml(config: Config) -> str:
    """The resolved config as YAML (what goes into every run directory and checkpoint)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def explain(model: type[BaseModel] = Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, default, docstring) for every leaf field: the schema's documentation."""
    rows: list[tuple[str, str, str]] = []
    for name, field in model.model_fields.items():
        sub = _section_model(field.annotation)
        if sub is not None:
            rows.extend(explain(sub, f"{prefix}{name}."))
        else:
            default = field.get_default(call_default_factory=True)
            rows.append((f"{prefix}{name}", repr(default), " ".join((field.description or "").split())))
    return rows


def resolve_batch(config: Config, dp_size: int) -> tuple[int, int]:
    """(grad_accum, global_batch) for a data-parallel size, checking global = micro x accum x dp."""
    train = config.train
    per_step = train.micro_batch * dp_size
    if train.grad_accum is None and train.global_batch is not None:
        if train.global_batch % per_step:
            raise ConfigError(
                f"train.global_batch ({train.global_batch}) is not divisible by train.micro_batch "
                f"({train.micro_batch}) x data-parallel size ({dp_size})"
            )
        return train.global_batch // per_step, train.global_batch
    accum = train.grad_accum or 1
    if train.global_batch is not None and train.global_batch != per_step * accum:
        raise ConfigError(
            f"train.global_batch ({train.global_batch}) != train.micro_batch ({train.micro_batch}) x "
            f"train.grad_accum ({accum}) x data-parallel size ({dp_size}) = {per_step * accum}"
        )
    return accum, per_step * accum
