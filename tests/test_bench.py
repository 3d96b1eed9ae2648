"""`megadepth bench` and the plain-PyTorch reference: they run, report what they must, and MFU follows
the MFU convention of docs/throughput.md (checked against the nanoGPT anchor's published figures, not against our own code)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from distributed import bench_rank, run_ranks

from megadepth.config import load_config
from megadepth.train.bench import flops_per_token

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model.depth=2", "model.width=64", "model.heads=4", "model.seq_len=32", "train.micro_batch=4",
        "model.vocab_size=512", "model.base_depth=1", "model.base_width=32", "model.base_heads=4"]


def test_flops_convention_reproduces_the_published_mfu() -> None:
    """The nanoGPT anchor (docs/throughput.md): gpt-124m at 512,648 tokens/s is 44.3% MFU, gpt-350m at 193,037 is 47.3%,
    gpt-1.3b at 61,519 is 56.4% (peak 989.4 TFLOP/s, vocab 50304)."""
    for (depth, width, seq), tok_s, mfu in [((12, 768, 1024), 512_648, 0.443), ((24, 1024, 1024), 193_037, 0.473),
                                            ((24, 2048, 2048), 61_519, 0.564)]:
        assert tok_s * flops_per_token(depth, width, seq, 50304) / 989.4e12 == pytest.approx(mfu, abs=0.0006)


def test_bench_configs_have_the_benchmark_shapes() -> None:
    expected = {"gpt-124m": (12, 768, 1024, 32), "gpt-350m": (24, 1024, 1024, 16), "gpt-1.3b": (24, 2048, 2048, 8)}
    for name, (depth, width, seq, mb) in expected.items():
        cfg = load_config([ROOT / "configs" / "bench" / f"{name}.yaml"])
        assert (cfg.model.depth, cfg.model.width, cfg.model.seq_len, cfg.train.micro_batch) == (depth, width, seq, mb)
        assert cfg.model.padded_vocab == 50304 and cfg.model.tie_embeddings and not cfg.model.bias
    llama = {"llama-125m": (12, 768, 1024, 32, 12), "llama-350m": (24, 1024, 1024, 16, 16),
             "llama-1.3b": (24, 2048, 2048, 8, 4), "llama-tiny": (4, 64, 128, 16, 2)}
    for name, (depth, width, seq, mb, kv) in llama.items():
        m = load_config([ROOT / "configs" / "bench" / f"{name}.yaml"]).model
        assert (m.depth, m.width, m.seq_len, m.n_kv_heads) == (depth, width, seq, kv), name
        assert (m.norm, m.mlp, m.position, m.bias) == ("rmsnorm", "swiglu", "rotary", False), name
        assert load_config([ROOT / "configs" / "bench" / f"{name}.yaml"]).train.micro_batch == mb, name


def test_plain_llama_reference_is_megadepths_llama_block() -> None:
    """The CPU bench's Llama row compares like with like: benchmarks/plain_gpt.py's plain Llama, given
    megadepth's weights (SP at its base shape: every multiplier 1), computes the same loss, GQA and the
    untied head included, and so does the GPT-2 reference against megadepth's GPT-2 block."""
    from benchmarks.plain_gpt import build
    from megadepth.model import GPT
    from megadepth.parametrize import Parametrization, initialize

    for cfg_file, sets in ((ROOT / "configs" / "model" / "llama-tiny.yaml", ["model.seq_len=16"]),
                           (ROOT / "configs" / "bench" / "tiny.yaml", ["model.seq_len=16", "model.depth=2"])):
        cfg = load_config([cfg_file, ROOT / "configs" / "parametrization" / "sp.yaml"], sets)
        m = cfg.model
        ptz = Parametrization.from_config(m, cfg.parametrization, optimizer=cfg.optimizer.name)
        ours = GPT(m, ptz.multipliers())
        initialize(ours, ptz, seed=0)
        with torch.no_grad():  # gains away from 1, so that a norm applied to the wrong place shows
            for p in (p for p in ours.parameters() if p.dim() == 1):
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())), alpha=0.1)
        plain = build(m)
        plain.load_state_dict(_plain_weights(ours, m.mlp == "swiglu", m.n_kv_heads, m.head_dim))  # strict: all named
        tokens = torch.randint(0, m.vocab_size, (2, m.seq_len + 1), generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            expected = ours(tokens[:, :-1], tokens[:, 1:])
            assert plain(tokens[:, :-1], tokens[:, 1:]) == pytest.approx(float(expected), rel=1e-5), cfg_file.name


def _plain_weights(model: torch.nn.Module, llama: bool, kv_heads: int, head_dim: int) -> dict[str, torch.Tensor]:
    """megadepth's parameters under plain_gpt.py's names: q, then all keys, then all values in one matrix
    (megadepth lays its key/value rows out head by head, [kv_heads, 2, head_dim])."""
    ours = dict(model.named_parameters())
    out = {"tok.weight": ours["embed.token.weight"]}
    if "embed.position.weight" in ours:
        out["pos.weight"] = ours["embed.position.weight"]
    norms = ("norm1", "norm2") if llama else ("ln1", "ln2")
    for i in range(len(model.blocks)):
        b = f"blocks.{i}."
        kv = ours[b + "attn.key_value.weight"].reshape(kv_heads, 2, head_dim, -1)
        k, v = (kv[:, j].reshape(kv_heads * head_dim, -1) for j in (0, 1))
        out |= {b + f"{norms[0]}.weight": ours[b + "attn_norm.weight"], b + f"{norms[1]}.weight": ours[b + "mlp_norm.weight"],
                b + "qkv.weight": torch.cat([ours[b + "attn.query.weight"], k, v]),
                b + "proj.weight": ours[b + "attn.out.weight"], b + "up.weight": ours[b + "mlp.up.weight"],
                b + "down.weight": ours[b + "mlp.down.weight"]}
        if llama:
            out[b + "gate.weight"] = ours[b + "mlp.gate.weight"]
    out["norm.weight" if llama else "ln.weight"] = ours["head.norm.weight"]
    if "head.proj.weight" in ours:
        out["head.weight"] = ours["head.proj.weight"]
    return out


@pytest.mark.distributed
def test_bench_runs_the_training_path_on_cpu() -> None:
    cfg = load_config([ROOT / "configs" / "bench" / "gpt-124m.yaml"], TINY).model_dump(mode="json")
    (result,) = run_ranks(bench_rank, 1, cfg, 4, 2)
    assert {"tokens_per_s", "step_ms", "mfu", "peak_mem"} <= result.keys()
    assert result["tokens_per_s"] > 0 and result["step_ms"] > 0 and result["peak_mem"] > 0
    expected = result["tokens_per_s"] * flops_per_token(2, 64, 32, 512) / 989.4e12
    assert result["mfu"] == pytest.approx(expected)
    assert result["tokens_per_s"] == pytest.approx(4 * 32 / (result["step_ms"] / 1000))
    assert result["device"] == "cpu" and result["precision"] == "fp32"


@pytest.mark.slow
def test_plain_reference_and_bench_command(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    sets = [a for item in TINY for a in ("--set", item)]
    plain = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "plain_gpt.py"),
                            str(ROOT / "configs" / "bench" / "gpt-124m.yaml"), *sets, "--steps", "3", "--warmup", "1",
                            "--no-compile", "--json", str(tmp_path / "plain.json")],
                           capture_output=True, text=True, env=env, timeout=300)
    assert plain.returncode == 0, plain.stderr[-2000:]
    # on one CPU of the machine's (taskset, a cpuset): the thread count follows the CPUs it may use
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    one_cpu = (lambda: os.sched_setaffinity(0, allowed[:1])) if len(allowed) > 1 else None
    env_bench = {k: v for k, v in env.items() if k != "OMP_NUM_THREADS"}
    bench = subprocess.run([sys.executable, "-m", "megadepth", "bench", str(ROOT / "configs" / "bench" / "gpt-124m.yaml"),
                            *sets, "--steps", "3", "--warmup", "1", "--json", str(tmp_path / "bench.json")],
                           capture_output=True, text=True, env=env_bench, timeout=300, cwd=tmp_path, preexec_fn=one_cpu)
    assert bench.returncode == 0, bench.stderr[-2000:]
    if one_cpu is not None:
        assert json.loads(bench.stdout)["threads"] == 1
    for name in ("plain", "bench"):
        data = json.loads((tmp_path / f"{name}.json").read_text())
        assert data["tokens_per_s"] > 0 and 0 < data["mfu"] < 1
    assert json.loads(bench.stdout)["steps"] == 3  # stdout is exactly the JSON


@pytest.mark.parametrize("peak", ["0", "-989.4", "nan", "inf", "fast"])
def test_peak_tflops_must_be_a_positive_number(peak: str, capsys: pytest.CaptureFixture[str]) -> None:
    """MFU divides by it: refused when the arguments are read, before any model is built or step timed."""
    from megadepth.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["bench", str(ROOT / "configs" / "bench" / "gpt-124m.yaml"), "--peak-tflops", peak])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --peak-tflops:" in err and ("must be a number above 0" in err or "expected a number" in err)


@pytest.mark.slow
def test_device_script_dry_run_on_cpu(tmp_path: Path) -> None:
    """benchmarks/gpu_bench.sh, as its header's CPU dry run: smoke, a GPT and a Llama shape, the plain
    reference of each, the SP run, and the table with the ratios and the multipliers' cost (the device
    session must not be the first time it runs)."""
    sets = " ".join(f"--set {item}" for item in TINY)
    # the script calls python3 from PATH, as on the device: here that must be this interpreter (make test
    # runs pytest from .venv without activating it)
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "PATH": path, "OUT": str(tmp_path), "SHAPES": "gpt-124m llama-125m", "SP_SHAPE": "gpt-124m", "MUON_SHAPE": "gpt-124m", "BENCH_SET": sets,
           "STEPS": "2", "WARMUP": "1", "COMPILE": "false"}
    run = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_bench.sh")], capture_output=True, text=True,
                         env=env, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    for name in ("smoke", "megadepth-gpt-124m", "plain-gpt-124m", "megadepth-sp-gpt-124m", "megadepth-llama-125m",
                 "plain-llama-125m", "megadepth-muon-gpt-124m"):
        assert json.loads((tmp_path / f"{name}.json").read_text())["tokens_per_s"] > 0, name
    table = (tmp_path / "table.md").read_text()
    for shape in ("gpt-124m", "llama-125m"):
        row = next(line for line in table.splitlines() if line.startswith(f"| {shape}"))
        assert "failed" not in row and float(row.split("|")[7]) > 0  # megadepth / plain
    assert json.loads((tmp_path / "megadepth-muon-gpt-124m.json").read_text())["optimizer"] == "muon"
    assert "Muon's Newton-Schulz and TP gathers cost" in table
    assert "the multipliers cost" in table and run.stdout.rstrip().endswith(table.rstrip().splitlines()[-1])
