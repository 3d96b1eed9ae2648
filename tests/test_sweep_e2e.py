"""A real mini sweep through the real trainer: 2 depths x 2 LRs (one of which diverges), 3 steps,
--jobs 2, then the report and a second invocation that runs nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import tiny_config

from megadepth.cli import main


@pytest.mark.slow
def test_real_mini_sweep_end_to_end(sample_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = tiny_config(sample_data, tmp_path / "unused")
    del base["train"]["out_dir"], base["train"]["steps"]  # the sweep sets both (out dir, budget)
    del base["model"]["depth"], base["optimizer"]["lr"]  # and the grid its axes
    spec = {"name": "mini", "config": base,
            "grid": {"model.depth": [2, 4], "optimizer.lr": [0.01, 1.0e30]},  # 1e30: NaN by step 2
            "budget": {"steps": 3}, "metric": "final_eval_loss"}
    path = tmp_path / "mini.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = tmp_path / "sweep"

    assert main(["sweep", str(path), "--out", str(out), "--jobs", "2"]) == 0
    index = json.loads((out / "sweep.json").read_text())
    assert index["counts"] == {"completed": 2, "diverged": 2}
    for run in index["runs"]:
        run_dir = out / run["dir"]
        summary = json.loads((run_dir / "summary.json").read_text())
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert config["wandb"]["group"] == "mini" and config["train"]["out_dir"] == str(run_dir.resolve())
        assert (run_dir / "metrics.jsonl").is_file() and "megadepth:" in (run_dir / "train.log").read_text()
        if run["point"]["optimizer.lr"] == 0.01:
            assert summary["status"] == "completed" and summary["steps"] == 3
            assert isinstance(summary["final_eval_loss"], float)
        else:
            assert summary["status"] == "diverged" and run["attempts"] == 1
    capsys.readouterr()

    assert main(["sweep", str(path), "--out", str(out), "--jobs", "2"]) == 0
    assert "0 to run (2 completed, 2 diverged skipped)" in capsys.readouterr().out
    assert all(r["attempts"] == 1 for r in json.loads((out / "sweep.json").read_text())["runs"])

    assert main(["report", str(out)]) == 0
    table = capsys.readouterr().out
    assert "2 completed, 2 diverged" in table and "optimum shift depth 2 -> 4" in table
    assert (out / "report" / "transfer.png").stat().st_size > 0
    assert (out / "report" / "loss_vs_depth.png").stat().st_size > 0
