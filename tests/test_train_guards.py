"""Guards around a run that users hit in practice: resuming a checkpoint into another layout or model
shape, a `latest` pointer to a deleted checkpoint, metrics records after a resume with log_every > 1,
divergence between log steps (never saved as `latest`), evaluation settings that cannot work, and the
bench's step counts."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import tiny_config
from distributed import (
    run_ranks,
    train_rank,
    train_rank_gloo_threads_left,
    train_rank_overtaken_during_startup,
)
from test_train import metrics

from megadepth.common.errors import ConfigError
from megadepth.config import validate
from megadepth.data import IndexedDataset, IndexedDatasetWriter

ROOT = Path(__file__).resolve().parents[1]


def _plan(cfg: dict):
    from megadepth.train.loop import plan_training

    return plan_training(validate(cfg))


@pytest.mark.distributed
def test_resume_into_another_layout_or_shape_is_refused_before_anything_is_written(
    sample_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    cfg = tiny_config(sample_data, out, train={"steps": 2, "save_final": True})
    run_ranks(train_rank, 1, cfg)
    before = {p: p.read_bytes() for p in (out / "config.yaml", out / "summary.json")}

    wider = tiny_config(sample_data, out, train={"steps": 4}, model={"width": 64})
    with pytest.raises(ConfigError, match=r"another shape \(model.width 32 there, 64 here\).*new train.out_dir"):
        _plan(wider)
    # the derived position table is named by the keys a user sets
    with pytest.raises(ConfigError, match=r"another shape \(position table \(model.max_positions, else "
                                          r"model.seq_len\) 32 there, 16 here\)"):
        _plan(tiny_config(sample_data, out, train={"steps": 4}, model={"seq_len": 16}))
    # the checkpoint says it was saved by a 2-stage pipeline (as if this run had been launched with PP=2)
    saved = out / "checkpoints" / "step_00000002" / "config.yaml"
    data = yaml.safe_load(saved.read_text())
    data["parallel"]["pipeline"] = 2
    saved.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"saved at parallel.pipeline = 2 but this run uses 1"):
        _plan(tiny_config(sample_data, out, train={"steps": 4}))
    # another ZeRO stage: the optimizer states are in other files (it crashed inside DeepSpeed before and
    # rewrote the finished run's summary.json as failed)
    data["parallel"]["pipeline"] = 1
    saved.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"saved at parallel.zero_stage = 0 but this run uses 1.*train.init_from"):
        _plan(tiny_config(sample_data, out, train={"steps": 4}, parallel={"zero_stage": 1}))
    data["parallel"]["zero_stage"] = 0
    saved.write_text(yaml.safe_dump(data))
    # settings the checkpoint's optimizer state would silently override (the new LR was logged, not used)
    with pytest.raises(ConfigError, match=r"other settings \(optimizer.lr 0.01 there, 0.001 here\).*logged but "
                                          r"not used"):
        _plan(tiny_config(sample_data, out, train={"steps": 4}, optimizer={"lr": 0.001}))
    with pytest.raises(ConfigError, match=r"parametrization.name depth_mup there, sp here"):
        _plan(tiny_config(sample_data, out, train={"steps": 4}, parametrization={"name": "sp"}))
    with pytest.raises(ConfigError, match=r"train.seed 1234 there, 5 here"):
        _plan(tiny_config(sample_data, out, train={"steps": 4, "seed": 5}))
    # what the model computes at the same shapes (rotary frequencies, the norms' epsilon)
    with pytest.raises(ConfigError, match=r"optimizer.muon.ns_steps 5 there, 3 here"):  # Muon's own settings
        data["optimizer"]["name"] = "muon"
        saved.write_text(yaml.safe_dump(data))
        _plan(tiny_config(sample_data, out, train={"steps": 4}, optimizer={"name": "muon", "muon": {"ns_steps": 3}}))
    data["optimizer"]["name"] = "adamw"
    saved.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"model.norm_eps 1e-05 there, 1e-06 here"):
        _plan(tiny_config(sample_data, out, train={"steps": 4}, model={"norm_eps": 1e-6}))
    data["model"]["position"] = "rotary"  # as if the run had rotary positions
    saved.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"model.rope_theta 10000.0 there, 500.0 here"):
        _plan(tiny_config(sample_data, out, train={"steps": 4}, model={"position": "rotary", "rope_theta": 500}))
    data["model"]["position"] = "learned"
    saved.write_text(yaml.safe_dump(data))
    # what decides the training samples: evaluation off removes the held-out split (its documents would
    # join training), another split moves documents
    with pytest.raises(ConfigError, match=r"train.eval_samples 8 there, 0 here \(0 means no held-out split"):
        _plan(tiny_config(sample_data, out, train={"steps": 4, "eval_samples": 0}))
    with pytest.raises(ConfigError, match=r"data.valid_fraction 0.05 there, 0.3 here"):
        _plan(tiny_config(sample_data, out, train={"steps": 4}, data={"valid_fraction": 0.3}))
    # the same values spelled out (base width and head size the defaults resolve to) are no change
    _plan(tiny_config(sample_data, out, train={"steps": 4}, model={"base_width": 32},
                      parametrization={"base_head_dim": 16}))
    with pytest.raises(ConfigError, match=r"model.base_width 32 there, 16 here"):
        _plan(tiny_config(sample_data, out, train={"steps": 4}, model={"base_width": 16, "base_heads": 2}))
    # a schedule change is allowed: the scheduler recomputes its factor from the config
    _plan(tiny_config(sample_data, out, train={"steps": 4}, schedule={"name": "constant"}))
    # the data at data.path: a moved copy is the same data; re-prepared data (here one document fewer, then
    # the same counts with one document's tokens moved to another) would put the resume position in a
    # different sample index
    moved = tmp_path / "moved"
    shutil.copytree(sample_data, moved)
    _plan(tiny_config(moved, out, train={"steps": 4}))
    shard = IndexedDataset(sample_data / "shard_00000")
    docs = [shard[i].copy() for i in range(len(shard))]
    for name, edited in (("fewer", docs[:-1]),
                         ("shifted", [docs[0][:-1], np.concatenate([docs[1], docs[0][-1:]]), *docs[2:]])):
        other = tmp_path / name
        other.mkdir()
        shutil.copy(sample_data / "tokenizer.model", other)
        with IndexedDatasetWriter(other / "shard_00000", shard.dtype) as writer:
            for doc in edited:
                writer.add_document(doc)
        expect = (rf"{len(docs)} documents, \d+ tokens there; {len(docs) - 1}, \d+ here" if name == "fewer"
                  else "as many documents and tokens, but other document lengths")
        with pytest.raises(ConfigError, match=rf"data.path holds other data than .*step_00000002 trained on "
                                              rf"\({expect}\).*repeat or be skipped.*train.init_from"):
            _plan(tiny_config(other, out, train={"steps": 4}))
    assert {p: p.read_bytes() for p in before} == before


@pytest.mark.distributed
def test_a_resume_with_other_blend_weights_is_refused(sample_data: Path, tmp_path: Path) -> None:
    """The blend maps the consumed-samples position onto components by the weights: resumed at 0.9/0.1
    after 0.5/0.5, component 0 skipped samples and component 1 repeated them, silently."""
    copy = tmp_path / "copy"
    shutil.copytree(sample_data, copy)
    out = tmp_path / "run"
    run_ranks(train_rank, 1, tiny_config(sample_data, out, train={"steps": 2, "save_final": True},
                                         data={"path": [0.5, str(sample_data), 0.5, str(copy)]}))
    with pytest.raises(ConfigError, match=r"other weights than .*step_00000002 trained with \(shares 0.5 -> 0.9, "
                                          r"0.5 -> 0.1\).*skipped.*repeated.*train.init_from"):
        _plan(tiny_config(sample_data, out, train={"steps": 4}, data={"path": [0.9, str(sample_data), 0.1, str(copy)]}))
    # the same shares spelled otherwise (strings from a command line, other totals) are the same blend
    _plan(tiny_config(sample_data, out, train={"steps": 4}, data={"path": ["2", str(sample_data), "2", str(copy)]}))


@pytest.mark.distributed
def test_a_second_job_on_a_run_directory_in_use_is_refused(sample_data: Path, tmp_path: Path) -> None:
    """A requeue while the old job still runs, or a double launch: the second job must not touch the run."""
    from megadepth.train.rundir import RunLock

    out = tmp_path / "run"
    cfg = tiny_config(sample_data, out, train={"steps": 2, "save_final": True})
    run_ranks(train_rank, 1, cfg)
    before = {p: p.read_bytes() for p in (out / "config.yaml", out / "summary.json", out / "metrics.jsonl")}
    job = RunLock(out)  # this test process plays the job that is still running
    assert job.acquire() is None
    try:
        with pytest.raises(ConfigError, match=r"is being trained by another job \(\S+ pid \d+\)"):
            _plan(tiny_config(sample_data, out, train={"steps": 4}))
        with pytest.raises(RuntimeError, match="is being trained by another job"):
            run_ranks(train_rank, 1, tiny_config(sample_data, out, train={"steps": 4}))
        assert {p: p.read_bytes() for p in before} == before
    finally:
        job.release()
    (summary,) = run_ranks(train_rank, 1, tiny_config(sample_data, out, train={"steps": 4}))
    assert summary["status"] == "completed" and summary["steps"] == 4
    assert RunLock.holder(out) is None  # the trainer let go of it when it ended


@pytest.mark.distributed
def test_resume_at_another_data_parallel_size_of_partitioned_states_is_refused(sample_data: Path,
                                                                             tmp_path: Path) -> None:
    """ZeRO-1 optimizer states are partitioned over the data-parallel ranks: 2 ranks' checkpoint cannot be
    resumed by 1 (DeepSpeed raised inside the engine). At ZeRO 0 the states are whole: any size resumes."""
    out = tmp_path / "run"
    cfg = tiny_config(sample_data, out, train={"steps": 2, "save_final": True, "global_batch": 8},
                      parallel={"zero_stage": 1})
    run_ranks(train_rank, 2, cfg)
    with pytest.raises(ConfigError, match=r"partitioned over 2 data-parallel rank\(s\) but this run has 1; "
                                          r"resume with 2 process\(es\)"):
        _plan(tiny_config(sample_data, out, train={"steps": 4, "global_batch": 8}, parallel={"zero_stage": 1}))
    whole = tmp_path / "whole"
    run_ranks(train_rank, 2, tiny_config(sample_data, whole, train={"steps": 2, "save_final": True, "global_batch": 8}))
    (summary,) = run_ranks(train_rank, 1, tiny_config(sample_data, whole, train={"steps": 3, "global_batch": 8}))
    assert summary["status"] == "completed" and summary["steps"] == 3


@pytest.mark.distributed
def test_a_latest_pointer_to_a_deleted_checkpoint_is_an_error_not_a_new_run(sample_data: Path, tmp_path: Path) -> None:
    import shutil

    out = tmp_path / "run"
    run_ranks(train_rank, 1, tiny_config(sample_data, out, train={"steps": 4, "save_every": 2}))
    history = (out / "metrics.jsonl").read_bytes()
    shutil.rmtree(out / "checkpoints" / "step_00000004")
    with pytest.raises(ConfigError, match=r"names checkpoint 'step_00000004', which does not exist; the newest "
                                          r"complete one there is step_00000002"):
        _plan(tiny_config(sample_data, out, train={"steps": 6}))
    assert (out / "metrics.jsonl").read_bytes() == history
    # the pointer names only a finished tag of this folder: not another run's checkpoint, not a cut save
    pointer = out / "checkpoints" / "latest"
    other = tmp_path / "other" / "checkpoints" / "step_00000002"
    shutil.copytree(out / "checkpoints" / "step_00000002", other)
    pointer.write_text("../../other/checkpoints/step_00000002")
    with pytest.raises(ConfigError, match=r"which is not a checkpoint of this folder"):
        _plan(tiny_config(sample_data, out, train={"steps": 6}))
    pointer.write_text("step_00000002")
    (out / "checkpoints" / "step_00000002" / "config.yaml").unlink()
    with pytest.raises(ConfigError, match=r"'step_00000002', which is incomplete \(no config.yaml"):
        _plan(tiny_config(sample_data, out, train={"steps": 6}))
    assert (out / "metrics.jsonl").read_bytes() == history


@pytest.mark.distributed
@pytest.mark.slow
def test_records_after_a_resume_equal_an_uninterrupted_run_with_log_every_3(sample_data: Path, tmp_path: Path) -> None:
    common = {"steps": 8, "log_every": 3, "eval_every": 4, "save_final": True}
    run_ranks(train_rank, 1, tiny_config(sample_data, tmp_path / "straight", train=common))
    out = tmp_path / "resumed"
    for stop in (4, 2):  # stopped at step 4 (mid-window), then at 6 (a log step), then to the end
        run_ranks(train_rank, 1, tiny_config(sample_data, out, train={**common, "stop_after_steps": stop}))
    (summary,) = run_ranks(train_rank, 1, tiny_config(sample_data, out, train=common))
    straight, resumed = metrics(tmp_path / "straight"), metrics(out)
    assert [r["step"] for r in resumed] == [r["step"] for r in straight] == [1, 3, 4, 6, 8]
    for a, b in zip(straight, resumed, strict=True):
        for key in ("loss", "eval_loss", "grad_norm", "lr", "consumed_tokens"):
            assert (key in a) == (key in b), (a, b)
            if key in a:
                assert math.isclose(a[key], b[key], rel_tol=1e-12), (key, a, b)
    assert summary["final_loss"] == json.loads((tmp_path / "straight" / "summary.json").read_text())["final_loss"]


@pytest.mark.distributed
def test_a_stopped_run_summarises_the_loss_where_it_stopped(sample_data: Path, tmp_path: Path) -> None:
    """summary.json of a run stopped between log steps gave the loss of the last record (step 1's loss
    beside steps 5), and a run without evaluation wrote its eval loss as the string "nan"."""
    common = {"steps": 6, "eval_samples": 0, "eval_every": 0}
    run_ranks(train_rank, 1, tiny_config(sample_data, tmp_path / "every", train={**common, "log_every": 1}))
    per_step = {r["step"]: r["loss"] for r in metrics(tmp_path / "every")}
    (stopped,) = run_ranks(train_rank, 1, tiny_config(sample_data, tmp_path / "stopped",
                                                      train={**common, "log_every": 3, "stop_after_steps": 5}))
    on_disk = json.loads((tmp_path / "stopped" / "summary.json").read_text())
    assert on_disk["status"] == "stopped" and on_disk["steps"] == 5
    assert on_disk["final_loss"] == pytest.approx((per_step[4] + per_step[5]) / 2, rel=1e-9)
    assert on_disk["final_eval_loss"] is None  # no evaluation: null, not "nan"
    (finished,) = run_ranks(train_rank, 1, tiny_config(sample_data, tmp_path / "stopped",
                                                       train={**common, "log_every": 3}))
    assert finished["final_loss"] == pytest.approx((per_step[4] + per_step[5] + per_step[6]) / 3, rel=1e-9)


@pytest.mark.distributed
def test_divergence_between_log_steps_is_never_saved(sample_data: Path, tmp_path: Path) -> None:
    from megadepth.train.merge import consolidated_state

    out = tmp_path / "run"
    cfg = tiny_config(sample_data, out, optimizer={"lr": 1e4, "grad_clip": 0.0},
                      train={"steps": 30, "log_every": 10, "save_every": 2, "eval_every": 0})
    (summary,) = run_ranks(train_rank, 1, cfg)
    assert summary["status"] == "diverged" and summary["steps"] < 10  # caught at a save, before the first log
    latest = out / "checkpoints" / "latest"
    if latest.exists():  # an earlier save was still finite: it must hold finite weights
        _, state, _ = consolidated_state(out / "checkpoints")
        assert all(bool(t.isfinite().all()) for t in state.values())


def test_evaluation_that_cannot_work_is_refused_up_front(sample_data: Path, tmp_path: Path) -> None:
    from megadepth.train.preflight import preflight

    pp = tiny_config(sample_data, tmp_path / "r", model={"depth": 2}, parallel={"pipeline": 2, "zero_stage": 1},
                     train={"eval_samples": 6, "grad_accum": 2})
    with pytest.raises(ConfigError, match=r"eval_samples must be a multiple of .* = 4 x 1 = 4 \(got 6\)"):
        preflight(validate(pp), 2)
    pp["train"]["eval_samples"] = 8
    preflight(validate(pp), 2)
    no_eval = tiny_config(sample_data, tmp_path / "r", train={"eval_every": 2, "eval_samples": 0})
    with pytest.raises(ConfigError, match="eval_every is set but train.eval_samples is 0"):
        preflight(validate(no_eval), 1)


@pytest.mark.parametrize("args", [["--steps", "0"], ["--steps", "-3"], ["--warmup", "-1"]])
def test_bench_refuses_step_counts_that_time_nothing(args: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-m", "megadepth", "bench", str(ROOT / "configs" / "bench" / "tiny.yaml"),
                           *args], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2 and "must be at least" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.distributed
@pytest.mark.slow
def test_a_signal_to_one_rank_stops_every_rank_after_the_same_step_and_the_same_command_resumes(
        sample_data: Path, tmp_path: Path) -> None:
    """A scheduler's SIGTERM (or Ctrl-C) ends a run resumable: both ranks stop after the same step, right
    after the signal (not at the next log step: log_every is 1000 here), with a checkpoint there. Only
    rank 1 is signalled, so rank 0 learns of it through the per-step host all-reduce."""
    import os
    import signal
    import time

    from distributed import RANK_ENV, free_port

    out = tmp_path / "run"
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(sample_data, out, train={"steps": 100000, "log_every": 1000})))
    port = str(free_port())
    procs = []
    for rank in range(2):
        env = {**os.environ, **RANK_ENV, "PYTHONPATH": str(ROOT), "RANK": str(rank), "LOCAL_RANK": str(rank),
               "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_PORT": port}
        procs.append(subprocess.Popen([sys.executable, "-m", "megadepth", "train", str(cfg)], cwd=tmp_path,
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        deadline = time.monotonic() + 120
        while not (out / "metrics.jsonl").exists() or not (out / "metrics.jsonl").read_text().strip():
            assert all(p.poll() is None for p in procs) and time.monotonic() < deadline, procs[0].communicate()[1]
            time.sleep(0.1)
        procs[1].send_signal(signal.SIGTERM)
        results = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], results[0][1][-3000:] + results[1][1][-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "stopped" and 1 <= summary["steps"] < 1000, summary  # well before a log step
    assert "SIGTERM received" in results[1][1]  # the signalled rank says so on receipt
    assert f"step {summary['steps']}: SIGTERM received, checkpoint saved" in results[0][0]  # rank 0 names it
    assert (out / "checkpoints" / "latest").read_text().strip() == f"step_{summary['steps']:08d}"
    resumed = tiny_config(sample_data, out, train={"steps": summary["steps"] + 2, "log_every": 1000, "resume": "must"})
    again = run_ranks(train_rank, 2, resumed)
    assert again[0]["status"] == "completed" and again[0]["steps"] == summary["steps"] + 2


@pytest.mark.distributed
def test_a_signal_during_start_up_also_ends_in_a_stopped_run(sample_data: Path, tmp_path: Path) -> None:
    """SIGTERM while the rank reads its data (before the engine exists) killed it with no summary; now it
    is held until training runs and the run stops after its first step(s) with a checkpoint."""
    from distributed import train_rank_signalled_during_startup

    out = tmp_path / "run"
    (summary,) = run_ranks(train_rank_signalled_during_startup, 1,
                           tiny_config(sample_data, out, train={"steps": 50, "log_every": 10}))
    assert summary["status"] == "stopped" and 1 <= summary["steps"] <= 2, summary
    assert (out / "checkpoints" / "latest").read_text().strip() == f"step_{summary['steps']:08d}"


@pytest.mark.distributed
def test_merge_and_export_name_a_missing_tag_and_refuse_nan_weights(sample_data: Path, tmp_path: Path) -> None:
    import torch

    from megadepth.train.merge import consolidated_state

    out = tmp_path / "run"
    run_ranks(train_rank, 1, tiny_config(sample_data, out, train={"steps": 2, "save_final": True}))
    ckpts = out / "checkpoints"
    with pytest.raises(ConfigError, match=r"no checkpoint named step_00000009 \(complete ones there: step_00000002\)"):
        consolidated_state(ckpts, "step_00000009")
    (states,) = (ckpts / "step_00000002").glob("*model_states.pt")
    data = torch.load(states, map_location="cpu", weights_only=True)
    module = data["module"]
    name = next(k for k, v in module.items() if v.is_floating_point())
    module[name] = torch.full_like(module[name], float("nan"))
    torch.save(data, states)
    with pytest.raises(ConfigError, match=r"hold NaN or inf .*diverged before this checkpoint"):
        consolidated_state(ckpts)


def test_nccl_on_a_cpu_run_is_refused_up_front(sample_data: Path, tmp_path: Path) -> None:
    """It surfaced as "could not join the job within 600 s", blaming the network."""
    with pytest.raises(ConfigError, match=r"parallel.backend is 'nccl', which runs on CUDA GPUs only.*'gloo'"):
        _plan(tiny_config(sample_data, tmp_path / "run", parallel={"backend": "nccl"}, train={"device": "cpu"}))
    assert not (tmp_path / "run").exists()


@pytest.mark.distributed
def test_a_resume_at_another_global_batch_continues_from_its_samples(sample_data: Path, tmp_path: Path) -> None:
    """The train set was sized steps x global batch, so a smaller batch after the resume ran out of samples
    (a bare StopIteration); it is sized from the checkpoint's consumed samples now."""
    out = tmp_path / "run"
    run_ranks(train_rank, 1, tiny_config(sample_data, out, train={"steps": 4, "global_batch": 8, "save_final": True}))
    (summary,) = run_ranks(train_rank, 1, tiny_config(sample_data, out, train={"steps": 8, "global_batch": 4}))
    assert summary["status"] == "completed" and summary["steps"] == 8
    assert metrics(out)[-1]["consumed_tokens"] == (4 * 8 + 4 * 4) * 32
    # a checkpoint from before position.json: the shortfall is one clear line, before any step
    other = tmp_path / "old"
    run_ranks(train_rank, 1, tiny_config(sample_data, other, train={"steps": 4, "global_batch": 8, "save_final": True}))
    (other / "checkpoints" / "step_00000004" / "position.json").unlink()
    with pytest.raises(RuntimeError, match=r"consumed 32 samples in 4 steps; 4 more steps of 4 need 48 samples"):
        run_ranks(train_rank, 1, tiny_config(sample_data, other, train={"steps": 8, "global_batch": 4}))


def test_the_run_lock_dies_with_its_holder_not_with_its_forked_children(tmp_path: Path) -> None:
    """Data-loader workers are forked from the trainer: they shared the flock, and one orphaned by a killed
    trainer kept the run directory locked, so an immediate requeue was refused."""
    import os
    import signal
    import time

    from megadepth.train.rundir import RunLock

    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import os, sys, time
            from megadepth.train.rundir import RunLock
            assert RunLock({str(tmp_path)!r}).acquire() is None
            if os.fork() == 0:  # a worker: lives on after the trainer is killed
                time.sleep(30)
                os._exit(0)
            print("locked", flush=True)
            time.sleep(30)
        """)], cwd=ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        assert RunLock.holder(tmp_path) is not None
        holder.kill()
        holder.wait()
        deadline = time.monotonic() + 5
        while RunLock.holder(tmp_path) is not None:  # the kernel drops it with the process, not 4 s later
            assert time.monotonic() < deadline, "the forked child still holds the run lock"
            time.sleep(0.05)
        assert RunLock(tmp_path).acquire() is None
    finally:
        os.killpg(holder.pid, signal.SIGKILL)


def test_a_lock_file_that_cannot_be_written_does_not_stop_the_run(tmp_path: Path) -> None:
    """A teammate's leftover lock file (mode 0644) or a read-only copy: flock works on a read-only
    descriptor, so the lock is still taken (it raised PermissionError on rank 0 before)."""
    from megadepth.train.rundir import RunLock

    lock_file = tmp_path / RunLock.NAME
    lock_file.write_text("otherhost pid 1")
    # root ignores file modes: an immutable file is what refuses root's write access
    if subprocess.run(["chattr", "+i", str(lock_file)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here to make the file unwritable for root")
    try:
        ours = RunLock(tmp_path)
        assert ours.acquire() is None
        assert RunLock(tmp_path).acquire() == "otherhost pid 1"  # held: a second job is still kept out
        ours.release()
    finally:
        subprocess.run(["chattr", "-i", str(lock_file)], check=False)


@pytest.mark.distributed
def test_a_job_overtaken_while_starting_does_not_restart_the_run(sample_data: Path, tmp_path: Path) -> None:
    """This job planned a fresh start; while it built its data index another job trained the run to the end.
    It used to start from step 0 anyway, emptying metrics.jsonl and replacing the checkpoints."""
    out = tmp_path / "run"
    cfg = tiny_config(sample_data, out, train={"steps": 2, "save_final": True})
    with pytest.raises(RuntimeError, match=r"changed while this job started \(its latest checkpoint is now "
                                           r"step_00000002, this job planned a fresh start\)"):
        run_ranks(train_rank_overtaken_during_startup, 1, cfg)
    summary = json.loads((out / "summary.json").read_text())  # the other job's finished run, untouched
    assert summary["status"] == "completed" and summary["steps"] == 2
    assert [r["step"] for r in metrics(out) if "loss" in r] == [1, 2]


@pytest.mark.distributed
def test_a_rank_whose_output_is_closed_stops_with_a_checkpoint(sample_data: Path, tmp_path: Path) -> None:
    """Under a hostfile launch the ranks write through ssh and pdsh, which Ctrl-C ends first: the remote
    rank gets no signal, only a closed pipe. It stops after the next step with a checkpoint (status
    stopped, resumable), as for SIGTERM, instead of failing on BrokenPipeError with nothing saved."""
    import os
    import time

    out = tmp_path / "run"
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(sample_data, out, train={"steps": 100000, "log_every": 1})))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-u", "-m", "megadepth", "train", str(cfg)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not (out / "metrics.jsonl").exists() or not (out / "metrics.jsonl").read_text().strip():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        proc.stdout.close()  # what ssh's end does when pdsh is interrupted
        assert proc.wait(timeout=120) == 0
    finally:
        proc.kill()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "stopped" and summary["steps"] < 100000, summary
    assert (out / "checkpoints" / "latest").read_text().strip() == f"step_{summary['steps']:08d}"


@pytest.mark.distributed
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="lists threads through Linux's /proc")
@pytest.mark.parametrize("parallel", [{"pipeline": 1}, {"pipeline": 2, "zero_stage": 1}], ids=["data-parallel", "pipeline"])
def test_a_finished_rank_leaves_no_process_group_for_interpreter_exit(sample_data: Path, tmp_path: Path,
                                                                      parallel: dict) -> None:
    """Every process group is gone once train() returns, ours, DeepSpeed's (its pipeline grid) and the world
    group (which torch.distributed.nn, imported late, would hold as a default argument): a group left for
    interpreter exit is torn down with its gloo threads running, and now and then the rank aborts after a
    completed run ("terminate called without an active exception"; seen under a hostfile launch)."""
    cfg = tiny_config(sample_data, tmp_path / "run", parallel=parallel)
    for status, threads in run_ranks(train_rank_gloo_threads_left, 2, cfg):
        assert status == "completed"
        assert threads == [], f"gloo threads still running after train(): {threads}"
