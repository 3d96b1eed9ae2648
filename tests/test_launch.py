"""Launching: hostfiles, the three launch modes, the Slurm script, and bad input said before anything starts.

Fast tests: `megadepth launch` in-process (checks and --dry-run start no process) and a few tiny
subprocesses. The real multi-node runs are in test_launch_multinode.py.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from conftest import tiny_config

from launch.deepspeed_launcher import LaunchSpec, build_command, decode_train_args, encode_train_args, run
from launch.hostfile import (
    Host,
    LaunchError,
    parse_hostfile_text,
    read_hostfile,
    write_private_hostfile,
)
from launch.plan import LaunchRequest, plan_launch
from launch.slurm import SlurmSpec, decide_gpus, render_sbatch
from megadepth.cli import _expand_encoded_args, build_parser, main
from megadepth.common import slurm

ROOT = Path(__file__).resolve().parents[1]


def _no_port() -> int:
    raise AssertionError("a multi-node plan must not pick a random port")


# --- hostfiles -------------------------------------------------------------------------------------------

def test_parse_hostfile_comments_blank_lines_and_order() -> None:
    text = "# the cluster\n\nworker-1 slots=8\n  worker-0\tslots=8   # second\n10.0.0.7 slots=4\n"
    hosts = parse_hostfile_text(text)
    assert [(h.name, h.slots, h.line) for h in hosts] == [("worker-1", 8, 3), ("worker-0", 8, 4), ("10.0.0.7", 4, 5)]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "lists no hosts"),
        ("# only a comment\n\n", "lists no hosts"),
        ("a slots=2\nb slots=0\n", "line 2: bad slot count '0' for b"),
        ("a slots=x\n", "line 1: bad slot count 'x'"),
        ("a slots=-1\n", "bad slot count '-1'"),
        ("a slots=8x\n", "bad slot count '8x'"),  # DeepSpeed would read this as 8
        ("a slots=\n", "bad slot count ''"),
        ("a\n", "line 1: expected 'HOSTNAME slots=N'"),
        ("a slots=2 max_slots=4\n", "expected 'HOSTNAME slots=N'"),
        ("a slots = 2\n", "expected 'HOSTNAME slots=N'"),
        ("a slots=2\nb slots=2\na slots=4\n", "line 3: duplicate entry for a (first on line 1)"),
        ("localhost slots=2\nLOCALHOST slots=2\n", "line 2: duplicate entry for LOCALHOST (first on line 1)"),
        ("root@a slots=2\n", "bad host name 'root@a'"),
        ("a:22 slots=2\n", "bad host name 'a:22'"),
        ("a,b slots=2\n", "bad host name 'a,b'"),
    ],
)
def test_bad_hostfiles(text: str, message: str) -> None:
    with pytest.raises(LaunchError, match=re.escape(message)) as err:
        parse_hostfile_text(text, source="hostfile H")
    assert str(err.value).startswith("hostfile H") and "\n" not in str(err.value)


def test_accepted_hostfiles_read_the_same_in_deepspeed() -> None:
    """We pass the user's own file to DeepSpeed: whatever we accept, its parser must read identically."""
    from deepspeed.launcher.runner import _parse_hostfile

    for text in ["a slots=1\n", "# c\nnode-1 slots=8\n  node-2\tslots=16  # gpu\n\n10.1.2.3 slots=4\n"]:
        ours = {h.name: h.slots for h in parse_hostfile_text(text)}
        assert dict(_parse_hostfile(text.splitlines(keepends=True))) == ours


def test_missing_hostfile(tmp_path: Path) -> None:
    with pytest.raises(LaunchError, match="does not exist"):
        read_hostfile(tmp_path / "nope")


def test_generated_hostfile_is_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A per-node launch's hostfile: a new file of this user's only (0600, a random name), never a fixed name
    in the shared temporary folder that another user could make first."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again
    hosts = [Host("node0", 2), Host("node1", 2)]
    first, second = write_private_hostfile(hosts), write_private_hostfile(hosts)
    assert first != second and first.parent == second.parent == tmp_path
    for path in (first, second):
        assert path.read_text() == "node0 slots=2\nnode1 slots=2\n"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [(h.name, h.slots) for h in read_hostfile(first)] == [("node0", 2), ("node1", 2)]


# --- plans and commands ----------------------------------------------------------------------------------

def test_single_node_plan_and_command() -> None:
    plan = plan_launch(LaunchRequest(4), free_port=lambda: 31000)
    assert (plan.mode, plan.world_size, plan.master_port, plan.hostfile) == ("single", 4, 31000, None)
    cmd = build_command(LaunchSpec(4, ("a.yaml",), ("train.steps=2",), master_port=31000))
    assert cmd[1:] == ["--num_gpus", "4", "--master_port", "31000", "--no_local_rank", "--module", "megadepth",
                       "train", "a.yaml", "--set", "train.steps=2"]


def test_per_node_plan_generates_a_hostfile() -> None:
    plan = plan_launch(LaunchRequest(8, nnodes=2, node_rank=1, master_addr="10.0.0.1"), free_port=_no_port)
    assert (plan.mode, plan.nnodes, plan.world_size, plan.master_port) == ("per-node", 2, 16, 29500)
    assert plan.hostfile_generated and plan.hostfile is None  # written privately at launch time
    assert [(h.name, h.slots) for h in plan.hosts] == [("node0", 8), ("node1", 8)]
    assert plan.summary() == "node 1 of 2: ranks 8-15 of 16, rendezvous at 10.0.0.1:29500"
    cmd = build_command(LaunchSpec(8, ("c.yaml",), hostfile="hf", node_rank=1,
                                   master_addr="10.0.0.1", master_port=29500))
    assert cmd[1:12] == ["-H", "hf", "--num_gpus", "8", "--no_ssh", "--node_rank", "1",
                         "--master_addr", "10.0.0.1", "--master_port", "29500"]


def test_hostfile_plans(tmp_path: Path) -> None:
    hf = tmp_path / "hosts"
    hf.write_text("localhost slots=8\n127.0.0.1 slots=8\n")
    plan = plan_launch(LaunchRequest(8, hostfile=str(hf)), free_port=_no_port)
    assert (plan.mode, plan.world_size, plan.num_nodes, plan.master_addr) == ("hostfile", 16, None, None)
    first = plan_launch(LaunchRequest(4, hostfile=str(hf), nnodes=1), free_port=_no_port)
    assert (first.world_size, first.num_nodes, [h.name for h in first.hosts]) == (4, 1, ["localhost"])
    # per-node mode with the user's hostfile: names are not looked up
    hf.write_text("gpu-a.invalid slots=8\ngpu-b.invalid slots=8\n")
    per = plan_launch(LaunchRequest(8, hostfile=str(hf), node_rank=0, master_addr="gpu-a.invalid"),
                      free_port=_no_port)
    assert (per.mode, per.world_size, per.hostfile_generated) == ("per-node", 16, False)


# --- the command line: dry runs --------------------------------------------------------------------------

@pytest.fixture()
def cfg(sample_data: Path, tmp_path: Path) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(tiny_config(sample_data, tmp_path / "run", train={"global_batch": 16})))
    return path


def _launch(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["launch", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip()


def test_dry_run_per_node(cfg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _launch(["--nproc-per-node", "2", "--nnodes", "2", "--node-rank", "1", "--master-addr",
                            "10.1.1.1", "--master-port", "29777", "--dry-run", str(cfg), "--set", "wandb.name=x y"],
                           capsys)
    assert code == 0
    comment, printf, command = out.strip().splitlines()[-3:]
    assert comment == "# node 1 of 2: ranks 2-3 of 4, rendezvous at 10.1.1.1:29777"
    assert printf == "hostfile=$(mktemp) && printf '%s\\n' 'node0 slots=2' 'node1 slots=2' > \"$hostfile\""
    assert '-H "$hostfile" --num_gpus 2 --no_ssh --node_rank 1 --master_addr 10.1.1.1 --master_port 29777 ' \
           "--no_local_rank --module megadepth train" in command
    # for any node: no CPU accelerator (train.device is auto) or thread count of the machine that printed it
    assert command.endswith("--set 'wandb.name=x y'") and "DS_ACCELERATOR" not in command
    assert "OMP_NUM_THREADS" not in command
    assert not (tmp_path / "run").exists()
    # the printed lines are a working shell script: the hostfile they write is the one DeepSpeed reads (a
    # stand-in `deepspeed` keeps a copy of its -H file)
    stand_in = tmp_path / "deepspeed"
    stand_in.write_text(f'#!/bin/sh\n[ "$1" = -H ] && cp "$2" {tmp_path / "hf"}\n')
    stand_in.chmod(0o755)
    script = tmp_path / "dry.sh"
    script.write_text(out.replace(shlex.split(command)[0], str(stand_in)))
    subprocess.run(["bash", str(script)], check=True, env={**os.environ, "TMPDIR": str(tmp_path)})
    assert (tmp_path / "hf").read_text() == "node0 slots=2\nnode1 slots=2\n"


def test_dry_run_hostfile_mode(cfg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hf = tmp_path / "hosts"
    hf.write_text("localhost slots=4\n127.0.0.1 slots=4\n")
    code, out, err = _launch(["--nproc-per-node", "2", "--hostfile", str(hf), "--master-addr", "127.0.0.1",
                              "--dry-run", str(cfg)], capsys)
    assert code == 0, err
    comment, args_comment, command = out.strip().splitlines()[-3:]
    assert comment == "# 2 node(s) x 2 = 4 processes over ssh on localhost, 127.0.0.1"  # 2 of each host's 4 slots
    # what a dry run leaves out is said
    assert "# not checked by a dry run: pdsh on this machine and passwordless ssh to every host" in out
    # through pdsh whatever the number of hosts, without an INFO log of pdsh's command line (it holds the
    # exported variables)
    assert f"deepspeed -H {hf} --num_gpus 2 --force_multi --log_level warning --master_addr 127.0.0.1 " \
           "--master_port 29500 --no_local_rank --module megadepth train --args-b64 " in command
    assert "--no_ssh" not in command and "--node_rank" not in command
    # the train arguments travel as one token of [A-Za-z0-9_=-]: pdsh's remote shell cannot change them
    token = shlex.split(command)[-1]
    assert re.fullmatch(r"[A-Za-z0-9_=-]+", token)
    assert decode_train_args(token) == ["--", str(cfg)]
    assert args_comment == f"# --args-b64: megadepth train -- {cfg}"
    # the other nodes do not inherit this environment: printing it would mislead
    assert "DS_ACCELERATOR" not in command and "OMP_NUM_THREADS" not in command
    code, out, _ = _launch(["--nproc-per-node", "4", "--hostfile", str(hf), "--nnodes", "1", "--dry-run",
                            str(cfg)], capsys)
    assert code == 0 and f"-H {hf} --num_nodes 1 --num_gpus 4 --force_multi --log_level warning --master_port 29500" in out


HOSTILE = "x $(touch PWNED) `touch PWNED` ' \" ; echo hi \\ {{launch_command}} %n"
"""A value a shell would reinterpret in every way it can."""


def test_train_arguments_survive_the_token_exactly() -> None:
    """What `megadepth train --args-b64 TOKEN` parses is exactly what the hostfile launcher was given: odd
    config names and override values included (DeepSpeed's pdsh runner puts the token in a shell string)."""
    configs, overrides = ("a b.yaml", "-odd.yaml", "we{{ird}}.yaml"), (f"wandb.name={HOSTILE}", "train.steps=-5")
    token = build_command(LaunchSpec(1, configs, overrides, hostfile="H", master_addr="127.0.0.1"))[-1]
    for argv in (["train", "--args-b64", token], ["train", "--dry-run", f"--args-b64={token}"]):
        args = build_parser().parse_args(_expand_encoded_args(argv))
        assert (args.configs, args.overrides) == (list(configs), list(overrides))
    assert build_parser().parse_args(_expand_encoded_args(argv)).dry_run


@pytest.mark.parametrize(
    "token",
    ["not base64!", encode_train_args(["ok"]).rstrip("=") + "$", base64.urlsafe_b64encode(b'{"a": 1}').decode(),
     base64.urlsafe_b64encode(b"[1]").decode(), base64.urlsafe_b64encode(b"\xff\xfe").decode()],
)
def test_a_bad_args_token_is_one_line(token: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--args-b64", token]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("megadepth: error: --args-b64") and "\n" not in err


def test_nothing_may_stand_beside_the_args_token(capsys: pytest.CaptureFixture[str]) -> None:
    """A --set next to the token was silently outranked by the token's own (it came first)."""
    token = encode_train_args(["--set=train.steps=3", "--", "tiny.yaml"])
    assert main(["train", "--args-b64", token, "--set", "train.steps=5", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert "give none beside it (got --set train.steps=5)" in err and "\n" not in err


def test_hostfile_mode_refuses_paths_the_remote_shell_would_split(cfg: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """DeepSpeed's pdsh runner sends `cd CWD; PYTHON ...` unquoted: a directory or interpreter path with a
    space (or worse) is refused up front, dry run included."""
    hf = tmp_path / "hosts"
    hf.write_text("localhost slots=2\n")
    odd = tmp_path / "dir x"
    odd.mkdir()
    monkeypatch.chdir(odd)
    code, out, err = _launch(["--nproc-per-node", "2", "--hostfile", str(hf), "--dry-run", str(cfg)], capsys)
    assert code == 2 and out == "" and "\n" not in err, err
    assert "the current directory" in err and "dir x" in err and "pdsh runner does not quote it" in err
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "executable", "/opt/my env/bin/python")
    code, out, err = _launch(["--nproc-per-node", "2", "--hostfile", str(hf), "--dry-run", str(cfg)], capsys)
    assert code == 2 and "this Python's path '/opt/my env/bin/python'" in err and "\n" not in err
    # the other modes pass a list of arguments, no shell: a space there is fine
    monkeypatch.chdir(odd)
    code, _, err = _launch(["--nproc-per-node", "2", "--dry-run", str(cfg)], capsys)
    assert code == 0, err


def test_slurm_script_written_and_checked(cfg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(slurm, "query", lambda partition: None)  # no cluster to ask: the config decides
    target = tmp_path / "job.sbatch"
    code, out, _ = _launch(["--nproc-per-node", "8", "--nnodes", "2", "--slurm", str(target),
                            "--sbatch=--partition=gpu", "--sbatch=--time=04:00:00", str(cfg),
                            "--set", "train.steps=5", "--set", "train.global_batch=64"], capsys)
    assert code == 0 and f"submit it with: sbatch {target}" in out and "16 ranks" in out
    text = target.read_text()
    assert text.startswith("#!/bin/bash\n")
    directives = [line for line in text.splitlines() if line.startswith("#SBATCH")]
    assert directives == ["#SBATCH --job-name=megadepth", "#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1",
                          "#SBATCH --exclusive", "#SBATCH --gpus-per-node=8", "#SBATCH --output=slurm-%x-%j.out",
                          "#SBATCH --open-mode=append", "#SBATCH --partition=gpu", "#SBATCH --time=04:00:00"]
    first_command = next(i for i, line in enumerate(text.splitlines()) if line and not line.startswith("#"))
    assert first_command > text.splitlines().index(directives[-1])  # sbatch stops reading at the first command
    assert "--set train.steps=5" in text and "-m megadepth launch" in text
    if shutil.which("bash"):
        subprocess.run(["bash", "-n", str(target)], check=True)  # valid shell syntax
    assert not (tmp_path / "run").exists()


SINFO_GPU = "gpu|64|512000|gpu:a100:4(S:0-1)|8\ndebug*|2|21000|(null)|1\n"
"""sinfo -h -o '%P|%c|%m|%G|%D' of a cluster with a GPU partition and a CPU default partition."""


@pytest.mark.parametrize(("device", "nproc", "options", "gpus", "said"), [
    ("cpu", 2, (), False, "no GPU request: train.device is cpu"),
    ("auto", 2, (), False, "no GPU request: train.device is auto and the nodes of partition debug (1 node(s): "
                           "2 CPUs, 21000M, no GPU) have no GPU"),
    ("auto", 4, ("--partition=gpu",), True, "--gpus-per-node=4: train.device is auto and the nodes of partition gpu"),
    ("cuda", 2, ("-pgpu",), True, "--gpus-per-node=2: train.device is cuda"),
    ("cuda", 2, (), None, "train.device is cuda but the nodes of partition debug (1 node(s): 2 CPUs, 21000M, no "
                          "GPU) have no GPU (sinfo %G); choose a GPU partition"),
    ("auto", 8, ("--partition=gpu",), None, "--nproc-per-node 8 ranks per node, one per GPU, but the nodes of "
                                            "partition gpu (8 node(s): 64 CPUs, 512000M, 4 GPU(s)"),
    ("auto", 2, ("--partition=nosuch",), True, "sinfo could not say whether partition nosuch has GPUs"),
])
def test_slurm_gpu_line_follows_the_config_and_the_cluster(device: str, nproc: int, options: tuple[str, ...],
                                                            gpus: bool | None, said: str) -> None:
    """The GPU line of a --slurm script comes from train.device and the partition's nodes (sinfo), not from
    the machine that writes it. (The real sinfo and sbatch: tests/test_slurm_real.py.)"""
    groups = slurm.parse(SINFO_GPU)

    def query(partition: str | None) -> list[slurm.NodeGroup] | None:
        chosen = [g for g in groups if g.partition == partition or (partition is None and g.default)]
        return chosen or None

    if gpus is None:
        with pytest.raises(LaunchError) as err:
            decide_gpus(device, nproc, options, query=query)
        assert said in str(err.value)
        return
    decision = decide_gpus(device, nproc, options, query=query)
    assert decision.gpus is gpus and said in decision.reason, decision.reason


def test_sinfo_output_is_read() -> None:
    groups = slurm.parse(SINFO_GPU + "garbage line\n")
    assert [(g.partition, g.default, g.cpus, g.memory_mb, g.gpus, g.nodes) for g in groups] == [
        ("gpu", False, 64, 512000, 4, 8), ("debug", True, 2, 21000, 0, 1)]
    assert [slurm.gpus_in_gres(x) for x in ("(null)", "gpu", "gpu:8", "gpu:a100:2(S:0,1),gpu:v100:2", "mps:100,gpu:1")
            ] == [0, 1, 8, 4, 1]
    assert [slurm.size_mb(x) for x in ("32G", "500", "4096M", "1T", "lots")] == [32768, 500, 4096, 1048576, None]
    assert slurm.partition_option(["--partition=a", "--time=1", "-pb"]) == "b"
    assert slurm.partition_option(["--exclusive"]) is None


def test_slurm_script_cpu_has_no_gpu_request(sample_data: Path, tmp_path: Path) -> None:
    text = render_sbatch(SlurmSpec(nnodes=3, nproc_per_node=2, config_files=("c.yaml",), gpus=False,
                                   master_port=29999, workdir="/shared/work dir"))
    assert "--gpus-per-node" not in text and "MASTER_PORT=29999" in text and "cd '/shared/work dir'" in text
    assert "--nproc-per-node 2 --nnodes 3" in text


def test_slurm_values_are_filled_in_in_one_pass() -> None:
    """A config file or override that holds "{{...}}" is written as it is, not taken for a placeholder."""
    override = "wandb.name={{launch_command}} {{nnodes}}"
    text = render_sbatch(SlurmSpec(nnodes=2, nproc_per_node=1, config_files=("we{{ird}}.yaml",),
                                   overrides=(override,), gpus=False))
    assert "    'we{{ird}}.yaml' \\\n" in text and f"--set {shlex.quote(override)}" in text
    assert text.count("-m megadepth launch") == 1 and "#SBATCH --nodes=2" in text
    if shutil.which("bash"):
        subprocess.run(["bash", "-n"], input=text, text=True, check=True)


def test_slurm_templates_are_package_data_and_never_written_half_filled() -> None:
    """The templates of launch, sweep and prep are read from megadepth.common's package data (pyproject
    ships them in a wheel); a placeholder its caller did not fill is refused, not written."""
    with pytest.raises(RuntimeError, match=r"unfilled placeholder in prep_submit.sh: \['done_message'\]"):
        slurm.render("prep_submit.sh", submissions="")
    assert '"megadepth.common" = ["templates/*"]' in (ROOT / "pyproject.toml").read_text()


def test_slurm_script_that_cannot_be_written(cfg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _launch(["--nproc-per-node", "2", "--nnodes", "2", "--slurm", str(tmp_path / "no" / "job.sbatch"),
                              str(cfg)], capsys)
    assert code == 2 and out == "" and err.startswith("megadepth: error: --slurm") and "\n" not in err, err
    assert "cannot write it" in err


def test_slurm_script_runs_one_launcher_per_node(cfg: Path, tmp_path: Path) -> None:
    """Run the generated script with stand-ins for Slurm's `scontrol` and `srun` (srun starts each node's
    task with its SLURM_NODEID, as Slurm would, adding --dry-run): each node's launcher must get its own
    node rank and the same master address, port and config."""
    target = tmp_path / "job.sbatch"
    assert main(["launch", "--nproc-per-node", "2", "--nnodes", "2", "--slurm", str(target), str(cfg),
                 "--set", "wandb.name=two words"]) == 0
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text('#!/bin/sh\n[ "$1 $2 $3" = "show hostnames gpu-[07-08]" ] || exit 3\n'
                                      'printf "gpu-07\\ngpu-08\\n"\n')
    (bin_dir / "srun").write_text(
        "#!/bin/bash\n"
        'echo "srun $*" > "$OUT/srun-args"\n'
        'while [[ "$1" == -* ]]; do shift; done\n'  # srun's own options
        'for node in 0 1; do SLURM_NODEID=$node "$@" --dry-run > "$OUT/node$node" 2>&1 & done\n'
        "wait\n"
    )
    for tool in ("scontrol", "srun"):
        (bin_dir / tool).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "OUT": str(tmp_path), "PYTHONPATH": str(ROOT),
           "SLURM_JOB_NODELIST": "gpu-[07-08]", "SLURM_JOB_ID": "123456", "SLURM_JOB_NUM_NODES": "2",
           "SLURM_CPUS_ON_NODE": "64"}
    done = subprocess.run(["bash", str(target)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "master gpu-07:13456" in done.stderr  # 10000 + 123456 % 20000: below the ephemeral ports (32768+)
    srun_args = (tmp_path / "srun-args").read_text()
    assert "--nodes=2 --ntasks-per-node=1 --cpus-per-task=64 --kill-on-bad-exit=1" in srun_args
    commands = {}
    for node in (0, 1):
        lines = [x for x in (tmp_path / f"node{node}").read_text().strip().splitlines() if x.startswith("# node")
                 or not x.startswith(("#", "megadepth: WARNING"))]
        assert lines[0] == f"# node {node} of 2: ranks {2 * node}-{2 * node + 1} of 4, rendezvous at gpu-07:13456"
        commands[node] = lines[-1]
        assert f"--no_ssh --node_rank {node} --master_addr gpu-07 --master_port 13456" in lines[-1]
        assert lines[-1].endswith(f"train {cfg} --set 'wandb.name=two words'")
    assert commands[0].replace("--node_rank 0", "--node_rank 1") == commands[1]


# --- bad input: one line, exit code 2, nothing started ---------------------------------------------------

@pytest.mark.parametrize(
    ("options", "hostfile", "message"),
    [
        (["--nnodes", "2"], None, "--nnodes 2 needs --node-rank and --master-addr"),
        (["--nnodes", "2", "--node-rank", "0"], None, "--node-rank needs --master-addr"),
        (["--node-rank", "0", "--master-addr", "a"], None, "--node-rank needs --nnodes"),
        (["--nnodes", "2", "--node-rank", "2", "--master-addr", "a"], None, "--node-rank 2 is out of range for 2 node(s) (0..1)"),
        (["--nnodes", "2", "--node-rank", "-1", "--master-addr", "a"], None, "--node-rank must be 0 or more"),
        (["--nnodes", "0", "--node-rank", "0", "--master-addr", "a"], None, "--nnodes must be at least 1"),
        (["--master-addr", "10.0.0.1"], None, "--master-addr is for multi-node launches"),
        (["--master-port", "70000"], None, "--master-port must be a TCP port"),
        (["--sbatch=--partition=x"], None, "--sbatch options are for --slurm"),
        (["--slurm", "x.sbatch"], None, "--slurm needs --nnodes"),
        (["--slurm", "x.sbatch", "--nnodes", "2", "--node-rank", "0"], None, "drop --node-rank"),
        (["--slurm", "x.sbatch", "--nnodes", "2", "--sbatch=partition=x"], None, "--sbatch takes one sbatch option"),
        # the same #SBATCH value check as prep and sweep: sbatch reads these lines itself, not a shell
        (["--slurm", "x.sbatch", "--nnodes", "2", "--sbatch=--partition=gpu large"], None,
         "--partition 'gpu large': an #SBATCH value may only hold"),
        (["--slurm", "x.sbatch", "--nnodes", "2", "--sbatch=--comment='$(id)'"], None, "an #SBATCH value may only hold"),
        (["--slurm", "x.sbatch", "--nnodes", "2", "--sbatch=--time=4h"], None, "--time 4h: Slurm takes minutes"),
        (["--slurm", "x.sbatch", "--nnodes", "2", "--sbatch=--exclusive", "--sbatch=-p", "--sbatch=--time=1-12:00:00"],
         None, None),
        (["--nnodes", "2", "--node-rank", "0", "--master-addr=--help"], None,
         "--master-addr '--help' is not a host name or an IPv4/IPv6 address"),
        (["--nnodes", "2", "--node-rank", "0", "--master-addr", "a b;$(id)"], None, "is not a host name"),
        (["--nnodes", "2", "--node-rank", "0", "--master-addr=-gpu-a"], None, "is not a host name"),
        (["--nnodes", "2", "--node-rank", "0", "--master-addr", "10.0.0.1.2.3:29500"], None, "is not a host name"),
        (["--nnodes", "2", "--node-rank", "0", "--master-addr", "fd00::7"], None, None),
        (["--nnodes", "2", "--node-rank", "0", "--master-addr", "train-job-0.train.default.svc"], None, None),
        (["--hostfile", "HF", "--master-addr", "127.0.0.1;id"], "localhost slots=2\n", "is not a host name"),
        (["--hostfile", "HF"], "no-such-host.invalid slots=2\nlocalhost slots=2\n",
         "unknown host no-such-host.invalid (line 1): the name does not resolve"),
        (["--hostfile", "HF"], "localhost slots=2\nlocalhost slots=2\n", "line 2: duplicate entry for localhost"),
        (["--hostfile", "HF"], "localhost slots=0\n", "bad slot count '0'"),
        (["--hostfile", "HF"], "# nothing\n", "lists no hosts"),
        (["--hostfile", "HF"], "localhost slots=1\n", "--nproc-per-node is 2 but localhost (line 1) slots=1 has fewer slots"),
        (["--hostfile", "HF", "--nnodes", "3"], "localhost slots=2\n127.0.0.1 slots=2\n", "--nnodes 3 but hostfile"),
        (["--hostfile", "HF", "--node-rank", "2", "--master-addr", "x"], "a slots=2\nb slots=2\n",
         "--node-rank 2 is out of range for 2 node(s)"),
        (["--hostfile", "HF/missing"], None, "does not exist"),
        # more processes than the layout allows: preflight at the whole job's world size
        (["--nnodes", "3", "--node-rank", "0", "--master-addr", "a"], None, "data-parallel size (6)"),
        (["--hostfile", "HF"], "localhost slots=2\n127.0.0.1 slots=2\n", None),  # 4 ranks: fine (dry run)
        (["--slurm", "x.sbatch", "--nnodes", "3"], None, "data-parallel size (6)"),
        (["--nnodes", "2", "--node-rank", "0", "--master-addr", "a", "--set", "parallel.tensor=3"], None,
         "does not divide the world size (4 processes)"),
    ],
)
def test_bad_launch_input(cfg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[str],
                          hostfile: str | None, message: str | None) -> None:
    hf = tmp_path / "hosts"
    if hostfile is not None:
        hf.write_text(hostfile)
    options = [str(hf) if o == "HF" else o.replace("HF/", f"{tmp_path}/") for o in options]
    config_args = [str(cfg)]
    if "--set" in options:
        i = options.index("--set")
        options, config_args = options[:i], [str(cfg), *options[i:]]
    start = time.monotonic()
    code, out, err = _launch(["--nproc-per-node", "2", *options, "--dry-run", *config_args], capsys)
    if message is None:
        assert code == 0, err
        return
    assert code == 2 and message in err, err
    assert err.startswith("megadepth: error:") and "\n" not in err and out == ""
    assert time.monotonic() - start < 30
    assert not (tmp_path / "run").exists() and not (tmp_path / "x.sbatch").exists()


def test_what_the_run_directory_holds_is_checked_before_launching(cfg: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """A checkpoint saved at another layout, resume: must without one, a bad init_from: refused by the
    launch itself (and its --dry-run), not by every rank after start-up."""
    code, _, err = _launch(["--nproc-per-node", "2", "--dry-run", str(cfg), "--set", "train.resume=must"], capsys)
    assert code == 2 and "train.resume is 'must' but" in err
    code, _, err = _launch(["--nproc-per-node", "2", "--dry-run", str(cfg), "--set",
                            f"train.init_from={tmp_path / 'nothing'}"], capsys)
    assert code == 2 and "train.init_from:" in err and "does not exist" in err
    saved = yaml.safe_load(cfg.read_text())
    saved["parallel"] = {"tensor": 2}
    tag = tmp_path / "run" / "checkpoints" / "step_00000005"
    tag.mkdir(parents=True)
    (tag / "config.yaml").write_text(yaml.safe_dump(saved))
    (tag.parent / "latest").write_text("step_00000005")
    for mode in (["--dry-run"], []):  # a real launch would otherwise start both ranks to fail there
        code, out, err = _launch(["--nproc-per-node", "2", *mode, str(cfg)], capsys)
        assert code == 2 and "was saved at parallel.tensor = 2 but this run uses 1" in err, err
        assert "train.init_from" in err and out == ""


def test_hostfile_mode_needs_pdsh_and_ssh(cfg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Not a dry run: a hostfile launch first checks this machine can reach every host (pdsh, also for one
    host, and passwordless ssh to each); here neither works, so it must stop with one line, starting nothing."""
    hf = tmp_path / "hosts"
    if shutil.which("pdsh") is None:
        for hosts in ("localhost slots=2\n127.0.0.1 slots=2\n", "localhost slots=2\n"):  # one host: pdsh too
            hf.write_text(hosts)
            code, _, err = _launch(["--nproc-per-node", "2", "--hostfile", str(hf), str(cfg)], capsys)
            assert code == 2 and "pdsh is not installed" in err and "\n" not in err
        fake = tmp_path / "bin"  # a pdsh that is never run: the ssh check comes first
        fake.mkdir()
        (fake / "pdsh").write_text("#!/bin/sh\nexit 99\n")
        (fake / "pdsh").chmod(0o755)
        monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    hf.write_text("localhost slots=2\n")
    ssh_works = shutil.which("ssh") is not None and subprocess.run(
        ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5", "localhost", "true"], capture_output=True,
        stdin=subprocess.DEVNULL, timeout=20).returncode == 0
    if ssh_works:
        pytest.skip("this machine has passwordless ssh to localhost")
    code, _, err = _launch(["--nproc-per-node", "2", "--hostfile", str(hf), str(cfg)], capsys)
    assert code == 2 and "\n" not in err
    assert ("not reachable by passwordless ssh" in err and "localhost:" in err) or "ssh is not installed" in err
    assert not (tmp_path / "run").exists()


# --- signals reach the launcher's children ---------------------------------------------------------------

def test_sigterm_is_passed_on_to_the_launcher(tmp_path: Path) -> None:
    """A scheduler stopping `megadepth launch` must stop what it started, not orphan it."""
    pid_file = tmp_path / "child.pid"
    child = ("import os, time, pathlib; pathlib.Path(os.environ['PID_FILE']).write_text(str(os.getpid())); "
             "time.sleep(120)")
    parent = ("import sys; from launch.deepspeed_launcher import run; "
              f"sys.exit(run([sys.executable, '-c', {child!r}], {{'PID_FILE': {str(pid_file)!r}}}))")
    proc = subprocess.Popen([sys.executable, "-c", parent], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not pid_file.exists() or not pid_file.read_text():
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        child_pid = int(pid_file.read_text())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM  # the child's own exit: killed by the forwarded signal
        with pytest.raises(ProcessLookupError):
            os.kill(child_pid, 0)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def _running_after(procs: list, within_s: float) -> list:
    """Which of these psutil processes still run after up to ``within_s`` seconds. A zombie is dead: an
    orphan's zombie stays until PID 1 reaps it, which some containers' PID 1 never does."""
    import psutil

    def running(p: psutil.Process) -> bool:
        try:
            return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    deadline = time.monotonic() + within_s
    while (alive := [p for p in procs if running(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive


@pytest.mark.slow
@pytest.mark.distributed
def test_sigterm_to_launch_alone_stops_every_rank(cfg: Path, tmp_path: Path) -> None:
    """`kill PID`, a scheduler or a container stop signals `megadepth launch` alone, not its process group.
    The real DeepSpeed launcher with 2 gloo ranks, caught training: within the timeout every process it
    started must be gone (before the fix the `deepspeed` runner died alone and its child
    `deepspeed.launcher.launch`, re-parented to PID 1, let both ranks train on), the exit code must say
    SIGTERM, and the run must have stopped with a checkpoint of the step it stopped at."""
    import psutil

    run_dir, log = tmp_path / "run", tmp_path / "launch.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_SILENT": "true", "GLOO_SOCKET_IFNAME": "lo"}
    with log.open("w") as out:  # own session: the test can clean up whatever happens, and no signal of ours leaks
        proc = subprocess.Popen([sys.executable, "-m", "megadepth", "launch", "--nproc-per-node", "2", str(cfg),
                                 "--set", "train.steps=100000"], cwd=tmp_path, env=env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    started: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 240  # generous: CI's 2 cores may be busy with other tests' processes
        while not (run_dir / "metrics.jsonl").exists() or not (run_dir / "metrics.jsonl").read_text().strip():
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "no training step within 240 s:\n" + log.read_text()[-3000:]
            time.sleep(0.2)
        started = psutil.Process(proc.pid).children(recursive=True)
        ranks = [p for p in started if p.cmdline()[1:5] == ["-u", "-m", "megadepth", "train"]]
        assert len(ranks) == 2, [p.cmdline() for p in started]  # the ranks are among what is watched

        proc.send_signal(signal.SIGTERM)  # this pid only
        assert proc.wait(timeout=90) == 128 + signal.SIGTERM, log.read_text()[-3000:]
        left = _running_after(started, 15)
        assert not left, f"left running: {[(p.pid, p.cmdline()) for p in left]}"
    finally:
        for p in started:
            with contextlib.suppress(psutil.Error):
                p.kill()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    # the ranks got the SIGTERM too: they agreed on a step, saved it, and ended resumable
    assert (run_dir / "summary.json").is_file(), log.read_text()[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "stopped", (summary, log.read_text()[-3000:])
    latest = (run_dir / "checkpoints" / "latest").read_text().strip()
    assert latest == f"step_{summary['steps']:08d}" and (run_dir / "checkpoints" / latest / "config.yaml").is_file()


def _launch_with_a_stubborn_rank(tmp_path: Path) -> tuple[subprocess.Popen, int]:
    """`run()` in a child process, starting a launcher that starts a process ignoring SIGTERM (a rank stuck
    in a collective would); returns once that process is up, with its pid."""
    pid_file = tmp_path / "stubborn.pid"
    stubborn = ("import os, signal, time, pathlib; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "pathlib.Path(os.environ['PID_FILE']).write_text(str(os.getpid())); time.sleep(120)")
    launcher = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {stubborn!r}]); time.sleep(120)"
    parent = ("import sys; from launch.deepspeed_launcher import run; "
              f"sys.exit(run([sys.executable, '-c', {launcher!r}], {{'PID_FILE': {str(pid_file)!r}}}, grace_s=1.0))")
    proc = subprocess.Popen([sys.executable, "-c", parent], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            start_new_session=True)
    deadline = time.monotonic() + 30
    while not pid_file.exists() or not pid_file.read_text():
        if time.monotonic() > deadline or proc.poll() is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError("the stubborn process did not start")
        time.sleep(0.05)
    return proc, int(pid_file.read_text())


def test_what_ignores_the_signal_is_killed_after_the_grace_period(tmp_path: Path) -> None:
    """The launcher dies at once but leaves a process that ignores SIGTERM (a rank stuck in a collective
    would, for SIGINT): after the grace period the whole group is SIGKILLed and nothing is left."""
    import psutil

    proc, stubborn_pid = _launch_with_a_stubborn_rank(tmp_path)
    stubborn_proc = None
    try:
        stubborn_proc = psutil.Process(stubborn_pid)
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 128 + signal.SIGTERM
        assert time.monotonic() - start >= 1.0  # it waited out the grace period...
        assert not _running_after([stubborn_proc], 5)  # ...then killed it
    finally:
        if stubborn_proc is not None:
            with contextlib.suppress(psutil.Error):
                stubborn_proc.kill()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def _group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group, read from /proc by the test itself."""
    import psutil

    found = []
    for p in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p.pid)
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_sigkill_of_launch_still_stops_everything_it_started(tmp_path: Path) -> None:
    """`kill -9` (the OOM killer, a runtime giving up) runs no handler in `megadepth launch`: the guard that
    leads the launcher's process group hears of it from the kernel, passes SIGTERM to the group and, after
    the grace period, SIGKILLs what ignores it. Nothing of the group may be left."""
    proc, stubborn_pid = _launch_with_a_stubborn_rank(tmp_path)
    pgid = None
    try:
        pgid = os.getpgid(stubborn_pid)
        assert pgid != proc.pid and len(_group_members(pgid)) == 3  # guard, launcher, stubborn child
        proc.kill()
        proc.wait(timeout=10)
        deadline = time.monotonic() + 15
        while (left := _group_members(pgid)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not left, f"left running after the launcher was SIGKILLed: {left}"
    finally:
        for group in (pgid, proc.pid):
            with contextlib.suppress(ProcessLookupError, TypeError):
                os.killpg(group, signal.SIGKILL)


def test_exit_code_passes_through_and_leftovers_are_stopped(tmp_path: Path) -> None:
    """The guard exits with its command's code; what the command left running in the group is stopped."""
    pid_file = tmp_path / "left.pid"
    leftover = "import os, time, pathlib; pathlib.Path(os.environ['PID_FILE']).write_text(str(os.getpid())); time.sleep(120)"
    cmd = [sys.executable, "-c", "import subprocess, sys, time, os; p = subprocess.Popen([sys.executable, '-c', "
           f"{leftover!r}]); [time.sleep(0.05) for _ in range(600) if not os.path.exists(os.environ['PID_FILE'])]; "
           "sys.exit(3)"]
    import psutil

    assert run(cmd, {"PID_FILE": str(pid_file)}, grace_s=5.0) == 3
    with contextlib.suppress(psutil.NoSuchProcess):  # gone, or a zombie its new parent has not reaped yet
        assert psutil.Process(int(pid_file.read_text())).status() == psutil.STATUS_ZOMBIE
    assert run([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGUSR1)"], {}) == \
        128 + signal.SIGUSR1


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity here")
def test_omp_threads_follow_the_cpu_affinity() -> None:
    """taskset, cpusets and containers limit the CPUs a process may use; os.cpu_count() still says how many
    the machine has. The ranks' thread share must come from the former."""
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        pytest.skip("this process may use only one CPU: nothing to restrict")
    code = (f"import os; os.sched_setaffinity(0, {{{allowed[0]}}}); "
            "from launch.deepspeed_launcher import LaunchSpec, launcher_env; "
            "print(launcher_env(LaunchSpec(1, ('c.yaml',)))['OMP_NUM_THREADS'])")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "1"


def test_a_busy_master_port_is_named(cfg: Path, tmp_path: Path) -> None:
    """Rank 0 cannot host the rendezvous on a port something else listens on: say so, not "could not join
    within parallel.timeout_s"."""
    with socket.socket() as busy:
        busy.bind(("", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "WANDB_SILENT": "true"}
        done = subprocess.run([sys.executable, "-m", "megadepth", "train", str(cfg)], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)
    lines = [x for x in done.stderr.splitlines() if x.startswith("megadepth: error:")]
    assert done.returncode == 3, done.stderr[-2000:]
    assert lines == [f"megadepth: error: port {port} is already in use on 127.0.0.1: choose another --master-port "
                     "(or leave it unset)"], done.stderr[-2000:]
