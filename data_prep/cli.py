"""``megadepth prep``: every data-preparation subcommand.

``text`` and ``sample`` are the small path for text you already trust (:mod:`data_prep.text_shards`);
``run``, ``slurm`` and ``task`` are the Common Crawl pipeline (:mod:`data_prep.pipeline`). Each parser
sets ``func``; ``args.func(args)`` returns the exit code: 0 ok, 2 bad input (one line on stderr).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from data_prep import text_shards
from megadepth.common.errors import DataError

__all__ = ["add_cli"]


def _fail(e: Exception | str) -> int:
    print(f"error: {e}", file=sys.stderr)
    return 2


def _check_counts(args: argparse.Namespace, *options: str) -> None:
    """Count options that must be at least 1, checked before any planning or writing."""
    for option in options:
        value = getattr(args, option.lstrip("-").replace("-", "_"))
        if value is not None and value < 1:
            raise DataError(f"{option} must be >= 1, got {value}")


def _plan_from_args(args: argparse.Namespace):
    from data_prep.pipeline import plan_run

    extra: dict[str, Any] = {}
    if args.tokenizer:
        extra.setdefault("tokenizer", {})["model"] = args.tokenizer
    if args.vocab_size is not None:
        extra.setdefault("tokenizer", {})["vocab_size"] = args.vocab_size
    if args.url_blocklist:
        extra["url_filter"] = {"enabled": True, "blocklists": list(args.url_blocklist)}
    if args.prefix:
        extra.setdefault("read", {})["paths_prefix"] = args.prefix
    if args.keep_rejected_text:
        extra["rejected"] = {"keep_text": True}
    return plan_run(args.input, args.out, config_files=args.config, overrides=args.set, extra=extra,
                    preset=args.preset)


def _cmd_run(args: argparse.Namespace) -> int:
    from data_prep.pipeline import run_plan
    from data_prep.report import format_report

    try:
        _check_counts(args, "--workers")
        plan = _plan_from_args(args)
        if args.print_config:
            print(json.dumps(plan.config.model_dump(mode="json"), indent=2))
            return 0
        manifest, walls = run_plan(plan, workers=args.workers, progress=not args.no_progress)
    except (DataError, OSError) as e:
        if isinstance(e, OSError) and e.filename is None and e.errno is not None:
            return _fail(f"{e} (while writing under {args.out})")  # e.g. a full disk names no file
        return _fail(e)
    print(format_report(manifest, walls))
    print(f"{plan.out}: {manifest['documents']:,} documents, {manifest['tokens']:,} tokens in "
          f"{len(manifest['shards'])} shard(s); kept text in {plan.out}/documents/, dropped documents "
          f"in {plan.out}/rejected/")
    return 0


def _cmd_slurm(args: argparse.Namespace) -> int:
    from data_prep.runner import write_slurm_scripts

    try:
        _check_counts(args, "--tasks", "--cpus-per-task", "--max-parallel")
        plan = _plan_from_args(args)
        submit = write_slurm_scripts(plan, args.tasks, partition=args.partition, account=args.account,
                                     time_limit=args.time, mem=args.mem, cpus_per_task=args.cpus_per_task,
                                     max_parallel=args.max_parallel)
    except (DataError, OSError) as e:
        return _fail(e)
    print(f"wrote {submit.parent}/*.sbatch for {len(plan.inputs)} input file(s); "
          f"submit with: bash {shlex.quote(str(submit))}")
    return 0


def _cmd_task(args: argparse.Namespace) -> int:
    from data_prep.plan import load_plan
    from data_prep.runner import run_task

    try:
        if args.plan_hash and load_plan(args.out).config_hash != args.plan_hash:
            raise DataError(f"{args.out}/plan.json was replaced by another run (its hash is not {args.plan_hash}); "
                            "regenerate the scripts with 'megadepth prep slurm'")
        done = run_task(args.out, args.stage, args.rank, args.world_size)
    except (DataError, OSError) as e:
        return _fail(e)
    if args.stage == "finalize":
        from data_prep.report import format_report

        print(format_report(json.loads((Path(args.out) / "manifest.json").read_text())))
    print(f"prep task {args.stage}: {len(done)} unit(s) done")
    return 0


def _pipeline_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", nargs="+", required=True, metavar="PATH",
                   help="WARC/WET/ARC files (.gz or plain), *.paths.gz lists, directories, globs, "
                        "Parquet/JSONL/Arrow files or datasets folders")
    p.add_argument("--out", required=True, metavar="DIR", help="output data directory")
    tok = p.add_mutually_exclusive_group()  # a given model has its own vocabulary
    tok.add_argument("--tokenizer", metavar="MODEL", help="use this sentencepiece model instead of training one")
    tok.add_argument("--vocab-size", type=int, metavar="V", help="pieces to train (default: tokenizer.vocab_size, 32000)")
    p.add_argument("--url-blocklist", action="append", default=[], metavar="FILE",
                   help="drop pages whose domain or URL is in FILE (repeatable; see url_filter)")
    p.add_argument("--config", action="append", default=[], metavar="YAML", help="prep config file(s), merged in order")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting, e.g. --set language.languages=[en,fr] (repeatable)")
    p.add_argument("--prefix", metavar="DIR|URL", help="where the keys of *.paths.gz files live")
    p.add_argument("--preset", metavar="NAME",
                   help="named settings under --config and --set: 'smoke' relaxes the rules so that the bundled "
                        "one-page fixture gets through (a check of the install, not a quality setting)")
    p.add_argument("--keep-rejected-text", action="store_true",
                   help="also write the text of every dropped document into DIR/rejected/ (rejected.keep_text)")


def add_cli(subparsers: Any) -> None:
    """Register ``text``, ``sample``, ``run``, ``slurm`` and ``task`` on the ``megadepth prep`` subparsers."""
    text_shards.add_cli(subparsers)

    run = subparsers.add_parser(
        "run", help="the Common Crawl pipeline on this machine",
        description="WARC/WET/datasets -> text -> language id -> quality rules -> dedup -> sentencepiece "
        "-> Megatron .bin/.idx shards + Parquet documents + manifest.json. Resumable.")
    _pipeline_args(run)
    run.add_argument("--workers", type=int, default=1, metavar="N", help="processes (default %(default)s)")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument("--print-config", action="store_true", help="print the resolved configuration and exit")
    run.set_defaults(func=_cmd_run)

    slurm = subparsers.add_parser(
        "slurm", help="write Slurm job-array scripts for the pipeline",
        description="Writes OUT/slurm/<stage>.sbatch (one job array per stage) and OUT/slurm/submit.sh, "
        "which submits them chained with --dependency=afterok.")
    _pipeline_args(slurm)
    slurm.add_argument("--tasks", type=int, required=True, metavar="N", help="array tasks per stage (at most)")
    slurm.add_argument("--partition", help="#SBATCH --partition")
    slurm.add_argument("--account", help="#SBATCH --account")
    slurm.add_argument("--time", default="12:00:00", help="time limit per task (default %(default)s)")
    slurm.add_argument("--mem", default="8G", help="memory per task, or 'none' for the partition's default "
                       "(default %(default)s; checked against the nodes sinfo reports)")
    slurm.add_argument("--cpus-per-task", type=int, default=1, help="default %(default)s")
    slurm.add_argument("--max-parallel", type=int, help="at most this many tasks of an array at once")
    slurm.set_defaults(func=_cmd_slurm)

    task = subparsers.add_parser("task", help="run one task of one stage (what each Slurm array task runs)",
                                 description="Runs units [rank::world-size] of a stage of the plan in OUT/plan.json.")
    task.add_argument("--stage", required=True, help="extract, buckets, cluster, tokenizer, tokenize, finalize")
    task.add_argument("--rank", type=int, help="default: $SLURM_ARRAY_TASK_ID")
    task.add_argument("--world-size", type=int, help="default: $SLURM_ARRAY_TASK_COUNT")
    task.add_argument("--out", required=True, metavar="DIR")
    task.add_argument("--plan-hash", help="refuse to run unless OUT/plan.json has this hash")
    task.set_defaults(func=_cmd_task)
