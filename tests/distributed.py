"""Run a function on N local ranks (gloo, CPU) from inside pytest, fast.

Starting ranks through the DeepSpeed launcher costs 10-30 s a test, mostly imports. A multiprocessing
forkserver that has already imported torch and DeepSpeed forks each rank in milliseconds. Each call gets its own free port and a timeout, and
every rank is killed if one fails, so a broken test cannot hang the suite.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import socket
import sys
import traceback
from collections.abc import Callable
from typing import Any

_CTX: Any = None
RANK_ENV = {
    "DS_ACCELERATOR": "cpu",
    "GLOO_SOCKET_IFNAME": "lo",
    "OMP_NUM_THREADS": "1",
    "MASTER_ADDR": "127.0.0.1",
    "WANDB_SILENT": "true",
}


def _context() -> Any:
    global _CTX
    if _CTX is None:
        os.environ.update({k: v for k, v in RANK_ENV.items() if k != "MASTER_ADDR"})
        tests_dir = os.path.dirname(os.path.abspath(__file__))
        root = os.path.dirname(tests_dir)
        os.environ["PYTHONPATH"] = os.pathsep.join(
            [tests_dir, root, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
        )
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["torch", "deepspeed", "megadepth.train.loop", "megadepth.train.engine",
                                    "distributed"])
        _CTX = ctx
    return _CTX


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rank_main(fn: Callable[..., Any], rank: int, world: int, port: int, args: tuple, results: Any) -> None:
    os.environ.update(RANK_ENV)
    os.environ.update({
        "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
        "LOCAL_WORLD_SIZE": str(world), "MASTER_PORT": str(port),
    })
    import torch

    torch.set_num_threads(1)
    try:
        results.put((rank, "ok", fn(*args)))
    except BaseException:
        results.put((rank, "error", traceback.format_exc()))
        sys.exit(1)


def run_ranks(fn: Callable[..., Any], world: int, *args: Any, timeout: float = 180.0) -> list[Any]:
    """Run ``fn(*args)`` on ``world`` ranks; returns the per-rank results in rank order.

    ``fn`` must be importable (a module-level function). Raises with the failing rank's traceback.
    """
    ctx = _context()
    results = ctx.Queue()
    port = free_port()
    # not daemonic: a rank may start data-loader workers; every rank is joined or killed below
    procs = [ctx.Process(target=_rank_main, args=(fn, r, world, port, args, results), daemon=False)
             for r in range(world)]
    for p in procs:
        p.start()
    out: dict[int, Any] = {}
    try:
        while len(out) < world:
            try:
                rank, status, value = results.get(timeout=timeout)
            except queue.Empty:
                raise TimeoutError(f"{world}-rank run of {fn.__name__} timed out after {timeout:.0f} s") from None
            if status != "ok":
                raise RuntimeError(f"rank {rank} of {world} failed:\n{value}")
            out[rank] = value
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    return [out[r] for r in range(world)]


def train_rank(config_dict: dict) -> dict:
    """A rank function: validate a config dict and train; returns the summary."""
    from megadepth.config import validate
    from megadepth.train.loop import train

    return train(validate(config_dict))


def train_rank_gloo_threads_left(config_dict: dict) -> tuple[str, list[str]]:
    """Train, then name the gloo threads (process groups' workers and transport loops) still running in this
    process: any left would be torn down during interpreter exit, which now and then aborts a finished rank."""
    import gc
    import os

    status = train_rank(config_dict)["status"]
    gc.collect()
    names = []
    for task in os.listdir("/proc/self/task"):
        try:
            names.append(open(f"/proc/self/task/{task}/comm").read().strip())  # noqa: SIM115 - one short read
        except OSError:  # the thread ended meanwhile
            continue
    return status, sorted(name for name in names if "gloo" in name)


def train_rank_crash_inside_engine_save(config_dict: dict, crash_tag: str) -> dict:
    """Train, but DeepSpeed's own save of ``crash_tag`` dies half-way (a node lost mid-write): it leaves a
    truncated model file in the tag's folder and raises. Returns the exception text."""
    from pathlib import Path

    from deepspeed.runtime.engine import DeepSpeedEngine

    real = DeepSpeedEngine.save_checkpoint

    def dying_save(self: Any, save_dir: str, tag: str | None = None, **kwargs: Any) -> Any:
        if tag == crash_tag:
            folder = Path(save_dir) / tag
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "mp_rank_00_model_states.pt").write_bytes(b"PK\x03\x04 half a file")
            raise OSError("node lost during checkpoint write")
        return real(self, save_dir, tag=tag, **kwargs)

    DeepSpeedEngine.save_checkpoint = dying_save
    try:
        train_rank(config_dict)
    except OSError as exc:
        return {"raised": str(exc)}
    return {"raised": None}


def train_rank_failing_checkpoint(config_dict: dict) -> dict:
    """Train, but make the checkpoint write fail (a full disk, say); returns the summary.json found."""
    import json
    from pathlib import Path

    from megadepth.train import checkpoint

    def broken_save(*_args: Any, **_kwargs: Any) -> str:
        raise OSError("No space left on device")

    checkpoint.save = broken_save
    try:
        train_rank(config_dict)
    except OSError as exc:
        summary = json.loads((Path(config_dict["train"]["out_dir"]) / "summary.json").read_text())
        return {"raised": str(exc), "summary": summary}
    return {"raised": None}


def coord_check_rank(config_dict: dict, depths: list[int], widths: list[int] | None, steps: int) -> dict:
    """A rank function: the coordinate check's slopes for a config dict."""
    from megadepth.analysis.coord_check import run_coord_check
    from megadepth.config import validate

    result = run_coord_check(validate(config_dict), depths, widths, steps, progress=False)
    return result["slopes"]


def coord_result_rank(config_dict: dict, depths: list[int], widths: list[int] | None, steps: int,
                      seeds: list[int], mutation: str | None = None) -> dict:
    """A rank function: the coordinate check's result (slopes with their predictions; no records) for a
    config dict, over ``seeds``; with ``mutation``, after applying that deliberate rule break of
    tests/test_mutations.py in this rank process."""
    from megadepth.analysis.coord_check import run_coord_check
    from megadepth.config import validate

    if mutation is not None:
        import pytest
        import test_mutations

        test_mutations.MUTATIONS[mutation].apply(pytest.MonkeyPatch())  # this process ends with the check
    result = run_coord_check(validate(config_dict), depths, widths, steps, seeds=seeds, progress=False)
    result.pop("records")
    return result


def coord_records_rank(config_dict: dict, depths: list[int], steps: int) -> list[dict]:
    """A rank function: the coordinate check's raw records for a config dict."""
    from megadepth.analysis.coord_check import run_coord_check
    from megadepth.config import validate

    return run_coord_check(validate(config_dict), depths, None, steps, progress=False)["records"]


def train_rank_own_config(configs: list[dict]) -> dict:
    """Each rank trains its own config dict (to test that mismatched nodes are refused)."""
    return train_rank(configs[int(os.environ["RANK"])])


def bench_rank(config_dict: dict, steps: int, warmup: int) -> dict:
    """A rank function: `megadepth bench` on a config dict."""
    from megadepth.config import validate
    from megadepth.train.bench import run_bench

    return run_bench(validate(config_dict), steps, warmup)


def train_rank_signalled_during_startup(config_dict: dict) -> dict:
    """Train, but the process gets SIGTERM while it reads its data (before the engine exists), as from a
    scheduler during a long start-up. Returns the summary."""
    import os
    import signal

    from megadepth.config import validate
    from megadepth.train import loop

    real = loop.build_datasets

    def signalled(*args: Any, **kwargs: Any) -> Any:
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    loop.build_datasets = signalled
    return loop.train(validate(config_dict))


def train_rank_overtaken_during_startup(config_dict: dict) -> dict:
    """Train, but while this job reads its data (after it planned a fresh start, before it holds the run
    lock) another job trains the same run directory to the end, as a scheduler's requeue of a job that
    was still running would. Returns the summary."""
    import subprocess
    import sys
    import tempfile

    import yaml

    from megadepth.config import validate
    from megadepth.train import loop

    real = loop.build_datasets

    def overtaken(*args: Any, **kwargs: Any) -> Any:
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            yaml.safe_dump(config_dict, f)
        env = {k: v for k, v in os.environ.items()
               if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
        subprocess.run([sys.executable, "-m", "megadepth", "train", f.name], env=env, check=True,
                       capture_output=True)
        return real(*args, **kwargs)

    loop.build_datasets = overtaken
    return loop.train(validate(config_dict))


def train_rank_reporting(config_dict: dict) -> dict:
    """Train; returns ``{"raised": "Type: message" or None, "summary": summary.json or None}`` so that a test
    can look at a run that ends with an error on every rank."""
    import json
    from pathlib import Path

    raised = None
    try:
        train_rank(config_dict)
    except Exception as exc:
        raised = f"{type(exc).__name__}: {exc}"
    summary_file = Path(config_dict["train"]["out_dir"]) / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else None
    return {"raised": raised, "summary": summary}
