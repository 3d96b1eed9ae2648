"""Command-line inputs refused in one line (exit 2) before any work: an unwritable bench --json path,
a generate --device that is not there or a --tag that is a path, and impossible launcher variables."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import tiny_config

from megadepth.cli import main
from megadepth.common.errors import ConfigError
from megadepth.parallel.distributed import DistEnv, read_env

DIST_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "LOCAL_SIZE")


@pytest.fixture(autouse=True)
def clean_dist_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in DIST_VARS:
        monkeypatch.delenv(name, raising=False)


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("megadepth: error:") and "\n" not in err, err
    return err


def bench_config(sample_data: Path, tmp_path: Path) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(tiny_config(sample_data, tmp_path / "run")))
    return path


@pytest.fixture
def fake_bench(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """run_bench replaced by a recorder: a refused --json must leave it uncalled."""
    calls: list[int] = []

    def run_bench(config, steps, warmup, peak_tflops):
        calls.append(steps)
        return {"steps": steps, "tokens_per_second": 1.0}

    monkeypatch.setattr("megadepth.train.bench.run_bench", run_bench)
    return calls


@pytest.mark.parametrize("where", ["missing_dir", "directory", "parent_is_file"])
def test_bench_json_unwritable_is_refused_before_the_bench(
    sample_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], fake_bench: list[int], where: str
) -> None:
    (tmp_path / "a_dir").mkdir()
    (tmp_path / "a_file").write_text("x")
    target = {"missing_dir": tmp_path / "nodir" / "x.json", "directory": tmp_path / "a_dir",
              "parent_is_file": tmp_path / "a_file" / "x.json"}[where]
    code = main(["bench", str(bench_config(sample_data, tmp_path)), "--steps", "1", "--warmup", "0",
                 "--json", str(target)])
    assert code == 2
    assert "--json" in one_line_error(capsys)
    assert fake_bench == []  # the bench never ran
    assert not (tmp_path / "nodir").exists() and list((tmp_path / "a_dir").iterdir()) == []


def test_bench_json_is_written_whole(sample_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     fake_bench: list[int]) -> None:
    target = tmp_path / "out.json"
    target.write_text("old")
    assert main(["bench", str(bench_config(sample_data, tmp_path)), "--steps", "3", "--json", str(target)]) == 0
    assert json.loads(target.read_text()) == {"steps": 3, "tokens_per_second": 1.0}
    assert fake_bench == [3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.yaml", "out.json"]  # no temp file left


@pytest.fixture
def no_checkpoint_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading the checkpoint is the expensive part of generate: bad options must be refused before it."""

    def consolidated_state(*args, **kwargs):
        raise AssertionError("the checkpoint was read before the options were checked")

    monkeypatch.setattr("megadepth.train.merge.consolidated_state", consolidated_state)


@pytest.mark.parametrize(("device", "message"), [
    ("bogus", "is not a device"),
    ("cuda:x", "is not a device"),
    ("", "is not a device"),
    ("meta", "generate runs on auto, cpu, cuda"),
    ("cuda", "no GPU is visible"),
    ("cuda:0", "no GPU is visible"),
])
def test_generate_device_is_checked_first(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch, no_checkpoint_read: None,
                                          device: str, message: str) -> None:
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert main(["generate", str(tmp_path), "--device", device]) == 2
    assert message in one_line_error(capsys)


def test_generate_device_index_past_the_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    from megadepth.generate import resolve_device

    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("torch.cuda.device_count", lambda: 1)
    assert str(resolve_device("cuda:0")) == "cuda:0"
    with pytest.raises(ConfigError, match="only 1 GPU"):
        resolve_device("cuda:1")
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert str(resolve_device("auto")) == "cpu" and str(resolve_device("cpu")) == "cpu"


@pytest.mark.parametrize("tag", ["../../x", "../other/checkpoints/step_00000001", "/abs/step_00000001",
                                 "latest", "step_1", "step_00000001/", "step_00000001\n", ""])
def test_generate_tag_must_name_a_checkpoint_of_the_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                           no_checkpoint_read: None, tag: str) -> None:
    assert main(["generate", str(tmp_path), "--device", "cpu", "--tag", tag]) == 2
    assert "names look like step_00000100" in one_line_error(capsys)


@pytest.mark.parametrize(("env", "message"), [
    ({"WORLD_SIZE": "0"}, "WORLD_SIZE=0 must be at least 1"),
    ({"WORLD_SIZE": "-1"}, "WORLD_SIZE=-1 must be at least 1"),
    ({"WORLD_SIZE": "abc"}, "WORLD_SIZE='abc' is not an integer"),
    ({"WORLD_SIZE": ""}, "WORLD_SIZE='' is not an integer"),
    ({"WORLD_SIZE": "2.0"}, "WORLD_SIZE='2.0' is not an integer"),
    ({"WORLD_SIZE": "2", "RANK": "5"}, "RANK=5 is outside 0..1"),
    ({"WORLD_SIZE": "2", "RANK": "-1"}, "RANK=-1 is outside 0..1"),
    ({"RANK": "x"}, "RANK='x' is not an integer"),
    ({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "2"}, "LOCAL_RANK=2 is outside 0..1"),
    ({"WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2", "LOCAL_RANK": "2"}, "LOCAL_RANK=2 is outside 0..1"),
    ({"LOCAL_RANK": "-1"}, "LOCAL_RANK=-1 is outside 0..0"),
    ({"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "4"}, "LOCAL_WORLD_SIZE=4 must be between 1 and WORLD_SIZE=2"),
    ({"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "0"}, "LOCAL_WORLD_SIZE=0 must be between 1"),
    ({"WORLD_SIZE": "2", "LOCAL_SIZE": "3"}, "LOCAL_SIZE=3 must be between 1 and WORLD_SIZE=2"),
    ({"LOCAL_WORLD_SIZE": "two"}, "LOCAL_WORLD_SIZE='two' is not an integer"),
])
def test_read_env_refuses_impossible_launcher_variables(monkeypatch: pytest.MonkeyPatch, env: dict[str, str],
                                                        message: str) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        read_env()
    assert message in str(info.value)


@pytest.mark.parametrize(("env", "expected"), [
    ({}, DistEnv(0, 1, 0, 1)),
    ({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}, DistEnv(1, 2, 1, 2)),
    ({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "LOCAL_SIZE": "2"}, DistEnv(3, 4, 1, 2)),
    ({"WORLD_SIZE": "4", "RANK": "2"}, DistEnv(2, 4, 0, 4)),
])
def test_read_env_accepts_launcher_layouts(monkeypatch: pytest.MonkeyPatch, env: dict[str, str],
                                           expected: DistEnv) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert read_env() == expected


@pytest.mark.parametrize(("env", "message"), [
    ({"WORLD_SIZE": "0"}, "WORLD_SIZE=0"),
    ({"WORLD_SIZE": "abc"}, "WORLD_SIZE='abc'"),
    ({"WORLD_SIZE": "-1"}, "WORLD_SIZE=-1"),
    ({"WORLD_SIZE": "2", "RANK": "5"}, "RANK=5"),
])
@pytest.mark.parametrize("command", ["train", "bench"])
def test_bad_launcher_variables_are_one_line_exit_2(
    sample_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    fake_bench: list[int], env: dict[str, str], message: str, command: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    args = [command, str(bench_config(sample_data, tmp_path))] + (["--dry-run"] if command == "train" else [])
    assert main(args) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("megadepth: error:") and "\n" not in err and message in err
    assert captured.out == "" and fake_bench == []
    assert not (tmp_path / "run").exists()
