"""DeepSpeed checkpoints plus the data position. We write ``latest`` (DeepSpeed's format) ourselves, last,
after a barrier, so a checkpoint is only ever found once all of it is on disk. A checkpoint is read as data,
never as code: weights-only (:func:`read_weights_only`, :func:`check_safe`).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import math
import os
import pickle
import re
import secrets
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import yaml

from megadepth.common.errors import ConfigError
from megadepth.common.io import atomic_write_text
from megadepth.config.schema import Config

LATEST = "latest"
POSITION = "position.json"
TAG_RE = re.compile(r"^step_(\d{8})$")


class CheckpointError(RuntimeError):
    """A checkpoint that could not be written (a full disk, a read-only folder); one line for the user."""


#: The non-builtin classes DeepSpeed pickles into its optimizer-state files (ZeRO 1-3, bf16, pipeline), as
#: ``get_unsafe_globals_in_checkpoint`` names them; each only stores numbers, so building one runs no code.
SAFE_GLOBALS = ("deepspeed.runtime.fp16.loss_scaler.LossScaler", "deepspeed.runtime.zero.config.ZeroStageEnum",
                "deepspeed.utils.tensor_fragment.fragment_address")


def _safe_globals() -> list[Any]:
    """The classes of :data:`SAFE_GLOBALS` (imported on first use: DeepSpeed is slow to import)."""
    return [getattr(importlib.import_module(module), name)
            for module, _, name in (dotted.rpartition(".") for dotted in SAFE_GLOBALS)]


def load_file(path: str | Path, map_location: Any = None) -> Any:
    """``torch.load`` of one checkpoint file, weights-only: any other callable is refused, never run."""
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise ConfigError(f"{path} holds objects other than tensors and DeepSpeed's bookkeeping, refused "
                          f"(checkpoints are loaded weights-only): {refusal(e)}") from None


def refusal(exc: pickle.UnpicklingError) -> str:
    """What torch's weights-only load refused, by name (never torch's text: it suggests ``weights_only=False``)."""
    match = re.search(r"GLOBAL ([\w.]+)", str(exc))
    if match:
        return f"it names {match.group(1).rstrip('.')}, which is not allowed"
    return "it holds an object that a weights-only load does not build"


def check_safe(tag_dir: Path) -> None:
    """Refuse a checkpoint any of whose ``.pt`` files would unpickle a class outside :data:`SAFE_GLOBALS`
    (read from the pickles alone, no tensor loaded), or cannot be scanned: megadepth writes none such."""
    for path in sorted(tag_dir.glob("*.pt")):
        if not path.is_file():  # a FIFO would block the scan (and every later reader) forever
            raise ConfigError(f"{path} is not a regular file: not a checkpoint megadepth wrote, refused")
        if not zipfile.is_zipfile(path):
            raise ConfigError(
                f"{path} is not in torch's zip format, which every checkpoint megadepth writes uses: its pickle "
                "cannot be checked before it is opened, so it is refused (a damaged file, or not one of yours)")
        try:
            found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception as e:
            raise ConfigError(f"{path} cannot be read ({type(e).__name__}): the checkpoint is damaged") from None
        unsafe = sorted(set(found) - set(SAFE_GLOBALS))
        if unsafe:
            raise ConfigError(
                f"{path} would run code from {', '.join(unsafe)} when loaded: megadepth loads checkpoints "
                "weights-only and refuses it. Only resume from checkpoints you or your job wrote")


def read_weights_only(engine: Any) -> None:
    """Make every checkpoint read of ``engine`` weights-only (:func:`load_file`) for the engine's life."""
    engine.checkpoint_engine.load = load_file


@contextlib.contextmanager
def guard_files(engine: Any) -> Iterator[list[str]]:
    """While active, a failed write of the engine's checkpoint files is recorded (in the yielded list,
    ``"file: error"``) instead of raised: DeepSpeed saves between two barriers, and a rank that raised in
    between would leave the others waiting forever at the second. :func:`save` then decides together."""
    files = engine.checkpoint_engine
    failures: list[str] = []
    plain = {"save": files.save, "makedirs": files.makedirs}
    copy_scripts = getattr(engine, "_copy_recovery_script", None)  # ZeRO: zero_to_fp32.py, rank 0 only

    def recorded(fn: Any, name: str, position: int) -> Any:
        """``fn`` with its failure recorded; the path it writes is argument ``name`` (or ``position``)."""
        def wrapper(*args: Any, **kwargs: Any) -> None:
            if failures:
                return  # one failure dooms the tag: write nothing more to a full disk
            try:
                fn(*args, **kwargs)
            except Exception as e:  # OSError (ENOSPC, EROFS), or torch's RuntimeError wrapping one
                where = kwargs.get(name, args[position] if len(args) > position else "?")
                path = Path(str(where))
                failures.append(f"{path.name}: {_cause(e, path if path.is_dir() else path.parent)}")
        return wrapper

    files.save = recorded(plain["save"], "path", 1)
    files.makedirs = recorded(plain["makedirs"], "path", 0)
    if copy_scripts is not None:
        engine._copy_recovery_script = recorded(copy_scripts, "save_path", 0)
    try:
        yield failures
    finally:
        files.save, files.makedirs = plain["save"], plain["makedirs"]
        if copy_scripts is not None:
            del engine._copy_recovery_script  # back to the class's method


def _cause(exc: BaseException, folder: Path | None = None) -> str:
    """The OS-level reason behind a failed write. torch's zip writer reports a full disk with no errno, so
    without an OSError underneath a (nearly) full ``folder`` file system is named instead."""
    inner: BaseException | None = exc
    while inner is not None:
        if isinstance(inner, OSError) and inner.strerror:
            return inner.strerror + (f": {inner.filename}" if inner.filename else "")
        inner = inner.__cause__ or inner.__context__
    if folder is not None:
        with contextlib.suppress(OSError):
            free = shutil.disk_usage(folder).free
            if free < 1 << 20:
                return f"No space left on device ({free} bytes free on the file system of {folder})"
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def weights_finite(model: torch.nn.Module, device: torch.device) -> bool:
    """Whether every parameter on every rank is finite (each rank checks what it holds). A finite loss and
    gradient norm do not prove it: an update can overflow, and such weights must never become ``latest``."""
    bad = torch.zeros((), dtype=torch.bool, device=device)
    for p in model.parameters():
        held = getattr(p, "ds_tensor", None)  # ZeRO-3: the parameter itself is an empty placeholder
        held = p if held is None else held
        if held.numel():
            bad |= ~torch.isfinite(held.detach()).all()
    flag = bad.to(torch.int32).reshape(1)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return not bool(flag.item())


def check_writable(ckpt_dir: Path) -> str | None:
    """Why checkpoints cannot be written to ``ckpt_dir``, or None. Probed with a real file (in the run
    directory while it does not exist yet): root passes permission checks a read-only mount refuses."""
    folder = ckpt_dir if ckpt_dir.is_dir() else ckpt_dir.parent
    probe = folder / f".write-probe-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        return f"cannot write checkpoints to {ckpt_dir}: {_cause(e)}"
    return None


def step_of(tag: str) -> int:
    """The optimizer step a tag names (``step_00000300`` -> 300)."""
    match = TAG_RE.match(tag)
    if match is None:
        raise ValueError(f"not a checkpoint tag: {tag!r}")
    return int(match.group(1))


def saved_config(tag_dir: Path) -> Config:
    """The resolved config a checkpoint was saved with (OSError, ValueError, yaml.YAMLError if unreadable)."""
    return Config.model_validate(yaml.safe_load((tag_dir / "config.yaml").read_text(encoding="utf-8")) or {})


def _from_position(tag_dir: Path, read: Any) -> Any:
    """``read`` of a checkpoint's parsed ``position.json``; None when it is missing or unreadable."""
    try:
        return read(json.loads((tag_dir / POSITION).read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def position(tag_dir: Path) -> tuple[int, int] | None:
    """(step, consumed samples) a checkpoint was saved at."""
    return _from_position(tag_dir, lambda data: (int(data["step"]), int(data["consumed_samples"])))


def checkpoints_folder(path: Path) -> Path:
    """A run directory stands for its ``checkpoints/``; any other folder (merge-tp output) for itself."""
    return path / "checkpoints" if (path / "checkpoints").is_dir() else path


def check_tag(tag: str | None) -> None:
    """A ``--tag`` names a checkpoint of the run's checkpoints folder (step_00000100), never a path."""
    if tag is not None and not TAG_RE.fullmatch(tag):
        raise ConfigError(f"--tag {tag!r} is not a checkpoint name of the run's checkpoints folder "
                          "(names look like step_00000100; leave --tag out for the latest)")


def saved_data(tag_dir: Path) -> list[dict[str, Any]] | None:
    """The data fingerprint a checkpoint was saved with (see :func:`save`); None when it has none."""
    data = _from_position(tag_dir, lambda position: position["data"])

    def well_formed(d: Any) -> bool:
        return (isinstance(d, dict) and isinstance(d.get("documents"), int) and isinstance(d.get("tokens"), int)
                and isinstance(d.get("lengths_sha256"), str)
                and (d.get("share") is None or (isinstance(d["share"], (int, float))
                                                 and not isinstance(d["share"], bool))))
    return data if isinstance(data, list) and all(well_formed(d) for d in data) else None


def complete_tags(ckpt_dir: Path) -> list[str]:
    """Checkpoint tags in step order whose save finished (``config.yaml`` is written after every rank saved)."""
    if not ckpt_dir.is_dir():
        return []
    return sorted(p.name for p in ckpt_dir.iterdir()
                  if p.is_dir() and not p.is_symlink() and TAG_RE.match(p.name) and (p / "config.yaml").is_file())


def latest_tag(ckpt_dir: Path) -> str | None:
    """The tag named by ``latest``; None when there is no pointer (a new run). A pointer to a checkpoint that
    is gone is an error: starting over would truncate metrics.jsonl while older checkpoints still sit there."""
    pointer = ckpt_dir / LATEST
    if not pointer.is_file():
        complete = complete_tags(ckpt_dir)
        if complete or pointer.is_symlink():  # a dangling link is a pointer too
            have = f"holds complete checkpoint(s) up to {complete[-1]}" if complete else "holds no complete checkpoint"
            raise ConfigError(
                f"{ckpt_dir} {have} but {pointer} is missing or not a file: write the tag to resume from into "
                f"{pointer}" + (f" (e.g. {complete[-1]})" if complete else "")
                + f", or move {ckpt_dir} away to start the run over")
        return None
    if pointer.is_symlink():  # megadepth writes a plain file; a link could show another file's contents
        raise ConfigError(f"{pointer} is a symbolic link, not the pointer file megadepth writes: replace it with a "
                          "file holding the tag to resume from (e.g. step_00000100)")
    tag = pointer.read_text(encoding="utf-8").strip()
    if tag in complete_tags(ckpt_dir):
        return tag
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
         keep: int, is_main: bool, data: list[dict[str, Any]] | None = None, muon_beside: Any = None) -> str:
    """Save on every rank; then rank 0 writes ``position.json`` (with ``data``, the fingerprint a resume
    checks), the config copy and ``latest``, and prunes old tags. A write that fails on any rank fails the
    save on every rank: the cut-short tag is removed, ``latest`` keeps naming the previous checkpoint, and
    :class:`CheckpointError` says why in one line. ``muon_beside`` (megadepth.optim.beside_zero): the Muon
    matrices' optimizer that steps beside ZeRO; its first data rank of each (tensor, pipeline) rank writes its
    state file among DeepSpeed's, so that file is part of what ``config.yaml`` marks complete."""
    tag = f"step_{step:08d}"
    tag_dir = ckpt_dir / tag
    with guard_files(engine) as failures:
        try:  # ours, not DeepSpeed's: its makedirs logs a failure and goes on to a misleading torch error
            tag_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            failures.append(_cause(e))
        engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=client_state, save_latest=False)
        if muon_beside is not None and muon_beside.saves and not failures:
            engine.checkpoint_engine.save(muon_beside.state_dict(), str(tag_dir / muon_beside.file))
        if engine.zero_optimization_stage() == 3:
            _save_gathered_weights(engine, tag_dir, failures)
    failed = _gather_failures(failures)
    if not failed and is_main:
        try:
            position: dict[str, Any] = {"step": int(client_state["step"]),
                                        "consumed_samples": int(client_state["consumed_samples"])}
            if data is not None:
                position["data"] = data
            atomic_write_text(tag_dir / POSITION, json.dumps(position) + "\n")
            atomic_write_text(tag_dir / "config.yaml", config_yaml)  # last of the tag: it is complete
            atomic_write_text(ckpt_dir / LATEST, tag)
        except Exception as e:  # any failure here must reach the gather below, or the other ranks wait there
            name = getattr(e, "filename", None)
            failures.append(f"{name and Path(name).name or 'position.json/config.yaml/latest'}: {_cause(e)}")
    failed = failed or _gather_failures(failures)
    if failed:
        if is_main:
            shutil.rmtree(tag_dir, ignore_errors=True)
        torch.distributed.barrier()
        previous = (ckpt_dir / LATEST).read_text(encoding="utf-8").strip() if (ckpt_dir / LATEST).is_file() else ""
        removed = ("the partial checkpoint was removed" if not tag_dir.exists() else
                   f"the partial checkpoint could not be removed (delete {tag_dir} to free its space)")
        raise CheckpointError(
            f"could not save checkpoint {tag_dir} ({'; '.join(failed)}); {removed} and "
            + (f"latest still names {previous}: the same command resumes from there once the cause is fixed"
               if previous else "there is no earlier checkpoint"))
    if is_main:
        tags = sorted(p.name for p in ckpt_dir.iterdir() if p.is_dir() and TAG_RE.match(p.name))
        for old in tags[:-keep]:
            if old != tag:
                shutil.rmtree(ckpt_dir / old, ignore_errors=True)
    torch.distributed.barrier()
    return tag


def _gather_failures(failures: list[str]) -> list[str]:
    """Every rank's failed writes, on every rank (``rank R: file: why``); [] when all succeeded."""
    gathered: list[list[str] | None] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, failures)
    return [f"rank {rank}: {why}" for rank, whys in enumerate(gathered) for why in (whys or [])]


def gathered_weights_file(tp_rank: int) -> str:
    """Name of a ZeRO-3 checkpoint's whole weights of one tensor rank (see :func:`_save_gathered_weights`)."""
    return f"gathered_mp_rank_{tp_rank:02d}_weights.pt"


def _save_gathered_weights(engine: Any, tag_dir: Path, failures: list[str]) -> None:
    """ZeRO-3 saves parameters in pieces inside pickled optimizer files, but the tools that read weights
    (merge-tp, export, generate, train.init_from) read plain tensors: so the first data-parallel rank of each
    tensor rank writes its gathered shard as ``{"module": state_dict}``. Every rank takes part; a failed
    write is added to ``failures``."""
    import deepspeed

    from megadepth.common.io import atomic_write_bytes

    mpu = engine.mpu
    data_rank = mpu.get_data_parallel_rank() if mpu is not None else torch.distributed.get_rank()
    tp_rank = mpu.get_model_parallel_rank() if mpu is not None else 0
    with deepspeed.zero.GatheredParameters(list(engine.module.parameters()), modifier_rank=None):
        if data_rank == 0 and not failures:
            try:
                state = {k: v.detach().to("cpu", copy=True) for k, v in engine.module.state_dict().items()}
                buffer = io.BytesIO()
                torch.save({"module": state}, buffer)
                atomic_write_bytes(tag_dir / gathered_weights_file(tp_rank), buffer.getvalue())
            except Exception as e:  # recorded, so every rank still reaches the gather of failures
                failures.append(f"{gathered_weights_file(tp_rank)}: {_cause(e, tag_dir)}")
    # the gather broke the forward's recorded order: ZeRO-3's prefetcher would replay a stale trace and fail
    offload = getattr(engine.optimizer, "parameter_offload", None)
    if offload is not None:
        invalidate = getattr(offload.get_param_coordinator(), "_invalidate_trace", None)
        if invalidate is not None:
            invalidate()  # re-recorded on the next step


def group_settings(optimizer: Any) -> list[tuple[Any, ...]]:
    """Each optimizer group's (name, initial LR, eps, weight decay), which a load replaces with the checkpoint's."""
    return [(g.get("name"), g.get("initial_lr", g.get("lr")), g.get("eps"), g.get("weight_decay"))
            for g in getattr(optimizer, "param_groups", [])]


def group_differences(planned: list[tuple[Any, ...]], restored: list[tuple[Any, ...]]) -> list[str]:
    """``group NAME: eps A there, B here`` for each number a checkpoint's groups hold otherwise than this
    run's rules give: the same config gives other numbers when megadepth's rules change between save and
    resume, which the config comparison before the load cannot see."""
    if len(planned) != len(restored):
        return [f"{len(restored)} optimizer groups there, {len(planned)} here"]
    out = []
    for (name, *now), (_, *was) in zip(planned, restored, strict=True):
        for key, a, b in zip(("lr", "eps", "weight_decay"), was, now, strict=True):
            if a is not None and b is not None and not math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=0.0):
                out.append(f"group {name}: {key} {a:.6g} there, {b:.6g} here")
    return out


def _load_muon_beside(muon_beside: Any, tag_dir: Path) -> None:
    """Restore the Muon matrices' optimizer state (momentum, schedule) of this (tensor, pipeline) rank."""
    path = tag_dir / muon_beside.file
    if not path.is_file():
        raise ConfigError(f"{tag_dir} has no {muon_beside.file}, the Muon optimizer state this rank needs "
                          "(optimizer.name: muon at parallel.zero_stage 1 saves it there): not a checkpoint of this "
                          "layout; start a new run with train.init_from pointing at it to take its weights only")
    try:
        muon_beside.load_state_dict(load_file(path))
    except ConfigError:
        raise
    except Exception as e:  # a torn or foreign file
        raise RuntimeError(f"could not load {path}: {type(e).__name__}: {e}") from e


def load(engine: Any, ckpt_dir: Path, tag: str, muon_beside: Any = None) -> dict[str, Any]:
    """Load a checkpoint into the engine (weights, optimizer, scheduler), and into ``muon_beside`` (see
    :func:`save`) its state file; returns our client state."""
    planned = group_settings(engine.optimizer) + group_settings(muon_beside)
    try:
        path, client_state = engine.load_checkpoint(str(ckpt_dir), tag=tag, load_optimizer_states=True,
                                                    load_lr_scheduler_states=True)
    except ConfigError:
        raise
    except Exception as e:  # torn or foreign files: DeepSpeed asserts, torch raises many kinds
        raise RuntimeError(f"could not load checkpoint {ckpt_dir / tag}: {type(e).__name__}: {e}") from e
    if path is None:
        raise RuntimeError(f"could not load checkpoint {ckpt_dir / tag}")
    if muon_beside is not None:
        _load_muon_beside(muon_beside, ckpt_dir / tag)
    differences = group_differences(planned, group_settings(engine.optimizer) + group_settings(muon_beside))
    if differences:
        raise ConfigError(
            f"{ckpt_dir / tag} was trained with other per-group optimizer numbers than this run's parametrization "
            f"gives ({'; '.join(differences[:4])}{'; ...' if len(differences) > 4 else ''}): the same config "
            "resolves otherwise since megadepth's rules changed (docs/parametrizations.md, 'Rule sources', names "
            "the options that give the former rules: parametrization.eps_scaling: gradient for the former eps, "
            "adam_wd_scaling: lr_inverse for optimizer adam's former weight decay), or its checkpoint was edited. "
            "A resume would train on the checkpoint's numbers while the logs show these: set the option that "
            f"matches, or start a new run with train.init_from: {ckpt_dir / tag}")
    return client_state or {}
