"""The ``megadepth`` command (DESIGN.md, "The megadepth command").

Bad input ends in one line on stderr and exit code 2; an unexpected crash keeps its traceback (exit 1).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence

from megadepth.config import ConfigError, explain, load_config, to_yaml

EXIT_BAD_INPUT = 2


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("configs", nargs="+", metavar="CONFIG.yaml", help="YAML files, merged left to right")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one key, e.g. --set train.steps=20 (repeatable)")


def _cmd_train(args: argparse.Namespace) -> int:
    from megadepth.train.loop import train

    config = load_config(args.configs, args.overrides)
    summary = train(config)
    return 0 if summary["status"] in ("completed", "stopped") else 1


def _cmd_launch(args: argparse.Namespace) -> int:
    import torch

    from launch.deepspeed_launcher import LaunchSpec, build_command, describe, launcher_env
    from megadepth.parallel.distributed import free_port
    from megadepth.train.preflight import preflight

    config = load_config(args.configs, args.overrides)
    use_gpu = torch.cuda.is_available() and config.train.device != "cpu"
    if use_gpu and args.nproc_per_node > torch.cuda.device_count():
        raise ConfigError(
            f"--nproc-per-node {args.nproc_per_node} but this node has {torch.cuda.device_count()} CUDA device(s)"
        )
    if config.train.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is 'cuda' but no CUDA device is available")
    preflight(config, args.nproc_per_node)  # the checks every rank runs, once, before any process starts
    spec = LaunchSpec(
        nproc_per_node=args.nproc_per_node,
        config_files=tuple(args.configs),
        overrides=tuple(args.overrides),
        master_port=args.master_port or free_port(),
        use_gpu=use_gpu,
    )
    cmd, env = build_command(spec), launcher_env(spec)
    if args.dry_run:
        print(describe(cmd, env))
        return 0
    print(f"megadepth: {describe(cmd, env)}", flush=True)
    return subprocess.call(cmd, env={**os.environ, **env})


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got '{text}'") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got '{text}'")
    return values


def _cmd_coord_check(args: argparse.Namespace) -> int:
    from pathlib import Path

    from megadepth.analysis.coord_check import format_slopes, plot_coord_check, run_coord_check
    from megadepth.parametrize.checks import check_parametrization
    from megadepth.train.data_checks import check_tokenizer
    from megadepth.train.rundir import atomic_write_json

    config = load_config(args.configs, args.overrides)
    for depth in args.depths:  # every shape must pass the same start-up checks as a training run
        for width in args.widths or [config.model.width]:
            shaped = config.model_copy(update={"model": config.model.model_copy(update={"depth": depth, "width": width})})
            check_parametrization(shaped)
    check_tokenizer(config)
    out = Path(args.out)
    result = run_coord_check(config, args.depths, args.widths, args.steps, seeds=tuple(range(args.seeds)))
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "coord.json", result)
    plot_coord_check(result, out / "coord.png")
    print(format_slopes(result))
    print(f"wrote {out / 'coord.json'} and {out / 'coord.png'}")
    return 0


def _cmd_merge_tp(args: argparse.Namespace) -> int:
    from megadepth.parallel.merge import merge_tensor_parallel

    target = merge_tensor_parallel(args.checkpoints, args.out, args.tag)
    print(f"wrote {target} (parallel.tensor = 1)")
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
    parser = argparse.ArgumentParser(
        prog="megadepth",
        description="Train GPTs whose hyperparameters transfer across depth (SP, muP, Depth-muP, CompleteP).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train in this process (or as one rank under a launcher)")
    _add_config_args(p)
    # the DeepSpeed launcher appends --local_rank=N; the rank is read from the environment instead
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("launch", help="run training under the DeepSpeed launcher on this node")
    p.add_argument("--nproc-per-node", type=int, required=True,
                   help="processes on this node: GPUs, or CPU processes on gloo without a GPU")
    p.add_argument("--master-port", type=int, default=None, help="rendezvous port (default: a free one)")
    p.add_argument("--dry-run", action="store_true", help="print the launcher command and exit")
    _add_config_args(p)
    p.set_defaults(func=_cmd_launch)

    p = sub.add_parser("coord-check", help="coordinate check: activation and update sizes across depth/width")
    _add_config_args(p)
    p.add_argument("--depths", type=_int_list, required=True, help="e.g. 2,4,8,16,32")
    p.add_argument("--widths", type=_int_list, default=None, help="e.g. 64,128,256 (default: the config's)")
    p.add_argument("--steps", type=int, default=5, help="optimizer steps per shape (default 5)")
    p.add_argument("--seeds", type=int, default=1, help="seeds averaged per shape (default 1)")
    p.add_argument("--out", required=True, help="output directory for coord.json and coord.png")
    p.set_defaults(func=_cmd_coord_check)

    p = sub.add_parser("merge-tp", help="merge a tensor-parallel checkpoint into one TP=1 checkpoint")
    p.add_argument("checkpoints", help="a run's checkpoints/ directory")
    p.add_argument("--tag", default=None, help="which checkpoint (default: the latest)")
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(func=_cmd_merge_tp)

    p = sub.add_parser("config", help="print the resolved config, or document every key")
    p.add_argument("configs", nargs="*", metavar="CONFIG.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--explain", action="store_true", help="list every config key with its default and meaning")
    p.set_defaults(func=_cmd_config)

    p = sub.add_parser("prep", help="turn text into token shards")
    from data_prep.cli import add_cli

    add_cli(p.add_subparsers(dest="prep_command", required=True))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from megadepth.data import DataError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ConfigError, DataError) as exc:
        print(f"megadepth: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("megadepth: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
