"""How a run directory behaves across jobs: a finished run started again, a start-up failure, a resumed
run's W&B run and clock, and the ZeRO stages that only partition (2 and 3) against stage 0."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import tiny_config
from distributed import run_ranks, train_rank
from test_train import assert_close, losses, metrics

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def test_finished_run_started_again_changes_nothing(sample_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = tiny_config(sample_data, out, train={"save_final": True, "eval_every": 3})
    (first,) = run_ranks(train_rank, 1, cfg)
    history = (out / "metrics.jsonl").read_bytes()
    (again,) = run_ranks(train_rank, 1, cfg)
    assert again == first and json.loads((out / "summary.json").read_text())["final_loss"] == first["final_loss"]
    assert (out / "metrics.jsonl").read_bytes() == history

    # the summary lost (the job died after the last checkpoint): rebuilt from the metrics, not NaN
    (out / "summary.json").unlink()
    (rebuilt,) = run_ranks(train_rank, 1, cfg)
    assert rebuilt["status"] == "completed" and rebuilt["steps"] == 3
    assert rebuilt["final_loss"] == losses(out)[3] and rebuilt["final_eval_loss"] == first["final_eval_loss"]


def test_startup_failure_leaves_a_failed_summary(sample_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    run_ranks(train_rank, 1, tiny_config(sample_data, out, train={"steps": 2, "save_final": True}))
    states = sorted((out / "checkpoints" / "step_00000002").glob("*model_states.pt"))
    assert states
    good = states[0].read_bytes()
    states[0].write_bytes(good[:64])  # truncated: its pickle cannot be checked, refused before any work
    before = json.loads((out / "summary.json").read_text())
    with pytest.raises(RuntimeError, match="not in torch's zip format"):
        run_ranks(train_rank, 1, tiny_config(sample_data, out, train={"steps": 4}))
    assert json.loads((out / "summary.json").read_text()) == before  # refused up front: nothing written

    # a damaged file whose pickle still reads (a tensor record lost): the load itself fails
    import io
    import zipfile

    damaged = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(good)) as src, zipfile.ZipFile(damaged, "w") as dst:
        records = src.namelist()
        lost = next(n for n in records if "/data/" in n)
        for name in records:
            if name != lost:
                dst.writestr(src.getinfo(name), src.read(name))
    states[0].write_bytes(damaged.getvalue())
    with pytest.raises(RuntimeError, match="could not load checkpoint"):
        run_ranks(train_rank, 1, tiny_config(sample_data, out, train={"steps": 4}))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and "could not load checkpoint" in summary["error"]
    # the run is still at step 2 with its losses: the failed job does not turn that into step 0 / NaN
    assert summary["steps"] == 2 and summary["final_loss"] == before["final_loss"]
    # a file missing altogether (DeepSpeed asserts, with an empty message): named the same way
    states[0].unlink()
    with pytest.raises(RuntimeError, match="could not load checkpoint"):
        run_ranks(train_rank, 1, tiny_config(sample_data, out, train={"steps": 4}))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and "could not load checkpoint" in summary["error"], summary
    assert summary["steps"] == 2 and summary["final_loss"] == before["final_loss"]


def test_resumed_run_continues_its_wandb_run_and_clock(sample_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    common = {"steps": 4, "save_final": True, "log_every": 1}
    run_ranks(train_rank, 1, tiny_config(sample_data, out, train={**common, "stop_after_steps": 2},
                                         wandb={"mode": "offline"}))
    run_id = (out / "wandb-run-id").read_text().strip()
    run_ranks(train_rank, 1, tiny_config(sample_data, out, train=common, wandb={"mode": "offline"}))
    runs = sorted((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(r.name.endswith("-" + run_id) for r in runs), runs
    elapsed = {r["step"]: r["elapsed_s"] for r in metrics(out) if "elapsed_s" in r}
    assert elapsed[1] < elapsed[2] < elapsed[3] < elapsed[4]  # the second job's clock starts where the first stopped


def test_zero_stages_2_and_3_train_like_stage_0(sample_data: Path, tmp_path: Path) -> None:
    for stage in (0, 2, 3):
        run_ranks(train_rank, 1, tiny_config(sample_data, tmp_path / f"z{stage}", parallel={"zero_stage": stage}))
    for stage in (2, 3):
        assert_close(losses(tmp_path / "z0"), losses(tmp_path / f"z{stage}"), rel=1e-5)


def test_checkpoint_dying_inside_deepspeed_is_never_resumed_from(sample_data: Path, tmp_path: Path) -> None:
    """A save that dies inside DeepSpeed leaves a half-written tag folder; `latest` still names the
    previous checkpoint, the next job resumes from that one, and ends where an uninterrupted run ends."""
    from distributed import train_rank_crash_inside_engine_save

    common = {"steps": 4, "save_every": 2, "save_final": True}
    run_ranks(train_rank, 1, tiny_config(sample_data, tmp_path / "straight", train=common))
    out = tmp_path / "run"
    (result,) = run_ranks(train_rank_crash_inside_engine_save, 1, tiny_config(sample_data, out, train=common),
                          "step_00000004")
    assert result["raised"] == "node lost during checkpoint write"
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_00000002"
    assert json.loads((out / "summary.json").read_text())["status"] == "failed"
    (summary,) = run_ranks(train_rank, 1, tiny_config(sample_data, out, train={**common, "resume": "must"}))
    assert summary["status"] == "completed" and summary["steps"] == 4
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_00000004"
    assert_close(losses(tmp_path / "straight"), losses(out), rel=1e-6)
