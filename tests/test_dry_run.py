"""``megadepth train --dry-run``: the trainer's checks and the run's plan, with nothing run or written."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from conftest import tiny_config
from distributed import run_ranks, train_rank

from megadepth.cli import main
from megadepth.data import IndexedDataset, IndexedDatasetWriter


def _dry_run(cfg: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str, str]:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    capsys.readouterr()
    code = main(["train", str(path), "--dry-run", *extra])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.distributed
def test_dry_run_shows_what_the_real_run_gets_and_writes_nothing(sample_data: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:

    from megadepth.config import validate
    from megadepth.model import GPT
    from megadepth.parametrize import Parametrization

    out = tmp_path / "run"
    cfg = tiny_config(sample_data, out, model={"width": 64, "base_width": 32, "base_heads": 2, "tie_embeddings": False},
                      train={"steps": 2, "micro_batch": 4, "global_batch": 8})
    code, text, err = _dry_run(cfg, tmp_path, capsys)
    assert code == 0, err
    assert not out.exists()  # no run directory, no config.yaml, no checkpoint
    lines = text.splitlines()
    # the parameter count of a real (CPU) model of this shape, counted here
    config = validate(cfg)
    ptz = Parametrization.from_config(config.model, config.parametrization, optimizer=config.optimizer.name)
    real = GPT(config.model, ptz.multipliers())
    assert f"model: {sum(p.numel() for p in set(real.parameters())):,} parameters" in text
    assert "global 8 = micro 4 x accumulation 2 x data 1; 256 tokens per step, 2 steps = 512 tokens" in text
    assert f"run: starts at step 0 in {out}" in text
    table = lines[next(i for i, line in enumerate(lines) if line.startswith("parametrization ")):]

    # the table is exactly what the real run writes to parametrization.txt
    run_ranks(train_rank, 1, {**cfg, "train": {**cfg["train"], "save_final": True}})
    assert (out / "parametrization.txt").read_text().splitlines() == table

    # a finished run with a checkpoint: the dry run says it would resume (and still writes nothing)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    code, text, _ = _dry_run({**cfg, "train": {**cfg["train"], "steps": 4}}, tmp_path, capsys)
    assert code == 0 and f"run: resumes from {out / 'checkpoints' / 'step_00000002'}" in text
    code, text, _ = _dry_run(cfg, tmp_path, capsys)  # the same steps: nothing left to do, as train says
    assert code == 0 and "run: nothing to train: " in text and "is at step 2, train.steps is 2" in text
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


def test_dry_run_fails_where_the_trainer_would(sample_data: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    code, _, err = _dry_run(tiny_config(sample_data, out, parallel={"tensor": 2}), tmp_path, capsys)
    assert code == 2 and "parallel.tensor" in err and "\n" not in err.strip()
    code, _, err = _dry_run(tiny_config(tmp_path / "nowhere", out), tmp_path, capsys)
    assert code == 2 and "does not exist" in err
    # data that exists but is no training data: the real run refused it, the dry run passed it
    (tmp_path / "empty").mkdir()
    code, _, err = _dry_run(tiny_config(tmp_path / "empty", out), tmp_path, capsys)
    assert code == 2 and "no .bin/.idx shards in this directory" in err
    code, _, err = _dry_run(tiny_config(sample_data / "manifest.json", out), tmp_path, capsys)
    assert code == 2 and "no such data directory or shard prefix" in err
    # the check is cached per process, but not past a rewrite of the shards at the same path
    small = tmp_path / "small"
    shutil.copytree(sample_data, small)
    code, _, err = _dry_run(tiny_config(small, out), tmp_path, capsys)
    assert code == 0, err
    shard = IndexedDataset(sample_data / "shard_00000")
    (small / "shard_00000.idx").unlink()
    with IndexedDatasetWriter(small / "shard_00000", shard.dtype) as writer:
        for i in range(3):
            writer.add_document(shard[i][:5])
    code, _, err = _dry_run(tiny_config(small, out), tmp_path, capsys)
    assert code == 2 and "fewer than one sample" in err
    # a sample longer than all the training text: the real run failed building its sample index
    code, _, err = _dry_run(tiny_config(sample_data, out, model={"seq_len": 10**6}), tmp_path, capsys)
    assert code == 2 and "(train): " in err and "fewer than one sample of seq_len + 1 = 1000001" in err
    code, _, err = _dry_run(tiny_config(sample_data, out, train={"resume": "must"}), tmp_path, capsys)
    assert code == 2 and "holds no complete checkpoint" in err
    assert not out.exists()


def test_dry_run_names_the_llama_blocks_pieces_and_the_qk_gain_rule(sample_data: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """What the block is made of is printed in words, and the qk_gain role gets its row and its rule line."""
    llama = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "model" / "llama-tiny.yaml").read_text())
    cfg = tiny_config(sample_data, tmp_path / "run", model={**llama["model"], "qk_norm": True, "kv_heads": 1})
    code, text, err = _dry_run(cfg, tmp_path, capsys)
    assert code == 0, err
    assert ("block: rmsnorm, swiglu MLP (hidden 192), multi-query attention (1 key/value heads), QK-norm, "
            "rotary (theta 10000) positions, no biases") in text
    rows = [line.split() for line in text.splitlines()]
    assert next(r for r in rows if r and r[0] == "qk_gain")[:3] == ["qk_gain", "const", "1"]
    assert any(line.startswith("rule: qk_gain: init 1, no weight decay") for line in text.splitlines())
