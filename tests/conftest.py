"""Shared fixtures: a small real data directory (Python's own docs, a real sentencepiece model)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))  # tests/distributed.py, importable by forkserver ranks too
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded default's data path, at a small vocabulary so tiny models train fast."""
    from data_prep.text_shards import prepare_sample_data

    out = tmp_path_factory.mktemp("data") / "sample"
    prepare_sample_data(out, vocab_size=512)
    return out


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator:
    """A real one-node Slurm cluster for the session (tests/cluster.py); skipped where it cannot run,
    a failure under CI=true."""
    from cluster import slurm_session

    yield from slurm_session()


@pytest.fixture(scope="session")
def ssh_loopback() -> Iterator:
    """A real sshd on 127.0.0.1 and an ssh/pdsh that reach it with a key made for the session."""
    from cluster import ssh_session

    yield from ssh_session()


def tiny_config(data_path: Path, out_dir: Path, **sections: dict) -> dict:
    """A 2-layer, width-32 Depth-muP model and a 3-step run, as a config dict; sections override."""
    cfg: dict = {
        "model": {"depth": 2, "base_depth": 1, "width": 32, "heads": 2, "seq_len": 32, "vocab_size": 512},
        "parametrization": {"name": "depth_mup"},
        "optimizer": {"lr": 0.01},
        "schedule": {"warmup_steps": 1},
        "train": {"steps": 3, "micro_batch": 4, "log_every": 1, "eval_samples": 8, "out_dir": str(out_dir),
                  "progress": False, "save_final": False},
        "data": {"path": str(data_path), "valid_fraction": 0.05},
        "wandb": {"mode": "disabled"},
    }
    for section, values in sections.items():
        cfg[section] = {**cfg.get(section, {}), **values}
    return cfg
