"""Every Slurm path of docs/launching.md and docs/data_prep.md, run on a real one-node Slurm 22.05 cluster
(tests/cluster.py starts munged, slurmctld and slurmd for the session).

- ``prep slurm`` then ``submit.sh``: all six stages as chained job arrays to a manifest and data files
  byte-identical to ``prep run`` on the same input and config; one array task ``scancel``-ed in the middle
  of a unit, the stages after it cancelled by Slurm (--kill-on-invalid-dep), and the rerun of submit.sh that
  resumes to the same bytes; requests no node can meet, an unknown partition and a --time too long, named.
- ``launch --slurm``: the script written for this (GPU-less) cluster trains 2 CPU ranks under srun; a
  ``train.stop_after_steps`` stop, ``scontrol requeue`` of the same job, and the resumed run ends where an
  uninterrupted one does.
- ``sweep --executor slurm``: a CPU job array to completed points and a report, one point's trainer
  killed (as by the OOM killer) and retried by its array task; requests the cluster refuses, named.
- requests no node can meet, named by ``launch --slurm`` too (nodes, memory, CPUs, a time limit: the
  cluster's partition ``short``, a partition sinfo does not list); and a job requeued the moment it
  ended, whose hold ``SlurmCluster.requeue`` lifts only a second later (slurmd refuses it before).

Small inputs and tiny models keep it to a couple of minutes on 2 cores; the cluster's start-up is a few
seconds (printed by the fixture).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from cluster import FINAL_STATES, SlurmCluster, tail, wait_until
from conftest import tiny_config

from megadepth.cli import main

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
PREP_SETTINGS = ["tokenizer.vocab_size=400", "shards.row_group_docs=4"]

HOLD_HOOK = '''\
"""Test hook, loaded by the jobs of one submission through PYTHONPATH: the process that reaches the unit
named by MEGADEPTH_TEST_HOLD (stage:unit) writes its pid to MEGADEPTH_TEST_HELD and waits there, in the
middle of the unit (after its first row group is flushed: the spot MEGADEPTH_PREP_DIE uses), so that the
test can scancel it there."""
import os

if os.environ.get("MEGADEPTH_TEST_HOLD"):
    import time
    import data_prep.stages as stages

    _original = stages._maybe_die

    def _hold(stage, unit):
        if f"{stage}:{unit}" == os.environ["MEGADEPTH_TEST_HOLD"]:
            with open(os.environ["MEGADEPTH_TEST_HELD"], "w") as f:
                f.write(str(os.getpid()))
            time.sleep(3600)
        _original(stage, unit)

    stages._maybe_die = _hold
'''


@pytest.fixture(autouse=True)
def _no_job_outlives_its_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """Cancel what a test left in the queue (a failure midway leaves its jobs running or pending): the
    next tests would otherwise see them, e.g. in their "nothing queued" checks, and fail for it too."""
    yield
    cluster = request.node.funcargs.get("slurm_cluster")
    if cluster is not None:
        cluster.cancel_all()


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _run(cmd: list[str], env: dict[str, str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, f"{cmd}: exit {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


# ------------------------------------------------------------------------------------------------ prep


def _warc_inputs(root: Path) -> Path:
    """Three WARC files of eight real pages each (unit 000001, b.warc.gz, flushes row groups of 4 docs
    before it ends: the hold hook's spot), one page repeated across files so dedup has work."""
    from data_prep.corpus import article_html, prose_pages, warc_response, warcinfo, write_warc

    pages = prose_pages()
    html = [article_html(title, paragraphs) for title, paragraphs in pages]
    root.mkdir(parents=True)
    for n, name in enumerate(("a", "b", "c")):
        records = [warcinfo(f"{name}.warc.gz")]
        for i in range(8 * n, 8 * n + 8):
            records += warc_response(f"https://site-{name}.example/{i}", html[i].encode())
        records += warc_response(f"https://mirror-{name}.example/0", html[0].encode())  # an exact duplicate
        write_warc(root / f"{name}.warc.gz", records)
    return root


def _data_files(out: Path) -> dict[str, str]:
    """sha256 of every shard, documents part, the tokenizer and the manifest."""
    names = [*out.glob("shard_*"), *out.glob("documents/*.parquet"), out / "tokenizer.model"]
    files = {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(names)}
    return files


def _manifest(out: Path) -> dict:
    """manifest.json, less what differs between any two runs: the output directory's own name and the
    timings (``seconds``, ``seconds_by_step``, ``*_per_s*``)."""

    def untimed(value: object) -> object:
        if isinstance(value, dict):
            return {k: untimed(v) for k, v in value.items() if "seconds" not in k and "_per_s" not in k}
        return [untimed(v) for v in value] if isinstance(value, list) else value

    return untimed(json.loads((out / "manifest.json").read_text().replace(str(out), "OUT")))  # type: ignore[return-value]


def _submitted(stdout: str) -> dict[str, str]:
    """submit.sh's "stage: job ID" lines."""
    return dict(re.findall(r"^(\w+): job (\d+)", stdout, re.MULTILINE))


@pytest.mark.timeout(600)
def test_prep_slurm_matches_prep_run_and_resumes_after_scancel(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    """The data_prep.md Slurm path as a user runs it: `prep slurm`, `bash submit.sh`, each stage an array
    after the previous one succeeded. One task of the extract array is cancelled in the middle of its unit
    (a half-written Parquet file on disk); the stages after it can never start (afterok), so Slurm cancels
    them (--kill-on-invalid-dep: they used to wait forever, DependencyNeverSatisfied), and the user runs
    submit.sh again, which redoes only the unfinished unit and ends in the same bytes as `prep run`."""
    inputs = _warc_inputs(tmp_path / "in")
    sets = [arg for s in PREP_SETTINGS for arg in ("--set", s)]
    env = {**slurm_cluster.env, "PYTHONPATH": str(ROOT)}
    ref = tmp_path / "ref"
    _run([sys.executable, "-m", "megadepth", "prep", "run", "--no-progress", "--input", str(inputs), "--out", str(ref),
          *sets], env, tmp_path)

    out = tmp_path / "out"
    # --mem: prep's default (8G) is for real nodes; a CI machine may have less
    _run([sys.executable, "-m", "megadepth", "prep", "slurm", "--input", str(inputs), "--out", str(out), "--tasks", "2",
          "--mem", "1G", "--time", "00:20:00", *sets], env, tmp_path)
    submit = out / "slurm" / "submit.sh"
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(HOLD_HOOK)
    held = tmp_path / "held.pid"
    hold_env = {**env, "PYTHONPATH": f"{hooks}{os.pathsep}{ROOT}", "MEGADEPTH_TEST_HOLD": "extract:000001",
                "MEGADEPTH_TEST_HELD": str(held)}
    first = _submitted(_run(["bash", str(submit)], hold_env, tmp_path).stdout)
    assert list(first) == ["extract", "buckets", "cluster", "tokenizer", "tokenize", "finalize"]

    extract = first["extract"]
    slurm_cluster.wait_jobs([extract], 180, until=held.exists)
    pid = int(held.read_text())
    assert slurm_cluster.run("scancel", f"{extract}_1").returncode == 0
    wait_until(lambda: not Path(f"/proc/{pid}").exists(), 30, "the cancelled task's process is still running")
    wait_until(lambda: sorted(slurm_cluster.states(extract)) == ["CANCELLED", "COMPLETED"], 180,
               "extract task 0 did not complete beside the cancelled task 1")
    by_task = {r["ArrayTaskId"]: r["JobState"] for r in slurm_cluster.jobs(extract)}
    assert by_task == {"0": "COMPLETED", "1": "CANCELLED"}, by_task
    assert not (out / "manifest.json").exists()
    assert list(out.rglob("*.tmp")), "the cancelled unit left no half-written file: it was not mid-unit"
    # afterok on a cancelled array: what is left of the first chain can never run, and Slurm cancels it
    stale = [job for stage, job in first.items() if stage != "extract"]
    wait_until(lambda: {s for j in stale for s in slurm_cluster.states(j)} == {"CANCELLED"}, 60,
               "the stages after the cancelled array were not cancelled (--kill-on-invalid-dep)")

    second = _submitted(_run(["bash", str(submit)], env, tmp_path).stdout)
    slurm_cluster.wait_jobs(list(second.values()), 300)
    assert (out / "manifest.json").is_file()
    assert _data_files(out) == _data_files(ref)
    assert _manifest(out) == _manifest(ref)
    # the rerun's extract task 0 found its units done; task 1 redid unit 000001 from scratch
    logs = {p.name: p.read_text() for p in (out / "slurm" / "logs").glob(f"extract_{second['extract']}_*.log")}
    assert len(logs) == 2, logs
    assert not list(out.rglob("*.tmp"))  # finalize removed what the cancelled unit left


# ---------------------------------------------------------------------------------------------- launch


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.timeout(600)
def test_launch_slurm_cpu_job_completes_and_a_requeue_resumes_exactly(
        slurm_cluster: SlurmCluster, sample_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """`launch --slurm` on a cluster without GPUs (the GPU line decided from sinfo, not from this machine),
    sbatch, 2 CPU ranks under srun stop after 2 of 4 steps (train.stop_after_steps, a checkpoint);
    `scontrol requeue` runs the same job again, which resumes from the checkpoint and ends with the losses
    of an uninterrupted 2-rank run."""
    from distributed import run_ranks, train_rank

    common = {"steps": 4, "global_batch": 8, "save_final": True}
    run = tmp_path / "run"
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(sample_data, run, train={**common, "stop_after_steps": 2},
                                              parallel={"timeout_s": 120})))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SLURM_CONF", slurm_cluster.env["SLURM_CONF"])
    code, out, err = _cli(capsys, "launch", "--slurm", "job.sbatch", "--nnodes", "1", "--nproc-per-node", "2",
                          str(cfg), "--sbatch=--time=00:20:00", "--sbatch=--partition=debug")
    assert code == 0, err
    assert "megadepth: --slurm: no GPU request: train.device is auto and the nodes of partition debug" in err
    script = (tmp_path / "job.sbatch").read_text()
    assert "--gpus-per-node" not in script and "#SBATCH --open-mode=append" in script

    job = _run(["sbatch", "--parsable", "job.sbatch"], slurm_cluster.env, tmp_path).stdout.strip().split(";")[0]
    log = tmp_path / f"slurm-megadepth-{job}.out"
    slurm_cluster.wait_jobs([job], 300)
    first = json.loads((run / "summary.json").read_text())
    assert (first["status"], first["steps"], first["world_size"]) == ("stopped", 2, 2), tail(log, 40)

    # a requeued job waits 120 s before it may start again (Slurm's own delay); the test lifts it
    slurm_cluster.requeue(job)
    slurm_cluster.wait_jobs([job], 300)
    assert slurm_cluster.jobs(job)[0]["Restarts"] == "1"
    second = json.loads((run / "summary.json").read_text())
    assert (second["status"], second["steps"]) == ("completed", 4), tail(log, 40)
    text = log.read_text()
    assert text.count("megadepth: 1 node(s), master") == 2, text[-3000:]  # both parts, appended
    assert "resuming from" in text and "at step 2" in text

    ref = tmp_path / "straight"
    run_ranks(train_rank, 2, tiny_config(sample_data, ref, train=common, parallel={"timeout_s": 120}))
    got, want = _metrics(run), _metrics(ref)
    assert [m["step"] for m in got] == [m["step"] for m in want] == [1, 2, 3, 4]
    for a, b in zip(want, got, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5), (a, b)
    assert second["final_eval_loss"] == pytest.approx(json.loads((ref / "summary.json").read_text())[
        "final_eval_loss"], rel=1e-5)


def test_a_job_requeued_the_moment_it_ends_runs_again(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    """`scontrol requeue` and `scontrol update StartTime=now` (docs/launching.md) in the second a job ended
    gave a job that ended FAILED at once without running (slurmd: "Job N already killed, do not launch batch
    job"): the requeue test above failed so about once in 8 runs. Here each part of the job ends just after
    a second begins, so that slurmctld's next scheduling pass (once a second) most likely falls in the same
    second; SlurmCluster.requeue waits that second out (without the wait this failed 5 runs in 5)."""
    ran = tmp_path / "ran.txt"
    to_next_second = shlex.join([sys.executable, "-c", "import time; time.sleep(1 - time.time() % 1)"])
    job = _run(["sbatch", "--parsable", f"--output={tmp_path / 'job.out'}", "--open-mode=append", "--wrap",
                f"echo ran >> {shlex.quote(str(ran))}; sleep 2; {to_next_second}"],  # 2 s: sched_min_interval
               slurm_cluster.env, tmp_path).stdout.strip()
    for part in (1, 2):
        # noticed within a few hundredths of a second of the end, as a script would
        wait_until(lambda: slurm_cluster.states(job)[0] in FINAL_STATES, 60, "the job did not end", interval_s=0.03)
        (record,) = slurm_cluster.jobs(job)
        assert (record["JobState"], ran.read_text()) == ("COMPLETED", "ran\n" * part), (
            record, tail(slurm_cluster.root / "slurmd.log"))
        if part == 1:
            slurm_cluster.requeue(job)


@pytest.mark.parametrize(("options", "said"), [
    (["--nnodes", "2"], "--nnodes 2 is more nodes than the partition has (1)"),
    (["--nnodes", "1", "--sbatch=--mem=4000G"], "--sbatch=--mem=4000G is more memory than any node has"),
    # sbatch queues these two, to wait forever (reason PartitionConfig)
    (["--nnodes", "1", "--sbatch=-c4096"], "--sbatch=--cpus-per-task=4096 is more CPUs than any node has"),
    (["--nnodes", "1", "--sbatch=--partition=nosuch"],  # sbatch: "Invalid generic resource (gres) specification"
     "--sbatch=--partition=nosuch: sinfo lists no such partition (it lists debug*, short;"),
    (["--nnodes", "1", "--sbatch=--partition=short", "--sbatch=--time=1:00:00"],  # pending, PartitionTimeLimit
     "--sbatch=--time=1:00:00 is longer than the partition's time limit (30:00)"),
])
def test_launch_slurm_names_what_no_node_can_meet(slurm_cluster: SlurmCluster, sample_data: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                                  options: list[str], said: str) -> None:
    """A `--slurm` job the partition's nodes (the real sinfo) can never run is refused in one line before the
    script is written, instead of a job that sbatch refuses with a misleading reason or queues for good."""
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(sample_data, tmp_path / "run", train={"global_batch": 8})))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SLURM_CONF", slurm_cluster.env["SLURM_CONF"])
    code, _, err = _cli(capsys, "launch", "--slurm", "job.sbatch", "--nproc-per-node", "1", *options, str(cfg))
    assert code == 2 and said in err and "nothing was written" in err and err.count("\n") == 1, err
    if "partition has" in said or "than any node" in said or "time limit" in said:
        assert f"partition {'short' if 'time limit' in said else 'debug'} (1 node(s): " in err, err
    assert not (tmp_path / "job.sbatch").exists()


def test_launch_slurm_refuses_gpus_the_cluster_lacks(slurm_cluster: SlurmCluster, sample_data: Path,
                                                     tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """train.device: cuda on a cluster whose nodes report no GPU: one line before anything is written,
    instead of sbatch's "Invalid generic resource (gres) specification" later."""
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(sample_data, tmp_path / "run", train={"device": "cuda"})))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SLURM_CONF", slurm_cluster.env["SLURM_CONF"])
    code, _, err = _cli(capsys, "launch", "--slurm", "job.sbatch", "--nnodes", "1", "--nproc-per-node", "2",
                        str(cfg))
    assert code == 2 and "train.device is cuda but the nodes of partition debug" in err and "no GPU" in err, err
    assert not (tmp_path / "job.sbatch").exists()


def test_prep_slurm_names_a_request_no_node_can_meet(slurm_cluster: SlurmCluster, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """`prep slurm` checks --mem and --cpus-per-task against the nodes sinfo reports before writing anything
    (sbatch would say only "Requested node configuration is not available"), --time against the
    partition's limit (sbatch would queue the arrays for good) and the partition against those sinfo lists;
    --mem none writes no --mem line (the partition's default) and passes."""
    inputs = _warc_inputs(tmp_path / "in")
    monkeypatch.setenv("SLURM_CONF", slurm_cluster.env["SLURM_CONF"])
    node_mb = int(slurm_cluster.run("sinfo", "-h", "-o", "%m").stdout.split()[0].rstrip("+"))
    too_much = f"{node_mb // 1024 + 8}G"
    out = tmp_path / "out"
    code, _, err = _cli(capsys, "prep", "slurm", "--input", str(inputs), "--out", str(out), "--tasks", "2",
                        "--mem", too_much, "--cpus-per-task", "64")
    assert code == 2, err
    assert f"--mem={too_much} is more memory than any node has" in err and "--cpus-per-task=64" in err, err
    assert f"{node_mb}M" in err and "nothing was written" in err, err
    for options, said in ((["--partition", "nosuch"], "prep slurm: --partition=nosuch: sinfo lists no such "
                                                      "partition (it lists debug*, short;"),
                          (["--partition", "short", "--time", "1:00:00"],
                           "--time=1:00:00 is longer than the partition's time limit (30:00; --time T): "
                           "partition short (1 node(s): ")):
        code, _, err = _cli(capsys, "prep", "slurm", "--input", str(inputs), "--out", str(out), "--tasks", "2",
                            "--mem", "1G", *options)
        assert code == 2 and said in err and "nothing was written" in err and err.count("\n") == 1, err
    assert not (out / "slurm").exists()
    code, _, err = _cli(capsys, "prep", "slurm", "--input", str(inputs), "--out", str(out), "--tasks", "2",
                        "--mem", "none")
    assert code == 0, err
    script = (out / "slurm" / "extract.sbatch").read_text()
    assert "#SBATCH --mem" not in script and "#SBATCH --cpus-per-task=1" in script


# ----------------------------------------------------------------------------------------------- sweep


def _sweep_spec(tmp_path: Path, sample_data: Path) -> Path:
    base = tiny_config(sample_data, tmp_path / "unused")
    del base["train"]["out_dir"], base["train"]["steps"], base["model"]["depth"], base["optimizer"]["lr"]
    spec = {"name": "real-slurm", "config": base, "grid": {"model.depth": [2, 4], "optimizer.lr": [0.01, 0.03]},
            "budget": {"steps": 3}, "metric": "final_eval_loss"}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _trainer_of(config_file: Path) -> int | None:
    """The pid of the `megadepth train` process of one sweep point (its config file is its last argument)."""
    want = str(config_file).encode()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError):
                args = (d / "cmdline").read_bytes().split(b"\0")
                if want in args and b"train" in args:
                    return int(d.name)
    return None


@pytest.mark.timeout(600)
def test_sweep_slurm_array_completes_retries_a_killed_point_and_reports(
        slurm_cluster: SlurmCluster, sample_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A CPU sweep as a job array (2 tasks of 2 points, 1 CPU each), with the default memory request
    for CPU tasks. One point's trainer is SIGKILLed as the OOM killer would: a failed attempt, which its
    array task retries at once and completes. Then the report reads the sweep, and running the same
    command again submits nothing."""
    spec = _sweep_spec(tmp_path, sample_data)
    out = tmp_path / "sweep"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SLURM_CONF", slurm_cluster.env["SLURM_CONF"])
    args = ["sweep", str(spec), "--out", str(out), "--executor", "slurm", "--gpus-per-task", "0"]
    code, printed, err = _cli(capsys, *args, "--points-per-task", "2", "--cpus-per-task", "1", "--time", "00:20:00")
    assert code == 0, err
    job = re.search(r"submitted job array (\d+): 2 task\(s\) for 4 point\(s\)", printed)
    assert job, printed
    script = (out / "slurm" / "array-001.sbatch").read_text()
    assert "#SBATCH --mem=4G" in script and "--gres" not in script and "--devices cpu" in script

    victim = (out / "slurm" / "array-001.tasks").read_text().split()[0]
    config_file = out / "runs" / victim / "sweep_config.yaml"
    deadline = time.monotonic() + 240
    pid = None
    while pid is None and time.monotonic() < deadline:
        pid = _trainer_of(config_file)
        if pid is None:
            time.sleep(0.05)
    assert pid is not None, "the first point's trainer never started"
    os.killpg(pid, signal.SIGKILL)  # its own session (the sweep starts each run so): the OOM killer's verdict
    slurm_cluster.wait_jobs([job.group(1)], 400)

    code, printed, _ = _cli(capsys, *args, "--status")  # array tasks leave the index to this
    assert code == 0 and "4 completed; index:" in printed, printed
    index = json.loads((out / "sweep.json").read_text())
    assert index["counts"] == {"completed": 4}, index["counts"]
    attempts = json.loads((out / "runs" / victim / "sweep_run.json").read_text())["attempts"]
    assert [a["outcome"] for a in attempts] == ["failed", "completed"], attempts
    assert attempts[0]["exit_code"] == -signal.SIGKILL
    task_log = "".join(p.read_text() for p in (out / "slurm" / "logs").glob(f"{job.group(1)}_*.log"))
    assert "(will retry)" in task_log and "attempt 2" in task_log, task_log[-3000:]

    code, printed, _ = _cli(capsys, *args)
    assert code == 0 and "nothing to submit" in printed
    code, table, err = _cli(capsys, "report", str(out))
    assert code == 0, err
    assert "4 completed" in table and (out / "report" / "transfer.png").stat().st_size > 0


@pytest.mark.parametrize(("options", "said"), [
    (["--gpus-per-task", "0", "--mem", "4000G"],
     ["no node can run these array tasks: --mem=4000G is more memory than any node has", "nothing was submitted"]),
    ([], ["--gres=gpu:1 is more GPUs than any node has (--gpus-per-task 0 for CPU tasks)", "nothing was submitted"]),
    (["--gpus-per-task", "0", "--cpus-per-task", "4096"],  # sbatch would queue this one, to wait forever
     ["--cpus-per-task=4096 is more CPUs than any node has", "nothing was submitted"]),
    (["--gpus-per-task", "0", "--partition", "short"],  # the default --time 04:00:00; sbatch would queue it
     ["--time=04:00:00 is longer than the partition's time limit (30:00; --time T)", "nothing was submitted"]),
    (["--gpus-per-task", "0", "--partition", "nosuch"],  # sinfo knows no such partition: sbatch's word
     ["sbatch refused", "Invalid partition name specified",
      "each task asks for --cpus-per-task=2 --mem=4G --time=04:00:00 --partition=nosuch"]),
])
def test_sweep_names_the_request_the_cluster_refuses(slurm_cluster: SlurmCluster, sample_data: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str], options: list[str],
                                                     said: list[str]) -> None:
    """sbatch says only "Requested node configuration is not available" or "Invalid generic resource"
    (and queues a task asking for more CPUs than any node has, to wait forever): the sweep checks the
    requests against the partition's nodes (the real sinfo) first and names the one that does not fit;
    what sbatch still refuses comes with every request listed. Nothing is queued either way."""
    spec = _sweep_spec(tmp_path, sample_data)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SLURM_CONF", slurm_cluster.env["SLURM_CONF"])
    code, _, err = _cli(capsys, "sweep", str(spec), "--out", str(tmp_path / "o"), "--executor", "slurm", *options)
    assert code == 2, err
    assert all(part in err for part in said) and err.count("\n") == 1, err
    if "nothing was submitted" in err:
        partition = "short" if "short" in options else "debug"
        assert f"partition {partition} (1 node(s): " in err and not (tmp_path / "o" / "slurm").exists()
    assert not slurm_cluster.run("squeue", "-h", "-o", "%i").stdout.strip()  # nothing queued
