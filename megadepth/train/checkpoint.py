"""DeepSpeed checkpoints plus the data position, with an atomically written ``latest`` pointer.

DeepSpeed writes the tensors (every rank must call save); we write ``latest`` ourselves, last, after a
barrier, so a checkpoint is only ever found once all of it is on disk. The file name and format match
DeepSpeed's own ``latest``, so ``engine.load_checkpoint(dir)`` understands it too.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import torch

from megadepth.train.rundir import atomic_write_text

LATEST = "latest"
TAG_RE = re.compile(r"^step_(\d{8})$")


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def latest_tag(ckpt_dir: Path) -> str | None:
    """The tag named by ``latest``, if that checkpoint directory exists."""
    pointer = ckpt_dir / LATEST
    if not pointer.is_file():
        return None
    tag = pointer.read_text(encoding="utf-8").strip()
    return tag if tag and (ckpt_dir / tag).is_dir() else None


def save(engine: Any, ckpt_dir: Path, step: int, client_state: dict[str, Any], config_yaml: str,
         keep: int, is_main: bool) -> str:
    """Save on every rank; then rank 0 writes the config copy and ``latest`` and prunes old tags."""
    tag = tag_for(step)
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=client_state, save_latest=False)
    torch.distributed.barrier()
    if is_main:
        atomic_write_text(ckpt_dir / tag / "config.yaml", config_yaml)
        atomic_write_text(ckpt_dir / LATEST, tag)
        tags = sorted(p.name for p in ckpt_dir.iterdir() if p.is_dir() and TAG_RE.match(p.name))
        for old in tags[:-keep]:
            if old != tag:
                shutil.rmtree(ckpt_dir / old, ignore_errors=True)
    torch.distributed.barrier()
    return tag


def load(engine: Any, ckpt_dir: Path, tag: str) -> dict[str, Any]:
    """Load a checkpoint into the engine (weights, optimizer, scheduler); returns our client state."""
    path, client_state = engine.load_checkpoint(
        str(ckpt_dir), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True
    )
    if path is None:
        raise RuntimeError(f"could not load checkpoint {ckpt_dir / tag}")
    return client_state or {}
