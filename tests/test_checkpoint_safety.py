"""What a checkpoint may do to the machine that resumes it, and what a failed save leaves behind.

A planted pickle in a run directory must not run on resume (checkpoints are read weights-only); a model
whose last update overflowed must never become ``latest``; a save that hits a full disk or a read-only
folder removes its cut-short tag, says why in one line, keeps ``latest`` and writes the run's summary.

The disk tests mount small tmpfs file systems, which needs root (CI runs as root): elsewhere they skip,
and under ``CI=true`` a mount that fails is a failure, so CI cannot pass them vacuously.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from distributed import run_ranks, train_rank, train_rank_reporting

from megadepth.common.errors import ConfigError
from megadepth.config import validate

pytestmark = [pytest.mark.distributed]


class _Planted:
    """An object whose unpickling creates a file: what an attacker's checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


class _PlantedShell:
    """The same through os.system (torch words its refusal of a blocked module differently)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def _plant(file: Path, marker: Path, zip_format: bool = True, kind: type = _Planted) -> None:
    """Rewrite a checkpoint file with the planted object beside its real contents."""
    data = torch.load(file, weights_only=False)  # the test's own file, written a moment ago
    data["planted"] = kind(marker)
    buffer = io.BytesIO()
    torch.save(data, buffer, _use_new_zipfile_serialization=zip_format)
    file.write_bytes(buffer.getvalue())


def _trained(sample_data: Path, out: Path, **train: object) -> dict:
    cfg = tiny_config(sample_data, out, train={"steps": 2, "save_final": True, **train},
                      parallel={"zero_stage": 1})
    (summary,) = run_ranks(train_rank, 1, cfg)
    assert summary["status"] == "completed"
    return cfg


@pytest.mark.parametrize("victim", ["mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"])
def test_a_planted_pickle_in_a_checkpoint_is_refused_before_it_runs(sample_data: Path, tmp_path: Path,
                                                                     victim: str) -> None:
    out, marker = tmp_path / "run", tmp_path / "PWNED"
    cfg = _trained(sample_data, out)
    _plant(out / "checkpoints" / "step_00000002" / victim, marker)
    cfg["train"]["steps"] = 4  # resume and go on
    (result,) = run_ranks(train_rank_reporting, 1, cfg)
    assert not marker.exists(), "the planted object ran on resume"
    assert result["raised"] and "would run code" in result["raised"] and victim in result["raised"]
    # the dry run and the start-up checks refuse it too, before any process group exists
    from megadepth.train.preflight import check_run_dir

    with pytest.raises(ConfigError, match="weights-only"):
        check_run_dir(validate(cfg), 1)
    assert not marker.exists()
    if victim.startswith("mp_rank"):  # the weights readers: generate, export, merge-tp, train.init_from
        from megadepth.train.merge import consolidated_state

        with pytest.raises(ConfigError, match=r"refused .*it names \S+, which is not allowed"):
            consolidated_state(out / "checkpoints")
        assert not marker.exists()


def test_a_file_that_cannot_be_scanned_is_refused_by_the_dry_run_too(sample_data: Path, tmp_path: Path) -> None:
    """A legacy (non-zip) file's pickle cannot be scanned without building it: refused up front, so the
    dry run says what the run would; and DeepSpeed's own read of such a file is weights-only too."""
    from megadepth.train import checkpoint
    from megadepth.train.preflight import check_run_dir

    out, marker = tmp_path / "run", tmp_path / "PWNED"
    cfg = _trained(sample_data, out)
    victim = out / "checkpoints" / "step_00000002" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    _plant(victim, marker, zip_format=False, kind=_PlantedShell)
    cfg["train"]["steps"] = 4
    with pytest.raises(ConfigError, match="not in torch's zip format"):
        check_run_dir(validate(cfg), 1)
    with pytest.raises(ConfigError, match=r"it names posix\.system, which is not allowed") as refused:
        checkpoint.load_file(victim)  # the reader the engine is given
    assert "weights_only" not in str(refused.value)  # torch's advice to load it unsafely is not passed on
    assert not marker.exists(), "the planted object ran"


def test_a_fifo_in_a_checkpoint_does_not_hang_the_checks(sample_data: Path, tmp_path: Path) -> None:
    from megadepth.train.preflight import check_run_dir

    out = tmp_path / "run"
    cfg = _trained(sample_data, out)
    os.mkfifo(out / "checkpoints" / "step_00000002" / "extra.pt")
    with pytest.raises(ConfigError, match="not a regular file"):
        check_run_dir(validate(cfg), 1)


def test_complete_checkpoints_without_a_pointer_are_not_overwritten(sample_data: Path, tmp_path: Path) -> None:
    """A first save cut short between its config.yaml and `latest` (or a deleted pointer) left complete
    checkpoints: starting over would overwrite them."""
    from megadepth.train.preflight import check_run_dir

    out = tmp_path / "run"
    cfg = _trained(sample_data, out)
    (out / "checkpoints" / "latest").unlink()
    with pytest.raises(ConfigError, match=r"complete checkpoint\(s\) up to step_00000002 .*write the tag"):
        check_run_dir(validate(cfg), 1)
    (out / "checkpoints" / "latest").symlink_to(out / "summary.json")  # a link: its target is not shown
    with pytest.raises(ConfigError, match="symbolic link") as refused:
        check_run_dir(validate(cfg), 1)
    assert "completed" not in str(refused.value)


def test_a_checkpoint_loads_and_resumes_through_the_weights_only_reader(sample_data: Path, tmp_path: Path) -> None:
    """The safe reader must not refuse what DeepSpeed itself writes (ZeRO 1, bf16: its bookkeeping)."""
    out = tmp_path / "run"
    cfg = tiny_config(sample_data, out, train={"steps": 2, "save_final": True, "precision": "bf16"},
                      parallel={"zero_stage": 1})
    run_ranks(train_rank, 2, cfg)
    cfg["train"]["steps"] = 3
    first, _ = run_ranks(train_rank, 2, cfg)
    assert first["status"] == "completed" and first["steps"] == 3


def test_weights_that_overflowed_never_become_latest(sample_data: Path, tmp_path: Path) -> None:
    """Step 1's loss and gradients are finite, its update is not: nothing may be published after it."""
    out = tmp_path / "run"
    cfg = tiny_config(sample_data, out, optimizer={"lr": 3e38}, train={"steps": 3, "save_every": 1})
    (summary,) = run_ranks(train_rank, 1, cfg)
    assert summary["status"] == "diverged"
    assert not (out / "checkpoints" / "latest").exists()
    assert not list((out / "checkpoints").glob("step_*"))


# ---- a full disk, a read-only folder ----

@contextlib.contextmanager
def _tmpfs(where: Path, size_kib: int, read_only: bool = False) -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    options = f"size={size_kib}k" + (",ro" if read_only else "")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        why = f"cannot mount a tmpfs (needs root): {done.stderr.strip() or done.returncode}"
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _grow(where: Path, size_kib: int) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size_kib}k", str(where)], check=True)


def _checkpoint_kib(sample_data: Path, tmp_path: Path, world: int) -> int:
    """How much one checkpoint of the test model takes (all ranks' files), measured."""
    out = tmp_path / "measure"
    cfg = tiny_config(sample_data, out, train={"steps": 1, "save_final": True}, parallel={"zero_stage": 1})
    run_ranks(train_rank, world, cfg)
    tag = out / "checkpoints" / "step_00000001"
    return sum(f.stat().st_size for f in tag.iterdir()) // 1024 + 1


@pytest.mark.parametrize("world", [1, 2])
def test_a_full_disk_during_a_save_removes_the_partial_tag_and_the_run_resumes(sample_data: Path, tmp_path: Path,
                                                                                world: int) -> None:
    one = _checkpoint_kib(sample_data, tmp_path, world)
    with _tmpfs(tmp_path / "disk", size_kib=one * 3 // 2 + 64) as disk:  # one checkpoint fits, two do not
        out = disk / "run"
        cfg = tiny_config(sample_data, out, train={"steps": 3, "save_every": 1, "keep_checkpoints": 1},
                          parallel={"zero_stage": 1}, data={"cache_dir": str(tmp_path / "cache")})
        results = run_ranks(train_rank_reporting, world, cfg)  # times out if a rank hangs at a barrier
        for result in results:
            assert result["raised"] and "No space left on device" in result["raised"], result["raised"]
            assert "the partial checkpoint was removed" in result["raised"]
            assert "latest still names step_00000001" in result["raised"]
        summary = results[0]["summary"]
        assert summary is not None and summary["status"] == "failed" and "No space left" in summary["error"]
        ckpts = out / "checkpoints"
        assert (ckpts / "latest").read_text() == "step_00000001"
        assert sorted(p.name for p in ckpts.glob("step_*")) == ["step_00000001"]
        leftovers = [p for p in out.rglob("*") if p.name.endswith((".tmp", ".tmp.png"))]
        assert not leftovers, leftovers

        _grow(disk, one * 4 + 256)  # space freed: the same command resumes from step 1
        results = run_ranks(train_rank_reporting, world, cfg)
        assert results[0]["raised"] is None and results[0]["summary"]["status"] == "completed"
        assert (ckpts / "latest").read_text() == "step_00000003"


def test_a_read_only_checkpoints_folder_is_named_before_training(sample_data: Path, tmp_path: Path) -> None:
    from megadepth.train import checkpoint
    from megadepth.train.preflight import check_run_dir

    out = tmp_path / "run"
    with _tmpfs(out / "checkpoints", size_kib=256, read_only=True):
        cfg = tiny_config(sample_data, out, train={"steps": 3, "save_every": 1})
        with pytest.raises(ConfigError, match="cannot be written"):  # the dry run and launch checks
            check_run_dir(validate(cfg), 1)
        assert "Read-only file system" in (checkpoint.check_writable(out / "checkpoints") or "")
        (result,) = run_ranks(train_rank_reporting, 1, cfg)
        assert result["raised"] and "cannot be written" in result["raised"], result["raised"]
        assert "Parent directory" not in result["raised"]


def test_a_full_disk_outside_a_checkpoint_save_is_one_line(sample_data: Path, tmp_path: Path) -> None:
    """metrics.jsonl or summary.json on a full disk: one line and exit 1, not a chained traceback."""
    import sys

    import yaml

    with _tmpfs(tmp_path / "disk", size_kib=8) as disk:
        cfg = tiny_config(sample_data, disk / "run", train={"steps": 3}, data={"cache_dir": str(tmp_path / "c")})
        (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
        done = subprocess.run([sys.executable, "-m", "megadepth", "train", str(tmp_path / "cfg.yaml")],
                              capture_output=True, text=True, timeout=300)
    lines = [line for line in done.stderr.splitlines() if line.startswith("megadepth: error:")]
    assert done.returncode == 1, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and len(lines) == 1, done.stderr[-2000:]
    assert "No space left on device" in lines[0]


def test_a_checkpoint_whose_groups_hold_other_numbers_is_not_resumed_silently(sample_data: Path,
                                                                                tmp_path: Path) -> None:
    """The same config can resolve to other per-group numbers when megadepth's rules change between a save
    and its resume (as the Adam eps defaults did); DeepSpeed would restore the checkpoint's numbers while
    parametrization.txt and the logs show the new ones. Simulated by the numbers a former rule gave."""
    out = tmp_path / "run"
    cfg = tiny_config(sample_data, out, train={"steps": 2, "save_final": True})
    (summary,) = run_ranks(train_rank, 1, cfg)
    states = out / "checkpoints" / "step_00000002" / "mp_rank_00_model_states.pt"
    data = torch.load(states, weights_only=True)
    embedding = next(g for g in data["optimizer"]["param_groups"] if g["name"] == "embedding")
    embedding["eps"] *= 2  # what another eps rule would have given this group
    torch.save(data, states)
    cfg["train"]["steps"] = 4
    (result,) = run_ranks(train_rank_reporting, 1, cfg)
    assert result["raised"] and "group embedding: eps" in result["raised"], result["raised"]
    assert "parametrization.eps_scaling" in result["raised"]
    assert result["summary"]["steps"] == 2  # nothing trained on the wrong numbers


def test_a_zero3_run_resumed_and_saving_again_goes_on_as_if_never_stopped(sample_data: Path, tmp_path: Path) -> None:
    """The save gathers every ZeRO-3 parameter outside the forward's recorded fetch order; after a resume
    the prefetcher then replayed a stale trace and the step after the next save died ("tracing error")."""
    from test_train import losses

    common = {"steps": 4, "save_every": 1}
    straight = tiny_config(sample_data, tmp_path / "straight", train=common, parallel={"zero_stage": 3})
    run_ranks(train_rank, 1, straight)
    resumed = tiny_config(sample_data, tmp_path / "resumed", train={**common, "steps": 1},
                          parallel={"zero_stage": 3})
    run_ranks(train_rank, 1, resumed)
    resumed["train"]["steps"] = 4
    (summary,) = run_ranks(train_rank, 1, resumed)
    assert summary["status"] == "completed" and summary["steps"] == 4
    a, b = losses(tmp_path / "straight"), losses(tmp_path / "resumed")
    assert sorted(b) == [1, 2, 3, 4]
    for step in a:
        assert a[step] == pytest.approx(b[step], rel=1e-6), (step, a[step], b[step])


def test_a_disk_full_at_the_first_save_fails_every_rank_together(sample_data: Path, tmp_path: Path) -> None:
    """Before the first ZeRO save, DeepSpeed's recovery scripts are not in checkpoints/ yet: rank 0 copies
    them outside the checkpoint engine, and a failed copy there left the other ranks at a barrier."""
    one = _checkpoint_kib(sample_data, tmp_path, 2)
    with _tmpfs(tmp_path / "disk", size_kib=max(one // 3, 64)) as disk:
        out = disk / "run"
        cfg = tiny_config(sample_data, out, train={"steps": 2, "save_every": 1}, parallel={"zero_stage": 1},
                          data={"cache_dir": str(tmp_path / "cache")})
        results = run_ranks(train_rank_reporting, 2, cfg)  # times out if a rank hangs at a barrier
        for result in results:
            assert result["raised"] and "could not save checkpoint" in result["raised"], result["raised"]
            assert "there is no earlier checkpoint" in result["raised"]
        assert not list((out / "checkpoints").glob("step_*"))
        assert not (out / "checkpoints" / "latest").exists()


def test_a_checkpoint_from_before_a_rule_option_resumes_with_the_option_for_its_rule(sample_data: Path,
                                                                                      tmp_path: Path) -> None:
    """A checkpoint saved before parametrization.adam_wd_scaling existed has no key for it; its numbers are
    those of adam_wd_scaling: lr_inverse. Setting that must resume it (a key comparison refused it), and
    leaving it unset must be refused by the numbers, naming the option."""
    import yaml

    out = tmp_path / "run"
    old_rule = {"adam_wd_scaling": "lr_inverse"}
    cfg = tiny_config(sample_data, out, model={"width": 64, "base_width": 32, "base_heads": 2},
                      parametrization={"name": "depth_mup", **old_rule},
                      optimizer={"name": "adam", "lr": 0.01, "weight_decay": 0.1},
                      train={"steps": 2, "save_final": True})
    run_ranks(train_rank, 1, cfg)
    saved = out / "checkpoints" / "step_00000002" / "config.yaml"
    data = yaml.safe_load(saved.read_text())
    del data["parametrization"]["adam_wd_scaling"]  # as written before the option existed
    saved.write_text(yaml.safe_dump(data))

    cfg["train"]["steps"] = 3
    without = {**cfg, "parametrization": {"name": "depth_mup"}}
    (refused,) = run_ranks(train_rank_reporting, 1, without)
    assert refused["raised"] and "weight_decay" in refused["raised"] and "adam_wd_scaling" in refused["raised"]
    (summary,) = run_ranks(train_rank, 1, cfg)
    assert summary["status"] == "completed" and summary["steps"] == 3
