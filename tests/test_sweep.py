"""Sweeps: spec parsing and grid expansion, deterministic ids, resume, retries, diverged and crashed runs,
the Slurm array writer, and bad input. A stand-in trainer (a small script that follows the run-directory
contract) keeps these fast; tests/test_sweep_e2e.py runs the real trainer."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from conftest import tiny_config

from megadepth.cli import main
from megadepth.common.errors import ConfigError
from megadepth.sweep import runner
from megadepth.sweep.spec import expand, load_spec, parse_spec, point_id
from megadepth.sweep.state import read_state

FAKE_TRAINER = r'''
"""Stand-in for `megadepth train CONFIG`: the run-directory contract, a loss from (lr, depth), and
misbehaviour on request: lr >= 1 diverges, depth 3 crashes, width 48 crashes on its first attempt only,
width 40 is killed by SIGTERM."""
import json, math, os, sys, time
from pathlib import Path
import yaml

cfg = yaml.safe_load(open(sys.argv[1]))
out = Path(cfg["train"]["out_dir"]); out.mkdir(parents=True, exist_ok=True)
(out / "summary.json").unlink(missing_ok=True)
(out / "config.yaml").write_text(yaml.safe_dump(cfg))
lr, depth, width = cfg["optimizer"]["lr"], cfg["model"]["depth"], cfg["model"]["width"]
with open(os.environ["FAKE_TRAIN_LOG"], "a") as f:
    f.write(json.dumps({"out": out.name, "group": cfg["wandb"]["group"], "omp": os.environ.get("OMP_NUM_THREADS"),
                        "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"), "rank": os.environ.get("RANK")}) + "\n")
print("fake trainer starting", flush=True)
if depth == 3:
    raise RuntimeError("boom: depth 3 is cursed")
if width == 40:  # killed from outside (scancel, preemption)
    import signal
    os.kill(os.getpid(), signal.SIGTERM)
marker = out / "flaky_marker"
if width == 48 and not marker.exists():
    marker.write_text("x")
    raise SystemExit("flaky first attempt")
time.sleep(float(os.environ.get("FAKE_TRAIN_SLEEP", "0")))
loss = float("nan") if lr >= 1 else 3.0 + (math.log2(lr) + 7 + 0.3 * math.log2(depth)) ** 2 / 10
with open(out / "metrics.jsonl", "w") as f:
    f.write(json.dumps({"step": 1, "loss": loss, "consumed_tokens": 64}) + "\n")
status = "diverged" if not math.isfinite(loss) else "completed"
summary = {"status": status, "final_loss": loss if math.isfinite(loss) else "nan",
           "final_eval_loss": loss + 0.01 if math.isfinite(loss) else "nan",
           "steps": cfg["train"]["steps"], "tokens": 64, "wall_s": 0.01}
(out / "summary.json").write_text(json.dumps(summary))
sys.exit(0 if status == "completed" else 1)
'''


@pytest.fixture()
def fake_trainer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Route the sweep's runs to the stand-in trainer; returns the file each run appends a line to."""
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAINER)
    log = tmp_path / "fake_calls.jsonl"
    monkeypatch.setattr(runner, "TRAIN_COMMAND", [sys.executable, str(script)])
    monkeypatch.setenv("FAKE_TRAIN_LOG", str(log))
    monkeypatch.setenv("RANK", "5")  # a stray launcher variable must not reach the runs
    return log


def calls(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def write_spec(tmp_path: Path, sample_data: Path, grid: dict, name: str = "t", **extra) -> Path:
    base = tiny_config(sample_data, tmp_path / "unused")
    del base["train"]["out_dir"], base["train"]["steps"]  # the sweep sets both (out dir, budget)
    base["model"].setdefault("base_width", 32)  # a grid over width needs a base width (tiny: width 32)
    base["model"].setdefault("base_heads", 2)  # and to say how it grows: tiny's 2 heads, wider
    for key in (k for axis in grid for k in axis.split(",")):  # and the grid sets its axes
        section, _, leaf = key.partition(".")
        base.get(section, {}).pop(leaf, None)
    spec = {"name": name, "config": base, "grid": grid, "budget": {"steps": 3}, **extra}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


# ------------------------------------------------------------------------------------------------ spec


def test_grid_expansion_order_values_linked_axes_and_ids() -> None:
    spec = parse_spec({
        "config": {"model": {"base_depth": 2}},
        "grid": {"parametrization.name": ["sp", "completep"], "model.depth": [2, 4],
                 "optimizer.lr": {"log2_range": [-9, -8, 0.5]}, "model.width,model.heads": [[32, 2], [64, 4]]},
        "budget": {"tokens": 5000},
        "metric": "final_loss",
    })
    points = expand(spec)
    assert len(points) == 2 * 2 * 3 * 2
    first = points[0].values
    assert first == {"parametrization.name": "sp", "model.depth": 2, "optimizer.lr": 2.0 ** -9,
                     "model.width": 32, "model.heads": 2}
    assert [p.values["optimizer.lr"] for p in points[:6:2]] == [2.0 ** -9, 2.0 ** -8.5, 2.0 ** -8]
    # tokens -> steps from each point's batch (8 sequences by default) x seq_len (256 by default)
    assert points[0].config.train.steps == 5000 // (8 * 256)
    assert points[1].config.model.heads == 4 and points[1].config.model.width == 64
    # ids: deterministic (sha256 of the canonical point), readable, unique, stable when the grid grows
    assert points[0].id == point_id(dict(first))
    assert points[0].id.startswith("depth2_heads2_width32_lr0.00195_sp-") and len(points[0].id.split("-")[-1]) == 10
    assert len({p.id for p in points}) == len(points)
    bigger = expand(parse_spec({**spec.frozen(), "grid": {**spec.frozen()["grid"], "model.depth": [2, 4, 8]}}))
    assert {p.id for p in points} <= {p.id for p in bigger}
    # the frozen spec round-trips to the same grid
    again = expand(parse_spec(yaml.safe_load(spec.frozen_yaml())))
    assert [p.id for p in again] == [p.id for p in points]
    assert point_id({"a": 1, "b": 2.0}) == point_id({"b": 2.0, "a": 1})


def test_a_grid_over_the_older_spellings_of_renamed_keys_keeps_its_points_and_ids() -> None:
    """model.activation and model.rotary_base (now model.mlp, model.rope_theta) as axes: each point takes its
    value, and its id is the one the sweep had before the rename (written by that version of megadepth), so a
    sweep directory from then continues instead of running its finished points again."""
    spec = parse_spec({"config": {"model": {"position": "rotary"}},
                       "grid": {"model.activation": ["relu", "gelu"], "model.rotary_base": [5000]},
                       "budget": {"steps": 3}, "metric": "final_loss"})
    points = expand(spec)
    assert [(p.config.model.mlp, p.config.model.rope_theta) for p in points] == [("relu", 5000.0), ("gelu", 5000.0)]
    assert points[0].values == {"model.activation": "relu", "model.rotary_base": 5000.0}
    assert points[0].id == "activationrelu_rotary_base5e+03-cf8de701a9"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"grid": {"model.dpeth": [2, 4]}, "budget": {"steps": 3}}, "unknown config key 'model.dpeth'; did you mean 'model.depth'"),
        ({"grid": {"train.lr": [0.1]}, "budget": {"steps": 3}}, "did you mean 'optimizer.lr'"),
        ({"grid": {}, "budget": {"steps": 3}}, "the grid is empty"),
        ({"budget": {"steps": 3}}, "the grid is empty"),
        ({"grid": {"model.depth": []}, "budget": {"steps": 3}}, "axis 'model.depth' has no values"),
        ({"grid": {"optimizer.lr": {"log2_range": [-4, -6]}}, "budget": {"steps": 3}}, "has no values"),
        ({"grid": {"model.depth": [2, 2]}, "budget": {"steps": 3}}, "lists 2 more than once"),
        ({"grid": {"model.depth": [2]}, "budget": {"steps": 0}}, "budget.steps must be at least 1 (got 0)"),
        ({"grid": {"model.depth": [2]}, "budget": {"tokens": 0}}, "budget.tokens must be at least 1"),
        ({"grid": {"model.depth": [2]}}, "the sweep needs a budget"),
        ({"grid": {"model.depth": [2]}, "budget": {"tokens": 10}}, "less than one optimizer step"),
        ({"grid": {"model.depth": [2]}, "budget": {"steps": 3}, "metirc": "final_loss"}, "did you mean 'metric'"),
        ({"grid": {"model.depth": [2]}, "budget": {"steps": 3}, "metric": "loss"}, "metric 'loss' is not one of"),
        ({"grid": {"train.out_dir": ["a"]}, "budget": {"steps": 3}}, "cannot be a sweep axis"),
        ({"grid": {"model.heads": [3]}, "budget": {"steps": 3}}, "grid point heads=3: invalid config"),
        ({"grid": {"model.width,model.heads": [[64]]}, "budget": {"steps": 3}}, "take lists of 2 values"),
        ({"grid": {"model.depth": [2]}, "budget": {"steps": 3}, "config": {"train": {"eval_samples": 0}}},
         "final_eval_loss needs an evaluation"),
        # a bare value is not an axis (it used to become a one-value axis silently)
        ({"grid": {"model.depth": 2}, "budget": {"steps": 3}}, "axis 'model.depth' must list its values, e.g. "
         "'model.depth: [2]'"),
        ({"grid": {"parametrization.name": {"values": "sp"}}, "budget": {"steps": 3}},
         "e.g. 'parametrization.name: [sp]'"),
        # keys the sweep sets for every run are refused in 'config:' (they used to be silently replaced)
        ({"grid": {"model.depth": [2]}, "budget": {"steps": 3}, "config": {"train": {"steps": 20}}},
         "config train.steps would be ignored: the budget decides the run length (budget: {steps: 3})"),
        ({"grid": {"train.steps": [2, 4]}, "config": {"train": {"steps": 20}}},
         "config train.steps would be ignored: the grid's train.steps axis decides the run length"),
        ({"grid": {"model.depth": [2]}, "budget": {"steps": 3}, "config": {"train": {"out_dir": "runs/x"}}},
         "config train.out_dir would be ignored: the sweep decides it"),
        ({"grid": {"model.depth": [2]}, "budget": {"steps": 3}, "config": {"wandb": {"name": "mine"}}},
         "config wandb.name would be ignored: every run is named by its run id"),
        ({"grid": {"model.depth": [2]}, "budget": {"steps": 3}, "config": {"train": {"progress": True}}},
         "config train.progress would be ignored: runs of a sweep draw no progress bars"),
        # an axis key in 'config:' would be overridden by the grid for every run
        ({"grid": {"model.depth": [2, 4]}, "budget": {"steps": 3}, "config": {"model": {"depth": 8}}},
         "config model.depth would be ignored: 'model.depth' is a sweep axis"),
        ({"grid": {"model.width,model.heads": [[64, 4]]}, "budget": {"steps": 3},
          "config": {"model": {"heads": 2}}}, "config model.heads would be ignored: 'model.heads' is a sweep axis"),
        # a boolean is not an exponent (True used to become 2^1), as log2_range already said
        ({"grid": {"optimizer.lr": {"log2": [True, -3]}}, "budget": {"steps": 3}}, "log2 takes a list of exponents"),
        # base files: a name or a list of names (a mapping was read as a file named after its key)
        ({"grid": {"model.depth": [2]}, "budget": {"steps": 3}, "base": 5}, "'base' must be a config file name"),
        ({"grid": {"model.depth": [2]}, "budget": {"steps": 3}, "base": {"a": 1}}, "'base' must be a config file"),
        ({"grid": {"model.depth": [2]}, "budget": {"steps": 3}, "base": [1]}, "'base' must be a config file name"),
        ({"grid": {"model.depth": [2]}, "budget": {"steps": 3}, "base": False}, "'base' must be a config file name"),
        ({"grid": {"model.depth": [2]}, "budget": {"steps": 3}, "base": 0}, "'base' must be a config file name"),
    ],
)
def test_bad_specs(spec: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        expand(parse_spec(spec, source="s.yaml"))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_bad_input_through_the_cli(sample_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                   fake_trainer: Path) -> None:
    def run(args: list[str]) -> tuple[int, str]:
        code = main(args)
        return code, capsys.readouterr().err.strip()

    code, err = run(["sweep", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "o")])
    assert code == 2 and "sweep spec not found" in err
    spec = write_spec(tmp_path, sample_data, {"model.dpeth": [2, 4]})
    code, err = run(["sweep", str(spec), "--out", str(tmp_path / "o")])
    assert code == 2 and err.startswith("megadepth: error:") and "did you mean 'model.depth'" in err and "\n" not in err
    spec = write_spec(tmp_path, sample_data, {"model.depth": [2]}, budget={"steps": 0})
    code, err = run(["sweep", str(spec), "--out", str(tmp_path / "o")])
    assert code == 2 and "budget.steps must be at least 1" in err
    spec = write_spec(tmp_path, sample_data, {"model.depth": [2, 4]})
    code, err = run(["sweep", str(spec), "--out", str(tmp_path / "o"), "--set", "model.depth=8"])
    assert code == 2 and "is a sweep axis" in err
    code, err = run(["sweep", str(spec), "--out", str(tmp_path / "o"), "--set", "data.path=/nonexistent"])
    assert code == 2 and "grid point depth=2: data.path: /nonexistent does not exist" in err
    code, err = run(["sweep", str(spec), "--out", str(tmp_path / "o"), "--set", "model.base_depth=4"])
    assert code == 2 and "model.base_depth (4) is larger than model.depth (2)" in err
    assert not (tmp_path / "o").exists() and not calls(fake_trainer)  # nothing ran, nothing written


def test_run_length_and_out_dir_come_from_the_sweep(tmp_path: Path) -> None:
    """--set train.steps / train.out_dir are refused; in base files (shared configs for standalone runs)
    they are dropped, so the budget decides and sweep.yaml does not carry them."""
    spec = {"grid": {"model.depth": [2]}, "budget": {"steps": 3}}
    with pytest.raises(ConfigError, match=r"^--set train.steps would be ignored: the budget decides the run length"
                                          r" \(budget: \{steps: 3\}\)"):
        parse_spec(spec, overrides=["train.steps=20"])
    with pytest.raises(ConfigError, match=r"^--set train.out_dir would be ignored: the sweep decides it"):
        parse_spec(spec, overrides=["train.out_dir=/tmp/elsewhere"])
    (tmp_path / "standalone.yaml").write_text(yaml.safe_dump({
        "train": {"steps": 99, "out_dir": "runs/x", "progress": True},
        "model": {"base_depth": 1, "depth": 6}, "wandb": {"name": "solo"}}))
    parsed = parse_spec({**spec, "base": ["standalone.yaml"]}, base_dir=tmp_path)
    assert [(p.config.train.steps, p.config.model.depth) for p in expand(parsed)] == [(3, 2)]
    frozen = parsed.frozen()["config"]
    assert not {"steps", "out_dir", "progress"} & set(frozen["train"]) and "name" not in frozen["wandb"]
    assert frozen["model"] == {"base_depth": 1}  # the axis key too: no value that no run uses
    # so DIR/sweep.yaml also reads as a spec of its own (copied elsewhere, run into a new --out)
    again = parse_spec(parsed.frozen())
    assert [p.id for p in expand(again)] == [p.id for p in expand(parsed)]
    # a sweep.yaml frozen before these keys were refused (config: holds them) still reads as such
    old_frozen = {**spec, "config": {"train": {"steps": 99}, "model": {"base_depth": 1}}}
    assert [p.config.train.steps for p in expand(parse_spec(old_frozen, frozen=True))] == [3]


# ------------------------------------------------------------------------------------------ executor


def test_sweep_runs_resumes_and_shares_a_wandb_group(sample_data: Path, tmp_path: Path, fake_trainer: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    spec = write_spec(tmp_path, sample_data, {"model.depth": [2, 4], "optimizer.lr": {"log2": [-8, -7, -6]}},
                      name="resume")
    out = tmp_path / "sweep"
    assert main(["sweep", str(spec), "--out", str(out), "--jobs", "2"]) == 0
    first = calls(fake_trainer)
    assert len(first) == 6 and len({c["out"] for c in first}) == 6
    assert {c["group"] for c in first} == {"resume"}  # one W&B group for the whole sweep
    assert all(c["rank"] is None and c["cuda"] == "" for c in first)
    assert {c["omp"] for c in first} == {str(max(1, len(os.sched_getaffinity(0)) // 2))}
    index = json.loads((out / "sweep.json").read_text())
    assert index["counts"] == {"completed": 6} and index["wandb_group"] == "resume"
    assert [r["point"]["model.depth"] for r in index["runs"]] == [2, 2, 2, 4, 4, 4]
    for r in index["runs"]:
        run_dir = out / r["dir"]
        assert (run_dir / "summary.json").is_file() and (run_dir / "sweep_config.yaml").is_file()
        assert json.loads((run_dir / "sweep_run.json").read_text())["attempts"][0]["outcome"] == "completed"
        cfg = yaml.safe_load((run_dir / "sweep_config.yaml").read_text())
        assert cfg["train"]["out_dir"] == str(run_dir.resolve()) and cfg["train"]["steps"] == 3
        assert cfg["wandb"]["group"] == "resume" and cfg["wandb"]["name"] == r["id"]
    capsys.readouterr()

    # a second invocation runs nothing new
    assert main(["sweep", str(spec), "--out", str(out), "--jobs", "2"]) == 0
    assert len(calls(fake_trainer)) == 6
    assert "0 to run (6 completed skipped)" in capsys.readouterr().out

    # growing the grid runs only the new points; ids of the old ones do not change
    spec2 = write_spec(tmp_path, sample_data, {"model.depth": [2, 4, 8], "optimizer.lr": {"log2": [-8, -7, -6]}},
                       name="resume")
    assert main(["sweep", str(spec2), "--out", str(out)]) == 0
    assert len(calls(fake_trainer)) == 9
    assert len(json.loads((out / "sweep.json").read_text())["runs"]) == 9

    # a changed base config is refused rather than mixed into the old runs
    capsys.readouterr()
    assert main(["sweep", str(spec2), "--out", str(out), "--set", "optimizer.weight_decay=0.5"]) == 2
    assert "holds a different sweep (optimizer.weight_decay: 0.1 there, 0.5 now)" in capsys.readouterr().err
    # without the frozen spec (a directory of runs), each finished run's own config is the check
    frozen = (out / "sweep.yaml").read_text()
    (out / "sweep.yaml").unlink()
    assert main(["sweep", str(spec2), "--out", str(out), "--set", "optimizer.weight_decay=0.5"]) == 2
    assert "was run with a different config (optimizer.weight_decay: 0.1 there, 0.5 now" in capsys.readouterr().err
    (out / "sweep.yaml").write_text(frozen)

    # the report reads it
    assert main(["report", str(out)]) == 0
    assert "depth" in capsys.readouterr().out


def test_diverged_and_crashed_runs_never_stop_the_sweep(sample_data: Path, tmp_path: Path, fake_trainer: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    # lr 2 diverges; depth 3 crashes every time; width 48 crashes once and then succeeds
    spec = write_spec(tmp_path, sample_data,
                      {"model.depth,model.width": [[2, 32], [3, 32], [4, 48]], "optimizer.lr": [0.01, 2.0]},
                      name="rough")
    out = tmp_path / "sweep"
    code = main(["sweep", str(spec), "--out", str(out), "--jobs", "2"])
    printed = capsys.readouterr().out
    assert code == 1  # some points failed for good
    index = json.loads((out / "sweep.json").read_text())
    by = {(r["point"]["model.depth"], r["point"]["optimizer.lr"]): r for r in index["runs"]}
    assert by[(2, 0.01)]["status"] == "completed"
    assert by[(2, 2.0)]["status"] == "diverged" and by[(2, 2.0)]["final_loss"] == "nan"
    assert by[(2, 2.0)]["attempts"] == 1  # a diverged run is a result, not retried
    crashed = by[(3, 0.01)]
    assert crashed["status"] == "failed" and crashed["attempts"] == 2  # retried once
    assert "RuntimeError: boom: depth 3 is cursed" in crashed["error"]
    attempts = json.loads((out / crashed["dir"] / "sweep_run.json").read_text())["attempts"]
    assert [a["outcome"] for a in attempts] == ["failed", "failed"] and attempts[0]["exit_code"] == 1
    assert (out / crashed["dir"] / "train.log").read_text().count("fake trainer starting") == 2
    assert by[(4, 0.01)]["status"] == "completed" and by[(4, 0.01)]["attempts"] == 2  # the flaky one
    assert "(will retry)" in printed and "failed: depth=3 width=32 lr=0.01" in printed
    assert index["counts"] == {"completed": 2, "diverged": 2, "failed": 2}

    # state as read from the run directories agrees with the index
    assert read_state(out / crashed["dir"], crashed["id"]).status == "failed"

    # again: out of retries, nothing runs; --retry-failed runs the two failed points once more
    n = len(calls(fake_trainer))
    assert main(["sweep", str(spec), "--out", str(out)]) == 1  # the sweep still holds failed points
    assert len(calls(fake_trainer)) == n
    main(["sweep", str(spec), "--out", str(out), "--retry-failed", "--retries", "0"])
    assert len(calls(fake_trainer)) == n + 2

    # the report shows the diverged points and lists the failures, without crashing
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    text = capsys.readouterr().out
    assert "2 diverged" in text and "2 failed" in text and "boom" in text
    data = json.loads((out / "report" / "transfer.json").read_text())
    assert {r["status"] for r in data["not_finished"]} == {"failed"}


def test_interrupted_and_stale_state(sample_data: Path, tmp_path: Path, fake_trainer: Path) -> None:
    spec_path = write_spec(tmp_path, sample_data, {"model.depth": [2, 4]}, name="stale")
    spec = load_spec(spec_path)
    sweep, points = runner.prepare(spec, tmp_path / "sweep")
    # an attempt that started but never ended (the executor was killed): pending, runs again, not a failure
    rec = runner.RunRecord(sweep.run_dir(points[0]), points[0].id, points[0].values)
    rec.start(["x"], sweep.run_dir(points[0]) / "train.log")
    # a 'stopped' summary (train.stop_after_steps) is resumable: pending
    (sweep.run_dir(points[1])).mkdir(parents=True, exist_ok=True)
    (sweep.run_dir(points[1]) / "summary.json").write_text(json.dumps({"status": "stopped"}))
    assert [read_state(sweep.run_dir(p), p.id).status for p in points] == ["pending", "pending"]
    # a point locked by another executor is 'running' and skipped
    lock = runner.PointLock(sweep.run_dir(points[0]))
    try:
        assert read_state(sweep.run_dir(points[0]), points[0].id).status == "running"
        todo, skipped = runner.select(sweep, points, max_attempts=2, retry_failed=False)
        assert [p.id for p in todo] == [points[1].id] and skipped["running"] == 1
    finally:
        lock.release()
    assert main(["sweep", str(spec_path), "--out", str(tmp_path / "sweep")]) == 0
    assert len(calls(fake_trainer)) == 2

    # a run killed by SIGTERM from outside is interrupted, not failed: pending, no retry used up
    spec_path = write_spec(tmp_path, sample_data, {"model.width": [40]}, name="killed")
    assert main(["sweep", str(spec_path), "--out", str(tmp_path / "killed")]) == 0
    index = json.loads((tmp_path / "killed" / "sweep.json").read_text())
    assert index["counts"] == {"pending": 1} and index["runs"][0]["attempts"] == 1
    attempt = json.loads((tmp_path / "killed" / index["runs"][0]["dir"] / "sweep_run.json").read_text())["attempts"][0]
    assert attempt["outcome"] == "interrupted" and attempt["error"] == "terminated by signal 15"


def test_slurm_array_is_written_submitted_and_its_tasks_run(sample_data: Path, tmp_path: Path, fake_trainer: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    from megadepth.common import slurm

    monkeypatch.setattr(slurm, "query", lambda partition: None)  # the stand-in sbatch has no cluster behind it
    spec = write_spec(tmp_path, sample_data, {"model.depth": [2, 4], "optimizer.lr": {"log2": [-8, -7, -6]}},
                      name="cluster")
    out = tmp_path / "sweep"
    path = os.environ.get("PATH", "/usr/bin:/bin")
    # no sbatch on PATH: scripts are written and the command printed
    monkeypatch.setenv("PATH", str(tmp_path / "nobin"))
    assert main(["sweep", str(spec), "--out", str(out), "--executor", "slurm", "--points-per-task", "4",
                 "--partition", "gpu", "--setup", "source .venv/bin/activate", "--max-parallel", "8"]) == 0
    printed = capsys.readouterr().out
    assert "sbatch is not on PATH" in printed
    scripts = sorted((out / "slurm").glob("*.sbatch"))
    assert len(scripts) == 1
    text = scripts[0].read_text()
    assert "#SBATCH --array=0-1%8" in text and "#SBATCH --gres=gpu:1" in text and "#SBATCH --partition=gpu" in text
    assert "source .venv/bin/activate" in text and "--task-index \"$SLURM_ARRAY_TASK_ID\"" in text
    assert str(out.resolve() / "sweep.yaml") in text
    tasks = scripts[0].with_suffix(".tasks").read_text().splitlines()
    assert [len(line.split()) for line in tasks] == [3, 3]  # 6 points dealt round-robin over 2 tasks
    index = json.loads((out / "sweep.json").read_text())
    assert tasks[0].split() == [index["runs"][i]["id"] for i in (0, 2, 4)]

    # with a (fake) sbatch: submitted, the job id recorded
    bindir = tmp_path / "bin"
    bindir.mkdir()
    sbatch = bindir / "sbatch"
    sbatch.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path / 'sbatch_args'}\necho 4242\n")
    sbatch.chmod(sbatch.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{path}")
    assert main(["sweep", str(spec), "--out", str(out), "--executor", "slurm", "--gpus-per-task", "0"]) == 0
    assert "submitted job array 4242" in capsys.readouterr().out
    assert (tmp_path / "sbatch_args").read_text().startswith("--parsable ")
    index = json.loads((out / "sweep.json").read_text())
    assert index["slurm"][-1]["job_id"] == "4242" and index["slurm"][-1]["tasks"] == 6
    latest = sorted((out / "slurm").glob("*.sbatch"))[-1]
    assert "--gres" not in latest.read_text() and "--devices cpu" in latest.read_text()
    assert "#SBATCH --mem=4G\n" in latest.read_text() and "#SBATCH --mem=32G\n" in text  # CPU task / GPU task

    # what array task 1 runs: its points only, from the frozen spec; then task 0 and a rerun of task 1
    task_list = str(scripts[0].with_suffix(".tasks"))
    frozen = str(out / "sweep.yaml")
    assert main(["sweep", frozen, "--out", str(out), "--task-list", task_list, "--task-index", "1"]) == 0
    assert sorted(c["out"] for c in calls(fake_trainer)) == sorted(tasks[1].split())
    assert main(["sweep", frozen, "--out", str(out), "--task-list", task_list, "--task-index", "0"]) == 0
    assert main(["sweep", frozen, "--out", str(out), "--task-list", task_list, "--task-index", "1"]) == 0
    assert len(calls(fake_trainer)) == 6
    capsys.readouterr()
    assert main(["sweep", str(spec), "--out", str(out), "--status"]) == 0
    assert "6 completed; index:" in capsys.readouterr().out
    assert main(["sweep", frozen, "--out", str(out), "--task-list", task_list, "--task-index", "7"]) == 2


def test_slurm_memory_requests_fit_the_task() -> None:
    """CPU tasks ask for memory per run they hold, not a GPU node's 32G (which a CPU node with less refused:
    "Requested node configuration is not available"); 'none' leaves it to the partition's default."""
    from megadepth.sweep.slurm import SlurmOptions

    assert SlurmOptions(gpus_per_task=0).mem_request() == "4G"
    assert SlurmOptions(gpus_per_task=1).mem_request() == "32G"
    assert SlurmOptions(gpus_per_task=0, mem="none").mem_request() is None
    assert "--mem" not in SlurmOptions(gpus_per_task=0, mem="none").requests()
    assert SlurmOptions(gpus_per_task=2, mem="100G").requests() == {
        "--cpus-per-task": "16", "--mem": "100G", "--gres": "gpu:2", "--time": "04:00:00"}
    with pytest.raises(ConfigError, match="--mem lots: a Slurm size such as 4G"):
        SlurmOptions(mem="lots").check()


def test_slurm_requests_no_node_can_meet_are_named(sample_data: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Checked against the partition's nodes as sinfo reports them, before anything is written; where sbatch
    refuses anyway, its reason comes with every request. (The real sinfo and sbatch: test_slurm_real.py.)"""
    from megadepth.common import slurm as sinfo
    from megadepth.sweep import slurm

    nodes = sinfo.parse("debug*|2|3000|(null)|1\n")
    asked = []
    monkeypatch.setattr(sinfo, "query", lambda partition: asked.append(partition) or nodes)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "sbatch").write_text("#!/bin/sh\necho 'sbatch: error: Batch job submission failed: Invalid account' >&2\n"
                                   "exit 1\n")
    (bindir / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    spec = write_spec(tmp_path, sample_data, {"model.depth": [2]})
    out = tmp_path / "o"
    base = ["sweep", str(spec), "--out", str(out), "--executor", "slurm"]
    assert main([*base, "--gpus-per-task", "0"]) == 2  # 4G > 3000M
    err = capsys.readouterr().err
    assert "no node can run these array tasks: --mem=4G is more memory than any node has" in err
    assert "partition debug (1 node(s): 2 CPUs, 3000M, no GPU); nothing was submitted" in err
    assert not (out / "slurm").exists() and asked == [None]
    assert main([*base, "--gpus-per-task", "0", "--mem", "2G", "--account", "x"]) == 2  # fits; sbatch says no
    err = capsys.readouterr().err
    assert "sbatch refused" in err and "Invalid account; each task asks for --cpus-per-task=2 --mem=2G" in err
    assert err.count("\n") == 1
    assert slurm.explain_refusal(slurm.SlurmOptions(gpus_per_task=1), nodes).startswith(
        "--mem=32G is more memory than any node has")


@pytest.mark.parametrize(("name", "runs", "steps"), [("cpu_transfer", 168, 150), ("gpu_transfer", 240, 3051)])
def test_shipped_sweeps_expand(name: str, runs: int, steps: int) -> None:
    """The reproductions in configs/sweeps load, validate every grid point, and have the documented size."""
    root = Path(__file__).resolve().parent.parent
    points = expand(load_spec(root / "configs" / "sweeps" / f"{name}.yaml"))
    assert len(points) == runs
    assert {p.config.train.steps for p in points} == {steps}
    assert {p.values["parametrization.name"] for p in points} == {"sp", "depth_mup", "completep"}


def test_the_muon_transfer_pilot_is_the_cpu_transfer_grid_under_muon() -> None:
    """configs/sweeps/cpu_transfer_muon.yaml: the same model, data and budget as cpu_transfer.yaml, only the
    optimizer, the presets and the LR range differ (docs/transfer.md compares the two)."""
    root = Path(__file__).resolve().parent.parent / "configs" / "sweeps"
    muon, adamw = expand(load_spec(root / "cpu_transfer_muon.yaml")), expand(load_spec(root / "cpu_transfer.yaml"))
    assert len(muon) == 112 and {p.config.optimizer.name for p in muon} == {"muon"}
    assert {p.values["parametrization.name"] for p in muon} == {"sp", "completep"}
    assert sorted({p.values["optimizer.lr"] for p in muon}) == [2.0 ** k for k in range(-8, -1)]
    ours, theirs = muon[0].config, adamw[0].config
    assert (ours.model, ours.train, ours.data, ours.schedule) == (theirs.model, theirs.train, theirs.data, theirs.schedule)


def test_the_large_muon_grid_is_the_large_cpu_grid_under_muon() -> None:
    """configs/sweeps/cpu_transfer_large_muon.yaml: cpu_transfer_large.yaml's model, data, schedule and budget
    under Muon, SP and CompleteP at depths 2 and 16, one LR for both halves swept over 2^-7..2^-3
    (docs/transfer.md)."""
    root = Path(__file__).resolve().parent.parent / "configs" / "sweeps"
    muon = expand(load_spec(root / "cpu_transfer_large_muon.yaml"))
    adamw = expand(load_spec(root / "cpu_transfer_large.yaml"))
    assert len(muon) == 60 and {p.config.optimizer.name for p in muon} == {"muon"}
    assert {(p.values["parametrization.name"], p.values["model.depth"]) for p in muon} == {
        (name, depth) for name in ("sp", "completep") for depth in (2, 16)}
    assert sorted({p.values["optimizer.lr"] for p in muon}) == [2.0 ** k for k in range(-7, -2)]
    assert {p.config.optimizer.muon.lr for p in muon} == {None}
    ours, theirs = muon[0].config, adamw[0].config
    assert (ours.train, ours.data, ours.schedule) == (theirs.train, theirs.data, theirs.schedule)
    assert {p.config.train.steps for p in muon} == {p.config.train.steps for p in adamw} == {480}
    assert ours.model.model_copy(update={"depth": 2}) == theirs.model.model_copy(update={"depth": 2})


def test_the_held_adamw_probe_is_the_large_muon_grid_at_depth_2() -> None:
    """configs/sweeps/cpu_transfer_large_muon_held.yaml: the large Muon grid's depth-2 model, data and budget,
    sweeping only the Muon matrices' LR while the AdamW roles hold optimizer.lr = 2^-8."""
    root = Path(__file__).resolve().parent.parent / "configs" / "sweeps"
    held = expand(load_spec(root / "cpu_transfer_large_muon_held.yaml"))
    grid = expand(load_spec(root / "cpu_transfer_large_muon.yaml"))
    assert len(held) == 15 and {p.config.optimizer.lr for p in held} == {2.0 ** -8}
    assert sorted({p.config.optimizer.muon.lr for p in held}) == [2.0 ** k for k in range(-8, -3)]
    twin = next(p for p in grid if p.values["model.depth"] == 2).config
    ours = held[0].config
    assert (ours.model, ours.train.model_copy(update={"seed": 1}), ours.data, ours.schedule) == (
        twin.model, twin.train.model_copy(update={"seed": 1}), twin.data, twin.schedule)


def test_spec_differences_compare_resolved_configs() -> None:
    """The base config is compared as validated configs: a spelled-out default is no change, a key that
    does not change results is ignored; when the old point is not valid under the new config the raw
    configs are compared instead."""
    from megadepth.sweep.spec import spec_differences

    old = parse_spec({"grid": {"model.heads": [5]}, "budget": {"steps": 3}, "config": {"model": {"width": 40}}})
    same = parse_spec({"grid": {"model.heads": [5, 10]}, "budget": {"steps": 3},
                       "config": {"model": {"width": 40}, "optimizer": {"weight_decay": 0.1},
                                  "data": {"num_workers": 7}, "wandb": {"mode": "offline"}}})
    assert spec_differences(old, same) == []
    wider = parse_spec({"grid": {"model.heads": [3]}, "budget": {"steps": 3}, "config": {"model": {"width": 48}}})
    assert spec_differences(old, wider) == ["model.width: 40 there, 48 now"]  # heads=5 is invalid at 48


def test_a_different_sweep_in_the_same_directory_is_refused(sample_data: Path, tmp_path: Path, fake_trainer: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """DIR/sweep.yaml is compared with the new spec: only added or dropped axis values (and reordered axes)
    are the same sweep. The per-run config check alone let a spec whose points all had new ids replace
    sweep.yaml and orphan every run."""
    grid = {"model.depth": [2, 4], "optimizer.lr": [0.01]}
    out = tmp_path / "sweep"
    assert main(["sweep", str(write_spec(tmp_path, sample_data, grid, name="a")), "--out", str(out)]) == 0
    frozen, index = (out / "sweep.yaml").read_text(), (out / "sweep.json").read_text()
    capsys.readouterr()
    n = len(calls(fake_trainer))
    other = {"model.depth": [8], "optimizer.lr": [0.02]}  # no point in common with the sweep: new ids only
    refused = [  # (grid, name, spec keys, --set, what the message says)
        (grid, "b", {}, [], "(name: 'a' there, 'b' now)"),
        ({**grid, "train.seed": [1]}, "a", {}, [],
         "(grid axes: [model.depth, optimizer.lr] there, [model.depth, optimizer.lr, train.seed] now)"),
        (other, "a", {}, ["--set", "optimizer.weight_decay=0.5"], "(optimizer.weight_decay: 0.1 there, 0.5 now)"),
        (other, "a", {"budget": {"steps": 4}}, [], "(budget: {steps: 3} there, {steps: 4} now)"),
        (grid, "a", {"metric": "final_loss"}, [], "(metric: final_eval_loss there, final_loss now)"),
        (grid, "a", {"report": {"curve": "model.width"}}, [],
         "(report: {curve: model.depth, seed: train.seed, x: optimizer.lr} there, {curve: model.width, "),
        ({"model.depth": [2, 4, 8], "optimizer.lr": [0.02]}, "z", {}, ["--set", "optimizer.weight_decay=0.5"],
         "(name: 'a' there, 'z' now; also optimizer.weight_decay)"),
    ]
    for new_grid, name, keys, extra, message in refused:
        spec = write_spec(tmp_path, sample_data, new_grid, name=name, **keys)
        for mode in ([], ["--dry-run"], ["--status"]):
            assert main(["sweep", str(spec), "--out", str(out), *extra, *mode]) == 2, (message, mode)
            err = capsys.readouterr().err
            assert f"holds a different sweep {message}" in err and err.count("\n") == 1, err
            assert (out / "sweep.yaml").read_text() == frozen and (out / "sweep.json").read_text() == index
    assert len(calls(fake_trainer)) == n  # nothing ran

    # the same sweep: grown, axes reordered, a key that does not change results set, the description edited
    grown = write_spec(tmp_path, sample_data, {"optimizer.lr": [0.01, 0.02], "model.depth": [2, 4]}, name="a",
                       description="more LRs")
    assert main(["sweep", str(grown), "--out", str(out), "--set", "data.num_workers=0"]) == 0
    assert len(calls(fake_trainer)) == n + 2
    assert yaml.safe_load((out / "sweep.yaml").read_text())["grid"] == {"optimizer.lr": [0.01, 0.02],
                                                                        "model.depth": [2, 4]}
    # values dropped: allowed, and said (their runs stay, out of the index until listed again)
    capsys.readouterr()
    shrunk = write_spec(tmp_path, sample_data, {"optimizer.lr": [0.01], "model.depth": [2, 4]}, name="a")
    assert main(["sweep", str(shrunk), "--out", str(out)]) == 0
    assert "warning: 2 run(s) under" in capsys.readouterr().err
    assert len(json.loads((out / "sweep.json").read_text())["runs"]) == 2
    grown = write_spec(tmp_path, sample_data, {"optimizer.lr": [0.01, 0.02], "model.depth": [2, 4]}, name="a")
    assert main(["sweep", str(grown), "--out", str(out)]) == 0  # listed again: back, nothing rerun
    assert "warning" not in capsys.readouterr().err and len(calls(fake_trainer)) == n + 2
    assert len(json.loads((out / "sweep.json").read_text())["runs"]) == 4


def test_devices_must_exist(sample_data: Path, tmp_path: Path, fake_trainer: Path, monkeypatch: pytest.MonkeyPatch,
                            capsys: pytest.CaptureFixture[str]) -> None:
    """A GPU index that is not there used to be accepted and the runs trained on the CPU."""
    import torch

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert runner.resolve_devices("cpu") == []
    with pytest.raises(ConfigError, match=r"^--devices 7: this machine has no GPU; use --devices cpu or omit"):
        runner.resolve_devices("7")
    spec = write_spec(tmp_path, sample_data, {"model.depth": [2]})
    assert main(["sweep", str(spec), "--out", str(tmp_path / "o"), "--devices", "7"]) == 2
    assert "--devices 7: this machine has no GPU" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() and not calls(fake_trainer)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert runner.resolve_devices("0,1") == ["0", "1"]
    for bad in ("0,2", "gpu0", "-1"):
        with pytest.raises(ConfigError, match=rf"^--devices {bad}: this machine has 2 GPU\(s\) \(0 to 1\)$"):
            runner.resolve_devices(bad)
    # each run's CUDA_VISIBLE_DEVICES is the listed entry: with a mask here, entries come from the mask
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert runner.resolve_devices("5") == ["5"] and runner.resolve_devices("auto") == ["3", "5"]
    with pytest.raises(ConfigError, match=r"^--devices 0: CUDA_VISIBLE_DEVICES makes only 3,5 visible$"):
        runner.resolve_devices("0")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(ConfigError, match="makes no GPU visible; use --devices cpu"):
        runner.resolve_devices("0")


@pytest.mark.parametrize("value", ["60", "30:00", "04:00:00", "100:00:00", "1-12", "1-12:30", "2-00:00:00"])
def test_slurm_time_forms_accepted(value: str) -> None:
    from megadepth.sweep.slurm import SlurmOptions

    SlurmOptions(time=value).check()


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--time", "bogus", "--time bogus: Slurm takes minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS"),
    ("--time", "4h", "--time 4h: Slurm takes"),
    ("--time", "1-", "--time 1-: Slurm takes"),
    ("--time", "1:2:3:4", "--time 1:2:3:4: Slurm takes"),
    ("--time", "04:00:00 --qos=high", "--time '04:00:00 --qos=high': an #SBATCH value may only hold"),
    ("--mem", '32G"', "--mem '32G\"': an #SBATCH value may only hold"),
    ("--partition", "gpu;reboot", "--partition 'gpu;reboot': an #SBATCH value"),
    ("--account", "$(id)", "--account '$(id)': an #SBATCH value"),
    ("--qos", "a\nb", "--qos 'a\\nb': an #SBATCH value"),
])
def test_slurm_values_are_checked(sample_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                  flag: str, value: str, message: str) -> None:
    """Values go into #SBATCH lines unquoted: sbatch would misread or drop what follows a space."""
    spec = write_spec(tmp_path, sample_data, {"model.depth": [2]})
    assert main(["sweep", str(spec), "--out", str(tmp_path / "o"), "--executor", "slurm", "--no-submit",
                 flag, value]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_status_needs_no_data_but_a_good_spec(sample_data: Path, tmp_path: Path, fake_trainer: Path,
                                             monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """--status only reads run states: a relative data.path that does not resolve from here is no error
    (it was: the whole preflight ran). --dry-run runs every check a real run does, so it still fails."""
    base = tiny_config(Path(sample_data.name), tmp_path / "unused")  # data.path relative: 'sample'
    del base["train"]["out_dir"], base["train"]["steps"], base["model"]["depth"]
    path = tmp_path / "rel.yaml"
    path.write_text(yaml.safe_dump({"name": "rel", "config": base, "grid": {"model.depth": [2, 4]},
                                    "budget": {"steps": 3}}))
    out = tmp_path / "sweep"
    monkeypatch.chdir(sample_data.parent)
    assert main(["sweep", str(path), "--out", str(out)]) == 0
    capsys.readouterr()
    monkeypatch.chdir(tmp_path)  # no 'sample' here
    assert main(["sweep", str(path), "--out", str(out), "--status"]) == 0
    assert "2 completed; index:" in capsys.readouterr().out
    assert main(["sweep", str(path), "--out", str(out), "--dry-run"]) == 2
    assert "data.path: sample does not exist" in capsys.readouterr().err
    # a look at a sweep that never started writes nothing: no directory, no sweep.json
    fresh = str(tmp_path / "fresh")
    assert main(["sweep", str(path), "--out", fresh, "--status"]) == 0
    assert "2 pending" in (printed := capsys.readouterr().out) and "holds no started sweep" in printed
    assert not (tmp_path / "fresh").exists()
    # a bad spec is still refused by --status: config checks and the trainer's other start-up checks
    assert main(["sweep", str(path), "--out", fresh, "--status", "--set", "model.heads=3"]) == 2
    assert "grid point depth=2: invalid config" in capsys.readouterr().err
    assert main(["sweep", str(path), "--out", fresh, "--status", "--set", "model.base_depth=4"]) == 2
    assert "model.base_depth (4) is larger than model.depth (2)" in capsys.readouterr().err


def test_progress_counts_each_point_once(sample_data: Path, tmp_path: Path, fake_trainer: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """[k/N] counts finished points; a retried attempt is [-/N] (it repeated the previous k), and the
    attempt that finishes a retried point says which attempt it was."""
    spec = write_spec(tmp_path, sample_data, {"model.width": [32, 48, 64]})  # width 48 fails once
    assert main(["sweep", str(spec), "--out", str(tmp_path / "sweep"), "--jobs", "1"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("[")]
    assert [ln.split()[0] for ln in lines] == ["[1/3]", "[-/3]", "[2/3]", "[3/3]"]  # the retry goes last
    assert "width=48" in lines[1] and "flaky first attempt (will retry)" in lines[1]
    assert "attempt" not in lines[1].split("(will retry)")[1]
    assert "width=48" in lines[3] and "(attempt 2, " in lines[3] and "attempt" not in lines[0] + lines[2]


@pytest.mark.parametrize(("jobs", "blocked"), [("1", "config"), ("2", "config"), ("2", "run_dir")])
def test_a_bookkeeping_error_fails_its_point_and_the_sweep_finishes(sample_data: Path, tmp_path: Path,
                                                                    fake_trainer: Path, jobs: str, blocked: str,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """An OSError outside the trainer (sweep_config.yaml cannot be written, or not even the lock, as on a
    full or read-only disk) used to kill the worker thread: with --jobs 2 the sweep waited forever, with
    --jobs 1 it ran nothing and exited 0. Now the point fails with a one-line reason and the others run."""
    spec_path = write_spec(tmp_path, sample_data, {"model.depth": [2, 4, 6]}, name="bk")
    sweep, points = runner.prepare(load_spec(spec_path), tmp_path / "sweep")
    broken = points[0]
    if blocked == "config":  # writing sweep_config.yaml fails: IsADirectoryError
        (sweep.run_dir(broken) / "sweep_config.yaml").mkdir(parents=True)
        reason = "IsADirectoryError"
    else:  # the run directory is a file: no lock, no record can be written there
        sweep.run_dir(broken).write_text("")
        reason = "Error"
    code: list[int] = []
    worker = threading.Thread(target=lambda: code.append(main(["sweep", str(spec_path), "--out", str(sweep.root),
                                                                "--jobs", jobs])), daemon=True)
    worker.start()
    worker.join(timeout=120)
    assert not worker.is_alive(), "the sweep hung"
    assert code == [1]  # a failed point: exit 1, as for a crashed run
    printed = capsys.readouterr().out
    assert len(calls(fake_trainer)) == 2  # the other points ran
    line = next(ln for ln in printed.splitlines() if ln.startswith("[") and broken.label in ln)
    assert "failed" in line and reason in line
    assert "1 point(s) failed" in printed
    if blocked == "config":  # recorded in its run directory, with the reason; not retried in this invocation
        attempts = json.loads((sweep.run_dir(broken) / "sweep_run.json").read_text())["attempts"]
        assert [a["outcome"] for a in attempts] == ["failed"] and "IsADirectoryError" in attempts[0]["error"]
        state = read_state(sweep.run_dir(broken), broken.id)
        assert state.status == "failed" and "sweep_config.yaml" in state.error and "\n" not in state.error


def test_status_reads_a_lock_it_cannot_write(sample_data: Path, tmp_path: Path, fake_trainer: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """--status and the report only read: a .lock they may not write (someone else's sweep, a read-only
    copy) used to stop them with a PermissionError traceback, and a .lock that is not a file with
    IsADirectoryError."""
    spec_path = write_spec(tmp_path, sample_data, {"model.depth": [2, 4]}, name="ro")
    out = tmp_path / "sweep"
    assert main(["sweep", str(spec_path), "--out", str(out)]) == 0
    sweep, points = runner.prepare(load_spec(spec_path), out, write=False)
    # a held lock still reads as running through the read-only probe
    (sweep.run_dir(points[1]) / "summary.json").unlink()
    held = runner.PointLock(sweep.run_dir(points[1]))
    try:
        assert held.held and read_state(sweep.run_dir(points[1]), points[1].id).status == "running"
    finally:
        held.release()
    # a lock path that is not a file: not locked, no crash
    weird = sweep.run_dir(points[1]) / ".lock"
    weird.unlink()
    weird.mkdir()
    assert read_state(sweep.run_dir(points[1]), points[1].id).status == "pending"
    # a lock file that may be read but not written
    lock = sweep.run_dir(points[0]) / ".lock"
    lock.chmod(0o444)
    immutable = False
    if os.geteuid() == 0:  # root may write any mode; an immutable file it may not
        immutable = subprocess.run(["chattr", "+i", str(lock)], capture_output=True).returncode == 0
        if not immutable:
            pytest.skip("running as root without chattr: a read-only lock file cannot be made")
    try:
        with pytest.raises(OSError):
            os.close(os.open(lock, os.O_RDWR))  # the situation: the lock cannot be opened for writing
        capsys.readouterr()
        assert main(["sweep", str(spec_path), "--out", str(out), "--status"]) == 0
        assert "1 completed, 1 pending" in capsys.readouterr().out
        assert main(["report", str(out), "--x", "model.depth", "--out", str(tmp_path / "report")]) == 0
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(lock)], check=True)


def test_a_corrupt_config_yaml_is_a_warning_not_a_traceback(sample_data: Path, tmp_path: Path, fake_trainer: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Like a corrupt summary.json (read as missing: the point is pending and reruns), a run's config.yaml
    that is not YAML must not stop every sweep command with a yaml traceback."""
    spec_path = write_spec(tmp_path, sample_data, {"model.depth": [2, 4]}, name="cy")
    out = tmp_path / "sweep"
    assert main(["sweep", str(spec_path), "--out", str(out)]) == 0
    sweep, points = runner.prepare(load_spec(spec_path), out, write=False)
    bad = sweep.run_dir(points[0])
    (bad / "config.yaml").write_text("model: {depth: [2\n  : : :\n")
    (bad / "summary.json").write_text("{not json")
    capsys.readouterr()
    for extra in (["--status"], ["--dry-run"]):
        assert main(["sweep", str(spec_path), "--out", str(out), *extra]) == 0
        captured = capsys.readouterr()
        assert f"cannot read {bad / 'config.yaml'}" in captured.err and "Traceback" not in captured.err
        assert len([ln for ln in captured.err.splitlines() if "cannot read" in ln]) == 1
        assert f"pending   depth=2  runs/{points[0].id}" in captured.out
    n = len(calls(fake_trainer))
    assert main(["sweep", str(spec_path), "--out", str(out)]) == 0  # the pending point reruns
    assert len(calls(fake_trainer)) == n + 1
    assert yaml.safe_load((bad / "config.yaml").read_text())["model"]["depth"] == 2


SIGTERM_TRAINER = r'''
"""Stand-in trainer that behaves like megadepth train on SIGTERM: a checkpoint, status stopped, exit 0."""
import json, signal, sys, time
from pathlib import Path
import yaml

cfg = yaml.safe_load(open(sys.argv[1]))
out = Path(cfg["train"]["out_dir"]); out.mkdir(parents=True, exist_ok=True)
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
(out / "started").write_text("x")
deadline = time.monotonic() + 60
while not stop and time.monotonic() < deadline:
    time.sleep(0.05)
(out / "summary.json").write_text(json.dumps({"status": "stopped"}))
'''


def test_a_sweep_stopped_by_sigterm_records_interrupted_not_stopped(sample_data: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM to the sweep (Slurm's time limit, `kill`) stops its runs; the trainer then saves and says
    "stopped", as after train.stop_after_steps. That used to be recorded and printed as a
    stop_after_steps stop ("resuming"); the sweep was interrupted, so the attempt is "interrupted"."""
    script = tmp_path / "sigterm_train.py"
    script.write_text(SIGTERM_TRAINER)
    monkeypatch.setattr(runner, "TRAIN_COMMAND", [sys.executable, str(script)])
    spec_path = write_spec(tmp_path, sample_data, {"model.depth": [2]}, name="term")
    spec = load_spec(spec_path)
    sweep, points = runner.prepare(spec, tmp_path / "sweep")
    started = sweep.run_dir(points[0]) / "started"

    def signal_when_started() -> None:
        deadline = time.monotonic() + 60
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)  # to this process: the sweep, not its child

    printed: list[str] = []
    executor = runner.LocalExecutor(spec, sweep, points, jobs=1, devices=[], echo=printed.append)
    killer = threading.Thread(target=signal_when_started, daemon=True)
    killer.start()
    with pytest.raises(KeyboardInterrupt):
        executor.run()
    killer.join(timeout=5)
    attempts = json.loads((sweep.run_dir(points[0]) / "sweep_run.json").read_text())["attempts"]
    assert [a["outcome"] for a in attempts] == ["interrupted"]
    assert [r.outcome for r in executor.results] == ["interrupted"]
    assert len(printed) == 1 and "interrupted" in printed[0] and "resuming" not in printed[0]
    assert read_state(sweep.run_dir(points[0]), points[0].id).status == "pending"


def test_a_grid_over_depth_or_width_needs_a_base_shape(sample_data: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """With no base depth every grid point is its own base (r = 1): Depth-muP trained the SP model at
    every depth and the sweep compared SP with itself. Refused up front, naming the key; SP and muP
    over depth (they do not scale with it) need no base depth, nor SP over width."""
    for name, grid, refused in (
        ("d", {"model.depth": [2, 4], "parametrization.name": ["sp", "depth_mup"]}, "model.base_depth is not set"),
        ("w", {"model.width": [32, 64], "parametrization.name": ["sp", "mup"]}, "model.base_width is not set"),
        ("ok", {"model.depth": [2, 4], "parametrization.name": ["sp", "mup"]}, None),
        ("ok_w", {"model.width": [32, 64], "parametrization.name": ["sp"]}, None),
    ):
        base = tiny_config(sample_data, tmp_path / "unused")
        del base["train"]["out_dir"], base["train"]["steps"], base["model"]["base_depth"]
        base["model"].pop("base_width", None)
        for key in (k for axis in grid for k in axis.split(",")):
            section, _, leaf = key.partition(".")
            base[section].pop(leaf, None)
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"name": name, "config": base, "grid": grid, "budget": {"steps": 3}}))
        code = main(["sweep", str(path), "--out", str(tmp_path / name), "--dry-run"])
        err = capsys.readouterr().err
        if refused:
            assert code == 2 and refused in err and "Traceback" not in err, err
            assert len(err.strip().splitlines()) == 1
            # a sweep made before the check stays readable: --status only reads
            assert main(["sweep", str(path), "--out", str(tmp_path / name), "--status"]) == 0
            capsys.readouterr()
        else:
            assert code == 0, err
