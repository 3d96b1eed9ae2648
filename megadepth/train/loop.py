"""``megadepth train``: checks, data, engine, the loop, eval, checkpoints, metrics.

The order matters: everything that can be wrong with a config, a layout or the data is checked before
the run directory is created and before any process group or model exists.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import torch

from megadepth.common.errors import ConfigError
from megadepth.common.io import atomic_write_json, atomic_write_text
from megadepth.config.load import to_yaml
from megadepth.config.schema import Config
from megadepth.data import DataError, MicroBatchSampler, build_datasets, data_fingerprint, make_loader
from megadepth.parallel.distributed import (
    DistEnv,
    Layout,
    backend_for,
    init_distributed,
    prepare_deepspeed_env,
    read_env,
    resolve_device,
    resolve_precision,
    shutdown,
)
from megadepth.parallel.topology import build_grid
from megadepth.parametrize import roles_present
from megadepth.train import checkpoint
from megadepth.train.init_from import WeightSource
from megadepth.train.preflight import busy_message, check_run_dir, preflight
from megadepth.train.rundir import MetricsLog, RunDir, RunLock, read_metrics
from megadepth.train.schedule import lr_factor
from megadepth.train.step import Stepper
from megadepth.train.tracking import Tracker


@dataclass
class Plan:
    """Everything decided before any work starts."""

    config: Config
    env: DistEnv
    layout: Layout
    device: torch.device
    precision: str
    grad_accum: int
    global_batch: int
    run: RunDir
    resume_tag: str | None
    init_source: WeightSource | None = None
    """Where the weights come from when the run starts fresh with train.init_from."""
    data: list[dict[str, Any]] | None = None
    """What the data order depends on (:func:`~megadepth.data.data_fingerprint`), recorded per checkpoint."""


def plan_run(config: Config) -> Plan:
    """All start-up checks; raises ConfigError / DataError with a one-line message."""
    env = read_env()
    layout, grad_accum, global_batch = preflight(config, env.world_size)
    device = resolve_device(config, env)
    backend_for(config, device)  # NCCL without a GPU fails now, not as a rendezvous time-out
    precision = resolve_precision(config, device)
    if precision != "fp32" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"train.precision is {precision} but this GPU does not support bf16")
    run = RunDir(config.train.out_dir)
    resume_tag, init_source = check_run_dir(config, layout.data, run)
    return Plan(config, env, layout, device, precision, grad_accum, global_batch, run, resume_tag, init_source)


def _check_same_config(config_yaml: str) -> None:
    """Every rank (every node) must train the same resolved config: compare their sha256."""
    digest = hashlib.sha256(config_yaml.encode()).hexdigest()
    digests: list[str] = [""] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(digests, digest)
    odd = [rank for rank, d in enumerate(digests) if d != digests[0]]
    if odd:
        raise ConfigError(
            f"ranks {odd} resolved a different config than rank 0 (sha256 {digests[0][:12]}...): every node "
            "must be given the same config files and --set overrides"
        )


def _all_reduce_mean(values: list[float], device: torch.device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return (t / torch.distributed.get_world_size()).tolist()


def train(config: Config) -> dict[str, Any]:
    """Train per ``config`` in this process (one rank of a job, or the whole job); returns the summary."""
    # a scheduler's SIGTERM during start-up (data index, engine build) must also end in a stopped run,
    # so the handler is in place from the start; ranks act on it together once training runs
    stop_request = _StopRequest()
    stop_request.install()
    try:
        return _train(config, stop_request)
    finally:
        stop_request.restore()


def _train_samples_needed(plan: Plan) -> int:
    """Samples the run reads in all: from where its checkpoint stands, the steps left at this global batch.
    A resume may use another global batch (another data-parallel size at a derived one, or a changed
    train.global_batch): steps x global batch would then miscount the samples consumed so far."""
    steps, batch = plan.config.train.steps, plan.global_batch
    if plan.resume_tag is not None:
        saved = checkpoint.position(plan.run.checkpoints / plan.resume_tag)
        if saved is not None:
            step, consumed = saved
            return consumed + max(0, steps - step) * batch
    return steps * batch


def _train(config: Config, stop_request: _StopRequest) -> dict[str, Any]:
    plan = plan_run(config)
    if plan.env.is_main:  # only rank 0 writes position.json
        plan.data = data_fingerprint(config.data.path)
    cfg = config.train
    train_set, valid_set = build_datasets(
        config.data.path,
        seq_len=config.model.seq_len,
        seed=cfg.seed,
        train_samples=_train_samples_needed(plan),
        valid_samples=cfg.eval_samples,
        valid_fraction=config.data.valid_fraction,
        cache_dir=config.data.cache_dir,
        vocab_size=config.model.vocab_size,
    )
    if cfg.eval_every and valid_set is None:
        raise ConfigError("train.eval_every is set but there is no validation data (eval_samples is 0?)")

    prepare_deepspeed_env(plan.device)
    if plan.device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1) // plan.env.local_world_size))  # allowed CPUs, not the machine's
    init_distributed(config, plan.env, plan.device)
    try:
        return _train_initialised(plan, train_set, valid_set, stop_request)
    finally:
        shutdown()


@dataclass
class _Progress:
    """Where the run stands, and what it has opened; the summary is written from it however the run ends."""

    step: int = 0
    consumed: int = 0
    elapsed_before: float = 0.0
    """Training seconds of earlier jobs of this run (from the checkpoint), so elapsed_s continues."""
    status: str = "completed"
    error: str | None = None
    last_loss: float | None = None
    """The training loss where the run ended (mean over the steps since the previous record); None
    (JSON null) before the first step."""
    last_eval: float | None = None
    """The last evaluation; None when there was none (no held-out split, or none yet)."""
    finished_before: bool = False
    """The checkpoint it resumed from had already reached train.steps: nothing was trained."""
    started: bool = False
    """The run's state is this job's: its checkpoint loaded (or it began at step 0). A resume that fails
    before this keeps the previous summary's numbers (the run is still where that summary says)."""
    tracker: Tracker | None = None
    metrics: MetricsLog | None = None


def _read_summary(run: RunDir) -> dict[str, Any] | None:
    try:
        return json.loads(run.summary.read_text())
    except (OSError, ValueError):
        return None


def _last_losses(run: RunDir, step: int) -> tuple[float | None, float | None]:
    """The last logged training and eval loss at or before ``step`` (a finished run started again)."""
    loss = evl = None
    for record in read_metrics(run.metrics):
        if record.get("step", 0) <= step:
            loss = record.get("loss", loss)
            evl = record.get("eval_loss", evl)
    return loss, evl


def _train_initialised(plan: Plan, train_set: Any, valid_set: Any, stop_request: _StopRequest) -> dict[str, Any]:
    config, env, run = plan.config, plan.env, plan.run
    config_yaml = to_yaml(config)
    _check_same_config(config_yaml)
    is_main = env.is_main
    lock = RunLock(run.root)
    answer: tuple[str | None, str | None] | None = None
    if is_main:
        holder = lock.acquire()
        # what the run holds now: another job may have trained it (and let go) while this one started
        # (data index, process group), after this job decided whether and where to resume
        try:
            latest = checkpoint.latest_tag(run.checkpoints) if holder is None else None
        except ConfigError as exc:
            latest = f"unreadable: {exc}"
        answer = (holder, latest)
    answers: list[tuple[str | None, str | None] | None] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(answers, answer)
    holder, latest = answers[0]  # type: ignore[misc]
    if holder is not None:  # every rank stops, before this job writes anything
        raise ConfigError(busy_message(run, holder))
    if latest != plan.resume_tag:
        lock.release()
        raise ConfigError(
            f"{run.root} changed while this job started (its latest checkpoint is now {latest}, this job planned "
            f"{plan.resume_tag or 'a fresh start'}): another job trained it meanwhile; run the same command again"
        )
    try:
        return _train_locked(plan, train_set, valid_set, stop_request, config_yaml)
    finally:
        lock.release()


def _train_locked(plan: Plan, train_set: Any, valid_set: Any, stop_request: _StopRequest,
                  config_yaml: str) -> dict[str, Any]:
    config, env, run = plan.config, plan.env, plan.run
    is_main = env.is_main
    prior = _read_summary(run) if is_main else None
    if is_main:
        run.root.mkdir(parents=True, exist_ok=True)
        run.summary.unlink(missing_ok=True)  # nothing may claim success until this run ends
        atomic_write_text(run.config, config_yaml)
    torch.distributed.barrier()

    progress = _Progress()
    start_time = time.perf_counter()
    try:
        # from here on, however the run ends (a checkpoint that fails to load, W&B, the loop), it ends
        # with a summary.json that says so
        _run(plan, train_set, valid_set, config_yaml, progress, stop_request)
    except BaseException as exc:
        progress.status, progress.error = "failed", f"{type(exc).__name__}: {exc}"
        raise
    finally:
        summary = {
            "status": progress.status,
            "final_loss": progress.last_loss,
            "final_eval_loss": progress.last_eval,
            "steps": progress.step,
            "tokens": progress.consumed * config.model.seq_len,
            "wall_s": progress.elapsed_before + time.perf_counter() - start_time,
            "job_wall_s": time.perf_counter() - start_time,
            "world_size": env.world_size,
            "parametrization": config.parametrization.name,
            "depth": config.model.depth,
            "width": config.model.width,
        }
        if progress.finished_before and prior is not None and prior.get("status") == "completed":
            summary = prior  # started again after it had finished: the run's own summary stands
        elif progress.error and not progress.started and plan.resume_tag is not None and prior is not None:
            # this job failed before it reached its first step (a checkpoint that does not load): the run
            # is still where its last summary says, so keep those numbers and say this job failed
            summary = {**prior, "status": "failed", "job_wall_s": summary["job_wall_s"]}
        if progress.error:
            summary["error"] = progress.error
        if is_main:
            try:
                if progress.metrics is not None:
                    progress.metrics.close()
                _finish_outputs(run, summary, progress.tracker, title=f"{config.parametrization.name}, depth "
                                f"{config.model.depth}, width {config.model.width}")
            except OSError as exc:  # a full or read-only disk: say so, without hiding why the run ended
                if progress.error is None:
                    raise
                print(f"megadepth: warning: could not write {run.summary} ({exc.strerror or exc})", file=sys.stderr)
    return summary


def _run(plan: Plan, train_set: Any, valid_set: Any, config_yaml: str, progress: _Progress,
         stop_request: _StopRequest) -> None:
    """Build, resume and train, updating ``progress`` as it goes."""
    from tqdm import tqdm

    from megadepth.train.engine import build_engine

    config, env, run = plan.config, plan.env, plan.run
    cfg = config.train
    is_main = env.is_main
    out = tqdm.write if is_main else (lambda *_a, **_k: None)
    layout = plan.layout
    unwritable: list[str | None] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(unwritable, checkpoint.check_writable(run.checkpoints))
    if any(unwritable):  # before the engine and any step: a save would fail only after the training
        raise ConfigError(next(why for why in unwritable if why))
    grid = build_grid(layout.pipeline, layout.tensor, layout.data, config.parallel.sequence_parallel)
    built = build_engine(config, plan.device, plan.grad_accum, plan.global_batch, plan.precision, grid,
                         weights=plan.init_source)
    engine = built.engine
    state: dict[str, Any] = {}
    if plan.resume_tag is not None:
        state = checkpoint.load(engine, run.checkpoints, plan.resume_tag)
        progress.step, progress.consumed = int(state["step"]), int(state["consumed_samples"])
        progress.elapsed_before = float(state.get("elapsed_s", 0.0))
        if progress.step >= cfg.steps:
            progress.last_loss, progress.last_eval = _last_losses(run, progress.step)
            out(f"{run.checkpoints / plan.resume_tag} is at step {progress.step}, train.steps is {cfg.steps}: "
                "nothing to train (raise train.steps to continue)")
            progress.finished_before = True
            if is_main:  # config.yaml describes what trained the run, not this request
                atomic_write_text(run.config, (run.checkpoints / plan.resume_tag / "config.yaml").read_text())
            return
    progress.started = True
    step, consumed = progress.step, progress.consumed
    if consumed + (cfg.steps - step) * plan.global_batch > len(train_set):
        raise DataError(  # a checkpoint from before position.json, resumed at another global batch
            f"{run.checkpoints / str(plan.resume_tag)} consumed {consumed} samples in {step} steps; {cfg.steps - step} "
            f"more steps of {plan.global_batch} need {consumed + (cfg.steps - step) * plan.global_batch} samples "
            f"but {len(train_set)} were indexed: resume at the global batch it was saved with"
        )
    window = _LogWindow.restore(state, plan.device)

    table = built.parametrization.format_table(config.optimizer, roles_present(built.model))
    tracker = progress.tracker = Tracker(config.wandb, run.root, config.model_dump(mode="json"), enabled=is_main,
                                          id_file=run.wandb_id)
    metrics = progress.metrics = (MetricsLog(run.metrics, resume_step=step if plan.resume_tag else None)
                                  if is_main else None)
    if is_main:
        atomic_write_text(run.parametrization, table + "\n")
        out(
            f"megadepth: {sum(p.numel() for p in built.model.parameters()):,} parameters on this rank, depth {config.model.depth}, width "
            f"{config.model.width}; {env.world_size} process(es) on {plan.device.type}, {plan.precision}; "
            f"global batch {plan.global_batch} = {cfg.micro_batch} x {plan.grad_accum} x {layout.data}; "
            f"layout pipeline {layout.pipeline} x tensor {layout.tensor} x data {layout.data}"
            + (" (sequence parallel)" if grid.tensor.sequence_parallel else "")
        )
        out(table)
        if plan.resume_tag:
            out(f"resuming from {run.checkpoints / plan.resume_tag} at step {step}")
        elif plan.init_source is not None:
            out(f"weights from {plan.init_source} (train.init_from); step, optimizer and data order start fresh")

    sampler = MicroBatchSampler(len(train_set), consumed, cfg.micro_batch, grid.data_rank, grid.data_size)
    batches = iter(make_loader(train_set, sampler, num_workers=config.data.num_workers,
                               pin_memory=plan.device.type == "cuda"))
    stepper = Stepper(built, grid, plan.device, plan.grad_accum, cfg.micro_batch, cfg.seed,
                      dropout=config.model.dropout > 0, own_norm=config.parallel.zero_stage == 0)
    first_step = step
    tokens_per_step = plan.global_batch * config.model.seq_len
    start_time = time.perf_counter()
    stop_request.group = torch.distributed.new_group(backend="gloo")
    show_bar = is_main and cfg.progress and sys.stderr.isatty()  # log lines only when not a terminal
    bar = tqdm(total=cfg.steps, initial=step, disable=not show_bar, desc="train", dynamic_ncols=True)
    try:
        while step < cfg.steps:
            # log every log_every steps, the first step of a new run (the starting loss) and the last; the
            # same steps whether or not the run was interrupted and resumed in between
            log_due = (step + 1) % cfg.log_every == 0 or step == 0 or step + 1 == cfg.steps
            window.add(stepper.train_step(batches, step, want_norm=log_due))
            step += 1
            consumed += plan.global_batch
            progress.step, progress.consumed = step, consumed
            bar.update(1)

            record: dict[str, Any] | None = None
            if log_due:
                mean_loss, tokens_per_s = window.take(tokens_per_step)
                record = {
                    "step": step,
                    "consumed_tokens": consumed * config.model.seq_len,
                    "loss": mean_loss,
                    "lr": config.optimizer.lr * lr_factor(step - 1, cfg.steps, config.schedule),
                    "grad_norm": stepper.grad_norm(),
                    "tokens_per_s": tokens_per_s,
                    "elapsed_s": progress.elapsed_before + time.perf_counter() - start_time,
                }
                progress.last_loss = mean_loss
                bar.set_postfix(loss=f"{mean_loss:.4f}")
            eval_due = valid_set is not None and cfg.eval_samples > 0 and (
                (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps
            )
            if eval_due:
                progress.last_eval = stepper.evaluate(valid_set, cfg.eval_samples)
                # an eval step that is not a log step: where the run stands, without the loss window
                record = record or {"step": step, "consumed_tokens": consumed * config.model.seq_len,
                                    "lr": config.optimizer.lr * lr_factor(step - 1, cfg.steps, config.schedule),
                                    "elapsed_s": progress.elapsed_before + time.perf_counter() - start_time}
                record["eval_loss"] = progress.last_eval
            if record is not None and is_main:
                metrics.write(record)  # type: ignore[union-attr]
                tracker.log(record, step)
                parts = [f"step {step}/{cfg.steps}"]
                parts += [f"{k} {record[k]:.4g}" for k in ("loss", "eval_loss", "lr", "grad_norm") if k in record]
                if "tokens_per_s" in record:
                    parts.append(f"{record['tokens_per_s']:,.0f} tok/s")
                out("  ".join(parts))
            if record is not None and not all(math.isfinite(record[k]) for k in ("loss", "eval_loss") if k in record):
                progress.status = "diverged"
                out(f"step {step}: the loss is not finite: diverged, stopping")
                break
            # a SIGTERM/SIGINT anywhere is seen by every rank after the same step (one step late)
            signalled = stop_request.poll() and step < cfg.steps
            stop_now = signalled or (
                bool(cfg.stop_after_steps) and step - first_step >= cfg.stop_after_steps and step < cfg.steps
            )
            if (
                (cfg.save_every and step % cfg.save_every == 0)
                or (step == cfg.steps and cfg.save_final)
                or stop_now
            ):
                # the loss is only read at log steps (no host sync per step): before weights are saved,
                # make sure nothing since the last log went non-finite, so `latest` is never a NaN model
                log_state = window.state()  # its rank mean is non-finite if any rank's loss was
                if not math.isfinite(log_state["log_loss_sum"]) or not stepper.grad_norm_finite():
                    progress.status = "diverged"
                    out(f"step {step}: the loss or gradient norm is not finite: diverged, not saving")
                    break
                if not checkpoint.weights_finite(built.model, plan.device):  # an update that overflowed
                    progress.status = "diverged"
                    out(f"step {step}: the weights are not finite (the last update overflowed): diverged, "
                        "not saving")
                    break
                client = {"step": step, "consumed_samples": consumed, "seed": cfg.seed,
                          "elapsed_s": progress.elapsed_before + time.perf_counter() - start_time,
                          **log_state}
                checkpoint.save(engine, run.checkpoints, step, client, config_yaml, cfg.keep_checkpoints, is_main,
                                data=plan.data)
            if stop_now:
                if log_state["log_steps"]:  # the loss where it stopped, not at the last record before
                    progress.last_loss = log_state["log_loss_sum"] / log_state["log_steps"]
                progress.status = "stopped"
                out(f"step {step}: {stop_request.name} received, checkpoint saved; the same command resumes"
                    if signalled else
                    f"stopping after {cfg.stop_after_steps} steps (train.stop_after_steps); resume continues")
                break
        stop_request.drain()
    finally:
        bar.close()


class _StopRequest:
    """SIGTERM or SIGINT while training: stop after the next step with a checkpoint (status stopped).

    Schedulers send SIGTERM shortly before they kill a job (Slurm's ``--signal`` and preemption, a pod's
    stop: often 30 s) and a user's Ctrl-C is SIGINT: both should end in a resumable run, not a lost
    interval. Every rank must stop after the same step, so the flag is combined across ranks every step,
    but on the host only: an asynchronous all-reduce over a gloo group of a CPU tensor, issued after step
    s and read after step s + 1, when it has long finished. The step itself gains no device sync and no
    wait on other ranks; a signal is acted on one step after it arrives on any rank. A second SIGINT
    aborts at once (KeyboardInterrupt).
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.group: Any = None  # a gloo group, set once the process group exists: the flag stays on the host
        self.signum = 0
        self._previous: dict[int, Any] = {}
        self._flag: torch.Tensor | None = None
        self._pending: Any = None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "no signal"

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.signum and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if not self.signum:
            print(f"megadepth: {signal.Signals(signum).name} received: stopping with a checkpoint after the next "
                  "step" + (" (Ctrl-C again to abort)" if signum == signal.SIGINT else ""), file=sys.stderr)
        self.signum = signum

    def poll(self) -> bool:
        """Whether any rank had been signalled when the previous step ended; every rank calls this once
        per step, so all of them get the same answer after the same step."""
        agreed = False
        if self._pending is not None:
            self._pending.wait()
            seen = int(self._flag.item())  # type: ignore[union-attr]
            if seen and not self.signum:
                self.signum = seen  # another rank's signal: name it in the message too
            agreed = bool(seen)
        self._flag = torch.tensor([self.signum], dtype=torch.int64)
        self._pending = torch.distributed.all_reduce(self._flag, op=torch.distributed.ReduceOp.MAX,
                                                     group=self.group, async_op=True)
        return agreed

    def drain(self) -> None:
        """Complete the last all-reduce (every rank issued it) before the loop's collectives end."""
        if self._pending is not None:
            self._pending.wait()
            self._pending = None


class _LogWindow:
    """The training loss summed over the steps since the last metrics record, kept on the device.

    Its sum (averaged over ranks) and step count go into every checkpoint, so that a resumed run writes
    the same records as one that was never stopped: same steps, each loss averaged over the same steps.
    """

    def __init__(self, device: torch.device, loss_sum: float = 0.0, steps: int = 0) -> None:
        self.device = device
        self.loss = torch.full((), loss_sum, dtype=torch.float64, device=device)
        self.steps = steps
        self.timed_steps = 0  # steps of this job in the window: throughput counts only what it timed
        self.t0 = time.perf_counter()

    @classmethod
    def restore(cls, client_state: dict[str, Any], device: torch.device) -> _LogWindow:
        return cls(device, float(client_state.get("log_loss_sum", 0.0)), int(client_state.get("log_steps", 0)))

    def add(self, loss: torch.Tensor) -> None:
        self.loss += loss
        self.steps += 1
        self.timed_steps += 1

    def _rank_mean(self) -> float:
        (value,) = _all_reduce_mean([float(self.loss)], self.device)
        return value

    def take(self, tokens_per_step: int) -> tuple[float, float]:
        """(mean loss over the window and the ranks, tokens/s of this job's share); starts a new window."""
        mean = self._rank_mean() / max(self.steps, 1)
        now = time.perf_counter()
        rate = self.timed_steps * tokens_per_step / max(now - self.t0, 1e-9)
        self.loss.zero_()
        self.steps = self.timed_steps = 0
        self.t0 = now
        return mean, rate

    def state(self) -> dict[str, Any]:
        """For the checkpoint: the window's sum, already averaged over the ranks (one sync)."""
        return {"log_loss_sum": self._rank_mean(), "log_steps": self.steps}


def _finish_outputs(run: RunDir, summary: dict[str, Any], tracker: Tracker | None, title: str) -> None:
    """Plot, W&B summary, then summary.json last (its presence means the run ended this way)."""
    from megadepth.train.curves import plot_loss_curve

    try:
        plot_loss_curve(read_metrics(run.metrics), run.loss_plot, title=title)
    except Exception as exc:  # a plotting problem must not turn a finished run into a failed one
        print(f"megadepth: warning: could not draw {run.loss_plot}: {exc}")
    if tracker is not None:
        tracker.summary({k: v for k, v in summary.items() if k != "error"})
        tracker.finish(exit_code=0 if summary["status"] == "completed" else 1)
    atomic_write_json(run.summary, summary)


__all__ = ["DataError", "Plan", "plan_run", "train"]
