"""DeepSpeed engine set-up: the model, the parametrization's param groups, the schedule, ZeRO, bf16."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from megadepth.config.schema import Config
from megadepth.model import GPT
from megadepth.parallel.topology import Grid
from megadepth.parametrize import Parametrization, initialize, param_groups
from megadepth.parametrize.checks import verify_attention_scale
from megadepth.train.checkpoint import read_weights_only
from megadepth.train.init_from import WeightSource, load_weights
from megadepth.train.schedule import make_scheduler


def deepspeed_config(config: Config, grad_accum: int, global_batch: int, precision: str,
                     engine_clips: bool = True) -> dict[str, Any]:
    """The DeepSpeed JSON config derived from ours; ``engine_clips=False``: the Stepper clips."""
    return {
        "train_batch_size": global_batch,
        "train_micro_batch_size_per_gpu": config.train.micro_batch,
        "gradient_accumulation_steps": grad_accum,
        "gradient_clipping": config.optimizer.grad_clip if engine_clips else 0.0,
        "zero_optimization": {"stage": config.parallel.zero_stage},
        "bf16": {"enabled": precision == "bf16"},
        # bf16-mixed: the engine runs the forward under torch.autocast; parameters stay fp32
        "torch_autocast": {"enabled": precision == "bf16-mixed", "dtype": "bfloat16"},
        # our optimizer is torch's AdamW with per-group eps and weight decay; ZeRO wraps it as is
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31,
        "wall_clock_breakdown": False,
    }


def build_optimizer(config: Config, groups: list[dict], tp_group: Any = None) -> torch.optim.Optimizer:
    """The torch optimizer over the parametrization's groups (each group carries its own lr/eps/wd); Muon's
    gathers sharded matrices over ``tp_group`` (the tensor-parallel group) to orthogonalise them whole."""
    opt = config.optimizer
    if opt.name == "muon":
        from megadepth.optim import MuonAdamW

        return MuonAdamW(groups, tp_group=tp_group)
    if opt.name == "sgd":
        return torch.optim.SGD(groups, lr=opt.lr, momentum=opt.momentum, nesterov=opt.nesterov)
    cls = torch.optim.AdamW if opt.name == "adamw" else torch.optim.Adam
    fused = True if opt.fused is None else opt.fused
    return cls(groups, lr=opt.lr, betas=tuple(opt.betas), eps=opt.eps, fused=fused or None)


def check_muon_engine(config: Config, precision: str) -> None:
    """Muon beside ZeRO needs ZeRO 1 (stage 2 and 3 untested) and fp32 parameters (precision fp32 or
    bf16-mixed: precision bf16 keeps bf16 weights outside ZeRO's fp32 master copy, which Muon would step
    in bf16). parametrize.checks refuses these layouts first; this guards the engine itself."""
    if config.parallel.zero_stage != 1 or precision not in ("fp32", "bf16-mixed"):
        raise ValueError(f"optimizer.name: muon runs at parallel.zero_stage 0 or 1 with fp32 or bf16-mixed "
                         f"parameters (got zero_stage {config.parallel.zero_stage}, precision {precision})")


def muon_beside_zero(config: Config, groups: list[dict], tp_group: Any, grid: Grid) -> tuple[Any, Any]:
    """(the Muon groups' own optimizer, the AdamW half for ZeRO to wrap): ZeRO's flat partitions would cut
    the Muon matrices, so they stay out of them (megadepth.optim.beside_zero says how they are reduced,
    clipped and saved)."""
    from megadepth.optim.beside_zero import AdamWPart, MuonBeside

    beside = MuonBeside([g for g in groups if g["use_muon"]], tp_group,
                        make_scheduler(config.schedule, config.train.steps), tp_rank=grid.tensor.rank,
                        pp_rank=grid.pipe_rank, data_rank=grid.data_rank)
    return beside, AdamWPart(g for g in groups if not g["use_muon"])


def clips_itself(config: Config, precision: str) -> bool:
    """Whether megadepth clips gradients itself: the plain engine with fp32 parameters without ZeRO, where
    gradients sit in the parameters' ``.grad`` (otherwise DeepSpeed owns and clips them)."""
    return (config.parallel.pipeline == 1 and config.parallel.zero_stage == 0
            and precision in ("fp32", "bf16-mixed"))


@dataclass
class Built:
    engine: Any
    model: torch.nn.Module
    """The plain GPT, or this rank's PipelineModule stage."""
    parametrization: Parametrization
    groups: list[dict]
    pipeline: bool
    own_clip: float = 0.0
    """Clipping threshold the Stepper applies (0: DeepSpeed clips, or no clipping)."""
    muon_beside: Any = None
    """Under optimizer muon at ZeRO 1 (and in the pipeline engine): the Muon matrices' optimizer, stepped
    beside ZeRO's (megadepth.optim.beside_zero); its state is saved with the checkpoint (train.checkpoint)."""

    def release(self) -> None:
        """DeepSpeed's teardown, once the engine is done with: ZeRO's gradient hooks sit on the parameters in
        C++, a cycle back to the engine that Python's collector cannot see, so without it the engine, its
        memory and its process groups outlive their use (to interpreter exit, where gloo's groups now and
        then abort the process: megadepth.parallel.distributed.shutdown)."""
        self.engine.destroy()


def build_engine(config: Config, device: torch.device, grad_accum: int, global_batch: int,
                 precision: str, grid: Grid, weights: WeightSource | None = None) -> Built:
    """Build this rank's part of the model on ``device``, initialise it (or take ``weights`` from
    train.init_from) and wrap it in a DeepSpeed engine (the pipeline engine when parallel.pipeline > 1)."""
    import deepspeed

    ptz = Parametrization.from_config(config.model, config.parametrization, optimizer=config.optimizer)
    if config.model.block == "transformer":
        verify_attention_scale(device, torch.float32 if precision == "fp32" else torch.bfloat16)
    pipeline = config.parallel.pipeline > 1
    interval = config.parallel.activation_checkpoint_interval
    if pipeline:
        from megadepth.model.pipeline import add_role_placeholders, build_pipeline, canonical_name

        model = build_pipeline(config, ptz.multipliers(), grid.tensor, interval)
        add_role_placeholders(model, config, ptz.multipliers(), grid.tensor)
        model = model.to(device)
        depth, tied = config.model.depth, config.model.tie_embeddings
        initialize(model, ptz, config.train.seed, name_for=lambda n: canonical_name(n, depth, tied))
        if weights is not None:
            load_weights(model, weights, name_for=lambda n: canonical_name(n, depth, tied))
        mpu = None  # the PipelineModule brings its own grid
    else:
        model = GPT(config.model, ptz.multipliers(), grid.tensor, checkpoint_interval=interval).to(device)
        initialize(model, ptz, config.train.seed)
        if weights is not None:
            load_weights(model, weights)
        if config.train.compile:
            model.compile_for_speed()
        mpu = grid.mpu
    groups = param_groups(model, ptz, config.optimizer)
    tp_group = grid.tensor.group if grid.tensor.enabled else None
    own = clips_itself(config, precision)
    beside = None
    if config.optimizer.name == "muon" and not own:
        check_muon_engine(config, precision)
        beside, optimizer = muon_beside_zero(config, groups, tp_group, grid)
    else:
        optimizer = build_optimizer(config, groups, tp_group)
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=make_scheduler(config.schedule, config.train.steps),
        config=deepspeed_config(config, grad_accum, global_batch, precision, engine_clips=not own), mpu=mpu)
    if beside is not None:
        beside.attach(engine.optimizer)
    read_weights_only(engine)  # DeepSpeed's own reader unpickles anything a planted file names
    if own and grid.data_size == 1:
        # a data-parallel group of one: DeepSpeed would still bucket every gradient and run a collective
        engine.enable_backward_allreduce = False
    return Built(engine=engine, model=model, parametrization=ptz, groups=groups, pipeline=pipeline,
                 own_clip=config.optimizer.grad_clip if own else 0.0, muon_beside=beside)
