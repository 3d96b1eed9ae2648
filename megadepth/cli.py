"""The ``megadepth`` command: one subcommand per thing users do (train, launch, prep, sweep, report, ...).

Bad input ends in one line on stderr and exit code 2; an unexpected crash keeps its traceback (exit 1).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from megadepth.common.errors import ConfigError
from megadepth.config import explain, load_config, to_yaml

EXIT_BAD_INPUT, EXIT_STARTUP = 2, 3
ARGS_B64 = "--args-b64"  # launch.deepspeed_launcher.ARGS_B64, without importing launch on every command


def _expand_encoded_args(argv: list[str]) -> list[str]:
    """``train --args-b64 TOKEN`` -> ``train ARGS...`` (hostfile launches); other commands unchanged."""
    if argv[:1] != ["train"]:
        return argv
    rest, tokens, items = [], [], iter(argv[1:])
    for item in items:
        if item == ARGS_B64:
            tokens.append(next(items, None))
            if tokens[-1] is None:
                raise ConfigError(f"{ARGS_B64} needs a value")
        elif item.startswith(ARGS_B64 + "="):
            tokens.append(item.split("=", 1)[1])
        else:
            rest.append(item)
    if not tokens:
        return argv
    if len(tokens) > 1:
        raise ConfigError(f"{ARGS_B64} is given more than once")
    beside = [a for a in rest if a != "--dry-run"]
    if beside:  # configs and overrides beside the token would be merged with its own in some order
        raise ConfigError(f"{ARGS_B64} carries the run's config files and overrides: give none beside it "
                          f"(got {' '.join(beside)})")
    from launch.deepspeed_launcher import decode_train_args

    try:
        decoded = decode_train_args(tokens[0])
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return ["train", *rest, *decoded]


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("configs", nargs="+", metavar="CONFIG.yaml", help="YAML files, merged left to right")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one key, e.g. --set train.steps=20 (repeatable)")


def _cmd_train(args: argparse.Namespace) -> int:
    from megadepth.parallel.distributed import read_env
    from megadepth.train.dry_run import derived_batch_warning, describe_run
    from megadepth.train.loop import train

    if args.args_b64 is not None:  # only an abbreviation of it gets here: main expands the full spelling
        raise ConfigError(f"spell out {ARGS_B64} (it cannot be abbreviated)")
    config = load_config(args.configs, args.overrides)
    env = read_env()
    warning = derived_batch_warning(config, env.world_size) if env.is_main else None
    if warning:  # under a launcher (torchrun, srun, the DeepSpeed launcher): rank 0 says it once
        print(warning, file=sys.stderr, flush=True)
    if args.dry_run:
        print(describe_run(config))
        return 0
    summary = train(config)
    return 0 if summary["status"] in ("completed", "stopped") else 1


def _cmd_launch(args: argparse.Namespace) -> int:
    """Check the whole job, then run the DeepSpeed launcher, print it (--dry-run) or write --slurm."""
    import dataclasses
    import shlex

    import torch

    from launch import deepspeed_launcher as ds
    from launch import plan as launch_plan
    from launch.hostfile import LaunchError, format_hostfile, write_private_hostfile
    from launch.slurm import SlurmSpec, decide_gpus, render_sbatch
    from megadepth.common.host import usable_cpus
    from megadepth.parallel.distributed import free_port
    from megadepth.train.dry_run import derived_batch_warning, device_text, start_text, summary_lines
    from megadepth.train.preflight import check_run_dir, preflight
    from megadepth.train.rundir import RunDir

    request = launch_plan.LaunchRequest(args.nproc_per_node, args.hostfile, args.nnodes, args.node_rank,
                                        args.master_addr, args.master_port)
    plan = None
    try:
        if args.slurm is not None:
            world_size = launch_plan.check_slurm_request(request)
        elif args.sbatch:
            raise LaunchError("--sbatch options are for --slurm scripts")
        else:
            plan = launch_plan.plan_launch(request, free_port=free_port)
            world_size = plan.world_size
            if plan.mode == "hostfile":  # words DeepSpeed's pdsh runner hands the remote shell unquoted
                ds.check_remote_shell_safe(os.getcwd(), sys.executable)
    except LaunchError as exc:
        raise ConfigError(str(exc)) from None

    config = load_config(args.configs, args.overrides)
    gpus_here = torch.cuda.device_count() if torch.cuda.is_available() else 0
    use_gpu = gpus_here > 0 and config.train.device != "cpu"
    # a per-node command printed here may be meant for another node (a login node prints a GPU node's)
    elsewhere = args.dry_run and plan is not None and plan.mode == "per-node"
    warnings = []
    if plan is not None and plan.mode != "hostfile":  # the ranks run on this machine: check its devices
        try:
            warnings = launch_plan.check_local_devices(config.train.device, args.nproc_per_node, gpus_here,
                                                       usable_cpus(), elsewhere=elsewhere)
        except LaunchError as exc:
            raise ConfigError(str(exc)) from None
    layout, grad_accum, global_batch = preflight(config, world_size)  # every rank's checks, once, up front
    started = None
    if plan is not None and (plan.mode != "hostfile" or Path(config.train.out_dir).exists()):
        # what the run directory holds (resume, init_from): with a hostfile only when visible from here
        started = check_run_dir(config, layout.data)
    batch_warning = derived_batch_warning(config, world_size)
    for line in [batch_warning, *warnings] if batch_warning else warnings:
        print(line, file=sys.stderr, flush=True)

    try:
        if plan is None:
            # the GPU line follows the config and the cluster's nodes (sinfo), not this (login) node
            decision = decide_gpus(config.train.device, args.nproc_per_node, tuple(args.sbatch))
            script = render_sbatch(SlurmSpec(
                nnodes=args.nnodes, nproc_per_node=args.nproc_per_node, config_files=tuple(args.configs),
                overrides=tuple(args.overrides), master_port=args.master_port,
                gpus=decision.gpus, sbatch_options=tuple(args.sbatch),
            ))
            if args.dry_run:
                print(f"megadepth: --slurm: {decision.reason}", file=sys.stderr, flush=True)
                print(script, end="")
                return 0
            try:
                Path(args.slurm).write_text(script)
            except OSError as exc:
                raise LaunchError(f"--slurm {args.slurm}: cannot write it ({exc.strerror or exc})") from None
            print(f"megadepth: --slurm: {decision.reason}", file=sys.stderr, flush=True)
            print(f"wrote {args.slurm} ({args.nnodes} node(s) x {args.nproc_per_node} = {world_size} ranks); "
                  f"submit it with: sbatch {shlex.quote(args.slurm)}")
            return 0
        if not args.dry_run:
            launch_plan.check_ssh_mode(plan)  # pdsh and passwordless ssh to every host (hostfile mode only)
    except LaunchError as exc:
        raise ConfigError(str(exc)) from None

    spec = ds.LaunchSpec(
        nproc_per_node=args.nproc_per_node, config_files=tuple(args.configs), overrides=tuple(args.overrides),
        master_port=plan.master_port, use_gpu=use_gpu, cpu_only=config.train.device == "cpu",
        hostfile=str(plan.hostfile) if plan.hostfile is not None else None, num_nodes=plan.num_nodes,
        node_rank=plan.node_rank, master_addr=plan.master_addr,
    )
    # hostfile mode: other nodes' ranks do not inherit this environment; a printed per-node command
    # carries only what any node needs
    env = {} if plan.mode == "hostfile" else ds.portable_env(spec) if elsewhere else ds.launcher_env(spec)
    comments = [f"# {plan.summary()}"]
    if plan.mode == "hostfile":  # what --args-b64 carries, readable (the command itself is the real one)
        comments.append(f"# --args-b64: megadepth train {shlex.join(ds.train_arguments(spec))}")
    if args.dry_run:
        gpus = None if elsewhere or plan.mode == "hostfile" else gpus_here
        device, precision = device_text(config, gpus)
        start = (start_text(config, RunDir(config.train.out_dir), *started) if started is not None else
                 f"{config.train.out_dir} is not visible from this node: rank 0 checks it at start-up")
        lines = ["megadepth launch --dry-run: the job's checks passed; nothing was started or written",
                 *summary_lines(config, processes=world_size, layout=layout, grad_accum=grad_accum,
                                global_batch=global_batch, device=device, precision=precision, start=start)]
        if plan.mode == "hostfile":
            lines.append("not checked by a dry run: pdsh on this machine and passwordless ssh to every host "
                         "(a launch checks both before it starts anything)")
        steps = [ds.describe(ds.build_command(spec), env)] if not plan.hostfile_generated else [
            # a private file (mktemp) at run time, as the launch itself makes; the command reads "$hostfile"
            "hostfile=$(mktemp) && printf '%s\\n' "
            + " ".join(shlex.quote(x) for x in format_hostfile(plan.hosts).splitlines()) + ' > "$hostfile"',
            ds.describe(ds.build_command(dataclasses.replace(spec, hostfile=HOSTFILE_MARK)), env).replace(
                f" -H {HOSTFILE_MARK} ", ' -H "$hostfile" '),
        ]
        print("\n".join([*(f"# {line}".rstrip() for line in lines), *comments, *steps]))
        return 0
    written = None
    if plan.hostfile_generated:
        try:
            written = write_private_hostfile(list(plan.hosts))
        except OSError as exc:
            raise ConfigError(f"cannot write the generated hostfile in the temporary folder "
                              f"({exc.strerror or exc})") from None
        spec = dataclasses.replace(spec, hostfile=str(written))
    try:
        cmd = ds.build_command(spec)
        lines = [*comments, ds.describe(cmd, env)]
        print("\n".join(f"megadepth: {line.removeprefix('# ')}" for line in lines), flush=True)
        return ds.run(cmd, env)
    finally:
        if written is not None:
            written.unlink(missing_ok=True)


HOSTFILE_MARK = "@HOSTFILE@"
"""Where a per-node dry run's command names the hostfile the printed ``mktemp`` line makes (``"$hostfile"``)."""


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got '{text}'") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got '{text}'")
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"a value is given twice in '{text}'")
    return values


def _positive_float(text: str) -> float:
    """An argparse type: a finite number above 0 (a peak throughput divides; refused before any work)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number above 0, got '{text}'")
    return value


def _cmd_coord_check(args: argparse.Namespace) -> int:
    from megadepth.analysis import coord_check as cc
    from megadepth.common.io import atomic_write_json
    from megadepth.parametrize.checks import check_parametrization
    from megadepth.train.data_checks import check_tokenizer

    config = load_config(args.configs, args.overrides)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a directory")
    if len(args.depths) < 2 and len(args.widths or []) < 2:
        raise ConfigError("a coordinate check fits slopes: give at least two --depths (or two --widths)")
    if config.parallel.tensor > 1 or config.parallel.pipeline > 1:
        raise ConfigError("coord-check trains each shape in one process: parallel.tensor and parallel.pipeline "
                          "must be 1")
    config, notes = cc.with_base_shape(config, args.depths, args.widths)
    for note in notes:
        print(f"megadepth: {note}", file=sys.stderr)
    # every shape, built as run_coord_check builds it, passes a training run's start-up checks first
    for width in args.widths or [config.model.width]:
        for depth in args.depths:
            try:
                check_parametrization(cc.shaped_config(config, cc.Shape(depth, width), args.steps, 0))
            except ConfigError as exc:
                raise ConfigError(f"depth {depth} width {width}: {exc}") from None
    check_tokenizer(config)
    result = cc.run_coord_check(config, args.depths, args.widths, args.steps, seeds=tuple(range(args.seeds)))
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "coord.json", result)
    cc.plot_coord_check(result, out / "coord.png")
    for d in result["diverged"]:
        print(f"megadepth: warning: depth {d['depth']} width {d['width']} seed {d['seed']} diverged at step "
              f"{d['step']}; its later steps are left out (lower optimizer.lr?)", file=sys.stderr)
    print(cc.format_slopes(result))
    print(f"wrote {out / 'coord.json'} and {out / 'coord.png'}")
    return 0


def _check_output_file(option: str, path: str) -> None:
    """A file the command will write at the end: refused now, before the work, if it cannot be written."""
    target = Path(path)
    parent = target.parent
    if target.is_dir():
        raise ConfigError(f"{option} {path} is a directory: give a file path")
    if not parent.exists():
        raise ConfigError(f"{option} {path}: its directory {parent} does not exist")
    if not parent.is_dir():
        raise ConfigError(f"{option} {path}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise ConfigError(f"{option} {path}: no permission to write it")


def _cmd_bench(args: argparse.Namespace) -> int:
    import json

    from megadepth.common.io import atomic_write_text
    from megadepth.parallel.distributed import read_env
    from megadepth.train.bench import run_bench

    config = load_config(args.configs, args.overrides)
    is_main = read_env().is_main  # the launcher's variables, checked before any work
    if args.json and is_main:  # only rank 0 writes it
        _check_output_file("--json", args.json)
    result = run_bench(config, args.steps, args.warmup, args.peak_tflops)
    if is_main:
        text = json.dumps(result, indent=2)
        print(text)
        if args.json:
            atomic_write_text(args.json, text + "\n")
    return 0


def _cmd_merge_tp(args: argparse.Namespace) -> int:
    from megadepth.train.merge import merge_tensor_parallel

    target = merge_tensor_parallel(args.checkpoints, args.out, args.tag)
    print(f"wrote {target} (parallel.tensor = 1)")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from megadepth.export.hf import describe_export, export_hf

    written, warning = describe_export(args.out, export_hf(args.run_dir, args.out, args.tag))
    print(written)
    if warning:
        print(warning, file=sys.stderr)
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    from megadepth.generate import Generator, SamplingOptions

    gen = Generator(args.run_dir, args.tag, device=args.device, kv_cache=not args.no_kv_cache)
    print(gen.context_note(), file=sys.stderr)
    for i in range(args.samples):
        options = SamplingOptions(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                  top_k=args.top_k, seed=args.seed + i, stop_at_eos=not args.ignore_eos)
        if i:
            print("-" * 40)
        print(gen.complete(args.prompt, options), flush=True)
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    if args.explain:
        for key, default, doc in explain():
            print(f"{key} (default {default})\n    {doc}")
        return 0
    if not args.configs:
        raise ConfigError("give config files to resolve, or --explain")
    print(to_yaml(load_config(args.configs, args.overrides)), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from data_prep.cli import add_cli as add_prep_cli
    from megadepth.analysis.report import add_cli as add_report_cli
    from megadepth.sweep.cli import add_cli as add_sweep_cli
    from megadepth.sweep.cli import at_least as _count

    parser = argparse.ArgumentParser(
        prog="megadepth",
        description="Train GPTs whose hyperparameters transfer across depth (SP, muP, Depth-muP, CompleteP).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train in this process (or as one rank under a launcher)")
    _add_config_args(p)
    # the DeepSpeed launcher appends --local_rank=N; the rank is read from the environment instead
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    # hostfile launches: the arguments above as one shell-safe token (expanded by main before parsing)
    p.add_argument(ARGS_B64, metavar="TOKEN", default=None,
                   help="the arguments as URL-safe base64 of a JSON list (what `megadepth launch --hostfile` "
                        "sends through the remote shell, which would reinterpret them otherwise)")
    p.add_argument("--dry-run", action="store_true",
                   help="run every start-up check, print the model size, batch arithmetic and per-role "
                        "init/LR/eps/WD table, and exit without training or writing anything")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "launch", help="run training under the DeepSpeed launcher: this node, a hostfile, or one node of many",
        description="One node: --nproc-per-node K. All nodes of a hostfile over ssh/pdsh: --hostfile H. One node "
                    "of many, no ssh (Slurm tasks, Kubernetes pods): --nnodes N --node-rank R --master-addr A. "
                    "A Slurm batch script: --slurm FILE --nnodes N. See docs/launching.md.")
    p.add_argument("--nproc-per-node", type=int, required=True,
                   help="processes per node: GPUs, or CPU processes on gloo without a GPU")
    p.add_argument("--hostfile", default=None, metavar="H",
                   help="hostfile, one 'HOSTNAME slots=N' per line: start every host's processes over ssh/pdsh "
                        "(with --node-rank: only this node's, without ssh)")
    p.add_argument("--nnodes", type=int, default=None,
                   help="number of nodes (per-node launches and --slurm; with --hostfile: use its first N hosts)")
    p.add_argument("--node-rank", type=int, default=None,
                   help="this node's rank, 0..nnodes-1: start only this node's processes, without ssh")
    p.add_argument("--master-addr", default=None, help="address of node 0 (the rendezvous), the same on every node")
    p.add_argument("--master-port", type=int, default=None,
                   help="rendezvous port (default: a free one on one node, 29500 across nodes, from the job id "
                        "under --slurm)")
    p.add_argument("--slurm", default=None, metavar="FILE",
                   help="write a Slurm batch script that runs one launcher per node (needs --nnodes) instead of "
                        "launching; with --dry-run, print it")
    p.add_argument("--sbatch", action="append", default=[], metavar="OPTION",
                   help="an extra #SBATCH option for --slurm, e.g. --sbatch=--partition=gpu (repeatable)")
    p.add_argument("--dry-run", action="store_true",
                   help="check everything and print the exact commands (or the --slurm script); start nothing")
    _add_config_args(p)
    p.set_defaults(func=_cmd_launch)

    p = sub.add_parser("coord-check", help="coordinate check: activation and update sizes across depth/width")
    _add_config_args(p)
    p.add_argument("--depths", type=_int_list, required=True, help="e.g. 2,4,8,16,32")
    p.add_argument("--widths", type=_int_list, default=None, help="e.g. 64,128,256 (default: the config's)")
    p.add_argument("--steps", type=_count(1), default=5, help="optimizer steps per shape (default 5)")
    p.add_argument("--seeds", type=_count(1), default=1, help="seeds averaged per shape (default 1)")
    p.add_argument("--out", required=True, help="output directory for coord.json and coord.png")
    p.set_defaults(func=_cmd_coord_check)

    p = sub.add_parser("bench", help="time training steps on this device (random tokens); prints JSON")
    _add_config_args(p)
    p.add_argument("--steps", type=_count(1), default=20, help="timed optimizer steps (default 20)")
    p.add_argument("--warmup", type=_count(0), default=5, help="untimed steps first (default 5)")
    p.add_argument("--peak-tflops", type=_positive_float, default=989.4,
                   help="the device's peak TFLOP/s for MFU (default 989.4: H200 dense bf16, the convention "
                        "in docs/throughput.md; MFU on a CPU is against that GPU peak too)")
    p.add_argument("--json", default=None, help="also write the JSON here")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("export", help="a Hugging Face transformers checkpoint, multipliers folded into the weights")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (or its checkpoints/ folder), any layout")
    p.add_argument("--format", required=True, choices=["hf"],
                   help="hf: transformers GPT2LMHeadModel (layernorm, gelu/relu, learned positions), "
                        "LlamaForCausalLM (rmsnorm, swiglu, rotary) or Qwen3ForCausalLM (the same with qk_norm)")
    p.add_argument("out", metavar="OUT", help="output directory (new or empty)")
    p.add_argument("--tag", default=None, help="which checkpoint (default: the latest)")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("generate", help="continue a prompt with a run's model (any layout; seeded sampling)")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (or its checkpoints/ folder)")
    p.add_argument("--prompt", default="", help="text to continue (default: start a new document); the "
                   "tokenizer's EOS token is put in front of it, as every training document follows one")
    p.add_argument("--max-new-tokens", type=_count(1), default=100, help="tokens to add at most (default 100)")
    p.add_argument("--temperature", type=float, default=0.8, help="0 is greedy (default 0.8)")
    p.add_argument("--top-k", type=_count(0), default=50, help="sample among the k likeliest (0: all; default 50)")
    p.add_argument("--samples", type=_count(1), default=1, help="how many continuations (seeds seed, seed+1, ...)")
    p.add_argument("--seed", type=_count(0), default=0, help="sampling seed (default 0)")
    p.add_argument("--ignore-eos", action="store_true", help="keep going past the end-of-document token")
    p.add_argument("--tag", default=None, help="which checkpoint (default: the latest)")
    p.add_argument("--device", default="auto", help="auto (a GPU if there is one), cpu, cuda or cuda:N")
    p.add_argument("--no-kv-cache", action="store_true",
                   help="recompute the whole context for every token (the cache's reference; slower)")
    p.set_defaults(func=_cmd_generate)

    p = sub.add_parser("merge-tp", help="merge a tensor- or pipeline-parallel checkpoint into one TP=PP=1 checkpoint")
    p.add_argument("checkpoints", help="a run directory or its checkpoints/ directory")
    p.add_argument("--tag", default=None, help="which checkpoint (default: the latest)")
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(func=_cmd_merge_tp)

    p = sub.add_parser("config", help="print the resolved config, or document every key")
    p.add_argument("configs", nargs="*", metavar="CONFIG.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--explain", action="store_true", help="list every config key with its default and meaning")
    p.set_defaults(func=_cmd_config)

    p = sub.add_parser("prep", help="turn text into token shards")
    add_prep_cli(p.add_subparsers(dest="prep_command", required=True))
    add_sweep_cli(sub)
    add_report_cli(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from megadepth.data import DataError
    from megadepth.parallel.distributed import StartupError
    from megadepth.train.checkpoint import CheckpointError

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        argv = _expand_encoded_args(argv)
    except ConfigError as exc:
        print(f"megadepth: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ConfigError, DataError, StartupError) as exc:
        print(f"megadepth: error: {exc}", file=sys.stderr)
        return EXIT_STARTUP if isinstance(exc, StartupError) else EXIT_BAD_INPUT
    except CheckpointError as exc:  # the run's summary.json records it too
        if os.environ.get("RANK", "0") == "0":  # every rank raises it together: one line, not one per rank
            print(f"megadepth: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("megadepth: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `megadepth config --explain | head`: the reader left, nothing is wrong
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush does not fail again
        return 0
    except OSError as exc:  # a full or read-only disk outside a checkpoint save (config, metrics, summary)
        where = f": {exc.filename}" if exc.filename else ""
        print(f"megadepth: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
