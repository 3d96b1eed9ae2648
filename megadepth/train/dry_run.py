"""``megadepth train --dry-run``: every start-up check, then what the run would be, without running it.

Before spending cluster hours a user wants to see the model size, the batch arithmetic, whether the run
resumes, and the per-role init / LR / eps / weight decay they are about to get (the table a real run
writes to parametrization.txt). The checks are the trainer's own (:func:`megadepth.train.loop.plan_run`);
the model is built on PyTorch's meta device, so even gpt-1.3b costs no memory; nothing is written.
"""

from __future__ import annotations

import torch

from megadepth.config.schema import Config
from megadepth.model import GPT
from megadepth.parametrize import Parametrization, roles_present
from megadepth.parametrize.apply import count_params
from megadepth.train.checkpoint import step_of


def describe_run(config: Config) -> str:
    """The checked plan of ``config`` for this process's world size, as text (raises ConfigError /
    DataError exactly where ``megadepth train`` would)."""
    from megadepth.train.loop import plan_run

    plan = plan_run(config)
    ptz = Parametrization.from_config(config.model, config.parametrization, optimizer=config.optimizer.name)
    with torch.device("meta"):
        model = GPT(config.model, ptz.multipliers())
    m, t, layout = config.model, config.train, plan.layout
    tokens_per_step = plan.global_batch * m.seq_len
    if plan.resume_tag is None:
        start = f"starts at step 0 in {plan.run.root}"
        if plan.init_source is not None:
            start += f", from the weights of {plan.init_source} (train.init_from)"
    elif step_of(plan.resume_tag) >= t.steps:
        start = (f"nothing to train: {plan.run.checkpoints / plan.resume_tag} is at step "
                 f"{step_of(plan.resume_tag)}, train.steps is {t.steps} (raise it to continue)")
    else:
        start = f"resumes from {plan.run.checkpoints / plan.resume_tag}"
    lines = [
        "megadepth train --dry-run: every check passed; nothing was started or written",
        f"model: {count_params(model.parameters()):,} parameters ({m.block}, depth {m.depth}, width {m.width}, "
        f"{m.heads} heads, seq_len {m.seq_len}, vocab {m.vocab_size}, "
        f"{'tied' if m.tie_embeddings else 'untied'} embeddings)",
        f"layout: {plan.env.world_size} process(es) = pipeline {layout.pipeline} x tensor {layout.tensor} x "
        f"data {layout.data}; {plan.device.type}, {plan.precision}",
        f"batch: global {plan.global_batch} = micro {t.micro_batch} x accumulation {plan.grad_accum} x data "
        f"{layout.data}; {tokens_per_step:,} tokens per step, {t.steps:,} steps = "
        f"{tokens_per_step * t.steps:,} tokens",
        f"run: {start}",
        ptz.format_table(config.optimizer, roles_present(model)),
    ]
    return "\n".join(lines)
