"""Training through the real DeepSpeed engine: data parallel vs one process, resume, the run directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import tiny_config
from distributed import run_ranks, train_rank

from megadepth.config import load_config, validate

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def metrics(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def losses(out_dir: Path, key: str = "loss") -> dict[int, float]:
    return {r["step"]: r[key] for r in metrics(out_dir) if key in r}


def assert_close(a: dict[int, float], b: dict[int, float], rel: float) -> None:
    assert a.keys() == b.keys() and a
    for step in a:
        assert a[step] == pytest.approx(b[step], rel=rel), (step, a[step], b[step])


@pytest.mark.parametrize("zero_stage", [0, 1])
def test_two_data_parallel_ranks_equal_one_process(sample_data: Path, tmp_path: Path, zero_stage: int) -> None:
    """1 process x grad_accum 2 and 2 processes x grad_accum 1 see the same global batches: same losses."""
    one = tiny_config(sample_data, tmp_path / "one", train={"grad_accum": 2},
                      parallel={"zero_stage": zero_stage})
    two = tiny_config(sample_data, tmp_path / "two", train={"grad_accum": 1},
                      parallel={"zero_stage": zero_stage})
    (s1,) = run_ranks(train_rank, 1, one)
    s2 = run_ranks(train_rank, 2, two)
    assert s1["status"] == "completed" and s2[0]["status"] == "completed"
    assert (s1["world_size"], s2[0]["world_size"], s2[1]["world_size"]) == (1, 2, 2)
    assert_close(losses(tmp_path / "one"), losses(tmp_path / "two"), rel=1e-5)
    assert s1["final_eval_loss"] == pytest.approx(s2[0]["final_eval_loss"], rel=1e-5)
    assert_close(losses(tmp_path / "one", "grad_norm"), losses(tmp_path / "two", "grad_norm"), rel=1e-4)
    assert all(0 < g < 100 for g in losses(tmp_path / "one", "grad_norm").values())
    # and the run really trained: it is not just two copies of the initial loss
    l1 = losses(tmp_path / "one")
    assert l1[3] != l1[1]


@pytest.mark.parametrize(("world", "zero"), [(1, 1), (2, 1), (1, 0)])
def test_resume_equals_uninterrupted(sample_data: Path, tmp_path: Path, world: int, zero: int) -> None:
    """ZeRO-1 (DeepSpeed's optimizer state) and ZeRO 0 (megadepth clips itself) resume exactly."""
    common = {"steps": 6, "save_final": True, "grad_accum": 2 // world}
    straight = tiny_config(sample_data, tmp_path / "straight", train=common, parallel={"zero_stage": zero})
    run_ranks(train_rank, world, straight)

    interrupted = tiny_config(sample_data, tmp_path / "resumed", train={**common, "stop_after_steps": 3},
                              parallel={"zero_stage": zero})
    (first, *_) = run_ranks(train_rank, world, interrupted)
    assert first["status"] == "stopped" and first["steps"] == 3
    assert (tmp_path / "resumed" / "checkpoints" / "latest").read_text().strip() == "step_00000003"
    assert not (tmp_path / "resumed" / "summary.json").read_text().count('"completed"')

    resumed = tiny_config(sample_data, tmp_path / "resumed", train={**common, "resume": "must"},
                          parallel={"zero_stage": zero})
    (second, *_) = run_ranks(train_rank, world, resumed)
    assert second["status"] == "completed" and second["steps"] == 6
    a, b = losses(tmp_path / "straight"), losses(tmp_path / "resumed")
    assert sorted(b) == [1, 2, 3, 4, 5, 6]  # one history: no duplicated or missing records
    assert_close(a, b, rel=1e-6)
    assert second["final_eval_loss"] == pytest.approx(
        json.loads((tmp_path / "straight" / "summary.json").read_text())["final_eval_loss"], rel=1e-6)


def test_run_directory_contract(sample_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    cfg = tiny_config(sample_data, out, train={"save_final": True, "eval_every": 2, "steps": 4, "log_every": 3},
                      wandb={"mode": "offline", "group": "contract"})
    monkeypatch.setenv("WANDB_API_KEY", "local-0123456789abcdef0123456789abcdef01234567")
    (summary,) = run_ranks(train_rank, 1, cfg)

    assert validate(yaml.safe_load((out / "config.yaml").read_text())) == validate(cfg)
    records = metrics(out)
    train_records = [r for r in records if "loss" in r]
    assert [r["step"] for r in train_records] == [1, 3, 4]  # the first, every log_every-th, the last
    for r in train_records:
        assert {"step", "consumed_tokens", "loss", "lr", "grad_norm", "tokens_per_s", "elapsed_s"} <= r.keys()
        assert r["consumed_tokens"] == r["step"] * 4 * 32
    assert [r["step"] for r in records if "eval_loss" in r] == [2, 4]
    (eval_only,) = [r for r in records if "loss" not in r]  # step 2: an eval step that is no log step
    assert eval_only.keys() == {"step", "consumed_tokens", "lr", "elapsed_s", "eval_loss"}
    assert eval_only["consumed_tokens"] == 2 * 4 * 32 and eval_only["elapsed_s"] > 0

    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["status"] == "completed" and on_disk["steps"] == 4 and on_disk["tokens"] == 4 * 4 * 32
    assert {"final_loss", "final_eval_loss", "wall_s"} <= on_disk.keys() and summary["status"] == "completed"
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "depth_mup" in (out / "parametrization.txt").read_text()
    tag = (out / "checkpoints" / "latest").read_text().strip()
    assert (out / "checkpoints" / tag / "config.yaml").exists()
    assert list((out / "wandb").glob("offline-run-*")), "no offline W&B run"
    # the API key is never written into the run directory
    for path in out.rglob("*"):
        if path.is_file():
            assert b"0123456789abcdef0123456789abcdef" not in path.read_bytes(), path


def test_checkpoint_retention_and_resume_never(sample_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = tiny_config(sample_data, out, train={"steps": 4, "save_every": 1, "keep_checkpoints": 2})
    run_ranks(train_rank, 1, cfg)
    tags = sorted(p.name for p in (out / "checkpoints").iterdir() if p.is_dir())
    assert tags == ["step_00000003", "step_00000004"]
    never = tiny_config(sample_data, out, train={"steps": 4, "resume": "never"})
    from megadepth.common.errors import ConfigError
    from megadepth.train.loop import plan_training

    with pytest.raises(ConfigError, match="already holds checkpoint"):
        plan_training(validate(never))


def test_diverged_run_is_recorded(sample_data: Path, tmp_path: Path) -> None:
    cfg = tiny_config(sample_data, tmp_path / "run", optimizer={"lr": 1e6, "grad_clip": 0.0},
                      schedule={"warmup_steps": 0, "name": "constant"},
                      parametrization={"name": "sp"}, train={"steps": 30})
    (summary,) = run_ranks(train_rank, 1, cfg)
    assert summary["status"] == "diverged"
    assert summary["steps"] < 30
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "diverged"


def test_own_clipping_and_norm_equal_deepspeeds(sample_data: Path, tmp_path: Path) -> None:
    """fp32 without ZeRO: megadepth's Stepper takes the norm and clips; with ZeRO 1 DeepSpeed's optimizer
    does both. With a threshold below every step's norm the two give the same norms and losses, and the
    clipped run differs from an unclipped one (the clipping really acted)."""
    clip = 0.05
    for stage in (0, 1):
        run_ranks(train_rank, 1, tiny_config(sample_data, tmp_path / f"z{stage}", parallel={"zero_stage": stage},
                                             optimizer={"grad_clip": clip}))
    run_ranks(train_rank, 1, tiny_config(sample_data, tmp_path / "free", optimizer={"grad_clip": 0.0}))
    norms = losses(tmp_path / "z0", "grad_norm")
    assert all(g > 2 * clip for g in norms.values()), norms
    assert_close(norms, losses(tmp_path / "z1", "grad_norm"), rel=1e-5)
    assert_close(losses(tmp_path / "z0"), losses(tmp_path / "z1"), rel=1e-5)
    clipped, free = losses(tmp_path / "z0"), losses(tmp_path / "free")
    assert clipped[1] == pytest.approx(free[1], rel=1e-6)  # same start
    assert abs(clipped[3] - free[3]) > 1e-3


def test_bf16_on_cpu(sample_data: Path, tmp_path: Path) -> None:
    cfg = tiny_config(sample_data, tmp_path / "run", train={"precision": "bf16", "steps": 2},
                      parallel={"zero_stage": 1})
    (summary,) = run_ranks(train_rank, 1, cfg)
    assert summary["status"] == "completed"
    assert 0 < summary["final_loss"] < 10
    assert all(0 < g < 100 for g in losses(tmp_path / "run", "grad_norm").values())


def test_loss_falls_on_the_quickstart_shape(sample_data: Path, tmp_path: Path) -> None:
    """The quickstart model (4 layers, width 64) learns: loss after 40 steps well below the start."""
    cfg = load_config([Path(__file__).parents[1] / "configs" / "quickstart.yaml"]).model_dump(mode="json")
    cfg["model"]["vocab_size"] = 512
    cfg["data"]["path"] = str(sample_data)
    cfg["train"].update(steps=40, out_dir=str(tmp_path / "qs"), progress=False, eval_every=0, save_final=False)
    cfg["wandb"]["mode"] = "disabled"
    cfg["schedule"]["warmup_steps"] = 5
    run_ranks(train_rank, 2, cfg)
    curve = losses(tmp_path / "qs")
    assert curve[40] < curve[10] - 0.5, curve


def test_failure_mid_run_is_recorded_and_never_claims_success(sample_data: Path, tmp_path: Path) -> None:
    from distributed import train_rank_failing_checkpoint

    out = tmp_path / "run"
    run_ranks(train_rank, 1, tiny_config(sample_data, out, train={"steps": 2}))
    assert json.loads((out / "summary.json").read_text())["status"] == "completed"
    # the same run directory, continued: the save at step 3 fails
    (result,) = run_ranks(train_rank_failing_checkpoint, 1,
                          tiny_config(sample_data, out, train={"steps": 4, "save_every": 3}))
    assert result["raised"] == "No space left on device"
    assert result["summary"]["status"] == "failed" and "No space left" in result["summary"]["error"]


def test_blended_data_and_loader_workers(sample_data: Path, tmp_path: Path) -> None:
    """A weighted blend trains, and loader worker processes deliver exactly the same batches."""
    other = tmp_path / "copy"
    other.mkdir()
    for f in sample_data.iterdir():
        if f.is_file():
            (other / f.name).write_bytes(f.read_bytes())
    blend = [0.7, str(sample_data), 0.3, str(other)]
    for workers in (0, 2):
        cfg = tiny_config(sample_data, tmp_path / f"w{workers}", data={"path": blend, "num_workers": workers})
        (summary,) = run_ranks(train_rank, 1, cfg)
        assert summary["status"] == "completed"
    assert_close(losses(tmp_path / "w0"), losses(tmp_path / "w2"), rel=1e-6)


@pytest.mark.parametrize("block", ["transformer", "linear"])
def test_sgd_and_block_variants_train(sample_data: Path, tmp_path: Path, block: str) -> None:
    cfg = tiny_config(sample_data, tmp_path / "run", model={"block": block, "activation": "abs"},
                      optimizer={"name": "sgd", "lr": 0.5, "momentum": 0.9},
                      train={"steps": 8, "log_every": 1})
    (summary,) = run_ranks(train_rank, 1, cfg)
    assert summary["status"] == "completed"
    curve = losses(tmp_path / "run")
    assert curve[8] < curve[1]
    table = (tmp_path / "run" / "parametrization.txt").read_text()
    assert "depth_mup (sgd)" in table and "gamma = 0" in table


def test_ranks_with_different_configs_are_refused(sample_data: Path, tmp_path: Path) -> None:
    from distributed import train_rank_own_config

    a = tiny_config(sample_data, tmp_path / "run")
    b = tiny_config(sample_data, tmp_path / "run", optimizer={"lr": 0.02})
    with pytest.raises(RuntimeError, match="resolved a different config than rank 0"):
        run_ranks(train_rank_own_config, 2, [a, b])
    assert not (tmp_path / "run" / "summary.json").exists()


def test_distributed_startup_timeout_is_a_clear_error(sample_data: Path, tmp_path: Path) -> None:
    """A job whose other rank never comes: a one-line error after parallel.timeout_s, not a hang."""
    import os
    import subprocess
    import sys

    from distributed import free_port

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(sample_data, tmp_path / "run", parallel={"timeout_s": 3})))
    env = {**os.environ, "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "DS_ACCELERATOR": "cpu"}
    done = subprocess.run([sys.executable, "-m", "megadepth", "train", str(cfg)], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 3, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("megadepth: error: rank 0 could not join the 2-process job") and "3 s" in last
