"""What a new user meets in the first hour: every typo of a config at once, advice that works when it is
followed word for word, a run directory named after the config, and a model vocabulary that does not fit
the tokenizer said before any work."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import tiny_config

from megadepth.cli import main
from megadepth.common.errors import ConfigError
from megadepth.config import explain, load_config
from megadepth.data import IndexedDataset, IndexedDatasetWriter

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def _dry_run(cfg: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str], *sets: str) -> tuple[int, str, str]:
    path = write(tmp_path / "cfg.yaml", yaml.safe_dump(cfg))
    return _run(["train", str(path), "--dry-run", *(a for s in sets for a in ("--set", s))], capsys)


# ---- every unknown key in one message --------------------------------------------------------------------


def test_two_typos_in_one_file_are_both_named_with_their_nearest_key(tmp_path: Path) -> None:
    path = write(tmp_path / "exp.yaml", "optimizer:\n  lrr: 0.1\ntrain:\n  stesp: 20\n  seed: 3\n")
    with pytest.raises(ConfigError) as info:
        load_config([path])
    message = str(info.value)
    assert message.startswith("2 unknown config keys: ") and "\n" not in message
    assert f"'optimizer.lrr' (in {path}): did you mean 'optimizer.lr'?" in message
    assert f"'train.stesp' (in {path}): did you mean 'train.steps'?" in message


def test_typos_across_files_includes_and_set_are_reported_together(tmp_path: Path) -> None:
    base = write(tmp_path / "base.yaml", "model:\n  dpeth: 4\n")
    top = write(tmp_path / "top.yaml", "include: [base.yaml]\nschedule:\n  warmup: 5\n")
    other = write(tmp_path / "other.yaml", "wandb:\n  mdoe: offline\n")
    with pytest.raises(ConfigError) as info:
        load_config([top, other], ["train.stpes=3", "seed=5", "optimizer.lr=0.1"])
    message = str(info.value)
    assert message.startswith("5 unknown config keys: ") and "\n" not in message
    for fragment in (f"'model.dpeth' (in {base}): did you mean 'model.depth'?",
                     f"'schedule.warmup' (in {top}): did you mean 'schedule.warmup_steps'?",
                     f"'wandb.mdoe' (in {other}): did you mean 'wandb.mode'?",
                     "'train.stpes' (in --set): did you mean 'train.steps'?",
                     "'seed' (in --set): did you mean 'train.seed' (keys live in their section)?"):
        assert fragment in message, fragment
    # one unknown key keeps the one-key sentence (documented in the README)
    with pytest.raises(ConfigError, match=re.escape("unknown config key 'train.lr' (in --set); did you mean "
                                                    "'optimizer.lr'?")):
        load_config([], ["train.lr=0.01"])


def test_all_typos_reach_the_command_line_as_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "exp.yaml", "model:\n  widht: 64\n  dpeth: 2\n")
    code, _, err = _run(["train", str(path), "--dry-run", "--set", "optimizer.lrr=0.1"], capsys)
    err = err.strip()
    assert code == 2 and err.startswith("megadepth: error: 3 unknown config keys: ") and "\n" not in err
    assert "'model.widht'" in err and "'model.dpeth'" in err and "'optimizer.lrr'" in err


# ---- messages whose advice, followed, works -------------------------------------------------------------


def _fix(message: str, marker: str) -> list[str]:
    """The ``key: value`` settings a message tells the user to make (``set a.b: 0 and c.d: 0 <marker>``),
    as --set overrides."""
    found = re.search(r"set ((?:[a-z_]+\.[a-z_]+: [^ ,;]+(?: and )?)+) " + re.escape(marker), message)
    assert found, message
    return [part.replace(": ", "=") for part in found.group(1).split(" and ")]


def _one_document(folder: Path, sample_data: Path) -> Path:
    """Shards holding one document (a few thousand tokens of the sample corpus): no room for validation."""
    shard = IndexedDataset(sample_data / "shard_00000")
    doc = np.concatenate([shard[i] for i in range(20)])
    folder.mkdir(parents=True)
    with IndexedDatasetWriter(folder / "shard_00000", shard.dtype) as writer:
        writer.add_document(doc)
    return folder


def test_too_few_documents_names_every_key_of_the_fix(sample_data: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """'set valid_fraction to 0' led straight to 'train.eval_every is set but data.valid_fraction is 0'."""
    data = _one_document(tmp_path / "one", sample_data)
    cfg = tiny_config(data, tmp_path / "run", train={"eval_every": 2})
    code, _, err = _dry_run(cfg, tmp_path, capsys)
    assert code == 2 and "too few to hold out validation documents" in err
    fix = _fix(err, "(train without validation)")
    assert sorted(fix) == ["data.valid_fraction=0", "train.eval_every=0"]
    code, out, err = _dry_run(cfg, tmp_path, capsys, *fix)
    assert code == 0, err
    # without periodic evaluation, valid_fraction alone is the fix, and the message says just that
    cfg = tiny_config(data, tmp_path / "run", train={"eval_every": 0})
    code, _, err = _dry_run(cfg, tmp_path, capsys)
    assert code == 2 and _fix(err, "(train without validation)") == ["data.valid_fraction=0"]
    assert _dry_run(cfg, tmp_path, capsys, "data.valid_fraction=0")[0] == 0


def test_a_validation_split_shorter_than_a_sample_offers_fixes_that_work(sample_data: Path, tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    shard = IndexedDataset(sample_data / "shard_00000")
    data = tmp_path / "short_tail"
    data.mkdir()
    with IndexedDatasetWriter(data / "shard_00000", shard.dtype) as writer:
        writer.add_document(np.concatenate([shard[i] for i in range(20)]))
        writer.add_document(shard[0][:5])  # the last document validates: 5 tokens
    cfg = tiny_config(data, tmp_path / "run", train={"eval_every": 2})
    code, _, err = _dry_run(cfg, tmp_path, capsys)
    assert code == 2 and "(valid): 1 documents hold 5 tokens" in err
    assert "lower model.seq_len" in err and "raise data.valid_fraction (0.05)" in err
    assert _dry_run(cfg, tmp_path, capsys, *_fix(err, "(train without validation)"))[0] == 0


@pytest.mark.parametrize(
    ("sets", "marker"),
    [(["data.valid_fraction=0"], "too (no evaluation)"), (["train.eval_samples=0"], "too (no evaluation)")],
)
def test_turning_evaluation_off_halfway_names_the_other_key(sample_data: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str], sets: list[str],
                                                            marker: str) -> None:
    cfg = tiny_config(sample_data, tmp_path / "run", train={"eval_every": 2})
    code, _, err = _dry_run(cfg, tmp_path, capsys, *sets)
    assert code == 2 and "train.eval_every is set but" in err
    fix = _fix(err, marker)
    assert fix == ["train.eval_every=0"]
    code, _, err = _dry_run(cfg, tmp_path, capsys, *sets, *fix)
    assert code == 0, err


# ---- a run directory named after the config -------------------------------------------------------------


def test_unnamed_runs_are_named_after_their_config_files(tmp_path: Path) -> None:
    """All unnamed runs went to runs/default, where the second resumed (or was refused by) the first."""
    tiny, dmup = CONFIGS / "model" / "tiny.yaml", CONFIGS / "parametrization" / "depth_mup.yaml"
    assert load_config([tiny]).train.out_dir == "runs/tiny"
    assert load_config([tiny, dmup]).train.out_dir == "runs/tiny+depth_mup"
    assert load_config([tiny, dmup, tiny]).train.out_dir == "runs/tiny+depth_mup"
    # the documented paths stay: the quickstart names its own
    assert load_config([CONFIGS / "quickstart.yaml"]).train.out_dir == "runs/quickstart"
    assert load_config([tiny], ["train.out_dir=elsewhere"]).train.out_dir == "elsewhere"
    assert load_config([], ["train.steps=3"]).train.out_dir == "runs/default"
    # a file that includes one naming the directory keeps it
    write(tmp_path / "named.yaml", "train:\n  out_dir: runs/mine\n")
    assert load_config([write(tmp_path / "exp.yaml", "include: [named.yaml]\n")]).train.out_dir == "runs/mine"
    # file names only, not folders: every node of a job, wherever its copy lives, finds the same directory
    copy = tmp_path / "node2" / "tiny.yaml"
    copy.parent.mkdir()
    shutil.copy(tiny, copy)
    assert load_config([copy]).train.out_dir == "runs/tiny"
    doc = dict((key, text) for key, _, text in explain())["train.out_dir"]
    assert "runs/tiny for configs/model/tiny.yaml" in doc and "stems joined by '+'" in doc


def test_the_dry_run_shows_the_named_directory(sample_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tiny_config(sample_data, tmp_path / "unused")
    del cfg["train"]["out_dir"]
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path / "lr-probe.yaml", yaml.safe_dump(cfg))
    code, out, err = _run(["train", str(path), "--dry-run"], capsys)
    assert code == 0, err
    assert "run: starts at step 0 in runs/lr-probe" in out


# ---- the model's vocabulary against the tokenizer's -----------------------------------------------------


def _warning(err: str) -> list[str]:
    return [line for line in err.splitlines() if "model.vocab_size" in line and "warning" in line]


def test_a_vocabulary_larger_than_the_tokenizer_is_said_before_any_work(sample_data: Path, tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """model.vocab_size 50304 on a 512-piece tokenizer trained without a word."""
    data = tmp_path / "data"
    shutil.copytree(sample_data, data)  # its own path: the warning is said once per process and path
    out = tmp_path / "run"
    code, text, err = _dry_run(tiny_config(data, out, model={"vocab_size": 50304}), tmp_path, capsys)
    assert code == 0, err
    (line,) = _warning(err)
    assert line.startswith("megadepth: warning: model.vocab_size is 50304 but the tokenizer ")
    assert "has 512 pieces: 49792 embedding rows (1,593,344 parameters)" in line
    assert line.endswith("set model.vocab_size: 512 unless the room is meant for a larger tokenizer")
    assert not out.exists()
    # said once per process: a sweep checks every grid point
    code, _, err = _dry_run(tiny_config(data, out, model={"vocab_size": 50304}), tmp_path, capsys)
    assert code == 0 and _warning(err) == []
    # padding up to model.vocab_multiple is not waste: the embedding has those rows either way
    for vocab, multiple in ((512, 128), (1000, 1000)):
        code, _, err = _dry_run(tiny_config(data, out, model={"vocab_size": vocab, "vocab_multiple": multiple}),
                                tmp_path, capsys)
        assert code == 0 and _warning(err) == [], (vocab, multiple)
    code, _, err = _dry_run(tiny_config(data, out, model={"vocab_size": 1001, "vocab_multiple": 1000}), tmp_path,
                            capsys)
    assert code == 0 and "1000 embedding rows" in _warning(err)[0]


def test_a_vocabulary_smaller_than_the_tokenizer_is_refused_with_the_size_to_set(
        sample_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _dry_run(tiny_config(sample_data, tmp_path / "run", model={"vocab_size": 300}), tmp_path, capsys)
    assert code == 2 and "\n" not in err.strip()
    assert "model.vocab_size is 300" in err and err.strip().endswith("set model.vocab_size: 512")
    # pre-tokenized shards without a tokenizer: the manifest's vocabulary is the measure
    shards = tmp_path / "no_tokenizer"
    shutil.copytree(sample_data, shards, ignore=shutil.ignore_patterns("tokenizer.model"))
    code, _, err = _dry_run(tiny_config(shards, tmp_path / "run", model={"vocab_size": 300}), tmp_path, capsys)
    assert code == 2 and err.strip().endswith("set model.vocab_size: 512")
    code, _, err = _dry_run(tiny_config(shards, tmp_path / "run", model={"vocab_size": 4096}), tmp_path, capsys)
    assert code == 0 and "use a vocabulary of 512 tokens (manifest.json): 3584 embedding rows" in _warning(err)[0]


@pytest.mark.slow
def test_a_real_run_says_it_before_its_first_step(sample_data: Path, tmp_path: Path) -> None:
    cfg = tiny_config(sample_data, tmp_path / "run", model={"vocab_size": 2048}, train={"steps": 1})
    path = write(tmp_path / "cfg.yaml", yaml.safe_dump(cfg))
    # one stream, unbuffered: the order the user reads
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-m", "megadepth", "train", str(path)], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path, timeout=300, check=False)
    assert run.returncode == 0, run.stdout
    (line,) = _warning(run.stdout)
    assert "model.vocab_size is 2048" in line and "has 512 pieces" in line
    assert run.stdout.index(line) < run.stdout.index("step 1/1")
