"""The `megadepth` command: bad input ends in one line and exit code 2; the quickstart path end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import tiny_config

from megadepth.cli import main

ROOT = Path(__file__).resolve().parents[1]


def write_config(tmp_path: Path, cfg: dict) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err.strip()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.path=/nonexistent/data"], "/nonexistent/data does not exist"),
        (["model.vocab_size=256"], "vocabulary of 512 tokens but model.vocab_size is 256"),
        (["train.device=cuda"], "no CUDA device"),
        (["model.seq_len=64", "model.max_positions=32"], "position table"),
        (["parallel.tensor=2"], "does not divide the world size"),
        (["model.heads=3"], "divisible by model.heads"),
        (["train.global_batch=6", "train.micro_batch=4"], "global_batch (6) is not divisible"),
        (["train.stpes=3"], "did you mean 'train.steps'"),
        (["data.tokenizer=/nonexistent/tok.model"], "does not exist"),
    ],
)
def test_bad_input_is_one_line_exit_2_no_run_dir(
    sample_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], overrides: list[str], message: str
) -> None:
    out = tmp_path / "run"
    cfg = write_config(tmp_path, tiny_config(sample_data, out))
    args = ["train", str(cfg)]
    for item in overrides:
        args += ["--set", item]
    code, err = run_main(args, capsys)
    assert code == 2
    assert message in err
    assert err.startswith("megadepth: error:") and "\n" not in err
    assert not out.exists()


def test_unreadable_tokenizer(sample_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "broken.model"
    bad.write_bytes(b"this is not a sentencepiece model")
    cfg = write_config(tmp_path, tiny_config(sample_data, tmp_path / "run", data={"tokenizer": str(bad)}))
    code, err = run_main(["train", str(cfg)], capsys)
    assert code == 2 and "not a readable sentencepiece model" in err and "\n" not in err


def test_mismatched_tokenizer(sample_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from data_prep.text_shards import train_tokenizer

    other = train_tokenizer(["some other text entirely, repeated a few times. " * 40] * 20, tmp_path / "other",
                            vocab_size=300)
    cfg = write_config(tmp_path, tiny_config(sample_data, tmp_path / "run", data={"tokenizer": str(other)}))
    code, err = run_main(["train", str(cfg)], capsys)
    assert code == 2 and "not the one the shards" in err


def test_launch_checks_before_starting_anything(sample_data: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path, tiny_config(sample_data, tmp_path / "run", train={"global_batch": 4}))
    code, err = run_main(["launch", "--nproc-per-node", "3", str(cfg)], capsys)
    assert code == 2 and "data-parallel size (3)" in err
    assert not (tmp_path / "run").exists()


def test_launch_dry_run_prints_the_command(sample_data: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path, tiny_config(sample_data, tmp_path / "run"))
    code = main(["launch", "--nproc-per-node", "2", "--master-port", "29123", "--dry-run", str(cfg),
                 "--set", "wandb.name=a b;rm -rf /"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "--num_gpus 2 --master_port 29123" in printed and "--module megadepth train" in printed
    assert "'wandb.name=a b;rm -rf /'" in printed  # quoted, never interpreted by a shell
    assert not (tmp_path / "run").exists()


def test_config_explain_and_resolve(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "--explain"]) == 0
    assert "parametrization.alpha" in capsys.readouterr().out
    assert main(["config", str(ROOT / "configs" / "quickstart.yaml"), "--set", "train.steps=9"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["train"]["steps"] == 9


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_SILENT": "true"}
    return subprocess.run([sys.executable, "-m", "megadepth", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.distributed
def test_quickstart_path_and_launch_equals_train(tmp_path: Path) -> None:
    """The README's first command on a very small setting: prep sample -> shards with a real
    sentencepiece model -> the DeepSpeed launcher with 2 CPU processes. The same config trained in one
    process (gradient accumulation 2 instead of 2 ranks) gives the same losses."""
    data = tmp_path / "data"
    prep = _cli("prep", "sample", "--out", str(data), "--vocab-size", "512", cwd=tmp_path)
    assert prep.returncode == 0, prep.stderr
    assert (data / "tokenizer.model").exists() and list(data.glob("*.idx"))

    common = ["--set", f"data.path={data}", "--set", "model.vocab_size=512", "--set", "train.steps=4",
              "--set", "train.log_every=1", "--set", "train.global_batch=8", "--set", "train.micro_batch=4",
              "--set", "train.eval_every=0", "--set", "train.save_final=false"]
    qs = str(ROOT / "configs" / "quickstart.yaml")
    launched = _cli("launch", "--nproc-per-node", "2", qs, *common, "--set", f"train.out_dir={tmp_path / 'l'}",
                    cwd=tmp_path)
    assert launched.returncode == 0, launched.stdout[-3000:] + launched.stderr[-3000:]
    single = _cli("train", qs, *common, "--set", f"train.out_dir={tmp_path / 's'}", "--set",
                  "wandb.mode=disabled", cwd=tmp_path)
    assert single.returncode == 0, single.stderr[-3000:]

    summary_l = json.loads((tmp_path / "l" / "summary.json").read_text())
    summary_s = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert (summary_l["status"], summary_l["world_size"], summary_s["world_size"]) == ("completed", 2, 1)
    curve = {json.loads(x)["step"]: json.loads(x)["loss"] for x in (tmp_path / "l" / "metrics.jsonl").open()}
    ref = {json.loads(x)["step"]: json.loads(x)["loss"] for x in (tmp_path / "s" / "metrics.jsonl").open()}
    assert curve.keys() == ref.keys() == {1, 2, 3, 4}
    for step, loss in curve.items():
        assert loss == pytest.approx(ref[step], rel=1e-5)
    assert list((tmp_path / "l" / "wandb").glob("offline-run-*"))
    assert (tmp_path / "l" / "loss.png").exists()


@pytest.mark.slow
def test_coord_check_command(sample_data: Path, tmp_path: Path) -> None:
    cfg = write_config(tmp_path, tiny_config(sample_data, tmp_path / "unused", model={"seq_len": 16}))
    out = tmp_path / "coord"
    done = _cli("coord-check", str(cfg), "--depths", "2,4", "--widths", "32,64", "--steps", "2", "--out", str(out),
                "--set", "model.base_width=32", "--set", "model.base_heads=2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((out / "coord.json").read_text())
    assert (out / "coord.png").read_bytes()[:4] == b"\x89PNG"
    shapes = {(r["depth"], r["width"]) for r in result["records"]}
    assert shapes == {(2, 32), (4, 32), (2, 64), (4, 64)}
    assert {r["quantity"] for r in result["records"]} == {"residual", "block_output", "residual_change",
                                                          "block_change", "logits_change"}
    assert {r["step"] for r in result["records"]} == {0, 1, 2}
    assert set(result["slopes"]) == {"depth", "width"} and "mean" in result["slopes"]["depth"]["residual"]
    assert "slope" in done.stdout


def test_coord_check_bad_depths(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["coord-check", str(ROOT / "configs" / "quickstart.yaml"), "--depths", "2,x", "--out", "o"])
    assert "comma-separated integers" in capsys.readouterr().err


def test_prep_refuses_a_given_tokenizer_with_a_vocab_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A given sentencepiece model has its own vocabulary: asking for another size is an error, not ignored."""
    with pytest.raises(SystemExit) as exc:
        main(["prep", "run", "--input", str(tmp_path), "--out", str(tmp_path / "o"),
              "--tokenizer", str(tmp_path / "m.model"), "--vocab-size", "512"])
    assert exc.value.code == 2 and "not allowed with argument --tokenizer" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
