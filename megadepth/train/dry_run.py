"""``megadepth train --dry-run`` (and ``launch --dry-run``): every start-up check, then what the run would
be, without running it; the model is built on the meta device (no memory) and nothing is written."""

from __future__ import annotations

import torch

from megadepth.config.schema import Config, ModelConfig
from megadepth.model import GPT
from megadepth.parallel.distributed import Layout, resolve_precision
from megadepth.parametrize import Parametrization, roles_present
from megadepth.parametrize.apply import count_params
from megadepth.train.checkpoint import step_of
from megadepth.train.init_from import WeightSource
from megadepth.train.rundir import RunDir


def start_text(config: Config, run: RunDir, resume_tag: str | None, init_source: WeightSource | None) -> str:
    """Where the run starts, as the ``run:`` line says it: fresh, from init_from's weights, or a resume."""
    steps = config.train.steps
    if resume_tag is None:
        start = f"starts at step 0 in {run.root}"
        if init_source is not None:
            start += f", from the weights of {init_source} (train.init_from)"
        return start
    if step_of(resume_tag) >= steps:
        return (f"nothing to train: {run.checkpoints / resume_tag} is at step {step_of(resume_tag)}, "
                f"train.steps is {steps} (raise it to continue)")
    return f"resumes from {run.checkpoints / resume_tag}"


def summary_lines(config: Config, *, processes: int, layout: Layout, grad_accum: int, global_batch: int,
                  device: str, precision: str, start: str) -> list[str]:
    """The model, layout, batch and run lines and the per-role table: what both dry runs print."""
    ptz = Parametrization.from_config(config.model, config.parametrization, optimizer=config.optimizer.name)
    with torch.device("meta"):
        model = GPT(config.model, ptz.multipliers())
    m, t = config.model, config.train
    tokens_per_step = global_batch * m.seq_len
    return [
        f"model: {count_params(model.parameters()):,} parameters ({m.block}, depth {m.depth}, width {m.width}, "
        f"{m.heads} heads, seq_len {m.seq_len}, vocab {m.vocab_size}, "
        f"{'tied' if m.tie_embeddings else 'untied'} embeddings)",
        *([f"block: {block_text(m)}"] if m.block == "transformer" else []),
        f"layout: {processes} process(es) = pipeline {layout.pipeline} x tensor {layout.tensor} x "
        f"data {layout.data}; {device}, {precision}",
        f"batch: global {global_batch} = micro {t.micro_batch} x accumulation {grad_accum} x data "
        f"{layout.data}; {tokens_per_step:,} tokens per step, {t.steps:,} steps = "
        f"{tokens_per_step * t.steps:,} tokens",
        f"run: {start}",
        *ptz.format_table(config.optimizer, roles_present(model)).splitlines(),
    ]


def block_text(m: ModelConfig) -> str:
    """The transformer block's options in one line: which of GPT-2's or Llama's pieces it has."""
    kv = m.n_kv_heads
    attention = ("multi-head" if kv == m.heads else "multi-query" if kv == 1 else "grouped-query") + " attention"
    if kv != m.heads:
        attention += f" ({kv} key/value heads)"
    if m.qk_norm:
        attention += ", QK-norm"
    position = f"rotary (theta {m.rope_theta:g})" if m.position == "rotary" else "learned"
    return (f"{m.norm}, {m.mlp} MLP (hidden {m.mlp_width}), {attention}, {position} positions, "
            f"{'with' if m.bias else 'no'} biases")


def device_text(config: Config, gpus_here: int | None) -> tuple[str, str]:
    """(device, precision) of the ranks for a launch's ``layout:`` line (``gpus_here`` None: not known)."""
    want, precision = config.train.device, config.train.precision
    if want == "cpu" or gpus_here == 0:
        return "cpu", resolve_precision(config, torch.device("cpu"))
    if gpus_here:
        return "cuda", resolve_precision(config, torch.device("cuda"))
    device = "cuda" if want == "cuda" else "each node's GPUs (cpu on a node without)"
    return device, precision if precision != "auto" else "auto: bf16-mixed on GPUs with bf16, fp32 on CPUs"


def describe_run(config: Config) -> str:
    """The checked plan of ``config`` for this process's world size, as text (raising where train would)."""
    from megadepth.train.loop import plan_training

    plan = plan_training(config)
    lines = summary_lines(
        config, processes=plan.env.world_size, layout=plan.layout, grad_accum=plan.grad_accum,
        global_batch=plan.global_batch, device=plan.device.type, precision=plan.precision,
        start=start_text(config, plan.run, plan.resume_tag, plan.init_source),
    )
    return "\n".join(["megadepth train --dry-run: every check passed; nothing was started or written", *lines])


def derived_batch_warning(config: Config, world_size: int) -> str | None:
    """A one-line warning when the global batch follows the process count (no ``train.global_batch``): the
    same config on 3 processes would silently train at 3 times the batch of one."""
    t, par = config.train, config.parallel
    model_parallel = par.tensor * par.pipeline
    if t.global_batch is not None or world_size % model_parallel:  # pinned, or a layout check fails later
        return None
    data = world_size // model_parallel
    if data == 1:
        return None
    one = t.micro_batch * (t.grad_accum or 1)
    derived = one * data
    return (f"megadepth: WARNING: train.global_batch is not set, so the global batch follows the process count: "
            f"{derived} = micro_batch {t.micro_batch} x grad_accum {t.grad_accum or 1} x data-parallel {data} "
            f"({world_size} processes), where one process trains at {one}; pin it with "
            f"--set train.global_batch=N (e.g. --set train.global_batch={one} for one process's batch)")
