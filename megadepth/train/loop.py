"""``megadepth train``: checks (before the run directory, process group or model exist), data, engine, the
loop, eval, checkpoints, metrics."""

from __future__ import annotations

import contextlib
import gc
import hashlib
import math
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from tqdm import tqdm

from megadepth.common.errors import ConfigError
from megadepth.common.io import atomic_write_text
from megadepth.config.load import to_yaml
from megadepth.config.schema import Config
from megadepth.data import DataError, MicroBatchSampler, build_datasets, data_fingerprint, make_loader
from megadepth.parallel import distributed
from megadepth.parallel.topology import build_grid
from megadepth.parametrize import roles_present
from megadepth.train import checkpoint
from megadepth.train.init_from import WeightSource
from megadepth.train.preflight import busy_message, check_run_dir, preflight
from megadepth.train.rundir import MetricsLog, RunDir, RunLock
from megadepth.train.schedule import lr_factor
from megadepth.train.signals import StopRequest
from megadepth.train.step import Stepper
from megadepth.train.summary import Progress
from megadepth.train.tracking import Tracker


@dataclass
class TrainingPlan:
    """Everything decided before any work starts."""

    config: Config
    env: distributed.DistEnv
    layout: distributed.Layout
    device: torch.device
    precision: str
    grad_accum: int
    global_batch: int
    run: RunDir
    resume_tag: str | None
    init_source: WeightSource | None = None  # where the weights come from when it starts fresh (train.init_from)
    data: list[dict[str, Any]] | None = None  # what the data order depends on (data_fingerprint), per checkpoint


def plan_training(config: Config) -> TrainingPlan:
    """All start-up checks; raises ConfigError / DataError with a one-line message."""
    env = distributed.read_env()
    layout, grad_accum, global_batch = preflight(config, env.world_size)
    device = distributed.resolve_device(config, env)
    distributed.backend_for(config, device)  # NCCL without a GPU fails now, not as a rendezvous time-out
    precision = distributed.resolve_precision(config, device)
    if precision != "fp32" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"train.precision is {precision} but this GPU does not support bf16")
    run = RunDir(config.train.out_dir)
    resume_tag, init_source = check_run_dir(config, layout.data, run)
    return TrainingPlan(config, env, layout, device, precision, grad_accum, global_batch, run, resume_tag, init_source)


def train(config: Config) -> dict[str, Any]:
    """Train per ``config`` in this process (one rank of a job, or the whole job); returns the summary.

    The engine and the process groups it holds are freed here, not at interpreter exit: gloo's groups torn
    down during finalization now and then abort the process (megadepth.parallel.distributed.shutdown)."""
    trainer = Trainer(config)
    summary = trainer.run()
    del trainer
    gc.collect()  # the engine sits in reference cycles
    return summary


class Trainer:
    """One rank's part of a run: signal handlers, process group, run lock and summary on one exit stack."""

    def __init__(self, config: Config) -> None:
        self.config, self.cfg = config, config.train

    def run(self) -> dict[str, Any]:
        with contextlib.ExitStack() as stack:
            # a SIGTERM during start-up must also end in a stopped run: the handler is in place from the start
            self.stop = stack.enter_context(StopRequest())
            self.plan = plan_training(self.config)
            self.out = tqdm.write if self.plan.env.is_main else (lambda *_a, **_k: None)
            self._read_data()
            config_yaml = to_yaml(self.config)
            stack.enter_context(_process_group(self.plan, config_yaml))
            stack.enter_context(_run_lock(self.plan))
            # from here on, however the run ends, it ends with a summary.json that says so
            self.progress = stack.enter_context(Progress(self.plan, config_yaml))
            stack.callback(self._release_engine)
            if self._build_and_resume():
                self._open_outputs()
                self._loop()
        return self.progress.summary  # type: ignore[return-value]

    def _release_engine(self) -> None:
        if hasattr(self, "built"):  # built once the run lock is held (see Built.release)
            self.built.release()

    def _read_data(self) -> None:
        config, plan, steps, batch = self.config, self.plan, self.cfg.steps, self.plan.global_batch
        if plan.env.is_main:  # only rank 0 writes position.json
            plan.data = data_fingerprint(config.data.path)
        # the samples the run reads in all: from where its checkpoint stands, the steps left at this global
        # batch (a resume may use another global batch: steps x batch would miscount the samples consumed)
        saved = checkpoint.position(plan.run.checkpoints / plan.resume_tag) if plan.resume_tag is not None else None
        self.train_set, self.valid_set = build_datasets(
            config.data.path, seq_len=config.model.seq_len, seed=self.cfg.seed,
            train_samples=saved[1] + max(0, steps - saved[0]) * batch if saved else steps * batch,
            valid_samples=self.cfg.eval_samples,
            valid_fraction=config.data.valid_fraction, cache_dir=config.data.cache_dir,
            vocab_size=config.model.vocab_size)
        if self.cfg.eval_every and self.valid_set is None:
            raise ConfigError("train.eval_every is set but there is no validation data (eval_samples is 0?)")

    def _build_and_resume(self) -> bool:
        """The engine, at the checkpoint the run resumes from; False when that one had already finished it."""
        from megadepth.train.engine import build_engine

        config, cfg, plan, run, progress = self.config, self.cfg, self.plan, self.plan.run, self.progress
        unwritable: list[str | None] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(unwritable, checkpoint.check_writable(run.checkpoints))
        if any(unwritable):  # before the engine and any step: a save would fail only after the training
            raise ConfigError(next(why for why in unwritable if why))
        layout = plan.layout
        self.grid = build_grid(layout.pipeline, layout.tensor, layout.data, config.parallel.sequence_parallel)
        self.built = build_engine(config, plan.device, plan.grad_accum, plan.global_batch, plan.precision, self.grid,
                                  weights=plan.init_source)
        state: dict[str, Any] = {}
        if plan.resume_tag is not None:
            state = checkpoint.load(self.built.engine, run.checkpoints, plan.resume_tag,
                                    muon_beside=self.built.muon_beside)
            progress.step, progress.consumed = int(state["step"]), int(state["consumed_samples"])
            progress.elapsed_before = float(state.get("elapsed_s", 0.0))
            if progress.step >= cfg.steps:
                progress.ended_before()
                self.out(f"{run.checkpoints / plan.resume_tag} is at step {progress.step}, train.steps is "
                         f"{cfg.steps}: nothing to train (raise train.steps to continue)")
                if plan.env.is_main:  # config.yaml describes what trained the run, not this request
                    atomic_write_text(run.config, (run.checkpoints / plan.resume_tag / "config.yaml").read_text())
                return False
        progress.started = True
        step, consumed, batch = progress.step, progress.consumed, plan.global_batch
        if consumed + (cfg.steps - step) * batch > len(self.train_set):
            raise DataError(  # a checkpoint from before position.json, resumed at another global batch
                f"{run.checkpoints / str(plan.resume_tag)} consumed {consumed} samples in {step} steps; "
                f"{cfg.steps - step} more steps of {batch} need {consumed + (cfg.steps - step) * batch} samples "
                f"but {len(self.train_set)} were indexed: resume at the global batch it was saved with")
        self.window = _LogWindow(plan.device, float(state.get("log_loss_sum", 0.0)), int(state.get("log_steps", 0)))
        return True

    def _open_outputs(self) -> None:
        """parametrization.txt, W&B, metrics.jsonl and the start-up lines; the data from where the run stands."""
        config, cfg, plan, run, progress = self.config, self.cfg, self.plan, self.plan.run, self.progress
        is_main, layout, built = plan.env.is_main, plan.layout, self.built
        table = built.parametrization.format_table(config.optimizer, roles_present(built.model))
        progress.tracker = Tracker(config.wandb, run.root, config.model_dump(mode="json"), enabled=is_main,
                                   id_file=run.wandb_id)
        if is_main:
            progress.metrics = MetricsLog(run.metrics, resume_step=progress.step if plan.resume_tag else None)
            atomic_write_text(run.parametrization, table + "\n")
            self.out(
                f"megadepth: {sum(t.numel() for t in built.model.parameters()):,} parameters on this rank, depth "
                f"{config.model.depth}, width {config.model.width}; {plan.env.world_size} process(es) on "
                f"{plan.device.type}, {plan.precision}; global batch {plan.global_batch} = {cfg.micro_batch} x "
                f"{plan.grad_accum} x {layout.data}; layout pipeline {layout.pipeline} x tensor {layout.tensor} x "
                f"data {layout.data}" + (" (sequence parallel)" if self.grid.tensor.sequence_parallel else "")
            )
            self.out(table)
            if plan.resume_tag:
                self.out(f"resuming from {run.checkpoints / plan.resume_tag} at step {progress.step}")
            elif plan.init_source is not None:
                self.out(f"weights from {plan.init_source} (train.init_from); step, optimizer and data order "
                         "start fresh")
        sampler = MicroBatchSampler(len(self.train_set), progress.consumed, cfg.micro_batch, self.grid.data_rank,
                                    self.grid.data_size)
        self.batches = iter(make_loader(self.train_set, sampler, num_workers=config.data.num_workers,
                                        pin_memory=plan.device.type == "cuda"))
        self.stepper = Stepper(built, self.grid, plan.device, plan.grad_accum, cfg.micro_batch, cfg.seed,
                               dropout=config.model.dropout > 0, own_norm=config.parallel.zero_stage == 0)
        self.first_step = progress.step
        self.start = time.perf_counter()
        self.stop.group = torch.distributed.new_group(backend="gloo")

    def _loop(self) -> None:
        cfg, progress = self.cfg, self.progress
        show_bar = self.plan.env.is_main and cfg.progress and sys.stderr.isatty()  # log lines when not a terminal
        with tqdm(total=cfg.steps, initial=progress.step, disable=not show_bar, desc="train",
                  dynamic_ncols=True) as self.bar:
            while progress.step < cfg.steps:
                # every log_every steps, the first step and the last: the same steps whether or not it resumed
                step = progress.step
                log_due = (step + 1) % cfg.log_every == 0 or step == 0 or step + 1 == cfg.steps
                self.window.add(self.stepper.train_step(self.batches, step, want_norm=log_due))
                progress.step += 1
                progress.consumed += self.plan.global_batch
                self.bar.update(1)
                if not self._record(log_due):  # diverged
                    break
                stop = self._stop_due()
                if not self._checkpoint(stop):  # diverged since the last record: nothing saved
                    break
                if stop:
                    self._stopped(stop)
                    break
            self.stop.drain()

    def _record(self, log_due: bool) -> bool:
        """This step's metrics record, at a log or evaluation step; False (diverged) when a loss is not finite."""
        config, cfg, progress = self.config, self.cfg, self.progress
        factor = lr_factor(progress.step - 1, cfg.steps, config.schedule)
        lr = config.optimizer.lr * factor
        # under Muon, the Muon matrices' base LR too (optimizer.muon.lr, else optimizer.lr): in every record
        # that has lr, whether or not it was set, so records keep one shape across a resume that spells it out
        lrs = {"lr": lr, **({"muon_lr": config.optimizer.base_lr(muon_half=True) * factor}
                            if config.optimizer.name == "muon" else {})}
        record: dict[str, Any] = {"step": progress.step, "consumed_tokens": progress.consumed * config.model.seq_len}
        if log_due:
            progress.last_loss, tokens_per_s = self.window.take(self.plan.global_batch * config.model.seq_len)
            record.update(loss=progress.last_loss, **lrs, grad_norm=self.stepper.grad_norm(),
                          tokens_per_s=tokens_per_s, elapsed_s=self._elapsed())
            self.bar.set_postfix(loss=f"{progress.last_loss:.4f}")
        if self._evaluate():
            # an eval step that is not a log step: where the run stands, without the loss window
            for key, value in lrs.items():
                record.setdefault(key, value)
            record.setdefault("elapsed_s", self._elapsed())
            record["eval_loss"] = progress.last_eval
        elif not log_due:
            return True
        if self.plan.env.is_main:
            progress.metrics.write(record)  # type: ignore[union-attr]
            progress.tracker.log(record, progress.step)  # type: ignore[union-attr]
            parts = [f"step {progress.step}/{cfg.steps}"]
            parts += [f"{k} {record[k]:.4g}" for k in ("loss", "eval_loss", "lr", "muon_lr", "grad_norm")
                      if k in record]
            parts += [f"{record['tokens_per_s']:,.0f} tok/s"] if "tokens_per_s" in record else []
            self.out("  ".join(parts))
        if all(math.isfinite(record[k]) for k in ("loss", "eval_loss") if k in record):
            return True
        return self._diverged("the loss is not finite: diverged, stopping")

    def _evaluate(self) -> bool:
        """The held-out loss, every eval_every steps and after the last; False when none is due."""
        cfg, step = self.cfg, self.progress.step
        if self.valid_set is None or cfg.eval_samples <= 0 or not (
                (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps):
            return False
        self.progress.last_eval = self.stepper.evaluate(self.valid_set, cfg.eval_samples)
        return True

    def _stop_due(self) -> str | None:
        """Why the run stops after this step ("signal", "steps"), if it does; every rank gets the same answer."""
        cfg, step = self.cfg, self.progress.step
        # a SIGTERM/SIGINT anywhere is seen by every rank after the same step (one step late)
        if self.stop.poll() and step < cfg.steps:
            return "signal"
        if cfg.stop_after_steps and step - self.first_step >= cfg.stop_after_steps and step < cfg.steps:
            return "steps"
        return None

    def _checkpoint(self, stop: str | None) -> bool:
        """Save a checkpoint when one is due or the run stops here; False (diverged, nothing saved) when
        something since the last record is not finite: `latest` is never a NaN model."""
        progress, cfg = self.progress, self.cfg
        if not (stop or (cfg.save_every and progress.step % cfg.save_every == 0)
                or (progress.step == cfg.steps and cfg.save_final)):
            return True
        self.log_state = self.window.state()  # its rank mean is non-finite if any rank's loss was
        if not math.isfinite(self.log_state["log_loss_sum"]) or not self.stepper.grad_norm_finite():
            return self._diverged("the loss or gradient norm is not finite: diverged, not saving")
        if not checkpoint.weights_finite(self.built.model, self.plan.device):  # an update that overflowed
            return self._diverged("the weights are not finite (the last update overflowed): diverged, not saving")
        client = {"step": progress.step, "consumed_samples": progress.consumed, "seed": cfg.seed,
                  "elapsed_s": self._elapsed(), **self.log_state}
        checkpoint.save(self.built.engine, self.plan.run.checkpoints, progress.step, client, progress.config_yaml,
                        cfg.keep_checkpoints, self.plan.env.is_main, data=self.plan.data,
                        muon_beside=self.built.muon_beside)
        return True

    def _stopped(self, why: str) -> None:
        progress, log_state = self.progress, self.log_state
        if log_state["log_steps"]:  # the loss where it stopped, not at the last record before
            progress.last_loss = log_state["log_loss_sum"] / log_state["log_steps"]
        progress.status = "stopped"
        self.out(f"step {progress.step}: {signal.Signals(self.stop.signum).name} received, checkpoint saved; "
                 "the same command resumes"
                 if why == "signal" else
                 f"stopping after {self.cfg.stop_after_steps} steps (train.stop_after_steps); resume continues")

    def _diverged(self, why: str) -> bool:
        self.progress.status = "diverged"
        self.out(f"step {self.progress.step}: {why}")
        return False

    def _elapsed(self) -> float:
        """Training seconds of the run so far, this job's and earlier ones'."""
        return self.progress.elapsed_before + time.perf_counter() - self.start


@contextlib.contextmanager
def _process_group(plan: TrainingPlan, config_yaml: str) -> Iterator[None]:
    """This rank in the job's process group (shut down however the run ends), checking all have one config."""
    distributed.prepare_deepspeed_env(plan.device)
    distributed.limit_cpu_threads(plan.device, plan.env)
    distributed.init_distributed(plan.config, plan.env, plan.device)
    try:
        digests: list[str] = [""] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(digests, hashlib.sha256(config_yaml.encode()).hexdigest())
        odd = [rank for rank, d in enumerate(digests) if d != digests[0]]
        if odd:
            raise ConfigError(f"ranks {odd} resolved a different config than rank 0 (sha256 {digests[0][:12]}...): "
                              "every node must be given the same config files and --set overrides")
        yield
    finally:
        distributed.shutdown()


@contextlib.contextmanager
def _run_lock(plan: TrainingPlan) -> Iterator[None]:
    """The run directory's lock, held by rank 0 while the run trains. Every rank stops before this job writes
    anything when another job holds it, or trained the run while this one started."""
    run, lock = plan.run, RunLock(plan.run.root)
    try:
        answer: tuple[str | None, str | None] | None = None
        if plan.env.is_main:
            holder = lock.acquire()
            # another job may have trained the run (and let go) after this one decided where to resume
            try:
                latest = checkpoint.latest_tag(run.checkpoints) if holder is None else None
            except ConfigError as exc:
                latest = f"unreadable: {exc}"
            answer = (holder, latest)
        answers: list[tuple[str | None, str | None] | None] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(answers, answer)
        holder, latest = answers[0]  # type: ignore[misc]
        if holder is not None:
            raise ConfigError(busy_message(run, holder))
        if latest != plan.resume_tag:
            raise ConfigError(f"{run.root} changed while this job started (its latest checkpoint is now {latest}, "
                              f"this job planned {plan.resume_tag or 'a fresh start'}): another job trained it "
                              "meanwhile; run the same command again")
        yield
    finally:
        lock.release()


class _LogWindow:
    """The training loss summed over the steps since the last metrics record, kept on the device. Its sum
    (averaged over ranks) and step count go into every checkpoint, so a resumed run writes the same records."""

    def __init__(self, device: torch.device, loss_sum: float = 0.0, steps: int = 0) -> None:
        self.loss = torch.full((), loss_sum, dtype=torch.float64, device=device)
        self.steps = steps
        self.timed_steps = 0  # steps of this job in the window: throughput counts only what it timed
        self.t0 = time.perf_counter()

    def add(self, loss: torch.Tensor) -> None:
        self.loss += loss
        self.steps += 1
        self.timed_steps += 1

    def _rank_mean(self) -> float:
        total = self.loss.reshape(1).clone()
        torch.distributed.all_reduce(total)
        return float(total) / torch.distributed.get_world_size()

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


__all__ = ["DataError", "TrainingPlan", "Trainer", "plan_training", "train"]
