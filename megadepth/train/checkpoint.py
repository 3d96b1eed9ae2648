"""DeepSpeed checkpoints plus the data position, with an atomically written ``latest`` pointer.

DeepSpeed writes the tensors (every rank must call save); we write ``latest`` ourselves, last, after a
barrier, so a checkpoint is only ever found once all of it is on disk. The file name and format match
DeepSpeed's own ``latest``, so ``engine.load_checkpoint(dir)`` understands it too.
"""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch
import yaml

from megadepth.config.load import ConfigError
from megadepth.config.schema import Config
from megadepth.train.rundir import atomic_write_text

LATEST = "latest"
POSITION = "position.json"
TAG_RE = re.compile(r"^step_(\d{8})$")


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def step_of(tag: str) -> int:
    """The optimizer step a tag names (``step_00000300`` -> 300)."""
    match = TAG_RE.match(tag)
    if match is None:
        raise ValueError(f"not a checkpoint tag: {tag!r}")
    return int(match.group(1))


def saved_config(tag_dir: Path) -> Config:
    """The resolved config a checkpoint was saved with (its ``config.yaml``, written last). Raises OSError,
    ValueError or yaml.YAMLError for a missing or foreign file: callers decide how much that matters."""
    return Config.model_validate(yaml.safe_load((tag_dir / "config.yaml").read_text(encoding="utf-8")) or {})


def position(tag_dir: Path) -> tuple[int, int] | None:
    """(step, consumed samples) a checkpoint was saved at, from its ``position.json``; None for a checkpoint
    written before that file existed (or an unreadable one: the load itself will tell)."""
    try:
        data = json.loads((tag_dir / POSITION).read_text(encoding="utf-8"))
        return int(data["step"]), int(data["consumed_samples"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def checkpoints_folder(path: Path) -> Path:
    """A run directory stands for its ``checkpoints/``; any other folder (a checkpoints folder, merge-tp
    output) for itself. What generate, export, merge-tp and train.init_from accept."""
    return path / "checkpoints" if (path / "checkpoints").is_dir() else path


def check_tag(tag: str | None) -> None:
    """A ``--tag`` names a checkpoint of the run's checkpoints folder (step_00000100), never a path
    elsewhere (``../../x`` was followed by generate, export and merge-tp)."""
    if tag is not None and not TAG_RE.fullmatch(tag):
        raise ConfigError(f"--tag {tag!r} is not a checkpoint name of the run's checkpoints folder "
                          "(names look like step_00000100; leave --tag out for the latest)")


def saved_data(tag_dir: Path) -> list[dict[str, Any]] | None:
    """The data fingerprint a checkpoint was saved with (see :func:`save`); None when it has none (an older
    checkpoint) or its ``position.json`` cannot be read."""
    try:
        data = json.loads((tag_dir / POSITION).read_text(encoding="utf-8"))["data"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    def well_formed(d: Any) -> bool:
        return (isinstance(d, dict) and isinstance(d.get("documents"), int) and isinstance(d.get("tokens"), int)
                and isinstance(d.get("lengths_sha256"), str)
                and (d.get("share") is None or (isinstance(d["share"], (int, float))
                                                 and not isinstance(d["share"], bool))))
    return data if isinstance(data, list) and all(well_formed(d) for d in data) else None


def complete_tags(ckpt_dir: Path) -> list[str]:
    """Checkpoint tags in step order whose save finished: ``config.yaml`` is written into a tag after
    every rank has saved, so a tag without it was cut short."""
    if not ckpt_dir.is_dir():
        return []
    return sorted(p.name for p in ckpt_dir.iterdir()
                  if p.is_dir() and TAG_RE.match(p.name) and (p / "config.yaml").is_file())


def latest_tag(ckpt_dir: Path) -> str | None:
    """The tag named by ``latest``; None when there is no pointer (a new run).

    A pointer to a checkpoint that is gone is an error rather than a new run: starting over would
    truncate metrics.jsonl while older checkpoints still sit there.
    """
    pointer = ckpt_dir / LATEST
    if not pointer.is_file():
        return None
    tag = pointer.read_text(encoding="utf-8").strip()
    if tag in complete_tags(ckpt_dir):
        return tag
    # only a tag of this folder whose save finished (config.yaml is written after every rank saved):
    # not a path elsewhere (another run's checkpoint), not a tag cut short
    if TAG_RE.match(tag) and (ckpt_dir / tag).is_dir():
        why = "which is incomplete (no config.yaml: its save was cut short)"
    elif tag and not TAG_RE.match(tag):
        why = "which is not a checkpoint of this folder (names look like step_00000100)"
    else:
        why = "which does not exist"
    others = complete_tags(ckpt_dir)
    hint = (f"the newest complete one there is {others[-1]}: write that name into {pointer} to resume from it"
            if others else "no complete checkpoint is left: delete the pointer to start the run over")
    raise ConfigError(f"{pointer} names checkpoint {tag or '(empty)'!r}, {why}; {hint}")


def save(engine: Any, ckpt_dir: Path, step: int, client_state: dict[str, Any], config_yaml: str,
         keep: int, is_main: bool, data: list[dict[str, Any]] | None = None) -> str:
    """Save on every rank; then rank 0 writes the config copy and ``latest`` and prunes old tags.

    ``data`` (:func:`megadepth.data.data_fingerprint`) goes into ``position.json``: what the consumed-samples
    position counts in, checked on resume."""
    tag = tag_for(step)
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=client_state, save_latest=False)
    if engine.zero_optimization_stage() == 3:
        _save_gathered_weights(engine, ckpt_dir / tag)
    torch.distributed.barrier()
    if is_main:
        # the data position, readable before the engine exists (the train set is sized from it)
        position: dict[str, Any] = {"step": int(client_state["step"]),
                                    "consumed_samples": int(client_state["consumed_samples"])}
        if data is not None:
            position["data"] = data
        atomic_write_text(ckpt_dir / tag / POSITION, json.dumps(position) + "\n")
        atomic_write_text(ckpt_dir / tag / "config.yaml", config_yaml)  # last: the tag is complete
        atomic_write_text(ckpt_dir / LATEST, tag)
        tags = sorted(p.name for p in ckpt_dir.iterdir() if p.is_dir() and TAG_RE.match(p.name))
        for old in tags[:-keep]:
            if old != tag:
                shutil.rmtree(ckpt_dir / old, ignore_errors=True)
    torch.distributed.barrier()
    return tag


def gathered_weights_file(tp_rank: int) -> str:
    """Name of a ZeRO-3 checkpoint's whole weights of one tensor rank (see :func:`_save_gathered_weights`)."""
    return f"gathered_mp_rank_{tp_rank:02d}_weights.pt"


def _save_gathered_weights(engine: Any, tag_dir: Path) -> None:
    """ZeRO-3 saves every parameter in pieces across the data-parallel ranks (inside pickled optimizer
    files); the tools that read weights (merge-tp, export, generate, train.init_from) read plain tensors
    only. So the parameters are gathered once per save and the first data-parallel rank of each tensor
    rank writes its shard as ``{"module": state_dict}`` of plain tensors. Every rank takes part."""
    import deepspeed

    from megadepth.data.indexed import atomic_write_bytes

    mpu = engine.mpu
    data_rank = mpu.get_data_parallel_rank() if mpu is not None else torch.distributed.get_rank()
    tp_rank = mpu.get_model_parallel_rank() if mpu is not None else 0
    with deepspeed.zero.GatheredParameters(list(engine.module.parameters()), modifier_rank=None):
        if data_rank == 0:
            state = {k: v.detach().to("cpu", copy=True) for k, v in engine.module.state_dict().items()}
            buffer = io.BytesIO()
            torch.save({"module": state}, buffer)
            atomic_write_bytes(tag_dir / gathered_weights_file(tp_rank), buffer.getvalue())


def load(engine: Any, ckpt_dir: Path, tag: str) -> dict[str, Any]:
    """Load a checkpoint into the engine (weights, optimizer, scheduler); returns our client state."""
    try:
        path, client_state = engine.load_checkpoint(
            str(ckpt_dir), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True
        )
    except Exception as e:  # torn or foreign files: DeepSpeed asserts, torch raises many kinds
        raise RuntimeError(f"could not load checkpoint {ckpt_dir / tag}: {type(e).__name__}: {e}") from e
    if path is None:
        raise RuntimeError(f"could not load checkpoint {ckpt_dir / tag}")
    return client_state or {}
