"""Process-group set-up: who am I, on what device, in which layout.

Everything here is checked before a model or data is allocated, so an impossible layout or a device
that does not exist fails in the first second, on every rank alike.
"""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch

from megadepth.common.errors import ConfigError
from megadepth.common.host import usable_cpus
from megadepth.config.schema import Config, ModelConfig
from megadepth.parallel.host_memory import keep_freed_memory


class StartupError(RuntimeError):
    """The job's processes could not form a process group in time (a node missing, a wrong address)."""


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the job (from the launcher's environment variables)."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass(frozen=True)
class Layout:
    """Parallel sizes; data parallel is what is left of the world after tensor x pipeline."""

    tensor: int
    pipeline: int
    data: int


def _env_int(name: str, default: int) -> int:
    """An integer launcher variable; one that is not an integer is a ConfigError naming it."""
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"environment variable {name}={text!r} is not an integer (it is set by the "
                          "launcher: torchrun, DeepSpeed or Slurm; unset it for a single process)") from None


def read_env() -> DistEnv:
    """Rank and sizes as set by the DeepSpeed launcher, torchrun or Slurm; a single process otherwise. An
    impossible combination is a ConfigError naming the variable, before anything divides by it or waits."""
    world = _env_int("WORLD_SIZE", 1)
    if world < 1:
        raise ConfigError(f"environment variable WORLD_SIZE={world} must be at least 1")
    rank = _env_int("RANK", 0)
    if not 0 <= rank < world:
        raise ConfigError(f"environment variable RANK={rank} is outside 0..{world - 1} (WORLD_SIZE={world})")
    local_name = "LOCAL_WORLD_SIZE" if "LOCAL_WORLD_SIZE" in os.environ else "LOCAL_SIZE"
    local_world = _env_int(local_name, world)
    if not 1 <= local_world <= world:
        raise ConfigError(f"environment variable {local_name}={local_world} must be between 1 and "
                          f"WORLD_SIZE={world}")
    local_rank = _env_int("LOCAL_RANK", 0)
    if not 0 <= local_rank < local_world:
        raise ConfigError(f"environment variable LOCAL_RANK={local_rank} is outside 0..{local_world - 1} "
                          f"({local_name if local_name in os.environ else 'WORLD_SIZE'}={local_world})")
    return DistEnv(rank, world, local_rank, local_world)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def resolve_device(config: Config, env: DistEnv) -> torch.device:
    """The device this rank trains on; asking for more GPUs than exist is an error, not a hang."""
    want = config.train.device
    has_cuda = torch.cuda.is_available()
    if want == "cuda" and not has_cuda:
        raise ConfigError("train.device is 'cuda' but no CUDA device is available (use 'auto' or 'cpu')")
    if want == "cpu" or not has_cuda:
        return torch.device("cpu")
    count = torch.cuda.device_count()
    if env.local_world_size > count:
        raise ConfigError(f"{env.local_world_size} processes on this node but only {count} CUDA device(s); "
                          "lower --nproc-per-node or use train.device: cpu")
    return torch.device("cuda", env.local_rank)


def resolve_precision(config: Config, device: torch.device) -> str:
    """'fp32', 'bf16-mixed' or 'bf16'. auto picks bf16-mixed on GPUs that support bf16 (the residual
    stream stays fp32, see TrainConfig.precision); fp32 on CPUs (exact and faster there)."""
    want = config.train.precision
    if want == "auto":
        return "bf16-mixed" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    return want


def check_layout(config: Config, world_size: int) -> Layout:
    """Data-parallel size from the world size; impossible layouts fail here, before any work."""
    tp, pp = config.parallel.tensor, config.parallel.pipeline
    if world_size % (tp * pp):
        raise ConfigError(f"parallel.tensor ({tp}) x parallel.pipeline ({pp}) = {tp * pp} does not divide "
                          f"the world size ({world_size} processes)")
    check_tensor_parallel(config)
    check_pipeline(config)
    par = config.parallel
    if config.train.compile and pp > 1:
        raise ConfigError("train.compile is not available with parallel.pipeline > 1 (the pipeline engine "
                          "runs the stages itself)")
    if par.activation_checkpoint_interval and config.model.dropout > 0:
        # the recompute draws its masks from megadepth's dropout stream, which neither torch's nor the
        # pipeline engine's checkpointing saves and restores: the gradients would be of other masks
        raise ConfigError("parallel.activation_checkpoint_interval with model.dropout > 0 would recompute "
                          "different dropout masks (wrong gradients); set model.dropout: 0 or turn "
                          "checkpointing off")
    if config.train.precision == "bf16" and par.zero_stage == 0:
        # DeepSpeed runs bf16 without ZeRO through its unfused fp16 optimizer: it takes one extra Adam
        # step at start-up and, under tensor parallelism, a gradient norm of rank 0's shard only
        raise ConfigError("train.precision 'bf16' needs parallel.zero_stage: 1 (at stage 0 DeepSpeed's "
                          "optimizer takes an extra step at start and clips with a wrong norm under tensor "
                          "parallelism; on one GPU stage 1 partitions nothing), or use precision bf16-mixed")
    return Layout(tensor=tp, pipeline=pp, data=world_size // (tp * pp))


def check_pipeline(config: Config) -> None:
    """Pipeline layouts DeepSpeed's engine can run correctly; said before any model exists."""
    par, depth = config.parallel, config.model.depth
    pp = par.pipeline
    if pp == 1:
        return
    if par.partition == "uniform" and depth % pp:
        raise ConfigError(f"model.depth ({depth}) is not divisible by parallel.pipeline ({pp}) as "
                          "parallel.partition 'uniform' requires (or use parallel.partition: parameters)")
    if depth < pp:
        raise ConfigError(f"model.depth ({depth}) is smaller than parallel.pipeline ({pp}): a stage without blocks")
    if par.zero_stage != 1:
        raise ConfigError(f"parallel.pipeline > 1 needs parallel.zero_stage: 1 (got {par.zero_stage}): "
                          "DeepSpeed's pipeline engine does not combine with ZeRO 2/3, and without ZeRO it "
                          "clips gradients by one stage's norm")


def check_tensor_parallel(config: Config) -> None:
    """Every dimension tensor parallelism splits must divide evenly; said before any model exists."""
    tp, model = config.parallel.tensor, config.model
    if tp == 1:
        return
    splits = {"model.heads": model.heads, "model.width": model.width,
              f"the MLP width ({_mlp_width_source(model)})": model.mlp_width,
              "model.vocab_multiple": model.vocab_multiple}
    for what, n in splits.items():
        if n % tp:
            hint = " (the vocabulary is padded to a multiple of it)" if what == "model.vocab_multiple" else ""
            raise ConfigError(f"{what} ({n}) is not divisible by parallel.tensor ({tp}){hint}")
    kv = model.n_kv_heads
    if kv % tp and tp % kv:
        raise ConfigError(f"model.kv_heads ({kv}) and parallel.tensor ({tp}): neither divides the other; key/value "
                          "heads are split across the tensor-parallel ranks when parallel.tensor divides them, "
                          "replicated when they divide parallel.tensor")
    if config.parallel.sequence_parallel:
        if model.seq_len % tp:
            raise ConfigError(f"model.seq_len ({model.seq_len}) is not divisible by parallel.tensor ({tp}), "
                              "as sequence parallelism requires")
        if model.block == "linear":
            raise ConfigError("parallel.sequence_parallel is not available with model.block: linear")


def _mlp_width_source(model: ModelConfig) -> str:
    """Where the MLP width came from, in keys (for the divisibility message)."""
    if model.ffn_hidden is not None:
        return "model.ffn_hidden"
    if model.mlp == "swiglu":
        return "8/3 x model.width rounded up to model.ffn_multiple_of"
    return "model.mlp_ratio x model.width"


def backend_for(config: Config, device: torch.device) -> str:
    """The process-group backend; NCCL on a CPU run is refused here (else a rendezvous time-out that blames
    the network)."""
    if config.parallel.backend == "nccl" and device.type != "cuda":
        raise ConfigError(f"parallel.backend is 'nccl', which runs on CUDA GPUs only, but this run is on "
                          f"{device.type} (use 'auto' or 'gloo')")
    if config.parallel.backend != "auto":
        return config.parallel.backend
    return "nccl" if device.type == "cuda" else "gloo"


def prepare_deepspeed_env(device: torch.device) -> None:
    """Environment DeepSpeed reads at import: the CPU accelerator when there is no GPU, and no JIT build of
    its shared-memory all-reduce op (gloo does not need it; the build takes seconds and leaves a file in
    /dev/shm per rank)."""
    if device.type == "cpu":
        os.environ["DS_ACCELERATOR"] = "cpu"
        keep_freed_memory()  # per-step page faults otherwise (megadepth.parallel.host_memory)
    import deepspeed

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def limit_cpu_threads(device: torch.device, env: DistEnv) -> None:
    """On CPU, unless OMP_NUM_THREADS says otherwise, share the CPUs this process may use among the node's
    ranks: torch's default (every core per rank) oversubscribes them ``local_world_size`` times."""
    if device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, usable_cpus() // env.local_world_size))


def init_distributed(config: Config, env: DistEnv, device: torch.device) -> None:
    """Create the default process group (also for a single process: DeepSpeed requires one)."""
    import deepspeed

    # before the group exists: its functions bind ``group=group.WORLD`` as a default when imported, and
    # imported later (DeepSpeed's Ulysses module does) they would keep the world group alive into interpreter
    # exit (see shutdown)
    import torch.distributed.nn  # noqa: F401

    if env.world_size == 1:
        single = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}
        for name, value in (*single.items(), ("MASTER_PORT", str(free_port()))):
            os.environ.setdefault(name, value)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not torch.distributed.is_initialized():
        try:
            deepspeed.init_distributed(dist_backend=backend_for(config, device), auto_mpi_discovery=False,
                                       timeout=timedelta(seconds=config.parallel.timeout_s), rank=env.rank,
                                       world_size=env.world_size)
        except (RuntimeError, TimeoutError) as exc:  # DistStoreError is a RuntimeError
            addr, port, text = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT"), str(exc)
            if "EADDRINUSE" in text or "address already in use" in text.lower():  # rank 0's store cannot listen
                raise StartupError(f"port {port} is already in use on {addr}: choose another --master-port "
                                   "(or leave it unset)") from None
            raise StartupError(f"rank {env.rank} could not join the {env.world_size}-process job at "
                               f"{addr}:{port} within parallel.timeout_s = {config.parallel.timeout_s} s "
                               "(are all nodes started, with the same master address and port?): "
                               f"{text.splitlines()[0] if text else type(exc).__name__}") from None


def shutdown() -> None:
    """Destroy every process group, and through DeepSpeed's own call, so that DeepSpeed also lets go of the
    groups it holds (its ``mpu`` grid). A group still referenced when the interpreter exits is torn down
    during finalization, with gloo's threads still running: now and then the rank then aborts ("terminate
    called without an active exception", exit -6) after a completed run, and its launcher reports a failure."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    deepspeed_comm = sys.modules.get("deepspeed.comm")
    if deepspeed_comm is not None and deepspeed_comm.is_initialized():
        deepspeed_comm.destroy_process_group()
    else:
        torch.distributed.destroy_process_group()
    # module globals DeepSpeed's destroy leaves set (0.19): the pipeline engine's send/receive groups and grid
    for module, names in _DEEPSPEED_GROUP_GLOBALS:
        loaded = sys.modules.get(module)
        for name in names if loaded is not None else ():
            if hasattr(loaded, name):
                setattr(loaded, name, None)


_DEEPSPEED_GROUP_GLOBALS = (("deepspeed.runtime.pipe.p2p", ("_groups", "_grid")),
                            ("deepspeed.runtime.activation_checkpointing.checkpointing", ("mpu", "mp_group")))
