"""Every check that can be made before a process group, model or run directory exists: `megadepth launch`
runs it once for the whole job, and each rank again (cheap) in `megadepth train`."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

import yaml

from megadepth.common.errors import ConfigError
from megadepth.config.load import resolve_batch
from megadepth.config.schema import Config
from megadepth.data import data_fingerprint
from megadepth.parallel.distributed import Layout, check_layout
from megadepth.parametrize.checks import check_parametrization
from megadepth.train import checkpoint
from megadepth.train.data_checks import check_tokenizer
from megadepth.train.init_from import WeightSource, check_init_source, shape_differences
from megadepth.train.rundir import RunDir, RunLock


def preflight(config: Config, world_size: int) -> tuple[Layout, int, int]:
    """(layout, grad_accum, global_batch) for ``world_size`` processes; raises ConfigError / DataError."""
    check_parametrization(config)
    layout = check_layout(config, world_size)
    grad_accum, global_batch = resolve_batch(config, layout.data)
    _check_eval(config, layout)
    check_tokenizer(config)
    return layout, grad_accum, global_batch


def _check_eval(config: Config, layout: Layout) -> None:
    """Evaluation settings that would otherwise fail on every rank, or evaluate nothing and report NaN."""
    t = config.train
    if t.eval_every and t.eval_samples == 0:
        raise ConfigError("train.eval_every is set but train.eval_samples is 0: there is nothing to evaluate; set "
                          "train.eval_every: 0 too (no evaluation), or train.eval_samples > 0")
    per_round = t.micro_batch * layout.data
    if layout.pipeline > 1 and t.eval_samples % per_round:
        # the pipeline engine evaluates whole micro-batches on every data rank
        raise ConfigError(f"with parallel.pipeline > 1, train.eval_samples must be a multiple of micro_batch x "
                          f"data-parallel size = {t.micro_batch} x {layout.data} = {per_round} (got {t.eval_samples})")


def check_run_dir(config: Config, data_size: int, run: RunDir | None = None) -> tuple[str | None, WeightSource | None]:
    """(checkpoint tag the run resumes from, weights it starts from) as train.out_dir, train.resume and
    train.init_from decide; a resume or init_from that cannot work is refused here, before anything is written."""
    run = run or RunDir(config.train.out_dir)
    holder = RunLock.holder(run.root)
    if holder is not None:
        raise ConfigError(busy_message(run, holder))
    unwritable = _unwritable(run.checkpoints)
    if unwritable is not None:
        raise ConfigError(f"train.out_dir: {unwritable} cannot be written (a read-only file system or no "
                          "permission): the run could not save its config, metrics or checkpoints")
    resume_tag = checkpoint.latest_tag(run.checkpoints)
    if config.train.resume == "never" and resume_tag is not None:
        raise ConfigError(f"train.resume is 'never' but {run.checkpoints} already holds checkpoint {resume_tag}; "
                          "choose another train.out_dir or resume: auto")
    if config.train.resume == "must" and resume_tag is None:
        raise ConfigError(f"train.resume is 'must' but {run.checkpoints} holds no complete checkpoint")
    if resume_tag is not None and config.train.resume != "never":
        checkpoint.check_safe(run.checkpoints / resume_tag)  # a planted pickle is refused, never run
        _check_resume_layout(config, run.checkpoints / resume_tag, data_size)
    init_source = check_init_source(config) if config.train.init_from and resume_tag is None else None
    return resume_tag, init_source


def _unwritable(path: Path) -> Path | None:
    """The nearest existing folder on the way to ``path`` when it cannot be written, else None; asked with
    access(2), which writes nothing (a dry run must not). The run itself probes with a real file."""
    folder = path
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return None if os.access(folder, os.W_OK | os.X_OK) else folder


def busy_message(run: RunDir, holder: str) -> str:
    return (f"{run.root} is being trained by another job ({holder}); two jobs on one run directory would "
            "overwrite each other's metrics, summary and checkpoints: wait for it to end, or use another "
            "train.out_dir")


def _partitioned_over(tag_dir: Path) -> int | None:
    """Data-parallel ranks a checkpoint's ZeRO optimizer states are partitioned over (None: not partitioned)."""
    ranks = {int(m.group(1)) for f in tag_dir.iterdir() if (m := _ZERO_FILE.match(f.name))}
    return max(ranks) + 1 if ranks else None


_ZERO_FILE = re.compile(r"^(?:.*_)?zero_pp_rank_(\d+)_mp_rank_\d+_optim_states\.pt$")


def _check_resume_layout(config: Config, tag_dir: Path, data_size: int) -> None:
    """A checkpoint resumes only the model it holds, at the layout it was saved at; checked before anything
    is written, so a mismatch neither crashes inside DeepSpeed nor rewrites the run's config.yaml."""
    if not (tag_dir / "config.yaml").is_file():
        return
    try:
        saved = checkpoint.saved_config(tag_dir)
    except (ValueError, yaml.YAMLError):
        return  # written by another megadepth version: the load itself will tell
    new_run = f"start a new run (another train.out_dir) with train.init_from: {tag_dir}"
    for key in ("tensor", "pipeline"):
        was, now = getattr(saved.parallel, key), getattr(config.parallel, key)
        if was != now:
            raise ConfigError(f"{tag_dir} was saved at parallel.{key} = {was} but this run uses {now}; resume "
                              f"with the same layout, or {new_run}")
    if saved.parallel.zero_stage != config.parallel.zero_stage:
        raise ConfigError(f"{tag_dir} was saved at parallel.zero_stage = {saved.parallel.zero_stage} but this run "
                          f"uses {config.parallel.zero_stage} (the optimizer states are stored differently); resume "
                          f"with the same stage, or {new_run}")
    saved_dp = _partitioned_over(tag_dir)
    if saved_dp is not None and saved_dp != data_size:
        procs = saved_dp * config.parallel.tensor * config.parallel.pipeline
        raise ConfigError(f"{tag_dir} holds ZeRO optimizer states partitioned over {saved_dp} data-parallel rank(s) "
                          f"but this run has {data_size}; resume with {procs} process(es), or {new_run}")
    diffs = shape_differences(saved.model, config.model)
    if diffs:
        raise ConfigError(f"{tag_dir} holds a model of another shape ({diffs}): a run resumes only its own model; "
                          "use a new train.out_dir")
    changed = resumed_setting_differences(saved, config)
    if changed:
        raise ConfigError(f"{tag_dir} was trained with other settings ({changed}). A resume restores the optimizer's "
                          "per-group learning rates, betas, eps and weight decay from the checkpoint, so the new "
                          "values would be logged but not used (and another parametrization would mix its "
                          "multipliers with the old learning rates), and continues the data where it stopped, which "
                          f"another seed, sequence length or split would reorder: resume with the run's own values, "
                          f"or {new_run}")
    _check_same_data(config, tag_dir, new_run)


def _check_same_data(config: Config, tag_dir: Path, new_run: str) -> None:
    """A resume continues the data order where the checkpoint stopped, counted in samples of the index built
    from the data it trained on: other data at data.path would silently repeat and skip samples."""
    saved = checkpoint.saved_data(tag_dir)
    if saved is None:
        return  # saved before checkpoints recorded their data
    now = data_fingerprint(config.data.path)
    if len(saved) != len(now):
        raise ConfigError(f"{tag_dir} trained on {len(saved)} data component(s), data.path now names {len(now)}: "
                          f"a resume continues the data it stopped in; resume with the same data, or {new_run}")
    was_sums, now_sums = [d["lengths_sha256"] for d in saved], [d["lengths_sha256"] for d in now]
    if was_sums != now_sums and sorted(was_sums) == sorted(now_sums):
        raise ConfigError(f"data.path lists the components {tag_dir} trained on in another order: the blend "
                          f"schedule numbers them by position; list them as before, or {new_run}")
    shares = [(was.get("share"), cur.get("share")) for was, cur in zip(saved, now, strict=True)]
    if any(a is not None and b is not None and not math.isclose(a, b, rel_tol=1e-9) for a, b in shares):
        listing = ", ".join(f"{a:.4g} -> {b:.4g}" for a, b in shares if a is not None and b is not None)
        raise ConfigError(f"data.path blends its components with other weights than {tag_dir} trained with (shares "
                          f"{listing}): the blend maps the position a resume continues from onto components by the "
                          "weights, so part of one component would be skipped and part of another repeated; resume "
                          f"with the same weights, or {new_run}")
    for i, (was, cur) in enumerate(zip(saved, now, strict=True)):
        if was["lengths_sha256"] == cur["lengths_sha256"]:
            continue
        which = "data.path" if len(now) == 1 else f"data.path component {i + 1}"
        what = (f"{was['documents']} documents, {was['tokens']} tokens there; {cur['documents']}, {cur['tokens']} here"
                if (was["documents"], was["tokens"]) != (cur["documents"], cur["tokens"])
                else "as many documents and tokens, but other document lengths")
        raise ConfigError(f"{which} holds other data than {tag_dir} trained on ({what}): the position a resume "
                          "continues from counts samples of the old data's index, so samples would repeat or be "
                          f"skipped; resume with the same data, or {new_run}")


#: What a checkpoint fixes: the param groups and base LRs DeepSpeed restores (from the optimizer settings,
#: parametrization and base shape) and the data order. The schedule may change on a resume.
RESUMED_KEYS = (
    *(f"optimizer.{k}" for k in ("name", "lr", "weight_decay", "betas", "eps", "momentum", "nesterov")),
    *(f"optimizer.muon.{k}" for k in ("lr", "momentum", "nesterov", "ns_steps", "adjust_lr")),
    "parametrization", "model.base_depth", "model.base_width", "model.base_kv_heads",
    "model.rope_theta", "model.norm_eps",  # what the model computes, at the same tensor shapes
    "train.seed", "model.seq_len", "data.valid_fraction",  # which samples the run trains on, in which order
)


#: Resolved settings named by the keys a user sets for them.
_LABELS = {"base_head_dim": "base head size (model.base_width / model.base_heads, or parametrization.base_head_dim)"}


def _resolved(config: Config) -> dict[str, Any]:
    """The settings a resume pins, defaults resolved, so a config that spells out the same values resumes."""
    from megadepth.parametrize import Parametrization

    model = config.model
    ptz = Parametrization.from_config(model, config.parametrization, optimizer=config.optimizer.name)
    par = config.parametrization.model_dump(mode="json")
    par.update(alpha=ptz.alpha, gamma=ptz.gamma, base_head_dim=ptz.base_head_dim)
    # the rule options are judged by the numbers they give, after the load (checkpoint.group_differences):
    # comparing keys would refuse an older checkpoint the very setting that reproduces its rule
    for key in ("eps_scaling", "adam_wd_scaling", "wd_depth_scaling", "output_proj_init"):
        par.pop(key, None)
    return {"parametrization": par, "model.base_depth": model.base_depth or model.depth,
            "model.base_width": model.base_width or model.width,
            "model.base_kv_heads": model.base_kv_heads or model.n_kv_heads}


def _at(config: Config, key: str) -> Any:
    """The value of a dotted key (``optimizer.muon.momentum``)."""
    value: Any = config
    for part in key.split("."):
        value = getattr(value, part)
    return value


def _muon_lr_difference(saved: Config, config: Config) -> list[str]:
    """The Muon matrices' base LR, unset read as optimizer.lr (spelling that out resumes); nothing when either
    run is not Muon's (optimizer.name's difference says it) or both leave it unset (optimizer.lr's does)."""
    if saved.optimizer.name != "muon" or config.optimizer.name != "muon":
        return []
    if saved.optimizer.muon.lr is None and config.optimizer.muon.lr is None:
        return []
    if saved.optimizer.base_lr(muon_half=True) == config.optimizer.base_lr(muon_half=True):
        return []

    def shown(c: Config) -> str:
        return str(c.optimizer.muon.lr) if c.optimizer.muon.lr is not None else f"unset (optimizer.lr {c.optimizer.lr})"

    return [f"optimizer.muon.lr {shown(saved)} there, {shown(config)} here"]


def resumed_setting_differences(saved: Config, config: Config) -> str:
    """``key A there, B here`` for each setting of :data:`RESUMED_KEYS` that differs ('' when none does), and
    for evaluation turned on or off. Not ``data.path``: moved data is the same data (see :func:`_check_same_data`)."""
    out = []
    was_r, now_r = _resolved(saved), _resolved(config)
    for key in RESUMED_KEYS:
        section, _, field = key.partition(".")
        if not field:
            was_d, now_d = was_r[section], now_r[section]
            out += [f"{_LABELS.get(k, f'{section}.{k}')} {was_d[k]} there, {now_d[k]} here"
                    for k in was_d if was_d[k] != now_d.get(k)]
            continue
        if key == "optimizer.muon.lr":
            out += _muon_lr_difference(saved, config)
            continue
        was, now = (was_r[key], now_r[key]) if key in was_r else (_at(saved, key), _at(config, key))
        if was != now:
            out.append(f"{key} {was} there, {now} here")
    if (saved.train.eval_samples > 0) != (config.train.eval_samples > 0):  # moves documents in or out
        out.append(f"train.eval_samples {saved.train.eval_samples} there, {config.train.eval_samples} here "
                   "(0 means no held-out split, so other training documents)")
    return ", ".join(out)
