"""What the Common Crawl pipeline does when things go wrong around it, not inside the pages: an output
directory inside the input directory, someone else's folder as --out, two runs on one directory, an input
edited after planning, an empty file, a worker killed mid-unit, a parent killed under its pool, every
document filtered away, bad Slurm values, and a trainer pointed at an unfinished output."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from data_prep.pipeline import plan_run, run_plan
from data_prep.plan import load_plan
from data_prep.runner import LOCK, run_task, write_slurm_scripts
from megadepth.common.errors import DataError

FIXTURES = Path(__file__).parent / "fixtures" / "commoncrawl"
ROOT = Path(__file__).resolve().parents[1]
# the fixture's one page is Aragonese and short: every rule off, so it survives
RULES_OFF = ["language.languages=null", "gopher_repetition.enabled=false", "gopher_quality.enabled=false",
             "c4.enabled=false", "fineweb.enabled=false", "tokenizer.vocab_size=500"]


def _digests(out: Path) -> dict[str, str]:
    names = [*out.glob("shard_*"), *out.glob("documents/*.parquet"), out / "tokenizer.model"]
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(names)}


def _inputs(tmp_path: Path) -> Path:
    src = tmp_path / "crawl"
    src.mkdir()
    shutil.copy(FIXTURES / "whirlwind.warc.gz", src)
    shutil.copy(FIXTURES / "whirlwind.warc.wet.gz", src)
    return src


def test_an_output_inside_the_input_directory_is_not_read_back(tmp_path: Path) -> None:
    src = _inputs(tmp_path)
    first = plan_run([src], src / "out", overrides=RULES_OFF)
    run_plan(first, progress=False)
    before = _digests(src / "out")
    second = plan_run([src], src / "out", overrides=RULES_OFF)  # out/ now holds Parquet and JSON files
    assert [i.path for i in second.inputs] == [i.path for i in first.inputs] and len(first.inputs) == 2
    assert second.config_hash == first.config_hash  # so nothing is redone
    run_plan(second, progress=False)
    assert _digests(src / "out") == before
    with pytest.raises(DataError, match="is a megadepth data directory .* kept documents are in"):
        plan_run([src / "out"], src / "out", overrides=RULES_OFF)


def test_an_earlier_output_next_to_the_inputs_is_not_read_as_input(tmp_path: Path) -> None:
    """Rerunning with another config into a new --out beside the old one (both inside the input folder):
    the old output's Parquet parts, work files and JSON markers are outputs, not documents."""
    src = _inputs(tmp_path)
    first = plan_run([src], src / "outA", overrides=RULES_OFF)
    run_plan(first, progress=False)
    second = plan_run([src], src / "outB", overrides=RULES_OFF)
    assert [i.path for i in second.inputs] == [i.path for i in first.inputs] and len(first.inputs) == 2
    # a glob that reaches into the old output skips it too; named on purpose, its documents are input
    globbed = plan_run([str(src / "**" / "*")], tmp_path / "g", overrides=RULES_OFF)
    assert [i.path for i in globbed.inputs] == [i.path for i in first.inputs]
    with pytest.raises(DataError, match="lie in megadepth data directories"):
        plan_run([str(src / "outA" / "**" / "*.parquet")], tmp_path / "g2", overrides=RULES_OFF)
    kept = plan_run([src / "outA" / "documents"], tmp_path / "again", overrides=RULES_OFF)
    assert {Path(i.path).parent for i in kept.inputs} == {src / "outA" / "documents"}
    assert {i.kind for i in kept.inputs} == {"parquet"}


def test_someone_elses_folder_is_not_taken_as_output(tmp_path: Path) -> None:
    src = _inputs(tmp_path)
    mine = tmp_path / "mine"
    (mine / "documents").mkdir(parents=True)
    (mine / "documents" / "notes.parquet").write_bytes(b"precious")
    (mine / "shard_00007.bin").write_bytes(b"precious")
    with pytest.raises(DataError, match="not a megadepth data directory"):
        plan_run([src], mine, overrides=RULES_OFF)
    assert (mine / "documents" / "notes.parquet").read_bytes() == b"precious"
    assert (mine / "shard_00007.bin").read_bytes() == b"precious"
    hidden_only = tmp_path / "hidden"
    hidden_only.mkdir()
    (hidden_only / ".keep").write_text("")
    plan_run([src], hidden_only, overrides=RULES_OFF)  # an empty folder (hidden files aside) is fine


def test_a_second_run_on_the_same_directory_is_refused(tmp_path: Path) -> None:
    src = _inputs(tmp_path)
    plan = plan_run([src], tmp_path / "out", overrides=RULES_OFF)
    assert not (tmp_path / "out").exists()  # planning writes nothing; the run makes the folder
    (tmp_path / "out").mkdir()
    with open(tmp_path / "out" / LOCK, "a+") as held:  # what a running 'prep run' holds
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("4242\n")
        held.flush()
        with pytest.raises(DataError, match=r"another 'megadepth prep run' or 'prep slurm' \(pid 4242\)"):
            run_plan(plan, progress=False)
    assert not (tmp_path / "out" / "manifest.json").exists()
    run_plan(plan, progress=False)  # released: runs
    assert (tmp_path / "out" / "manifest.json").is_file()


def test_an_input_changed_after_planning_is_refused(tmp_path: Path) -> None:
    src = _inputs(tmp_path)
    plan = plan_run([src], tmp_path / "out", overrides=RULES_OFF)
    plan.save()
    with open(src / "whirlwind.warc.gz", "ab") as f:
        f.write((FIXTURES / "whirlwind.warc.gz").read_bytes())  # another member appended
    with pytest.raises(DataError, match=r"whirlwind.warc.gz: changed since the plan was made"):
        run_task(tmp_path / "out", "extract", 0, 1)
    assert not load_plan(tmp_path / "out").is_done("extract", "000000")
    assert load_plan(tmp_path / "out").is_done("extract", "000001")  # the task's other unit still ran


def test_empty_and_damaged_files_are_named_in_the_manifest(tmp_path: Path) -> None:
    src = _inputs(tmp_path)
    (src / "empty.warc.gz").write_bytes(b"")
    data = (FIXTURES / "whirlwind.warc.gz").read_bytes()
    (src / "cut.warc.gz").write_bytes(data[: len(data) // 2])
    manifest, _ = run_plan(plan_run([src], tmp_path / "out", overrides=RULES_OFF), progress=False)
    read = manifest["stages"]["read"]
    assert read["skipped"]["skip:empty_file"] == 1
    assert read["damaged_files"] == [str((src / "cut.warc.gz").resolve())]


def test_nothing_surviving_names_the_filters(tmp_path: Path) -> None:
    src = _inputs(tmp_path)
    keep_french = [s for s in RULES_OFF if not s.startswith("language.")] + ["language.languages=[fr]"]
    with pytest.raises(DataError, match=r"no document survived the pipeline \(2 read; drop:language 2\)"):
        run_plan(plan_run([src], tmp_path / "out", overrides=keep_french), progress=False)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_slurm_values_that_sbatch_would_split_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan = plan_run([_inputs(tmp_path)], tmp_path / "out dir", overrides=RULES_OFF)
    with pytest.raises(DataError, match="--time 'bad time'"):
        write_slurm_scripts(plan, 2, time_limit="bad time")
    with pytest.raises(DataError, match="--partition"):
        write_slurm_scripts(plan, 2, partition="gpu;rm -rf /")
    submit = write_slurm_scripts(plan, 2, partition="gpu,cpu", time_limit="1-00:00:00", mem="16G")
    assert "#SBATCH --partition=gpu,cpu" in (submit.parent / "extract.sbatch").read_text()
    for none in ("NONE", " None"):  # --mem none in any case: the partition's default, no --mem line
        submit = write_slurm_scripts(plan, 2, mem=none, query=lambda partition: None)
        assert "--mem" not in (submit.parent / "extract.sbatch").read_text()
    assert "sinfo did not list the nodes" in capsys.readouterr().err  # says what it could not check


def test_slurm_partition_and_time_are_checked_against_sinfo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Before: a partition sinfo does not list passed as "sinfo did not list the nodes" (as if it had not
    answered) and sbatch refused every stage later; a --time beyond the partition's limit was not checked,
    and sbatch queued the arrays to wait forever (PartitionTimeLimit)."""
    from megadepth.common import slurm

    plan = plan_run([_inputs(tmp_path)], tmp_path / "out", overrides=RULES_OFF)
    nodes = {"debug": slurm.parse("debug*|4|16000|(null)|1|infinite\n"),
             "short": slurm.parse("short|4|16000|(null)|1|30:00\n")}
    monkeypatch.setattr(slurm, "partitions", lambda: ["debug*", "short"])

    def query(partition: str | None) -> list[slurm.NodeGroup] | None:
        return nodes.get(partition or "debug", [])

    with pytest.raises(DataError) as err:
        write_slurm_scripts(plan, 2, partition="nosuch", query=query)
    assert str(err.value) == ("prep slurm: --partition=nosuch: sinfo lists no such partition (it lists debug*, short; "
                              "* marks the default); nothing was written")
    with pytest.raises(DataError) as err:
        write_slurm_scripts(plan, 2, partition="short", time_limit="1:00:00", query=query)
    assert str(err.value) == ("prep slurm: no node can run these array tasks: --time=1:00:00 is longer than the "
                              "partition's time limit (30:00; --time T): partition short (1 node(s): 4 CPUs, "
                              "16000M, no GPU); nothing was written")
    assert not (plan.out / "slurm").exists()
    write_slurm_scripts(plan, 2, partition="short", time_limit="30:00", query=query)
    write_slurm_scripts(plan, 2, time_limit="7-00:00:00", query=query)  # no limit on debug
    assert capsys.readouterr().err == ""  # sinfo answered: nothing left unchecked


def test_the_trainer_refuses_an_unfinished_output(tmp_path: Path) -> None:
    from megadepth.config.load import load_config
    from megadepth.train.data_checks import check_tokenizer

    plan = plan_run([_inputs(tmp_path)], tmp_path / "out", overrides=RULES_OFF)
    plan.save()
    cfg = load_config([ROOT / "configs" / "quickstart.yaml"], [f"data.path={tmp_path / 'out'}"])
    with pytest.raises(DataError, match="unfinished 'megadepth prep run'"):
        check_tokenizer(cfg)


def test_text_shards_refuse_a_pipeline_output(tmp_path: Path) -> None:
    from data_prep.text_shards import prepare_sample_data

    plan_run([_inputs(tmp_path)], tmp_path / "out", overrides=RULES_OFF).save()
    with pytest.raises(DataError, match="holds a 'megadepth prep run' output"):
        prepare_sample_data(tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "source").exists()


@pytest.mark.slow
def test_a_worker_killed_mid_unit_is_one_line_and_a_rerun_resumes(tmp_path: Path) -> None:
    src = _inputs(tmp_path)
    for i in range(2):
        shutil.copy(FIXTURES / "whirlwind.warc.wet.gz", src / f"copy{i}.warc.wet.gz")
    cmd = [sys.executable, "-m", "megadepth", "prep", "run", "--no-progress", "--workers", "2", "--input", str(src),
           "--out", str(tmp_path / "out")]
    for s in [*RULES_OFF, "shards.row_group_docs=1"]:  # the kill hook fires after a row group
        cmd += ["--set", s]
    proc = subprocess.run(cmd, env={**os.environ, "MEGADEPTH_PREP_DIE": "extract:000001"}, capture_output=True,
                          text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "a worker process died" in proc.stderr and "run the same command again" in proc.stderr
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "out" / "manifest.json").is_file()
    assert not list((tmp_path / "out" / "work").rglob(".*.tmp"))  # the killed unit's leftovers are gone


_ORPHAN = textwrap.dedent(
    """
    import concurrent.futures as cf, multiprocessing as mp, os, signal, sys, time
    from data_prep.runner import _watch_parent

    def pid_then_sleep():
        return os.getpid()

    if __name__ == "__main__":
        pool = cf.ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"), initializer=_watch_parent,
                                      initargs=(os.getpid(),))
        print(pool.submit(pid_then_sleep).result(), flush=True)
        pool.submit(time.sleep, 120)
        time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer would
    """
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_pool_workers_exit_when_their_parent_is_killed(tmp_path: Path) -> None:
    script = tmp_path / "orphan.py"
    script.write_text(_ORPHAN)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    worker = int(proc.stdout.split()[0])
    deadline = time.monotonic() + 15
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _alive(worker):
        os.kill(worker, signal.SIGKILL)
        pytest.fail(f"pool worker {worker} outlived its killed parent")
