"""Muon (optimizer.name: muon): Newton-Schulz, the optimizer's two halves, the rules-table column, the layouts
it refuses, and training in one process, at TP=2 x DP=2 (ZeRO 0), at ZeRO 1 DP=2 and in the pipeline engine
(PP=2, TP=2 x PP=2 x DP=2; the Muon matrices step beside ZeRO) with parity, counted orthogonalisations and
exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from distributed import run_ranks
from muon_ranks import train_counting

from megadepth.optim import MuonAdamW, newton_schulz, orthogonalised_update, shape_factor


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("shape", [(16, 48), (48, 16), (32, 32)])
def test_newton_schulz_orthogonalises(shape: tuple[int, int]) -> None:
    """Singular values of the result lie near 1 (the quintic's band) whatever the input's scale, and the
    singular vectors are the input's: U S V^T -> U S' V^T."""
    g = _randn(*shape) * 1e-3
    out = newton_schulz(g, 5)
    s = torch.linalg.svdvals(out)
    assert s.min() > 0.6 and s.max() < 1.25, s
    u, _, vh = torch.linalg.svd(g.double(), full_matrices=False)
    core = u.T @ out.double() @ vh.T  # diagonal when the singular vectors are kept
    assert (core - torch.diag(torch.diagonal(core))).abs().max() < 1e-3
    assert (newton_schulz(g, 5) - newton_schulz(g * 1e4, 5)).abs().max() < 1e-5


@pytest.mark.parametrize("shape", [(64, 256), (256, 64), (128, 128)])
def test_newton_schulz_in_bf16_keeps_the_fp32_spectrum(shape: tuple[int, int]) -> None:
    """Newton-Schulz in bfloat16 (what the optimizer uses on CUDA devices, and for ns_dtype=torch.bfloat16):
    on CPU the same iteration gives the fp32 result's singular values to 0.05 and the update to a few
    percent (2-4% measured at these shapes), and a MuonAdamW step in bf16 moves the weights as the fp32 step
    does. What a GPU's bf16 matmul rounds differently is not measured here (no GPU in CI)."""
    g = _randn(*shape)
    full, half = newton_schulz(g, 5, torch.float32), newton_schulz(g, 5, torch.bfloat16)
    assert half.dtype == g.dtype
    spread = (torch.linalg.svdvals(half) - torch.linalg.svdvals(full)).abs().max()
    assert spread < 0.05 and torch.linalg.svdvals(half).max() < 1.25, spread
    assert (half - full).norm() / full.norm() < 0.06

    def step(ns_dtype: torch.dtype) -> torch.Tensor:
        w = torch.nn.Parameter(_randn(*shape, seed=1) * 0.02)
        w.grad = g.clone()
        MuonAdamW([{"params": [w], "use_muon": True, "lr": 0.1}], ns_dtype=ns_dtype).step()
        return w.detach() - _randn(*shape, seed=1) * 0.02

    moved_full, moved_half = step(torch.float32), step(torch.bfloat16)
    assert (moved_half - moved_full).norm() / moved_full.norm() < 0.06


def test_key_value_is_orthogonalised_as_k_and_v_apart() -> None:
    """[kv_heads, 2, head_dim] rows: K and V each orthogonalised whole, each with its own shape factor."""
    heads, hd, width = 2, 4, 16
    full = _randn(heads * 2 * hd, width)
    pairs = full.reshape(heads, 2, hd, width)
    k, v = (pairs[:, i].reshape(heads * hd, width) for i in range(2))
    got = orthogonalised_update(full, 5, "spectral", hd, torch.float32).reshape(heads, 2, hd, width)
    factor = shape_factor(heads * hd, width, "spectral")
    assert torch.allclose(got[:, 0].reshape(heads * hd, width), newton_schulz(k, 5) * factor)
    assert torch.allclose(got[:, 1].reshape(heads * hd, width), newton_schulz(v, 5) * factor)
    assert not torch.allclose(orthogonalised_update(full, 5, "spectral", None, torch.float32), got.reshape(full.shape))
    assert shape_factor(64, 16, "spectral") == 2.0 and shape_factor(64, 16, "match_rms_adamw") == pytest.approx(1.6)
    # torch's original: sqrt(max(1, A/B)), so a matrix wider in than out gets 1, not spectral's sqrt(A/B)
    assert shape_factor(64, 16, "original") == 2.0 and shape_factor(16, 64, "original") == 1.0
    assert shape_factor(16, 64, "spectral") == 0.5


def test_adamw_half_equals_torch_adamw_and_muon_refuses_flat_tensors() -> None:
    """The AdamW groups step as torch.optim.AdamW does; a Muon group refuses a 1-D tensor (a ZeRO flat
    partition) instead of stepping it silently as SGD."""
    a = torch.nn.Parameter(_randn(8, 4))
    b = torch.nn.Parameter(a.detach().clone())
    kw = {"lr": 0.01, "weight_decay": 0.1, "betas": (0.9, 0.95), "eps": 1e-8}
    ours = MuonAdamW([{"params": [a], **kw}])
    ref = torch.optim.AdamW([b], **kw)
    for step in range(4):
        grad = _randn(8, 4, seed=step + 1)
        a.grad, b.grad = grad.clone(), grad.clone()
        ours.step()
        ref.step()
    assert torch.allclose(a, b, atol=1e-7, rtol=1e-6)
    with pytest.raises(ValueError, match="Muon steps whole matrices only"):
        MuonAdamW([{"params": [torch.nn.Parameter(torch.zeros(8))], "use_muon": True}])


def _muon_config(data: Path, out: Path, tensor: int = 1, **train) -> dict:
    """A Llama-shaped tiny model (SwiGLU, grouped-query attention with K/V heads split under TP=2, QK-norm,
    untied head) under CompleteP with Muon, at ZeRO 0."""
    return tiny_config(
        data, out,
        model={"width": 64, "base_width": 32, "heads": 4, "base_heads": 4, "kv_heads": 2, "base_kv_heads": 2,
               "depth": 2,
               "base_depth": 1, "seq_len": 32, "vocab_size": 520, "norm": "rmsnorm", "mlp": "swiglu",
               "ffn_multiple_of": 32, "position": "rotary", "qk_norm": True, "bias": False,
               "tie_embeddings": False},
        parametrization={"name": "completep"},
        # grad_clip below every step's norm: the clip coefficient (one norm over all parameters) shapes each step
        optimizer={"name": "muon", "lr": 0.02, "grad_clip": 0.3, "muon": {"momentum": 0.9}},
        parallel={"tensor": tensor, "zero_stage": 0},
        train={"grad_accum": 2, "steps": 4, "save_final": True, **train},
    )


def _losses(out: Path, key: str = "loss") -> dict[int, float]:
    rows = map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
    return {r["step"]: r[key] for r in rows if key in r}


@pytest.fixture(scope="module")
def muon_reference(sample_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """One process, ZeRO 0, 4 steps: the run every layout is compared with (its folder, its result)."""
    straight = tmp_path_factory.mktemp("muon") / "straight"
    (result,) = run_ranks(train_counting, 1, _muon_config(sample_data, straight))
    return straight, result


# per step and process: query, key and value (2), out, gate, up, down in each of 2 blocks
ORTHOGONALISATIONS_PER_STEP = 2 * 7


@pytest.mark.slow
@pytest.mark.distributed
def test_muon_trains_resumes_exactly_and_tp2_dp2_matches_one_process(sample_data: Path, tmp_path: Path,
                                                                     muon_reference: tuple[Path, dict]) -> None:
    """One process, 4 steps: the loss falls, and Newton-Schulz ran 14 times per step. A run stopped after 2
    steps and resumed equals it bit for bit (momentum and AdamW state restored). TP=2 x DP=2 at ZeRO 0 (K/V
    heads split over the tensor ranks, gathered whole, K and V apart), itself stopped and resumed, gives the
    same losses, every rank orthogonalising every whole matrix each step."""
    from megadepth.train.merge import consolidated_state

    (straight, result), cut, four = muon_reference, tmp_path / "cut", tmp_path / "four"
    assert result["orthogonalisations"] == 4 * ORTHOGONALISATIONS_PER_STEP
    ref = _losses(straight)
    assert ref[4] < ref[1] - 0.05, ref

    (first,) = run_ranks(train_counting, 1, _muon_config(sample_data, cut, stop_after_steps=2))
    assert first["summary"]["status"] == "stopped" and first["orthogonalisations"] == 2 * ORTHOGONALISATIONS_PER_STEP
    (second,) = run_ranks(train_counting, 1, _muon_config(sample_data, cut, resume="must"))
    assert second["orthogonalisations"] == 2 * ORTHOGONALISATIONS_PER_STEP
    assert _losses(cut) == ref
    weights, resumed = consolidated_state(straight)[1], consolidated_state(cut)[1]
    assert all(torch.equal(weights[k], resumed[k]) for k in weights)

    # TP=2 x DP=2: each data rank takes half of the 2 micro-batches x 4 sequences per step
    cfg = _muon_config(sample_data, four, tensor=2, grad_accum=1, global_batch=8)
    stopped = run_ranks(train_counting, 4, {**cfg, "train": {**cfg["train"], "stop_after_steps": 2}})
    assert all(r["orthogonalisations"] == 2 * ORTHOGONALISATIONS_PER_STEP for r in stopped)
    resumed_ranks = run_ranks(train_counting, 4, {**cfg, "train": {**cfg["train"], "resume": "must"}})
    assert all(r["orthogonalisations"] == 2 * ORTHOGONALISATIONS_PER_STEP for r in resumed_ranks)
    assert resumed_ranks[0]["summary"]["world_size"] == 4
    got = _losses(four)
    assert got.keys() == ref.keys()
    for step in ref:
        assert got[step] == pytest.approx(ref[step], rel=2e-6), (step, got, ref)



@pytest.mark.slow
def test_muon_lr_reaches_the_trained_muon_matrices_only(sample_data: Path, tmp_path: Path) -> None:
    """Trained for one step (constant LR, no clipping or decay): the run with optimizer.lr 0.01 and
    optimizer.muon.lr 0.04 moves every Muon matrix exactly as the run with one LR of 0.04 does, and every
    AdamW parameter exactly as the run with one LR of 0.01; the log carries muon_lr."""
    from megadepth.train.merge import consolidated_state

    def one_step(name: str, lr: float, muon_lr: float | None = None) -> dict[str, torch.Tensor]:
        cfg = _muon_config(sample_data, tmp_path / name, steps=1, grad_accum=1)
        muon = {**cfg["optimizer"]["muon"], **({"lr": muon_lr} if muon_lr else {})}
        cfg.update(optimizer={**cfg["optimizer"], "lr": lr, "grad_clip": 0.0, "weight_decay": 0.0, "muon": muon},
                   schedule={"name": "constant", "warmup_steps": 0})
        run_ranks(train_counting, 1, cfg)
        return consolidated_state(tmp_path / name)[1]

    apart, muon_lr, adamw_lr = one_step("apart", 0.01, 0.04), one_step("muon", 0.04), one_step("adamw", 0.01)
    muon_half = [k for k in apart if any(k.endswith(f"{m}.weight") for m in
                                         ("query", "key_value", "out", "gate", "up", "down"))]
    assert len(muon_half) == 12 and len(apart) > len(muon_half)
    for key, value in apart.items():
        same, other = (muon_lr, adamw_lr) if key in muon_half else (adamw_lr, muon_lr)
        assert torch.equal(value, same[key]), key
        if key in muon_half or "embedding" in key:
            assert not torch.equal(value, other[key]), key
    assert _losses(tmp_path / "apart", "muon_lr") == {1: 0.04}
    assert _losses(tmp_path / "adamw", "muon_lr") == {1: 0.01}  # unset: optimizer.lr, logged all the same


def _stop_and_resume(cfg: dict, world: int) -> tuple[list[dict], list[dict]]:
    """Train ``cfg`` on ``world`` ranks, stopped after 2 of its 4 steps, then resumed: both runs' results."""
    stopped = run_ranks(train_counting, world, {**cfg, "train": {**cfg["train"], "stop_after_steps": 2}})
    resumed = run_ranks(train_counting, world, {**cfg, "train": {**cfg["train"], "resume": "must"}})
    return stopped, resumed


@pytest.mark.slow
@pytest.mark.distributed
def test_muon_beside_zero1_and_in_the_pipeline_matches_one_process(sample_data: Path, tmp_path: Path,
                                                                   muon_reference: tuple[Path, dict]) -> None:
    """ZeRO 1 at DP=2 (the Muon matrices outside ZeRO's flat partitions, their gradients averaged over the data
    group beside it, one clip norm over all parameters), the pipeline engine at PP=2 and TP=2 x PP=2 x DP=2,
    (the two-rank layouts stopped after 2 steps and resumed from their own checkpoint; the eight-rank one
    straight, to save time) give the same losses and gradient norms as one process at ZeRO 0; every rank
    orthogonalised each of its stage's matrices each step (7 per block: query, key, value, out, gate, up,
    down), every checkpoint holds one Muon state file per tensor x pipeline rank, and the final weights,
    merged as merge-tp does, are one process's."""
    from megadepth.train.merge import consolidated_state

    straight, _ = muon_reference
    ref, ref_norms = _losses(straight), _losses(straight, "grad_norm")
    weights = consolidated_state(straight)[1]
    layouts = {"zero1_dp2": (2, {"zero_stage": 1}, 2),  # name: (world, parallel, blocks per stage)
               "pp2": (2, {"zero_stage": 1, "pipeline": 2}, 1),
               "tp2_pp2_dp2": (8, {"zero_stage": 1, "pipeline": 2, "tensor": 2}, 1)}
    for name, (world, parallel, blocks) in layouts.items():
        out = tmp_path / name
        cfg = _muon_config(sample_data, out, grad_accum=2 if world == 2 and "pipeline" in parallel else 1,
                           global_batch=8)
        cfg["parallel"].update(parallel)
        if world == 2:
            runs = [*_stop_and_resume(cfg, world)]
            steps, tag = 2, "step_00000002"
        else:
            runs, steps, tag = [run_ranks(train_counting, world, cfg)], 4, "step_00000004"
        assert all(r["orthogonalisations"] == steps * 7 * blocks for run in runs for r in run), (name, runs)
        saved = sorted(f.name for f in (out / "checkpoints" / tag).glob("muon_*"))
        tp, pp = parallel.get("tensor", 1), parallel.get("pipeline", 1)
        assert saved == sorted(f"muon_tp_{t:02d}_pp_{s:02d}_optim_states.pt" for t in range(tp) for s in range(pp))
        got, norms = _losses(out), _losses(out, "grad_norm")
        assert got.keys() == ref.keys() and norms.keys() == ref_norms.keys(), name
        for step in ref:
            assert got[step] == pytest.approx(ref[step], rel=2e-6), (name, step, got, ref)
            assert norms[step] == pytest.approx(ref_norms[step], rel=1e-5), (name, step, norms, ref_norms)
        assert min(ref_norms.values()) > 0.3  # the clip (grad_clip 0.3) acted on every step compared
        merged = consolidated_state(out)[1]  # merge-tp reads the Muon matrices from the model files as ever
        assert merged.keys() == weights.keys()
        # the vocabulary matrices (AdamW) get 5e-5: under TP their split gradients round otherwise, and Adam's
        # m / sqrt(v) (eps 2.5e-9) magnifies that on the rows of tokens with next to no gradient
        loose = ("embed.token.weight", "head.proj.weight")
        assert all(torch.allclose(merged[k], weights[k], rtol=1e-5, atol=5e-5 if k in loose else 1e-6)
                   for k in weights), name


def _rules_config(preset: str, adjust: str = "spectral", width: int = 128, depth: int = 8, **parallel) -> object:
    from megadepth.config import validate

    return validate({
        "model": {"width": width, "depth": depth, "heads": 4, "base_width": 32, "base_heads": 4, "base_depth": 2,
                  "seq_len": 16, "vocab_size": 64, "tie_embeddings": False},
        "parametrization": {"name": preset},
        "optimizer": {"name": "muon", "lr": 0.01, "weight_decay": 0.1, "muon": {"adjust_lr": adjust}},
        "parallel": parallel,
    })


def test_muon_lr_sets_the_muon_matrices_apart_from_the_adamw_roles() -> None:
    """optimizer.muon.lr is the Muon matrices' base LR and optimizer.lr stays the AdamW roles'; unset, one LR
    drives both. The per-role table reports the LRs the groups get. A resume pins it, reading unset as
    optimizer.lr; it is refused without optimizer.name: muon."""
    from megadepth.config import validate
    from megadepth.model import GPT
    from megadepth.parametrize import Parametrization, param_groups
    from megadepth.train.preflight import resumed_setting_differences

    def groups_and_table(cfg: object) -> tuple[dict[str, dict], dict[str, float]]:
        ptz = Parametrization.from_config(cfg.model, cfg.parametrization, optimizer=cfg.optimizer)
        groups = {g["name"]: g for g in param_groups(GPT(cfg.model, ptz.multipliers()), ptz, cfg.optimizer)}
        table = {row["role"]: row["lr"] for row in ptz.describe(cfg.optimizer)}
        return groups, table

    shared = _rules_config("completep", width=64, depth=4)
    apart = validate({**shared.model_dump(), "optimizer": {**shared.optimizer.model_dump(),
                                                           "muon": {"lr": 0.08}}})
    one, _ = groups_and_table(shared)
    two, table = groups_and_table(apart)
    assert {n for n, g in two.items() if g["use_muon"]} >= {"hidden", "output_proj"}
    assert any(not g["use_muon"] for g in two.values())
    for name, group in two.items():
        base = 0.08 if group["use_muon"] else 0.01
        assert group["lr"] == pytest.approx(base * group["lr_mult"]) and table[name] == pytest.approx(group["lr"])
        assert one[name]["lr"] == pytest.approx(0.01 * group["lr_mult"])
        assert (group["lr"] == pytest.approx(one[name]["lr"])) != group["use_muon"]

    spelled = validate({**shared.model_dump(), "optimizer": {**shared.optimizer.model_dump(), "muon": {"lr": 0.01}}})
    assert resumed_setting_differences(shared, spelled) == ""
    assert resumed_setting_differences(shared, apart) == "optimizer.muon.lr unset (optimizer.lr 0.01) there, 0.08 here"
    assert resumed_setting_differences(apart, spelled) == "optimizer.muon.lr 0.08 there, 0.01 here"
    faster = validate({**shared.model_dump(), "optimizer": {**shared.optimizer.model_dump(), "lr": 0.02}})
    assert resumed_setting_differences(shared, faster) == "optimizer.lr 0.01 there, 0.02 here"  # named once
    with pytest.raises(Exception, match=r"optimizer.muon has no effect with optimizer.name: adamw \(set: "
                       r"optimizer.muon.lr\); .*--set optimizer.muon.lr=null\)"):
        validate({"optimizer": {"name": "adamw", "muon": {"lr": 0.05}}})


@pytest.mark.parametrize("preset", ["sp", "mup", "depth_mup", "completep"])
def test_muon_rules_column(preset: str) -> None:
    """Hidden matrices: Muon, no eps; lr width-constant under spectral, muP's 1/m under match_rms_adamw (wd
    going inversely); in-branch depth rule r^-(1-alpha) as Adam's. Every other role: AdamW's own rules. At the
    base shape every preset and both adjust_lr modes give the same numbers (the base-shape invariant)."""
    from megadepth.parametrize import Parametrization, Role

    def ptz(cfg: object, optimizer: object = None) -> Parametrization:
        return Parametrization.from_config(cfg.model, cfg.parametrization, optimizer=optimizer or cfg.optimizer)

    spectral, rms = ptz(_rules_config(preset)), ptz(_rules_config(preset, "match_rms_adamw"))
    original = ptz(_rules_config(preset, "original"))
    adamw = ptz(_rules_config(preset), "adamw")
    m = 4.0 if preset != "sp" else 1.0
    depth = 4.0 ** -(1 - adamw.alpha) if adamw.depth_scaling else 1.0
    for role in Role:
        if role.is_hidden_matrix:
            assert spectral.family(role) == "muon" and spectral.rule(role).lr_mult == pytest.approx(depth)
            # match_rms_adamw's factor 0.2 sqrt(max fan) grows like sqrt(m): LR eta/sqrt(m) keeps the update's
            # spectral norm width-constant (coordinate-checked, docs/parametrizations.md), and lr x wd too
            assert rms.rule(role).lr_mult == pytest.approx(depth / m**0.5)
            assert rms.rule(role).wd_mult == pytest.approx(spectral.rule(role).wd_mult * m**0.5)
            assert spectral.rule(role).eps_mult == 1.0
            # torch's "original" factor depends on the aspect ratio only, width-constant like spectral's
            assert original.rule(role) == spectral.rule(role)
        else:
            assert spectral.family(role) == "adamw" and spectral.rule(role) == adamw.rule(role), role
    base = [ptz(_rules_config(p, a, width=32, depth=2)) for p in ("sp", "mup", "depth_mup", "completep")
            for a in ("spectral", "original", "match_rms_adamw")]
    for other in base[1:]:
        assert all(other.rule(role) == base[0].rule(role) for role in Role)
    rows = spectral.describe(_rules_config(preset).optimizer)
    assert {r["role"]: r["optimizer"] for r in rows}["hidden"] == "muon"
    assert {r["role"]: r["eps"] for r in rows}["readout"] is not None
    table = spectral.format_table(_rules_config(preset).optimizer)
    assert "optimizer" in table and "muon: update x sqrt(fan_out/fan_in)" in table


def test_muon_groups_and_refused_layouts(tmp_path: Path) -> None:
    """Groups say which half steps them and the key/value matrix is tagged for the K/V split; ZeRO 1 and the
    pipeline engine pass the checks, ZeRO 2 and 3 and precision bf16 are refused at start-up, optimizer.muon
    without muon is a config error, and a checkpoint without this rank's Muon state file is refused."""
    from megadepth.common.errors import ConfigError
    from megadepth.config import validate
    from megadepth.model import GPT
    from megadepth.parametrize import Parametrization, param_groups
    from megadepth.parametrize.checks import check_parametrization

    cfg = _rules_config("completep", width=32, depth=2)
    ptz = Parametrization.from_config(cfg.model, cfg.parametrization, optimizer=cfg.optimizer)
    model = GPT(cfg.model, ptz.multipliers())
    groups = {g["name"]: g for g in param_groups(model, ptz, cfg.optimizer)}
    assert groups["hidden"]["use_muon"] and not groups["readout"]["use_muon"] and "eps" in groups["readout"]
    tagged = [n for n, p in model.named_parameters() if hasattr(p, "muon_kv_head_dim")]
    assert tagged == ["blocks.0.attn.key_value.weight", "blocks.1.attn.key_value.weight"]
    check_parametrization(cfg)
    check_parametrization(_rules_config("completep", zero_stage=1))
    check_parametrization(_rules_config("completep", pipeline=2, zero_stage=1))
    for stage in (2, 3):
        with pytest.raises(ConfigError, match=f"parallel.zero_stage {stage}: not supported"):
            check_parametrization(_rules_config("completep", zero_stage=stage))
    bf16 = _rules_config("completep", zero_stage=1).model_dump()
    bf16["train"]["precision"] = "bf16"
    with pytest.raises(ConfigError, match="train.precision bf16: not supported"):
        check_parametrization(validate(bf16))

    from megadepth.optim.beside_zero import MuonBeside
    from megadepth.train.checkpoint import _load_muon_beside
    from megadepth.train.schedule import make_scheduler

    beside = MuonBeside([g for g in groups.values() if g["use_muon"]], None,
                        make_scheduler(cfg.schedule, 4), tp_rank=1, pp_rank=0, data_rank=0)
    with pytest.raises(ConfigError, match="has no muon_tp_01_pp_00_optim_states.pt"):
        _load_muon_beside(beside, tmp_path)
    with pytest.raises(Exception, match="optimizer.muon has no effect with optimizer.name: adamw"):
        validate({"optimizer": {"name": "adamw", "muon": {"momentum": 0.9}}})
