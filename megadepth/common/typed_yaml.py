"""One typed YAML loader for training configs, prep configs and sweep specs: files (and their includes)
merged left to right, dotted ``--set`` overrides, every unknown key named with its nearest valid key, then a
pydantic model; with the dotted-key helpers. YAML is read with a ``yaml.SafeLoader`` subclass only.
"""

from __future__ import annotations

import difflib
import types
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Generic, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

__all__ = ["INCLUDE_KEY", "TypedYaml", "deep_merge", "did_you_mean", "field_at", "flatten", "leaf", "lookup", "nest",
           "safe_load_unique", "schema_fields", "section", "section_model", "suggest", "yaml_reason"]

INCLUDE_KEY = "include"
"""A top-level YAML key listing other YAML files (relative to this one) merged before this file."""

_TOO_DEEP = "nested too deeply to read"

M = TypeVar("M", bound=BaseModel)

UnknownKey = tuple[str, str, str]
"""(dotted key, where it was given, the hint of :func:`suggest`): one unknown key, reported with the others."""


class _UniqueKeySafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (plain YAML silently keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # ``<<: *defaults``: merged by SafeLoader below; explicit keys may override it
            key = self.construct_object(key_node, deep=deep)
            problem = (f"a key must be a name, not a {type(key).__name__}" if not isinstance(key, Hashable)
                       else f"key '{key}' is given twice in one mapping" if key in seen else None)
            if problem:
                raise yaml.constructor.ConstructorError(None, None, problem, key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_UniqueKeySafeLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                                     _UniqueKeySafeLoader.construct_mapping)


def safe_load_unique(text: str) -> Any:
    """``yaml.safe_load`` that refuses duplicate keys (and structures nested too deeply to build)."""
    try:
        return yaml.load(text, Loader=_UniqueKeySafeLoader)  # noqa: S506 - a SafeLoader subclass
    except RecursionError:
        raise yaml.YAMLError(_TOO_DEEP) from None


def yaml_reason(exc: yaml.YAMLError) -> str:
    """PyYAML's message on one line: its problem and position, without the quoted source lines."""
    problem, mark = getattr(exc, "problem", None), getattr(exc, "problem_mark", None)
    if problem and mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return " ".join(str(exc).split()) or type(exc).__name__


def nest(key: str, value: Any) -> dict[str, Any]:
    """``nest("a.b", 1) == {"a": {"b": 1}}``: a dotted key's value as nested mappings."""
    out: Any = value
    for part in reversed(key.split(".")):
        out = {part: out}
    return out


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``update`` into a copy of ``base``; mappings merge recursively, everything else replaces."""
    out = dict(base)
    for key, value in update.items():
        both = isinstance(value, Mapping) and isinstance(out.get(key), Mapping)
        out[key] = deep_merge(out[key], value) if both else value
    return out


def section_model(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model behind a field annotation (``Section``, ``Section | None``), if it is a section."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next((m for m in map(section_model, get_args(annotation)) if m is not None), None)


def schema_fields(model: type[BaseModel], prefix: str = "") -> list[tuple[str, FieldInfo]]:
    """(dotted key, field) for every leaf of the schema, in declaration order, e.g. ``model.depth``."""
    rows: list[tuple[str, FieldInfo]] = []
    for name, field in model.model_fields.items():
        sub = section_model(field.annotation)
        rows.extend(schema_fields(sub, f"{prefix}{name}.") if sub else [(f"{prefix}{name}", field)])
    return rows


def field_at(model: type[BaseModel] | None, key: str) -> FieldInfo | None:
    """The field a dotted key names (a leaf or a section); None if the schema has no such key."""
    field = None
    for part in key.split("."):
        if model is None or part not in model.model_fields:
            return None
        field = model.model_fields[part]
        model = section_model(field.annotation)
    return field


def leaf(key: str) -> str:
    """``leaf("model.depth") == "depth"``: the last part of a dotted key."""
    return key.rpartition(".")[2]


def section(key: str) -> str:
    """``section("model.depth") == "model"``: the first part of a dotted key."""
    return key.partition(".")[0]


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a.b": value}`` for every leaf of nested mappings: the inverse of :func:`nest`."""
    if not isinstance(data, Mapping):
        return {prefix[:-1]: data}
    return {k: v for key, value in data.items() for k, v in flatten(value, f"{prefix}{key}.").items()}


def lookup(data: Any, key: str) -> Any:
    """The value at the dotted ``key`` of nested mappings; None where there is none."""
    for part in key.split("."):
        if not isinstance(data, Mapping) or part not in data:
            return None
        data = data[part]
    return data


def did_you_mean(word: str, options: Iterable[str], cutoff: float = 0.6) -> str:
    """``"; did you mean 'x'?"`` for the closest of ``options``, or ``""``."""
    best = difflib.get_close_matches(word, list(options), n=1, cutoff=cutoff)
    return f"; did you mean '{best[0]}'?" if best else ""


def suggest(key: str, candidates: Iterable[str]) -> str:
    """The nearest valid key: a correctly spelled key in the wrong section first ('train.lr' ->
    'optimizer.lr'), then the closest dotted key, then the closest leaf name. A key without a section is
    looked up as a leaf ('seed' -> 'train.seed'), then as the start of one ('warmup' ->
    'schedule.warmup_steps'), then as a misspelled section or leaf."""
    candidates = list(candidates)
    if nested := _nested(key, candidates):
        return f"; did you mean {' or '.join(repr(c) for c in nested[:3])}?"
    depth = key.count(".") + 1
    # compare against keys (and section names) of the same nesting depth
    pool = sorted({".".join(c.split(".")[:depth]) for c in candidates})
    by_leaf = {leaf(c): c for c in reversed(pool)}  # the first key of each leaf name
    best = ([by_leaf[leaf(key)]] if depth > 1 and leaf(key) in by_leaf
            else difflib.get_close_matches(key, pool, n=1, cutoff=0.6))
    if key == INCLUDE_KEY:
        return f"; '{INCLUDE_KEY}' lists other files at the top of a config file, it is not a key to set"
    if depth == 1:
        # a key one level too high (a mis-indented `seed: 5`, `--set lr=0.1`): the full keys it ends first
        full = sorted(c for c in candidates if leaf(c) == key)
        if full:
            return f"; did you mean {' or '.join(repr(c) for c in full[:3])} (keys live in their section)?"
        if not best:
            started = sorted(c for c in candidates if leaf(c).startswith(key + "_"))
            if started:
                return f"; did you mean {' or '.join(repr(c) for c in started[:3])}?"
            if hint := did_you_mean(key, [INCLUDE_KEY], cutoff=0.7):
                return hint
            leaves = {leaf(c): c for c in sorted(candidates, reverse=True)}
            near = difflib.get_close_matches(key, list(leaves), n=1, cutoff=0.75)
            if near:
                return f"; did you mean '{leaves[near[0]]}'?"
    if not best:
        best = [by_leaf[m] for m in difflib.get_close_matches(leaf(key), list(by_leaf), n=1, cutoff=0.7)]
    return f"; did you mean '{best[0]}'?" if best else ""


def _nested(key: str, candidates: list[str]) -> list[str]:
    """Keys (or sections) that ``key`` names with its outer section left off or wrong, or its dots written
    as underscores: 'muon.lr', 'train.muon.lr', 'optimizer.muon_lr', 'optimizer_lr', 'muonlr' ->
    'optimizer.muon.lr' / 'optimizer.lr'; a nested section's name alone ('muon') -> 'optimizer.muon'. A single
    word that is a leaf is left to :func:`suggest`'s own rules ('seed' -> 'train.seed')."""
    def squash(text: str) -> str:
        return text.replace(".", "").replace("_", "").lower()

    lowered = key.lower()
    found = [c for c in candidates if squash(c) == squash(key)]
    for spelled in dict.fromkeys((lowered, lowered.replace("_", "."))):
        parts = spelled.split(".")
        for start in range(len(parts) - 1):  # endings of two parts or more: 'muon.lr' of 'train.muon.lr'
            ending = ".".join(parts[start:])
            found += [c for c in candidates if c.endswith("." + ending)]
            if found:
                break
    if "." not in key:  # a nested section's name on its own
        for c in candidates:
            parts = c.split(".")
            if lowered in parts[1:-1]:
                found.append(".".join(parts[: parts.index(lowered, 1) + 1]))
    return list(dict.fromkeys(found))


def _is_text_field(annotation: Any) -> bool:
    """A field that holds a string (optionally None) and nothing else."""
    origin = get_origin(annotation)
    if origin is None:
        return annotation is str
    if origin not in (Union, types.UnionType):  # list[str], tuple[str, ...]: YAML lists
        return False
    args = set(get_args(annotation))
    return str in args and args <= {str, type(None)}


@dataclass(frozen=True)
class TypedYaml(Generic[M]):
    """Reads YAML into ``model``; every problem is one ``error`` whose message names the key (or file) and,
    for a typo, the nearest valid key, in sentences about a ``noun`` ('config', 'prep config').

    ``text_values``: a ``--set`` value for a text-only key is taken as typed (``wandb.name=123`` names the
    run "123"), an empty one is "", one that is not YAML is text. Off, every value is YAML (empty: null)."""

    model: type[M]
    error: type[Exception]
    noun: str = "config"
    text_values: bool = True

    @cached_property
    def keys(self) -> list[str]:
        """Every dotted leaf key of the schema."""
        return [key for key, _ in schema_fields(self.model)]

    def _unknown_keys(self, data: Mapping[str, Any], model: type[BaseModel], prefix: str, source: str,
                      found: list[UnknownKey]) -> None:
        """Append every unknown key of ``data`` to ``found``, with a suggestion; refuse a non-mapping section."""
        for key, value in data.items():
            dotted = f"{prefix}{key}"
            field = model.model_fields.get(key)
            if field is None:
                found.append((dotted, source, suggest(dotted, self.keys)))
                continue
            sub = section_model(field.annotation)
            if sub is not None:
                if not isinstance(value, Mapping):
                    raise self.error(f"{self.noun} key '{dotted}'{source} must be a mapping of "
                                     f"{', '.join(sub.model_fields)}; got {value!r}")
                self._unknown_keys(value, sub, f"{dotted}.", source, found)

    def unknown_keys_message(self, found: Sequence[UnknownKey]) -> str:
        """One line for all unknown keys: for several, their count, then each with where and its nearest key."""
        if len(found) == 1:
            key, source, hint = found[0]
            return f"unknown {self.noun} key '{key}'{source}{hint}"
        items = [f"'{key}'{source}{': ' + hint.removeprefix('; ') if hint else ''}" for key, source, hint in found]
        return f"{len(found)} unknown {self.noun} keys: " + "; ".join(items)

    def _refuse(self, found: Sequence[UnknownKey]) -> None:
        if found:
            raise self.error(self.unknown_keys_message(found))

    def load_file(self, path: Path) -> Any:
        """A YAML file's content; anything that makes it unreadable is a one-line error naming the file."""
        try:
            return safe_load_unique(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as exc:
            raise self.error(f"{path}: not UTF-8 text (byte {exc.start}: {exc.object[exc.start:exc.start + 1]!r}); "
                             "save it as UTF-8") from None
        except OSError as exc:
            raise self.error(f"{path}: cannot be read ({exc.strerror or exc})") from None
        except yaml.YAMLError as exc:
            raise self.error(f"{path}: not valid YAML: {yaml_reason(exc)}") from None

    def read(self, path: str | Path) -> dict[str, Any]:
        """One YAML file (and the files it includes) as a plain dict; all their unknown keys refused together."""
        return self.merge([path])

    def _read(self, path: Path, found: list[UnknownKey], seen: tuple[Path, ...] = ()) -> dict[str, Any]:
        """:meth:`read`, collecting unknown keys in ``found`` instead of raising for them."""
        if not path.is_file():
            raise self.error(f"{self.noun} file not found: {path}")
        resolved = path.resolve()
        if resolved in seen:
            raise self.error(f"{self.noun} include cycle: {' -> '.join(str(p) for p in (*seen, resolved))}")
        data = self.load_file(path)
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise self.error(f"{path}: a {self.noun} file must be a mapping of sections, got {type(data).__name__}")
        includes = data.pop(INCLUDE_KEY, [])
        if isinstance(includes, str):
            includes = [includes]
        if not isinstance(includes, list) or not all(isinstance(inc, str) and inc for inc in includes):
            raise self.error(f"{path}: '{INCLUDE_KEY}' must be a file name or a list of file names, got {includes!r}")
        merged: dict[str, Any] = {}
        for inc in includes:
            merged = deep_merge(merged, self._read(path.parent / Path(inc).expanduser(), found, (*seen, resolved)))
        self._unknown_keys(data, self.model, "", f" (in {path})", found)
        return deep_merge(merged, data)

    def parse_override(self, item: str) -> tuple[str, Any]:
        """``a.b=c`` -> (``a.b``, value); the value is parsed as YAML (for ``text_values``, see the class)."""
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise self.error(f"--set {item!r} must look like section.key=value")
        field = field_at(self.model, key)
        annotation = field.annotation if field is not None else None
        if self.text_values and _is_text_field(annotation) and raw.strip() not in ("null", "~"):
            return key, raw
        try:
            value = safe_load_unique(raw) if raw.strip() or not self.text_values else ""
        except yaml.YAMLError as exc:
            if _TOO_DEEP in str(exc):
                raise self.error(f"--set {key}: the value is {_TOO_DEEP}") from None
            if not self.text_values:
                raise self.error(f"--set {item!r}: the value is not valid YAML ({yaml_reason(exc)})") from None
            value = raw
        if (self.text_values and str in get_args(annotation)
                and not isinstance(value, (str, list, dict, bool)) and value is not None):
            # a text-or-list field (data.path): --set data.path=2024 or =2024-06-01 (a YAML date) names a folder
            value = raw.strip()
        return key, value

    def _unknown_override(self, key: str) -> UnknownKey | None:
        """The unknown-key entry of an override's key (None for a valid key); a section is refused at once."""
        if key in self.keys:
            return None
        section = [k for k in self.keys if k.startswith(key + ".")]
        if section:
            raise self.error(f"'{key}' is a {self.noun} section, not a key: set its keys one by one, e.g. "
                             f"--set {section[0]}=...")
        return key, " (in --set)", suggest(key, self.keys)

    def apply_override(self, data: Mapping[str, Any], key: str, value: Any) -> dict[str, Any]:
        """Set one dotted key, refusing keys the schema does not have."""
        if (unknown := self._unknown_override(key)) is not None:
            raise self.error(self.unknown_keys_message([unknown]))
        return deep_merge(data, nest(key, value))

    def merge(self, paths: Sequence[str | Path] = (), overrides: Sequence[str] = (), *,
              base: Mapping[str, Any] | None = None, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """``base``, each file in ``paths`` (after its includes), ``extra`` (settings from command-line flags),
        then each ``KEY=VALUE`` override, merged left to right; all their unknown keys refused together."""
        found: list[UnknownKey] = []
        data = dict(base or {})
        for path in paths:
            data = deep_merge(data, self._read(Path(path), found))
        if extra:
            self._unknown_keys(extra, self.model, "", "", found)
            data = deep_merge(data, extra)
        for item in overrides:
            key, value = self.parse_override(item)
            if (unknown := self._unknown_override(key)) is not None:
                found.append(unknown)
            else:
                data = deep_merge(data, nest(key, value))
        self._refuse(found)
        return data

    def describe(self, exc: ValidationError) -> str:
        """pydantic's errors as one line, each located by its dotted key."""
        lines = []
        for err in exc.errors():
            # keep the part of the location that names a key (pydantic appends union branch tags)
            parts: list[str] = []
            for part in err["loc"]:
                candidate = ".".join([*parts, str(part)])
                if isinstance(part, int) or any(k == candidate or k.startswith(candidate + ".") for k in self.keys):
                    parts.append(str(part))
            loc = ".".join(parts)
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "value_error" or not loc:
                # a section's own check names the field only ("mode: ..."): put the section in front
                field = msg.split(":", 1)[0]
                lines.append(f"{loc}.{msg}" if loc and f"{loc}.{field}" in self.keys else msg)
            else:
                lines.append(f"{loc}: {msg} (got {err.get('input')!r})")
        # one clause per problem; de-duplicate union branches that say the same thing
        return "; ".join(dict.fromkeys(lines))

    def check_keys(self, data: Mapping[str, Any]) -> None:
        """Refuse the unknown keys of ``data`` together (the first step of :meth:`validate`)."""
        found: list[UnknownKey] = []
        self._unknown_keys(data, self.model, "", "", found)
        self._refuse(found)

    def validate(self, data: Mapping[str, Any]) -> M:
        """Turn a merged dict into the (frozen) model, with readable errors."""
        self.check_keys(data)
        try:
            return self.model.model_validate(dict(data))
        except ValidationError as exc:
            raise self.error(f"invalid {self.noun}: {self.describe(exc)}") from None

    def load(self, paths: Sequence[str | Path] = (), overrides: Sequence[str] = (), *,
             base: Mapping[str, Any] | None = None, extra: Mapping[str, Any] | None = None) -> M:
        """:meth:`merge`, then :meth:`validate`."""
        return self.validate(self.merge(paths, overrides, base=base, extra=extra))
