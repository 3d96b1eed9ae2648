"""Bad arguments and bad files given to ``megadepth prep``: one line on stderr, exit code 2, no traceback,
and nothing written (no new folder, no leftover source file, no damaged previous output)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from data_prep.config import load_prep_config
from data_prep.inputs import resolve_inputs
from data_prep.pipeline import plan_run
from data_prep.plan import load_plan
from data_prep.runner import write_slurm_scripts
from data_prep.text_shards import build_text_shards, prepare_sample_data
from megadepth.common.errors import DataError

DEEP_JSON = "[" * 100_000 + "]" * 100_000


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> subprocess.CompletedProcess:
    """``megadepth prep ARGS`` in this process, through the real entry point."""
    from megadepth.cli import main

    capsys.readouterr()
    rc = main(["prep", *args])
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, rc, out, err)


def _one_line(p: subprocess.CompletedProcess, *words: str) -> None:
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])


def _jsonl(tmp_path: Path) -> Path:
    f = tmp_path / "in.jsonl"
    f.write_text("".join(f'{{"text": "document {i}: some plain words to read"}}\n' for i in range(5)))
    return f


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- prep slurm / run counts


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--cpus-per-task", "-2"), ("--cpus-per-task", "0"), ("--max-parallel", "-3"), ("--max-parallel", "0"),
     ("--tasks", "0")],
)
def test_prep_slurm_counts_must_be_positive(tmp_path: Path, capsys, flag: str, value: str) -> None:
    """Before: ``--cpus-per-task -2`` / ``--max-parallel -3`` wrote ``#SBATCH --cpus-per-task=-2`` and
    ``--array=0-0%-3`` (exit 0), and ``--max-parallel 0`` was silently dropped."""
    argv = ["slurm", "--input", str(_jsonl(tmp_path)), "--out", str(tmp_path / "o"), "--tasks", "1"]
    p = _cli(capsys, *argv, flag, value)
    _one_line(p, flag, value)
    assert not (tmp_path / "o").exists()


def test_prep_run_workers_checked_before_planning(tmp_path: Path, capsys) -> None:
    """Before: ``--workers 0 --print-config`` printed the configuration and exited 0."""
    p = _cli(capsys, "run", "--input", str(_jsonl(tmp_path)), "--out", str(tmp_path / "o"), "--workers", "0",
             "--print-config")
    _one_line(p, "--workers", "0")
    assert p.stdout == "" and not (tmp_path / "o").exists()


def test_write_slurm_scripts_refuses_bad_counts(tmp_path: Path) -> None:
    plan = plan_run([_jsonl(tmp_path)], tmp_path / "o", overrides=["language.languages=null"])
    for kwargs in ({"cpus_per_task": 0}, {"cpus_per_task": -2}, {"max_parallel": 0}, {"max_parallel": -3}):
        with pytest.raises(DataError, match="must be >= 1"):
            write_slurm_scripts(plan, 1, **kwargs)
        assert not (tmp_path / "o").exists()
    with pytest.raises(DataError, match="--tasks must be >= 1"):
        write_slurm_scripts(plan, 0)
    submit = write_slurm_scripts(plan, 1, cpus_per_task=4, max_parallel=2)
    script = (submit.parent / "extract.sbatch").read_text()
    assert "#SBATCH --array=0-0%2\n" in script and "#SBATCH --cpus-per-task=4\n" in script


# ----------------------------------------------------------------------------- prep sample / text


@pytest.mark.parametrize("vocab", ["1", "0", "-5", "259", "99999999999"])
def test_prep_sample_bad_vocab_writes_nothing(tmp_path: Path, capsys, vocab: str) -> None:
    """Before: exit 2 but ``OUT/source/python_docs.jsonl`` was left behind."""
    p = _cli(capsys, "sample", "--out", str(tmp_path / "a" / "o"), "--vocab-size", vocab)
    _one_line(p, "vocab size", vocab)
    assert list(tmp_path.iterdir()) == []


def test_prep_sample_failing_in_sentencepiece_writes_nothing(tmp_path: Path, capsys) -> None:
    """A size only sentencepiece can refuse (the text needs more characters): the source goes again,
    a folder that was there stays, and a previous complete output is left byte for byte."""
    p = _cli(capsys, "sample", "--out", str(tmp_path / "new"), "--vocab-size", "300")
    _one_line(p, "300")
    assert not (tmp_path / "new").exists()

    (tmp_path / "empty").mkdir()
    p = _cli(capsys, "sample", "--out", str(tmp_path / "empty"), "--vocab-size", "300")
    _one_line(p, "300")
    assert list((tmp_path / "empty").iterdir()) == []

    out = tmp_path / "done"
    prepare_sample_data(out, vocab_size=512, progress=False)
    before = _snapshot(out)
    (out / "source" / "python_docs.jsonl").write_text('{"text": "edited"}\n')  # put back as it was on failure
    edited = _snapshot(out)
    p = _cli(capsys, "sample", "--out", str(out), "--vocab-size", "300")
    _one_line(p, "300")
    assert _snapshot(out) == edited
    assert prepare_sample_data(out, vocab_size=512, progress=False)["tokenizer"] and _snapshot(out) == before


def test_prep_text_failure_leaves_no_new_folder(tmp_path: Path, capsys) -> None:
    """Before: a refused vocabulary left an empty OUT (and its parents) behind."""
    src = _jsonl(tmp_path)
    p = _cli(capsys, "text", "--input", str(src), "--out", str(tmp_path / "a" / "b"), "--vocab-size", "10")
    _one_line(p, "vocab size 10")
    p = _cli(capsys, "text", "--input", str(src), "--out", str(tmp_path / "a" / "b"), "--vocab-size", "5000")
    _one_line(p, "5000")  # sentencepiece: too high for this little text, found after reading it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]
    with pytest.raises(DataError, match="could not train"):
        build_text_shards([src], tmp_path / "c", vocab_size=5000, progress=False)
    assert not (tmp_path / "c").exists()


def test_pipeline_vocab_size_is_checked_when_planning(tmp_path: Path, capsys) -> None:
    """Before: ``--vocab-size 1`` passed the plan and failed in the tokenizer stage, after every other one."""
    p = _cli(capsys, "run", "--input", str(_jsonl(tmp_path)), "--out", str(tmp_path / "o"), "--vocab-size", "1",
             "--print-config")
    _one_line(p, "tokenizer.vocab_size")
    assert p.stdout == "" and not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- prep config files and --set


def _run_config(tmp_path: Path, capsys, *extra: str) -> subprocess.CompletedProcess:
    return _cli(capsys, "run", "--input", str(_jsonl(tmp_path)), "--out", str(tmp_path / "o"), "--print-config",
                *extra)


def test_prep_config_not_utf8(tmp_path: Path, capsys) -> None:
    """Before: UnicodeDecodeError traceback."""
    cfg = tmp_path / "latin1.yaml"
    cfg.write_bytes("dedup:\n  bands: 14 # r\xe9sum\xe9\n".encode("latin-1"))
    p = _run_config(tmp_path, capsys, "--config", str(cfg))
    _one_line(p, str(cfg), "not UTF-8", "byte 22")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("body", ["tokenizer:\n  model: " + "[" * 5000 + "]" * 5000 + "\n",
                                  "tokenizer:\n  model: " + "{a: " * 5000 + "1" + "}" * 5000 + "\n"])
def test_prep_config_nested_too_deeply(tmp_path: Path, capsys, body: str) -> None:
    """Before: RecursionError traceback."""
    cfg = tmp_path / "deep.yaml"
    cfg.write_text(body)
    p = _run_config(tmp_path, capsys, "--config", str(cfg))
    _one_line(p, str(cfg), "nested too deeply")
    assert not (tmp_path / "o").exists()


def test_prep_set_value_that_is_not_yaml(tmp_path: Path, capsys) -> None:
    """Before: yaml.ParserError traceback (exit 1) for ``--set dedup.bands=[``."""
    p = _run_config(tmp_path, capsys, "--set", "dedup.bands=[")
    _one_line(p, "--set 'dedup.bands=['", "not valid YAML")
    p = _run_config(tmp_path, capsys, "--set", "tokenizer.model=" + "[" * 5000)
    _one_line(p, "--set tokenizer.model", "nested too deeply")
    assert not (tmp_path / "o").exists()
    with pytest.raises(DataError, match="nested too deeply"):
        load_prep_config(overrides=["tokenizer.model=" + "[" * 5000 + "]" * 5000])


# ----------------------------------------------------------------------------- plan.json and state.json


@pytest.mark.parametrize(("content", "words"), [("[1]", "JSON list"), ('{"format_version": 1}', "no 'inputs'"),
                                                (DEEP_JSON, "nested too deeply")])
def test_prep_task_with_a_damaged_plan(tmp_path: Path, capsys, content: str, words: str) -> None:
    """Before: AttributeError / KeyError / RecursionError tracebacks."""
    out = tmp_path / "o"
    out.mkdir()
    (out / "plan.json").write_text(content)
    p = _cli(capsys, "task", "--stage", "extract", "--rank", "0", "--world-size", "1", "--out", str(out))
    _one_line(p, "plan.json", words)
    assert sorted(p.name for p in out.iterdir()) == ["plan.json"]
    with pytest.raises(DataError, match="unreadable plan"):
        load_plan(out)


def test_deeply_nested_json_markers_in_an_input_folder(tmp_path: Path) -> None:
    """Before: RecursionError while telling whether a folder is a prep output or a datasets folder."""
    src = tmp_path / "src"
    src.mkdir()
    _jsonl(src)
    (src / "plan.json").write_text(DEEP_JSON)  # not a prep output's plan: the folder is read as input
    assert "in.jsonl" in [Path(f.path).name for f in resolve_inputs([src])]
    (src / "state.json").write_text(DEEP_JSON)
    with pytest.raises(DataError, match="not a datasets state.json"):
        resolve_inputs([src])
