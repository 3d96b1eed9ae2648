"""Tensor and sequence parallelism on the gloo backend, against the unsharded computation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from distributed import run_ranks, train_rank
from tp_ranks import (
    gathered_gradients,
    gathered_initial_state,
    layer_checks,
    module_state,
    sequence_parallel_checks,
)

pytestmark = [pytest.mark.distributed]


def test_parallel_layers_match_unsharded_layers() -> None:
    for diffs in run_ranks(layer_checks, 2, 2):
        bad = {k: v for k, v in diffs.items() if v > 1e-5}
        assert not bad, bad
        assert len(diffs) >= 12


def test_sequence_parallel_region_matches_unsharded() -> None:
    for diffs in run_ranks(sequence_parallel_checks, 2, 2):
        bad = {k: v for k, v in diffs.items() if v > 1e-5}
        assert not bad, bad


def shape(data: Path, out: Path, preset: str = "depth_mup", tensor: int = 1, sp: bool = False, **train) -> dict:
    return tiny_config(
        data, out,
        model={"width": 64, "base_width": 32, "heads": 4, "base_heads": 4, "depth": 2, "base_depth": 1, "seq_len": 32,
               "vocab_size": 520, "bias": True},  # padded to 640 rows: 120 padding rows
        parametrization={"name": preset},
        parallel={"tensor": tensor, "sequence_parallel": sp},
        train={"grad_accum": 2, **train},
    )


@pytest.mark.parametrize("tied", [True, False])
def test_initial_weights_and_groups_equal_under_tp(sample_data: Path, tmp_path: Path, tied: bool) -> None:
    for preset in ("sp", "mup", "depth_mup"):
        one = shape(sample_data, tmp_path, preset)
        two = shape(sample_data, tmp_path, preset, tensor=2)
        for cfg in (one, two):
            cfg["model"]["tie_embeddings"] = tied
        (ref,) = run_ranks(gathered_initial_state, 1, one)
        got = run_ranks(gathered_initial_state, 2, two)
        for result in got:
            assert result["state"].keys() == ref["state"].keys()
            for name, value in ref["state"].items():
                assert (result["state"][name] == value).all() and result["state"][name].shape == value.shape, (preset, name)
            assert result["groups"] == ref["groups"], preset


def losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r}


def assert_close(a: dict[int, float], b: dict[int, float], rel: float) -> None:
    assert a.keys() == b.keys() and len(a) >= 3
    for step in a:
        assert a[step] == pytest.approx(b[step], rel=rel), (step, a[step], b[step])


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["sp", "mup", "depth_mup", "completep"])
def test_tp2_trains_like_tp1(sample_data: Path, tmp_path: Path, preset: str) -> None:
    """Losses over 3 optimizer steps (fp32) at TP=2, with and without sequence parallelism, equal TP=1."""
    run_ranks(train_rank, 1, shape(sample_data, tmp_path / "tp1", preset))
    ref = losses(tmp_path / "tp1")
    for sp in (False, True):
        out = tmp_path / f"tp2-sp{sp}"
        summaries = run_ranks(train_rank, 2, shape(sample_data, out, preset, tensor=2, sp=sp))
        assert summaries[0]["status"] == "completed"
        assert_close(losses(out), ref, rel=1e-5)
    assert ref[3] != ref[1]


@pytest.mark.slow
def test_tp2_dp2_trains_like_one_process(sample_data: Path, tmp_path: Path) -> None:
    run_ranks(train_rank, 1, shape(sample_data, tmp_path / "one"))
    four = shape(sample_data, tmp_path / "four", tensor=2, grad_accum=1)
    four["parallel"]["zero_stage"] = 1
    summaries = run_ranks(train_rank, 4, four)
    assert summaries[0]["world_size"] == 4
    assert_close(losses(tmp_path / "four"), losses(tmp_path / "one"), rel=1e-5)
    one_gn = {r["step"]: r["grad_norm"] for r in map(json.loads, (tmp_path / "one" / "metrics.jsonl").read_text().splitlines())}
    four_gn = {r["step"]: r["grad_norm"] for r in map(json.loads, (tmp_path / "four" / "metrics.jsonl").read_text().splitlines())}
    assert_close(one_gn, four_gn, rel=1e-4)


@pytest.mark.slow
def test_tp2_checkpoint_resumes_at_tp2(sample_data: Path, tmp_path: Path) -> None:
    straight = shape(sample_data, tmp_path / "straight", tensor=2, steps=5, save_final=True)
    run_ranks(train_rank, 2, straight)
    first = shape(sample_data, tmp_path / "resumed", tensor=2, steps=5, save_final=True, stop_after_steps=3)
    assert run_ranks(train_rank, 2, first)[0]["status"] == "stopped"
    ckpt = tmp_path / "resumed" / "checkpoints" / "step_00000003"
    assert sorted(p.name for p in ckpt.glob("mp_rank_*_model_states.pt")) == [
        "mp_rank_00_model_states.pt", "mp_rank_01_model_states.pt"]
    second = shape(sample_data, tmp_path / "resumed", tensor=2, steps=5, save_final=True, resume="must")
    assert run_ranks(train_rank, 2, second)[0]["status"] == "completed"
    assert_close(losses(tmp_path / "resumed"), losses(tmp_path / "straight"), rel=1e-6)


@pytest.mark.parametrize(
    ("model", "parallel", "world", "message"),
    [
        ({"heads": 6, "width": 96}, {"tensor": 4}, 4, "model.heads (6) is not divisible by parallel.tensor (4)"),
        ({"heads": 4, "width": 64, "mlp_ratio": 2.3}, {"tensor": 2}, 2, "MLP width"),
        ({"vocab_multiple": 100}, {"tensor": 8}, 8, "model.vocab_multiple (100) is not divisible"),
        ({}, {"tensor": 2}, 3, "does not divide the world size (3 processes)"),
        ({"seq_len": 30}, {"tensor": 4, "sequence_parallel": True}, 4, "model.seq_len (30) is not divisible"),
        ({"block": "linear"}, {"tensor": 2, "sequence_parallel": True}, 2, "not available with model.block: linear"),
        # 3 key/value heads on 2 ranks: neither split nor replicated (heads, width, MLP width all divide)
        ({"heads": 6, "width": 96, "kv_heads": 3}, {"tensor": 2}, 2,
         "model.kv_heads (3) and parallel.tensor (2): neither divides the other"),
        ({"heads": 12, "width": 96, "kv_heads": 6, "mlp": "swiglu"}, {"tensor": 4}, 4,
         "model.kv_heads (6) and parallel.tensor (4): neither divides the other"),
    ],
)
def test_impossible_tensor_layouts_fail_before_work(model: dict, parallel: dict, world: int, message: str) -> None:
    from megadepth.common.errors import ConfigError
    from megadepth.config import validate
    from megadepth.parallel.distributed import check_layout

    base = {"width": 64, "heads": 8, "seq_len": 32}
    cfg = validate({"model": {**base, **model}, "parallel": parallel})
    with pytest.raises(ConfigError) as info:
        check_layout(cfg, world)
    assert message in str(info.value)


@pytest.mark.slow
def test_merge_tp2_checkpoint_into_tp1(sample_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """SGD keeps layouts bit-comparable (AdamW's rounding differs by ~1e-4 between layouts): after 3 steps
    the merged TP=2 weights equal the TP=1 run's weights; a TP=1 run cannot resume the TP=2 checkpoint."""
    import numpy as np

    from megadepth.cli import main
    from megadepth.common.errors import ConfigError
    from megadepth.config import validate
    from megadepth.train.loop import plan_training

    def cfg(out: Path, tensor: int) -> dict:
        c = shape(sample_data, out, tensor=tensor, steps=3, save_final=True)
        c["optimizer"] = {"name": "sgd", "lr": 0.5, "momentum": 0.9}
        return c

    run_ranks(train_rank, 1, cfg(tmp_path / "tp1", 1))
    run_ranks(train_rank, 2, cfg(tmp_path / "tp2", 2))
    assert main(["merge-tp", str(tmp_path / "tp2" / "checkpoints"), "--out", str(tmp_path / "merged")]) == 0
    merged_file = tmp_path / "merged" / "step_00000003" / "mp_rank_00_model_states.pt"
    merged = module_state(str(merged_file))
    ref = module_state(str(tmp_path / "tp1" / "checkpoints" / "step_00000003" / "mp_rank_00_model_states.pt"))
    assert merged.keys() == ref.keys()
    for key in ref:
        assert merged[key].shape == ref[key].shape, key
        assert np.allclose(merged[key], ref[key], atol=1e-6, rtol=1e-5), key
    merged_cfg = validate(__import__("yaml").safe_load((merged_file.parent / "config.yaml").read_text()))
    assert merged_cfg.parallel.tensor == 1
    # the run directory itself, as generate, export and init_from take it: the same merge
    assert main(["merge-tp", str(tmp_path / "tp2"), "--out", str(tmp_path / "merged_run")]) == 0
    again = module_state(str(tmp_path / "merged_run" / "step_00000003" / "mp_rank_00_model_states.pt"))
    assert all(np.array_equal(again[key], merged[key]) for key in merged)
    # never into the run itself (it overwrote the checkpoint being merged) nor into a folder in use
    source = tmp_path / "tp2" / "checkpoints" / "step_00000003" / "mp_rank_00_model_states.pt"
    before = source.read_bytes()
    for out, says in ((tmp_path / "tp2" / "checkpoints", "not an empty directory"),
                      (tmp_path / "tp2" / "fresh", "inside the run being merged"),
                      (tmp_path / "merged", "not an empty directory"),
                      (merged_file, "exists and is not a directory"),
                      (merged_file / "x", "is a file, not a directory")):
        assert main(["merge-tp", str(tmp_path / "tp2"), "--out", str(out)]) == 2
        assert says in capsys.readouterr().err
    assert source.read_bytes() == before and not (tmp_path / "tp2" / "fresh").exists()
    # --tag names a checkpoint of the folder, not a path out of it (merge-tp and export both)
    for command in (["merge-tp", str(tmp_path / "tp2"), "--out", str(tmp_path / "m2")],
                    ["export", str(tmp_path / "tp2"), "--format", "hf", str(tmp_path / "hf")]):
        assert main([*command, "--tag", "../../tp1/checkpoints/step_00000003"]) == 2
        assert "is not a checkpoint name of the run's checkpoints folder" in capsys.readouterr().err

    with pytest.raises(ConfigError, match="saved at parallel.tensor = 2"):
        plan_training(validate(cfg(tmp_path / "tp2", 1)))


@pytest.mark.slow
@pytest.mark.parametrize("sp", [False, True])
def test_dropout_under_tp_keeps_replicas_equal_and_resumes_exactly(sample_data: Path, tmp_path: Path, sp: bool) -> None:
    """Dropout at TP=2: masks on replicated activations must be the same on both ranks (else the
    replicated LayerNorm and position weights drift apart, which merge-tp refuses), and the per-step
    reseeding makes an interrupted run equal an uninterrupted one."""
    from megadepth.train.merge import consolidated_state

    common = {"steps": 4, "save_final": True}
    cfg = shape(sample_data, tmp_path / "straight", tensor=2, sp=sp, **common)
    cfg["model"]["dropout"] = 0.2
    run_ranks(train_rank, 2, cfg)
    consolidated_state(tmp_path / "straight" / "checkpoints")  # raises if a replicated parameter differs

    first = shape(sample_data, tmp_path / "resumed", tensor=2, sp=sp, stop_after_steps=2, **common)
    first["model"]["dropout"] = 0.2
    run_ranks(train_rank, 2, first)
    second = shape(sample_data, tmp_path / "resumed", tensor=2, sp=sp, **common)
    second["model"]["dropout"] = 0.2
    run_ranks(train_rank, 2, second)
    assert_close(losses(tmp_path / "straight"), losses(tmp_path / "resumed"), rel=1e-6)
    no_dropout = shape(sample_data, tmp_path / "nodrop", tensor=2, sp=sp, **common)
    run_ranks(train_rank, 2, no_dropout)
    assert losses(tmp_path / "nodrop")[4] != losses(tmp_path / "straight")[4]  # dropout was really on


def llama(data: Path, out: Path, kv_heads: int = 2, tensor: int = 1, sp: bool = False, **train) -> dict:
    """A Llama-shaped tiny model (RMSNorm, SwiGLU, rotary, grouped-query attention, QK-norm, no biases, untied
    head) under CompleteP, trained with SGD: SGD keeps layouts bit-comparable (AdamW's rounding of tiny
    gradients differs by ~1e-4 between layouts), so merged weights can be compared with TP=1's."""
    return tiny_config(
        data, out,
        model={"width": 64, "base_width": 32, "heads": 4, "base_heads": 4, "kv_heads": kv_heads,
               "base_kv_heads": kv_heads, "depth": 2,
               "base_depth": 1, "seq_len": 32, "vocab_size": 520, "norm": "rmsnorm", "mlp": "swiglu",
               "ffn_multiple_of": 32, "position": "rotary", "qk_norm": True, "bias": False,
               "tie_embeddings": False},
        parametrization={"name": "completep"},
        optimizer={"name": "sgd", "lr": 0.5, "momentum": 0.9},
        parallel={"tensor": tensor, "sequence_parallel": sp, "zero_stage": 1},  # DeepSpeed's gradient norm
        train={"grad_accum": 2, **train},
    )


def test_llama_block_gradients_equal_under_tp(sample_data: Path, tmp_path: Path) -> None:
    """Loss, every gathered gradient and the replica gradient norm under TP equal one process's, with the
    key/value heads split (kv_heads 2 on 2 ranks) and replicated (multi-query on 2 ranks; 2 heads on 4 ranks,
    each pair of ranks using its own), with and without sequence parallelism (and biases); the QK-norm gains'
    and the replicated key/value matrix's gradients are summed over the ranks."""
    def check(world: int, layouts: list[tuple[int, bool, bool]]) -> None:
        configs = []
        for kv, sp, bias in layouts:
            configs.append(llama(sample_data, tmp_path, kv_heads=kv, tensor=world, sp=sp))
            configs[-1]["model"]["bias"] = bias
        for result in run_ranks(gathered_gradients, world, configs):
            for layout, diffs in zip(layouts, result["runs"], strict=True):
                bad = {k: v for k, v in diffs.items() if v > 1e-5}
                assert not bad, (world, layout, bad)
                assert {"blocks.1.attn.q_norm.weight", "blocks.1.attn.k_norm.weight", "blocks.1.mlp.gate.weight",
                        "blocks.1.attn.key_value.weight"} <= diffs.keys()
                assert ("blocks.1.attn.key_value.bias" in diffs) == layout[2]

    check(2, [(2, False, False), (2, True, False), (1, False, False), (1, True, False), (1, True, True)])
    check(4, [(2, True, True)])


def _logits(state: dict, config_dict: dict) -> torch.Tensor:
    """The TP=1 model's logits on fixed tokens with the given (merged) weights."""
    from megadepth.config import validate
    from megadepth.model import GPT
    from megadepth.parametrize import Parametrization

    config = validate({**config_dict, "parallel": {}})
    ptz = Parametrization.from_config(config.model, config.parametrization, optimizer=config.optimizer.name)
    model = GPT(config.model, ptz.multipliers()).eval()
    model.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()})
    tokens = torch.randint(0, config.model.vocab_size, (2, config.model.seq_len),
                           generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return model(tokens)


@pytest.mark.slow
@pytest.mark.parametrize(("kv_heads", "sp"), [(2, False), (1, True)], ids=["kv-split", "kv-replicated-sp"])
def test_llama_tp2_trains_merges_and_moves_like_tp1(sample_data: Path, tmp_path: Path, kv_heads: int,
                                                    sp: bool) -> None:
    """The Llama block at TP=2 (key/value heads split, or replicated with sequence parallelism): losses and
    DeepSpeed's gradient norms equal TP=1's; merge-tp gives TP=1's weights and logits. Split: the TP=2 run
    stops after 2 steps and resumes (so the parity covers its saved and restored momentum and weights), and
    train.init_from takes its checkpoint back into TP=1 unchanged. Replicated: train.init_from gives every
    TP=2 rank the whole key/value matrix of the TP=1 checkpoint (and its slices of the rest)."""
    import numpy as np

    from megadepth.cli import main
    from megadepth.train.merge import consolidated_state

    def cfg(name: str, tensor: int, **train) -> dict:
        return llama(sample_data, tmp_path / name, kv_heads, tensor, sp and tensor > 1, save_final=True, **train)

    ref, got = tmp_path / "tp1", tmp_path / "tp2"
    run_ranks(train_rank, 1, cfg("tp1", 1))
    if sp:
        run_ranks(train_rank, 2, cfg("tp2", 2))
    else:  # one TP=2 run cut after 2 steps and resumed from its checkpoint: every step must still match TP=1
        assert run_ranks(train_rank, 2, cfg("tp2", 2, stop_after_steps=2))[0]["status"] == "stopped"
        assert sorted(p.name for p in (got / "checkpoints" / "step_00000002").glob("mp_rank_*_model_states.pt")) == [
            "mp_rank_00_model_states.pt", "mp_rank_01_model_states.pt"]
        assert run_ranks(train_rank, 2, cfg("tp2", 2, resume="must"))[0]["status"] == "completed"
    assert_close(losses(got), losses(ref), rel=1e-5)
    assert losses(ref)[3] < losses(ref)[1]
    norms = [{r["step"]: r["grad_norm"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
              if "grad_norm" in r} for out in (got, ref)]
    assert_close(*norms, rel=1e-4)  # the replicated key/value matrix and QK gains counted once

    # merge-tp: TP=1's weights and logits
    assert main(["merge-tp", str(got), "--out", str(tmp_path / "merged")]) == 0
    merged = module_state(str(tmp_path / "merged" / "step_00000003" / "mp_rank_00_model_states.pt"))
    single = module_state(str(ref / "checkpoints" / "step_00000003" / "mp_rank_00_model_states.pt"))
    assert merged.keys() == single.keys()
    assert merged["blocks.0.attn.key_value.weight"].shape == (2 * kv_heads * 16, 64)
    for key in single:
        assert np.allclose(merged[key], single[key], atol=1e-6, rtol=1e-5), key
    a, b = _logits(merged, cfg("x", 1)), _logits(single, cfg("x", 1))
    assert torch.allclose(a, b, atol=1e-5, rtol=1e-4), float((a - b).abs().max())

    if sp:
        _check_init_from_tp1_into_tp2(ref, cfg("into_tp2", 2, init_from=str(ref)))
        return
    # train.init_from of the TP=2 checkpoint into a TP=1 model: its merged weights
    _, tp2_weights, _ = consolidated_state(got)
    back = _init_from_in_one_process(cfg("into_tp1", 1, init_from=str(got)))
    assert back.keys() == tp2_weights.keys()
    assert all(torch.equal(back[k], tp2_weights[k]) for k in tp2_weights)


def _check_init_from_tp1_into_tp2(source_run: Path, config_dict: dict) -> None:
    """Every TP=2 rank built with train.init_from = the TP=1 run holds its slice of each sharded parameter
    and the whole of each replicated one (the multi-query key/value matrix included), bit for bit."""
    from pp_ranks import weights_from_checkpoint

    from megadepth.train.merge import consolidated_state

    _, source, _ = consolidated_state(source_run)
    for rank_state in run_ranks(weights_from_checkpoint, 2, config_dict):
        assert rank_state.keys() == source.keys()
        for name, (value, tp_size, dim, tp_rank) in rank_state.items():
            expected = source[name] if tp_size == 1 else source[name].chunk(tp_size, dim=dim)[tp_rank]
            assert torch.equal(torch.from_numpy(value), expected), name
        assert rank_state["blocks.0.attn.key_value.weight"][1] == 1  # replicated, not split


def _init_from_in_one_process(config_dict: dict) -> dict[str, torch.Tensor]:
    """A TP=1 model's weights after train.init_from's loading (no engine: one process needs none)."""
    from megadepth.config import validate
    from megadepth.model import GPT
    from megadepth.parametrize import Parametrization, initialize
    from megadepth.train.init_from import check_init_source, load_weights

    config = validate(config_dict)
    ptz = Parametrization.from_config(config.model, config.parametrization, optimizer=config.optimizer.name)
    model = GPT(config.model, ptz.multipliers())
    initialize(model, ptz, config.train.seed + 1)  # another start, so that every weight must be overwritten
    load_weights(model, check_init_source(config))
    return {k: v.detach() for k, v in model.state_dict().items()}
