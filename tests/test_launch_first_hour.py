"""`megadepth launch` in a user's first hour: what it says about the batch it will train at, what its dry
run shows, what a per-node command printed on a login node carries, and a shared temporary folder that
another user has written in first."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_config

from megadepth.cli import main
from megadepth.common.host import usable_cpus

ROOT = Path(__file__).resolve().parents[1]


def _config(sample_data: Path, tmp_path: Path, **train: object) -> Path:
    """The tiny test model on the CPU, whatever this machine has; train.global_batch unset unless given
    (micro_batch 4), as in configs/model/tiny.yaml."""
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(tiny_config(sample_data, tmp_path / "run", train={"device": "cpu", **train})))
    return path


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("megadepth: WARNING:")]


# --- the global batch follows the process count ----------------------------------------------------------

def test_launch_warns_when_the_global_batch_follows_the_process_count(
        sample_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Before: 3 processes of a config without train.global_batch trained at 12 (4 x 3), not 4, and only a
    start-up line said so."""
    cfg = _config(sample_data, tmp_path)
    code, _, err = _cli(capsys, "launch", "--nproc-per-node", "3", "--dry-run", str(cfg))
    assert code == 0, err
    (warning,) = [w for w in _warnings(err) if "global_batch" in w]
    assert "global batch follows the process count: 12 = micro_batch 4 x grad_accum 1 x data-parallel 3" in warning
    assert "(3 processes)" in warning and "--set train.global_batch=N" in warning
    # pinned, or one process: nothing to warn about
    for args in (["--nproc-per-node", "3", "--set", "train.global_batch=12"], ["--nproc-per-node", "1"]):
        code, _, err = _cli(capsys, "launch", "--dry-run", str(cfg), *args)
        assert code == 0 and not [w for w in _warnings(err) if "global_batch" in w], err
    # the Slurm script's job too: 2 nodes x 2
    code, _, err = _cli(capsys, "launch", "--nproc-per-node", "2", "--nnodes", "2", "--slurm",
                        str(tmp_path / "job.sbatch"), str(cfg))
    assert code == 0 and "16 = micro_batch 4 x grad_accum 1 x data-parallel 4 (4 processes)" in err, err


def test_train_under_a_launcher_warns_on_rank_0(sample_data: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """`megadepth train` started by torchrun, srun or the DeepSpeed launcher directly says it too, once."""
    cfg = _config(sample_data, tmp_path)
    for name, value in (("WORLD_SIZE", "3"), ("LOCAL_WORLD_SIZE", "3"), ("RANK", "0"), ("LOCAL_RANK", "0")):
        monkeypatch.setenv(name, value)
    code, out, err = _cli(capsys, "train", "--dry-run", str(cfg))
    assert code == 0, err
    (warning,) = _warnings(err)
    assert "12 = micro_batch 4 x grad_accum 1 x data-parallel 3 (3 processes)" in warning
    assert "batch: global 12 = micro 4 x accumulation 1 x data 3" in out
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    code, _, err = _cli(capsys, "train", "--dry-run", str(cfg))
    assert code == 0 and _warnings(err) == [], err


# --- launch --dry-run shows the run ----------------------------------------------------------------------

def test_launch_dry_run_prints_the_train_dry_run_summary(sample_data: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: `launch --dry-run` printed only the command. Now the summary `train --dry-run` prints for the
    same world size (model, layout, batch and tokens per step, where the run starts, the per-role table),
    as comment lines: the output stays a script one can run."""
    cfg = _config(sample_data, tmp_path, global_batch=8)
    code, out, err = _cli(capsys, "launch", "--nproc-per-node", "2", "--dry-run", str(cfg))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("# megadepth launch --dry-run: ")
    summary = [line.removeprefix("# ").removeprefix("#") for line in lines[1:] if line.startswith("#")]
    assert "batch: global 8 = micro 4 x accumulation 1 x data 2; 256 tokens per step, 3 steps = 768 tokens" in summary
    assert not [line for line in lines if not line.startswith("#") and "deepspeed" not in line]

    for name, value in (("WORLD_SIZE", "2"), ("LOCAL_WORLD_SIZE", "2"), ("RANK", "0"), ("LOCAL_RANK", "0")):
        monkeypatch.setenv(name, value)
    code, train_out, err = _cli(capsys, "train", "--dry-run", str(cfg))
    assert code == 0, err
    expected = train_out.splitlines()[1:]  # model, layout, batch, run, the table
    assert summary[:len(expected)] == expected


def test_launch_warns_when_cpu_ranks_outnumber_the_cpus(sample_data: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    n = usable_cpus() + 1
    cfg = _config(sample_data, tmp_path, global_batch=4 * n, device="cpu")
    code, out, err = _cli(capsys, "launch", "--nproc-per-node", str(n), "--dry-run", str(cfg))
    assert code == 0, err
    assert _warnings(err) == [f"megadepth: WARNING: {n} CPU process(es) per node but this machine lets them use "
                              f"only {usable_cpus()} CPU(s): they will share them, slowly (fewer "
                              "--nproc-per-node, or GPUs)"]


# --- a per-node command printed on a login node ----------------------------------------------------------

def _per_node(capsys: pytest.CaptureFixture[str], cfg: Path, *extra: str) -> tuple[int, str, str]:
    return _cli(capsys, "launch", "--nproc-per-node", "2", "--nnodes", "2", "--node-rank", "1", "--master-addr",
                "gpu-a", "--dry-run", str(cfg), *extra)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU, as a login node")
def test_a_per_node_command_printed_without_gpus_carries_nothing_of_this_machine(
        sample_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Before: printed on a GPU-less login node, the command carried `DS_ACCELERATOR=cpu OMP_NUM_THREADS=1`
    (this machine's facts), which pasted on a GPU node (as docs/launching.md suggests) forced the CPU."""
    cfg = _config(sample_data, tmp_path, global_batch=16, device="auto")
    code, out, err = _per_node(capsys, cfg)
    assert code == 0, err
    command = out.splitlines()[-1]
    assert shlex.split(command)[0].endswith("deepspeed") and "--node_rank 1" in command
    assert "DS_ACCELERATOR" not in command and "OMP_NUM_THREADS" not in command
    # train.device: cpu is the config's, for every node: the CPU accelerator, still no thread count
    code, out, err = _per_node(capsys, cfg, "--set", "train.device=cpu")
    assert code == 0, err
    command = out.splitlines()[-1]
    assert shlex.split(command)[0] == "DS_ACCELERATOR=cpu" and "OMP_NUM_THREADS" not in command
    # train.device: cuda from a node without one: a warning for the printed command, an error for a launch
    code, out, err = _per_node(capsys, cfg, "--set", "train.device=cuda")
    assert code == 0, err
    assert ("megadepth: WARNING: train.device is 'cuda' but no CUDA device is available on this machine: run the "
            "printed command on a node that has enough") in _warnings(err)
    assert "DS_ACCELERATOR" not in out.splitlines()[-1]
    code, out, err = _cli(capsys, "launch", "--nproc-per-node", "2", "--nnodes", "2", "--node-rank", "1",
                          "--master-addr", "gpu-a", str(cfg), "--set", "train.device=cuda")
    assert code == 2 and out == "" and "train.device is 'cuda' but no CUDA device is available" in err


# --- the generated hostfile ------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_per_node_launch_is_not_blocked_by_a_file_in_the_shared_temp_folder(sample_data: Path,
                                                                              tmp_path: Path) -> None:
    """Before: a per-node launch wrote its hostfile to the fixed path $TMPDIR/megadepth-u<uid>-hostfile-NxK;
    any user could make that path first (here: a directory) and every such launch failed with a traceback.
    Now the hostfile is a private file with a random name, removed when the launch ends."""
    shared_tmp = tmp_path / "tmp"
    shared_tmp.mkdir()
    blocker = shared_tmp / f"megadepth-u{os.getuid()}-hostfile-1x1"
    blocker.mkdir()
    cfg = _config(sample_data, tmp_path, steps=1, global_batch=4)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(shared_tmp), "WANDB_SILENT": "true"}
    done = subprocess.run([sys.executable, "-m", "megadepth", "launch", "--nproc-per-node", "1", "--nnodes", "1",
                           "--node-rank", "0", str(cfg)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert (tmp_path / "run" / "summary.json").is_file()
    command = next(line for line in done.stdout.splitlines() if line.startswith("megadepth: ") and " -H " in line)
    words = shlex.split(command.removeprefix("megadepth: "))
    hostfile = Path(words[words.index("-H") + 1])
    assert hostfile.parent == shared_tmp and hostfile != blocker
    assert "DS_ACCELERATOR=cpu" in words  # this node's own launch: its ranks run on its CPU
    assert not hostfile.exists() and sorted(p.name for p in shared_tmp.iterdir()) == [blocker.name]
    assert tempfile.gettempdir() != str(shared_tmp)  # the test left this process's setting alone


def test_what_this_machine_lacks_is_an_error_for_a_launch_and_a_warning_for_a_printed_command() -> None:
    """The rule behind the checks above, for the GPU counts this machine may not have: ranks started here
    need its devices; a per-node command printed here may be run on another node."""
    from launch.hostfile import LaunchError
    from launch.plan import check_local_devices

    with pytest.raises(LaunchError, match=r"--nproc-per-node 8 but this node has 4 CUDA device\(s\)"):
        check_local_devices("auto", 8, 4, 64, elsewhere=False)
    assert check_local_devices("auto", 8, 4, 64, elsewhere=True) == [
        "megadepth: WARNING: --nproc-per-node 8 but this node has 4 CUDA device(s): run the printed command on "
        "a node that has enough"]
    assert check_local_devices("auto", 8, 8, 2, elsewhere=False) == []  # GPU ranks: the CPU count is no matter
    assert check_local_devices("cpu", 8, 8, 64, elsewhere=False) == []
    assert check_local_devices("cpu", 3, 8, 2, elsewhere=False)[0].startswith("megadepth: WARNING: 3 CPU process")
    # a login node without GPUs printing a GPU node's command: how it would do here is a side note
    assert check_local_devices("auto", 8, 0, 2, elsewhere=True)[0].startswith("megadepth: WARNING: if run here, 8")
