"""summary.json: where the run stands and how it ended, written last however it ended."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from megadepth.common.io import atomic_write_json, atomic_write_text
from megadepth.train.curves import plot_loss_curve
from megadepth.train.rundir import MetricsLog, read_metrics
from megadepth.train.tracking import Tracker

if TYPE_CHECKING:
    from megadepth.train.loop import TrainingPlan


@dataclass
class Progress:
    """Where the run stands. Entered, it opens the run directory; left, it writes summary.json, however it ended."""

    plan: TrainingPlan
    config_yaml: str
    step: int = 0
    consumed: int = 0
    elapsed_before: float = 0.0  # training seconds of earlier jobs (from the checkpoint): elapsed_s goes on
    status: str = "completed"
    error: str | None = None
    last_loss: float | None = None  # the mean over the steps since the previous record; null before a step
    last_eval: float | None = None  # null when there was no evaluation (no held-out split, or none yet)
    finished_before: bool = False  # the checkpoint it resumed had reached train.steps: nothing was trained
    started: bool = False  # its checkpoint loaded (or it began at step 0); else a failure keeps the old summary
    tracker: Tracker | None = None
    metrics: MetricsLog | None = None
    summary: dict[str, Any] | None = None  # what summary.json says, once the run has ended

    def __enter__(self) -> Progress:
        run, self._prior = self.plan.run, None
        if self.plan.env.is_main:
            with contextlib.suppress(OSError, ValueError):
                self._prior = json.loads(run.summary.read_text())
            run.root.mkdir(parents=True, exist_ok=True)
            run.summary.unlink(missing_ok=True)  # nothing may claim success until this run ends
            atomic_write_text(run.config, self.config_yaml)
        torch.distributed.barrier()
        self._start = time.perf_counter()
        return self

    def ended_before(self) -> None:
        """The run had reached train.steps before this job: its last logged losses are where it ended."""
        self.finished_before = True
        for record in read_metrics(self.plan.run.metrics):
            if record.get("step", 0) <= self.step:
                self.last_loss = record.get("loss", self.last_loss)
                self.last_eval = record.get("eval_loss", self.last_eval)

    def __exit__(self, _type: object, exc: BaseException | None, _tb: object) -> None:
        config, run, prior = self.plan.config, self.plan.run, self._prior
        if exc is not None:
            self.status, self.error = "failed", f"{type(exc).__name__}: {exc}"
        job_wall_s = time.perf_counter() - self._start
        summary = {"status": self.status, "final_loss": self.last_loss, "final_eval_loss": self.last_eval,
                   "steps": self.step, "tokens": self.consumed * config.model.seq_len,
                   "wall_s": self.elapsed_before + job_wall_s, "job_wall_s": job_wall_s,
                   "world_size": self.plan.env.world_size, "parametrization": config.parametrization.name,
                   "depth": config.model.depth, "width": config.model.width}
        if self.finished_before and prior is not None and prior.get("status") == "completed":
            summary = prior  # started again after it had finished: the run's own summary stands
        elif self.error and not self.started and self.plan.resume_tag is not None and prior is not None:
            # failed before its first step (a checkpoint that does not load): the run is where its last summary says
            summary = {**prior, "status": "failed", "job_wall_s": job_wall_s}
        if self.error:
            summary["error"] = self.error
        self.summary = summary
        if self.plan.env.is_main:
            try:
                if self.metrics is not None:
                    self.metrics.close()
                # plot, W&B summary, then summary.json last (its presence means the run ended this way)
                try:
                    plot_loss_curve(read_metrics(run.metrics), run.loss_plot, title=f"{config.parametrization.name}, "
                                    f"depth {config.model.depth}, width {config.model.width}")
                except Exception as e:  # a plotting problem must not turn a finished run into a failed one
                    print(f"megadepth: warning: could not draw {run.loss_plot}: {e}")
                if self.tracker is not None:
                    self.tracker.summary({k: v for k, v in summary.items() if k != "error"})
                    self.tracker.finish(exit_code=0 if summary["status"] == "completed" else 1)
                atomic_write_json(run.summary, summary)
            except OSError as e:  # a full or read-only disk: say so, without hiding why the run ended
                if self.error is None:
                    raise
                print(f"megadepth: warning: could not write {run.summary} ({e.strerror or e})", file=sys.stderr)

