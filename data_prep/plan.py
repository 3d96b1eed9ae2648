"""The plan of a run: inputs, configuration, stage hashes, directory layout, units of work and markers.

``OUT/plan.json`` is written first and is all a task needs. Each stage writes into
``OUT/work/<stage>-<hash>/``, the hash covering that stage's settings and every upstream stage's hash:
a changed setting gets fresh directories, an unchanged one resumes from the done markers there.

A stage is a list of independent *units* (an input file, a band partition, a shard group); a Slurm task
``rank`` of ``world`` runs ``units[rank::world]``. A unit renames its files into place, then writes its
done marker (a small JSON of its statistics) last.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from pydantic import ValidationError

from data_prep.config import PrepConfig, stable_hash
from data_prep.credentials import split_credentials
from data_prep.hygiene import unread_summary
from data_prep.inputs import InputFile
from megadepth.common.errors import DataError
from megadepth.common.io import atomic_write_bytes, sha256_file

__all__ = ["FORMAT_VERSION", "PLAN", "STAGES", "Plan", "load_plan", "make_plan"]

FORMAT_VERSION = 1
PLAN = "plan.json"
#: Stages in order; each depends on all before it.
STAGES = ("extract", "buckets", "cluster", "tokenizer", "tokenize", "finalize")
SINGLE = "all"


@dataclass
class Plan:
    out: Path
    inputs: list[InputFile]
    config: PrepConfig
    tokenizer_sha256: str | None  # of a given model (None: trained)
    url_lists_sha256: dict[str, str] = field(default_factory=dict)  # blocklist path -> sha256 of its bytes
    language_model_sha256: str | None = None  # of a configured language.model (None: the shipped default)
    #: files in the input folders that are not read (:func:`data_prep.hygiene.unread_summary`); not hashed:
    #: they change nothing that is written
    unread: dict = field(default_factory=lambda: unread_summary([]))

    @cached_property
    def hashes(self) -> dict[str, str]:
        c = self.config
        h_inputs = stable_hash([[i.path, i.kind, i.size] for i in self.inputs])
        sections = ("read", "extract", "gopher_repetition", "gopher_quality", "c4", "fineweb", "pii",
                    # rejected/ rows (with or without text) are this stage's: another keep_text re-extracts
                    "rejected")
        extract = stable_hash({
            "v": FORMAT_VERSION,
            "inputs": h_inputs,
            **{name: getattr(c, name).model_dump(mode="json") for name in sections},
            "language": self._language_identity(),
            "minhash": [c.dedup.ngram, c.dedup.bands, c.dedup.rows, c.dedup.seed, c.dedup.minhash],
            "row_group_docs": c.shards.row_group_docs,
            # only when on, so that plans made before URL filtering existed keep their hashes
            **({"url_filter": self._url_filter_identity()} if c.url_filter.enabled else {}),
        })
        dedup = stable_hash({"up": extract, "dedup": c.dedup.model_dump(mode="json")})
        tok_cfg = c.tokenizer.model_dump(mode="json", exclude={"num_threads"})
        if self.tokenizer_sha256:
            tok_cfg = {"model_sha256": self.tokenizer_sha256}
        tokenizer = stable_hash({"up": dedup, "tokenizer": tok_cfg})
        tokenize = stable_hash({"up": tokenizer, "shards": c.shards.model_dump(mode="json")})
        return {"inputs": h_inputs, "extract": extract, "buckets": dedup, "cluster": dedup, "tokenizer": tokenizer,
                "tokenize": tokenize, "finalize": tokenize}

    def _language_identity(self) -> dict:
        """The language settings with a configured model file replaced by its content hash."""
        lang = self.config.language.model_dump(mode="json")
        if self.language_model_sha256:
            lang["model"] = {"sha256": self.language_model_sha256}
        return lang

    def _url_filter_identity(self) -> dict:
        """The URL filter's settings with each blocklist replaced by its content hash (paths may move)."""
        u = self.config.url_filter.model_dump(mode="json")
        u["blocklists"] = sorted(self.url_lists_sha256[p] for p in self.config.url_filter.blocklists)
        return u

    @property
    def config_hash(self) -> str:
        """The hash of everything that determines the shards."""
        return self.hashes["tokenize"]

    def stage_dir(self, stage: str) -> Path:
        name = {"buckets": "dedup", "cluster": "dedup"}.get(stage, stage)
        return self.out / "work" / f"{name}-{self.hashes[stage]}"

    def marker_dir(self, stage: str) -> Path:
        return self.stage_dir(stage) / "done" / stage

    @property
    def dedup_rows(self) -> list[int]:
        """Key rows of the signature files the buckets stage compares: bands, then the exact key."""
        d = self.config.dedup
        rows = list(range(d.bands)) if d.minhash else []
        if d.exact:
            rows.append(d.bands)
        return rows

    def units(self, stage: str) -> list[str]:
        if stage == "extract":
            return [f"{i:06d}" for i in range(len(self.inputs))]
        if stage == "buckets":
            return [f"k{k:03d}-p{p:04d}" for k in self.dedup_rows for p in range(self.config.dedup.partitions)]
        if stage == "cluster":
            return [SINGLE] if self.dedup_rows else []
        if stage == "tokenize":
            fps = self.config.shards.files_per_shard
            return [f"{g:05d}" for g in range((len(self.inputs) + fps - 1) // fps)]
        if stage in ("tokenizer", "finalize"):
            return [SINGLE]
        raise ValueError(f"unknown stage {stage!r} (stages: {', '.join(STAGES)})")

    def marker(self, stage: str, unit: str) -> Path:
        return self.marker_dir(stage) / f"{unit}.json"

    def is_done(self, stage: str, unit: str) -> bool:
        return self.marker(stage, unit).is_file()

    def pending(self, stage: str) -> list[str]:
        return [u for u in self.units(stage) if not self.is_done(stage, u)]

    def read_marker(self, stage: str, unit: str) -> dict:
        return json.loads(self.marker(stage, unit).read_text())

    def write_marker(self, stage: str, unit: str, data: dict) -> None:
        atomic_write_bytes(self.marker(stage, unit), (json.dumps(data, sort_keys=True) + "\n").encode())

    def require_done(self, stage: str) -> None:
        """A :class:`DataError` unless every unit of ``stage`` has its done marker."""
        missing = self.pending(stage)
        if missing:
            total = len(self.units(stage))
            raise DataError(f"stage '{stage}' is not finished ({total - len(missing)} of {total} units done, e.g. "
                            f"{missing[0]} missing): run it first")

    def to_json(self) -> dict:
        return {"format": "megadepth-prep-plan", "format_version": FORMAT_VERSION, "config_hash": self.config_hash,
                "hashes": self.hashes, "inputs": [i.to_json() for i in self.inputs],
                "config": self.config.model_dump(mode="json"), "tokenizer_sha256": self.tokenizer_sha256,
                "url_lists_sha256": self.url_lists_sha256, "language_model_sha256": self.language_model_sha256,
                "unread_inputs": self.unread}

    def save(self) -> None:
        atomic_write_bytes(self.out / PLAN, (json.dumps(self.to_json(), indent=1) + "\n").encode())


def make_plan(out: str | Path, inputs: list[InputFile], config: PrepConfig, unread: Sequence[str] = ()) -> Plan:
    """A plan for ``inputs`` into ``out`` (checked: the output is writable, a given tokenizer exists).

    ``unread`` are the files the inputs' folders hold but the pipeline does not read; the plan lists
    them. A ``read.paths_prefix`` keeps no user:password: plan.json stores the config and the hashes
    cover it (readers take credentials from :mod:`data_prep.credentials`)."""
    out = Path(out)
    check_writable(out)
    if config.read.paths_prefix is not None:
        config = _with(config, "read", paths_prefix=split_credentials(config.read.paths_prefix)[0])
    tok_sha = None
    if config.tokenizer.model:
        model, tok_sha = _named_file("tokenizer", config.tokenizer.model)
        config = _with(config, "tokenizer", model=model)
    url_shas: dict[str, str] = {}
    if config.url_filter.enabled:
        u = config.url_filter
        if not (u.blocklists or u.domains or u.banned_words or u.banned_subwords):
            raise DataError("url_filter.enabled is true but no blocklists, domains, banned_words or "
                            "banned_subwords are given")
        files = [_named_file("url_filter blocklist", entry) for entry in u.blocklists]
        url_shas = dict(files)
        config = _with(config, "url_filter", blocklists=tuple(path for path, _ in files))
    config, lang_sha = _checked_language(config)
    if not inputs:
        raise DataError("no inputs")
    return Plan(out.resolve(), inputs, config, tok_sha, url_shas, lang_sha, unread_summary(unread))


def _named_file(what: str, path: str) -> tuple[str, str]:
    """(absolute path, sha256) of a file the configuration names; a :class:`DataError` when there is none."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{what} {p}: no such file")
    return str(p.resolve()), sha256_file(p)


def _with(config: PrepConfig, section: str, **values) -> PrepConfig:
    """``config`` with some values of one section replaced."""
    return config.model_copy(update={section: getattr(config, section).model_copy(update=values)})


def _checked_language(config: PrepConfig) -> tuple[PrepConfig, str | None]:
    """Before any work: the language model loads, every code in ``language.languages`` is one of its
    labels (``eng`` or a typo would drop every document), and a configured model file is resolved and hashed."""
    lang = config.language
    if not lang.enabled:
        return config, None
    from data_prep.langid import LanguageIdentifier

    sha = None
    if lang.model:
        model, sha = _named_file("language.model", lang.model)
        config = _with(config, "language", model=model)
        lang = config.language
    known = LanguageIdentifier(lang).labels()
    for code in lang.languages or ():
        if code not in known:
            near = [code.lower()] if code.lower() in known else difflib.get_close_matches(code, sorted(known), n=3)
            hint = f"; did you mean {', '.join(near)}?" if near else ""
            raise DataError(f"language.languages: {code!r} is not a language of the model (it uses ISO 639-1 "
                            f"codes such as en, de, zh when there is one){hint}")
    return config, sha


def load_plan(out: str | Path) -> Plan:
    out = Path(out)
    p = out / PLAN
    try:
        data = json.loads(p.read_bytes())
    except FileNotFoundError:
        raise DataError(f"{p}: no plan here (run 'megadepth prep slurm' or 'prep run' first)") from None
    except (OSError, ValueError) as e:
        raise DataError(f"{p}: unreadable plan ({e})") from None
    except RecursionError:
        raise DataError(f"{p}: unreadable plan (nested too deeply)") from None
    if not isinstance(data, dict):
        raise DataError(f"{p}: unreadable plan (a JSON {type(data).__name__}, not an object)")
    if data.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{p}: plan format {data.get('format_version')} is not {FORMAT_VERSION}")
    try:
        plan = Plan(out.resolve(), [InputFile.from_json(d) for d in data["inputs"]],
                    PrepConfig.model_validate(data["config"]), data.get("tokenizer_sha256"),
                    data.get("url_lists_sha256") or {}, data.get("language_model_sha256"),
                    u if isinstance(u := data.get("unread_inputs"), dict) else unread_summary([]))
        config_hash = data["config_hash"]
    except KeyError as e:
        raise DataError(f"{p}: unreadable plan (no {e.args[0]!r})") from None
    except ValidationError as e:
        err = e.errors()[0]
        raise DataError(f"{p}: unreadable plan (config.{'.'.join(map(str, err['loc']))}: {err['msg']})") from None
    except (TypeError, ValueError, AttributeError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"{p}: unreadable plan ({reason})") from None
    if plan.config_hash != config_hash:
        raise DataError(f"{p}: config hash mismatch (written by another megadepth version?)")
    return plan


def check_writable(out: Path) -> None:
    """The output directory can be written (or made), checked up front without creating anything."""
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out}: exists and is not a directory")
    if out.is_dir() and not (out / PLAN).exists() and not (out / "manifest.json").exists():
        theirs = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
        if theirs:
            # finalize replaces shard_* and documents/*.parquet: never in a folder that holds someone's files
            raise DataError(f"--out {out}: not empty ({', '.join(theirs[:3])}{' ...' if len(theirs) > 3 else ''}) and "
                            "not a megadepth data directory (no plan.json or manifest.json): give a new or empty directory")
    if not out.exists():
        # planning must leave no trace (--print-config, a refused config): the run makes the folder later
        parent = out.absolute().parent
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
            raise DataError(f"--out {out}: not writable ({parent} is not a writable directory)")
        return
    try:
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise DataError(f"--out {out}: not writable ({e.strerror or e})") from None
