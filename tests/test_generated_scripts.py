"""Every script megadepth writes for a shell or for Slurm, rendered with hostile paths and values and run.

`prep slurm` (submit.sh and one sbatch script per stage), the sweep's Slurm array script and the command
it prints, and `launch --slurm`: each is written by the real command from a directory, and for an output
directory, named like ``out$(touch PWNED)``, with quotes, backquotes, spaces and a ``;``; then run with
bash and stand-ins for Slurm's ``sbatch`` / ``srun`` / ``scontrol`` and for the Python the scripts start
(``sys.executable``: a small recorder of its arguments and working directory). Nothing may be executed
from a name (no PWNED file anywhere), and every path must reach the command, and sbatch's reading of the
``#SBATCH`` lines, exactly as given. What no quoting can carry (a line break in a path that goes into an
``#SBATCH`` line or a comment) is refused in one line, before anything is written.
"""

from __future__ import annotations

import fcntl
import json

# multiprocessing's spawn start method reads sys.executable once, when multiprocessing.spawn is first
# imported: import it now, before the tests below point sys.executable at a stand-in, or a later test's
# worker pool would start the stand-in (seen when this file runs before any other that spawns workers)
import multiprocessing.spawn  # noqa: F401
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import tiny_config

from data_prep.plan import STAGES
from data_prep.runner import LOCK
from megadepth.cli import main

HOSTILE_DIR = "out$(touch PWNED) it's `touch PWNED` \"q\"; x"
"""A directory name a shell would run commands from, split, or stop quoting at."""

HOSTILE_VALUE = "$(touch PWNED) `touch PWNED` ' \" ; \\ {{launch_command}} %j"

RECORDER = """#!{python}
# stand-in for the Python a generated script starts: records what it was given, runs nothing
import json, os, sys
with open(os.environ["RECORD"], "a") as f:
    f.write(json.dumps({{"argv": sys.argv[1:], "cwd": os.getcwd(),
                        "task": os.environ.get("SLURM_ARRAY_TASK_ID")}}) + "\\n")
"""

SBATCH = """#!{python}
# stand-in for sbatch: records its arguments and the #SBATCH directives as sbatch reads them (quotes group
# words; the first line that is not a comment ends them), then runs the script as array task 0
import json, os, shlex, subprocess, sys
script = sys.argv[-1]
directives = []
for line in open(script, encoding="utf-8").read().splitlines()[1:]:
    if line.startswith("#SBATCH"):
        directives += shlex.split(line[len("#SBATCH"):])
    elif line.strip() and not line.lstrip().startswith("#"):
        break
with open(os.environ["SBATCH_RECORD"], "a") as f:
    f.write(json.dumps({{"argv": sys.argv[1:], "cwd": os.getcwd(), "directives": directives}}) + "\\n")
done = subprocess.run(["bash", script], env={{**os.environ, "SLURM_ARRAY_TASK_ID": "0"}})
if done.returncode:
    sys.exit(done.returncode)
print("4242")
"""


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture()
def stand_ins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """sbatch on PATH, a recording Python, and the files both write to."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(SBATCH.format(python=sys.executable))
    (bin_dir / "python").write_text(RECORDER.format(python=sys.executable))
    for tool in ("sbatch", "python"):
        (bin_dir / tool).chmod(0o755)
    paths = {"python": bin_dir / "python", "record": tmp_path / "record.jsonl",
             "sbatch_record": tmp_path / "sbatch.jsonl", "bin": bin_dir}
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("RECORD", str(paths["record"]))
    monkeypatch.setenv("SBATCH_RECORD", str(paths["sbatch_record"]))
    return paths


def _no_pwned(root: Path) -> None:
    assert not list(root.rglob("PWNED")), "a command in a name was executed"


def _bash_syntax(script: Path) -> None:
    subprocess.run(["bash", "-n", str(script)], check=True)


def _hint(printed: str, prefix: str) -> str:
    """The command a `... with: COMMAND` message suggests (the end of the output: a quoted path may hold a
    line break)."""
    return printed.split(prefix, 1)[1].strip()


def _jsonl(tmp_path: Path) -> Path:
    f = tmp_path / "in.jsonl"
    f.write_text("".join(f'{{"text": "document {i}: some plain words to read"}}\n' for i in range(5)))
    return f


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------------------------------- prep slurm


def test_prep_slurm_scripts_with_hostile_paths_run_nothing_and_keep_them(
        tmp_path: Path, stand_ins: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Before: submit.sh ended with ``echo "... when OUT/manifest.json exists"``, OUT unquoted inside double
    quotes: an output directory named ``out$(touch PWNED)`` ran ``touch`` when submit.sh ran."""
    work = tmp_path / HOSTILE_DIR  # the directory the stage scripts `cd` to
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setattr(sys, "executable", str(stand_ins["python"]))  # what the stage scripts start
    out = work / HOSTILE_DIR
    code, printed, err = _cli(capsys, "prep", "slurm", "--input", str(_jsonl(tmp_path)), "--out", str(out),
                              "--tasks", "2", "--set", "language.languages=null")
    assert code == 0, err
    slurm = out / "slurm"
    scripts = sorted(slurm.glob("*.sbatch"))
    assert scripts and (slurm / "submit.sh").is_file()
    for script in [*scripts, slurm / "submit.sh"]:
        _bash_syntax(script)

    # the command it suggests, run as a user would paste it
    hint = _hint(printed, "submit with: ")
    done = subprocess.run(["bash", "-c", hint], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    _no_pwned(tmp_path)
    assert f"the data directory is complete when {out}/manifest.json exists" in done.stdout

    submitted = _records(stand_ins["sbatch_record"])
    stages = [Path(r["argv"][-1]).stem for r in submitted]
    assert stages == [stage for stage in STAGES if (slurm / f"{stage}.sbatch").exists()]  # in order, each once
    # a failed or cancelled stage cancels the later ones (they used to wait forever: DependencyNeverSatisfied)
    assert submitted[0]["argv"][:-1] == ["--parsable"]
    for record in submitted[1:]:
        assert record["argv"][:-1] == ["--parsable", "--dependency=afterok:4242", "--kill-on-invalid-dep=yes"]
    for record in submitted:
        stage = Path(record["argv"][-1]).stem
        assert f"--output={slurm}/logs/{stage}_%A_%a.log" in record["directives"]
        assert "--open-mode=append" in record["directives"]  # a requeued task adds to its log, not replaces it
    ran = _records(stand_ins["record"])
    assert len(ran) == len(scripts)
    for record, stage in zip(ran, stages, strict=True):
        argv = record["argv"]
        assert argv[:5] == ["-m", "megadepth", "prep", "task", "--stage"] and argv[5] == stage
        assert argv[argv.index("--out") + 1] == str(out)
        assert record["cwd"] == str(work)


@pytest.mark.parametrize("name", ["a\nb", "a\rb", "a\\b", "run%j"])
def test_prep_slurm_refuses_a_path_no_quoting_carries(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      name: str) -> None:
    """A line break would end the #SBATCH --output line and make the rest of the path a command; sbatch
    takes a backslash as an escape even in quotes and expands '%' in log names."""
    out = tmp_path / name
    code, printed, err = _cli(capsys, "prep", "slurm", "--input", str(_jsonl(tmp_path)), "--out", str(out),
                              "--tasks", "1", "--set", "language.languages=null")
    assert code == 2 and printed == "" and len(err.strip().splitlines()) == 1, err
    assert "--out" in err and "a Slurm batch script cannot carry" in err
    assert not out.exists()


def test_prep_slurm_refuses_while_prep_run_holds_the_lock(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    """Before: `prep slurm` beside a running `prep run` on the same --out replaced its plan.json mid-run."""
    out = tmp_path / "out"
    args = ["prep", "slurm", "--input", str(_jsonl(tmp_path)), "--out", str(out), "--tasks", "1",
            "--set", "language.languages=null"]
    code, _, err = _cli(capsys, *args)  # a plan of its own, then a run starts on it
    assert code == 0, err
    plan_before = (out / "plan.json").read_bytes()
    shutil.rmtree(out / "slurm")
    with open(out / LOCK, "a+") as held:  # what a running 'prep run' holds (flock: per open file)
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.seek(0)
        held.truncate()
        held.write("4242\n")
        held.flush()
        code, printed, err = _cli(capsys, *args, "--set", "c4.enabled=false")  # another plan
        assert code == 2 and printed == "" and len(err.strip().splitlines()) == 1, err
        assert "another 'megadepth prep run' or 'prep slurm' (pid 4242) is writing here" in err
        assert (out / "plan.json").read_bytes() == plan_before and not (out / "slurm").exists()
    code, _, err = _cli(capsys, *args, "--set", "c4.enabled=false")  # released: written
    assert code == 0, err
    assert (out / "plan.json").read_bytes() != plan_before and (out / "slurm" / "submit.sh").is_file()


# ------------------------------------------------------------------------------------------------ sweep


def _spec(tmp_path: Path, sample_data: Path) -> Path:
    base = tiny_config(sample_data, tmp_path / "unused")
    del base["train"]["out_dir"], base["train"]["steps"], base["model"]["depth"]
    spec = {"name": "t", "config": base, "grid": {"model.depth": [2, 4]}, "budget": {"steps": 3}}
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_sweep_array_script_and_its_hint_with_hostile_paths(
        sample_data: Path, tmp_path: Path, stand_ins: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Before: the script was quoted, but the command printed beside it was not: ``submit with: sbatch
    OUT/slurm/array-001.sbatch`` pasted into a shell ran ``touch`` (and split the path)."""
    spec = _spec(tmp_path, sample_data)
    work = tmp_path / HOSTILE_DIR
    work.mkdir()
    monkeypatch.chdir(work)
    out = work / HOSTILE_DIR
    code, printed, err = _cli(capsys, "sweep", str(spec), "--out", str(out), "--executor", "slurm", "--no-submit",
                              "--gpus-per-task", "0", "--python", str(stand_ins["python"]))
    assert code == 0, err
    script = out / "slurm" / "array-001.sbatch"
    _bash_syntax(script)
    hint = _hint(printed, "submit with: ")
    assert shlex.split(hint) == ["sbatch", str(script)]
    done = subprocess.run(["bash", "-c", hint], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    _no_pwned(tmp_path)
    (submitted,) = _records(stand_ins["sbatch_record"])
    assert submitted["argv"] == [str(script)]
    assert f"--output={out}/slurm/logs/%A_%a.log" in submitted["directives"]
    (ran,) = _records(stand_ins["record"])
    argv = ran["argv"]
    assert argv[:4] == ["-m", "megadepth", "sweep", str(out / "sweep.yaml")] and ran["cwd"] == str(work)
    assert argv[argv.index("--out") + 1] == str(out)
    assert argv[argv.index("--task-list") + 1] == str(out / "slurm" / "array-001.tasks")
    assert argv[argv.index("--task-index") + 1] == "0"

    # submitted by the sweep itself: the same script, and a pasteable --status command
    code, printed, err = _cli(capsys, "sweep", str(spec), "--out", str(out), "--executor", "slurm",
                              "--gpus-per-task", "0", "--python", str(stand_ins["python"]))
    assert code == 0, err
    assert "submitted job array 4242" in printed
    status = shlex.split(_hint(printed, "check with: "))
    assert status == ["megadepth", "sweep", str(spec), "--out", str(out), "--status"]
    _no_pwned(tmp_path)


@pytest.mark.parametrize("name", ["a\nb", "a\\b", "run%j"])
def test_sweep_refuses_a_path_no_quoting_carries(sample_data: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str], name: str) -> None:
    """Before: a line break in --out ended the script's comment line there, so the rest of the path became
    a command, and sbatch stopped reading the #SBATCH lines after it."""
    spec = _spec(tmp_path, sample_data)
    out = tmp_path / name
    code, printed, err = _cli(capsys, "sweep", str(spec), "--out", str(out), "--executor", "slurm", "--no-submit")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "--out" in err and "a Slurm batch script cannot carry" in err
    assert not out.exists()


# ------------------------------------------------------------------------------------------ launch --slurm


def test_launch_slurm_script_with_hostile_paths(sample_data: Path, tmp_path: Path, stand_ins: dict[str, Path],
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """The per-node launch command of a `launch --slurm` script: its directory (here with a line break too,
    which only ever appears quoted in this script), config file and override values reach each node's
    launcher as they were given."""
    work = tmp_path / (HOSTILE_DIR + "\nline two")
    work.mkdir()
    cfg = work / (HOSTILE_DIR + ".yaml")
    cfg.write_text(yaml.safe_dump(tiny_config(sample_data, tmp_path / "run", train={"global_batch": 16})))
    monkeypatch.chdir(work)
    monkeypatch.setattr(sys, "executable", str(stand_ins["python"]))  # what each node's task starts
    target = work / "job.sbatch"
    override = f"wandb.name={HOSTILE_VALUE}"
    code, printed, err = _cli(capsys, "launch", "--nproc-per-node", "2", "--nnodes", "2", "--slurm", str(target),
                              str(cfg), "--set", override)
    assert code == 0, err
    _bash_syntax(target)
    assert shlex.split(_hint(printed, "submit it with: ")) == ["sbatch", str(target)]
    # a long node list, written line by line: the script must read it all (`head -n 1` left scontrol to die
    # of SIGPIPE, and `set -o pipefail` ended the job there)
    for tool, text in (("scontrol", 'echo gpu-07; for i in $(seq 8 3000); do echo "gpu-$i"; done\n'),
                       ("srun", 'while [[ "$1" == -* ]]; do shift; done\n'
                                'for node in 0 1; do SLURM_NODEID=$node "$@"; done\n')):
        (stand_ins["bin"] / tool).write_text(f"#!/bin/bash\n{text}")
        (stand_ins["bin"] / tool).chmod(0o755)
    env = {**os.environ, "SLURM_JOB_NODELIST": "gpu-[07-08]", "SLURM_JOB_ID": "123456", "SLURM_JOB_NUM_NODES": "2",
           "SLURM_CPUS_ON_NODE": "8"}
    done = subprocess.run(["bash", str(target)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    _no_pwned(tmp_path)
    ran = _records(stand_ins["record"])
    assert len(ran) == 2
    for node, record in enumerate(ran):
        assert record["cwd"] == str(work)
        assert record["argv"] == ["-m", "megadepth", "launch", "--nproc-per-node", "2", "--nnodes", "2",
                                  "--master-addr", "gpu-07", "--master-port", "13456", str(cfg),
                                  "--set", override, "--node-rank", str(node)]
