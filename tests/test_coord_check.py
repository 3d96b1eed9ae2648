"""Coordinate checks: the slopes theory predicts, measured on the real training path.

Thresholds come from measurements (3 seeds each, 5 Adam steps, depths 2..32 at width 64, widths
32..256 at depth 4; docs/parametrizations.md has the table). Quantities that theory calls flat had
|slope| <= 0.11 over all seeds and settings, while SP's drifting ones were >= 0.77 in depth and >= 1.47
in width. "Flat" is therefore asserted as |slope| < 0.2 (about twice the worst flat case, far from
SP); predicted power laws within +-0.15 of the exponent measured (seed spread <= 0.04 around them).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from distributed import coord_check_rank, coord_result_rank, run_ranks

pytestmark = [pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
DEPTHS = [2, 4, 8, 16, 32]
WIDTHS = [32, 64, 128, 256]
FLAT = 0.2


def config(data: Path, tmp: Path, preset: str, block: str, lr: float, **model: object) -> dict:
    ptz = {"name": preset}
    if block == "linear":
        ptz["init_std"] = 0.125  # 1/sqrt(width): the O(1)-Jacobian regime the depth theory describes
    return tiny_config(
        data, tmp / "unused",
        model={"width": 64, "base_width": 64, "heads": 4, "seq_len": 32, "depth": 2, "base_depth": 2,
               "block": block, **model},
        parametrization=ptz,
        optimizer={"lr": lr, "weight_decay": 0.0},
        schedule={"name": "constant", "warmup_steps": 0},
        train={"micro_batch": 8},
    )


def depth_slopes(data: Path, tmp: Path, preset: str, block: str, lr: float) -> dict[str, float]:
    (result,) = run_ranks(coord_check_rank, 1, config(data, tmp, preset, block, lr), DEPTHS, None, 5)
    return {q: v["mean"] for q, v in result["depth"].items()}


@pytest.mark.parametrize("block", ["transformer", "linear"])
@pytest.mark.parametrize("preset", ["depth_mup", "completep"])
def test_residual_stream_and_total_change_flat_in_depth(sample_data: Path, tmp_path: Path, preset: str,
                                                         block: str) -> None:
    lr = 0.002 if block == "transformer" else 0.01
    s = depth_slopes(sample_data, tmp_path, preset, block, lr)
    assert abs(s["residual"]) < FLAT, s
    assert abs(s["residual_change"]) < FLAT, s
    assert abs(s["logits_change"]) < FLAT, s
    if preset == "completep":  # one block's contribution ~ r^-1
        assert -1.15 < s["block_output"] < -0.85, s
    if preset == "depth_mup" and block == "linear":  # block depth 1: a block's change ~ 1/sqrt(L)
        assert -0.7 < s["block_change"] < -0.4, s
        assert -0.65 < s["block_output"] < -0.35, s


@pytest.mark.parametrize("block", ["transformer", "linear"])
def test_sp_residual_stream_is_not_flat_in_depth(sample_data: Path, tmp_path: Path, block: str) -> None:
    lr = 0.002 if block == "transformer" else 0.01
    s = depth_slopes(sample_data, tmp_path, "sp", block, lr)
    assert s["residual"] > 0.5 and s["residual_change"] > 0.5, s


@pytest.mark.parametrize(("preset", "flat"), [("mup", True), ("sp", False)])
def test_width(sample_data: Path, tmp_path: Path, preset: str, flat: bool) -> None:
    cfg = config(sample_data, tmp_path, preset, "transformer", 0.01, depth=4, base_width=32, base_heads=4)
    (result,) = run_ranks(coord_check_rank, 1, cfg, [4], [32, 64, 128, 256], 5)
    s = {q: v["mean"] for q, v in result["width"].items()}
    if flat:
        assert all(abs(v) < 0.25 for v in s.values()), s
    else:
        assert s["residual_change"] > 1.0 and s["logits_change"] > 0.4, s


def test_coord_check_trains_with_the_training_step(sample_data: Path, tmp_path: Path) -> None:
    """The check steps through the trainer's Stepper, clipping included: a threshold that clips every
    step changes what it measures (it once bypassed the Stepper and silently trained unclipped), and
    with clipping off it still matches itself run to run."""
    from distributed import coord_records_rank

    def run(clip: float) -> list[dict]:
        cfg = config(sample_data, tmp_path, "depth_mup", "transformer", 0.01)
        cfg["optimizer"]["grad_clip"] = clip
        (records,) = run_ranks(coord_records_rank, 1, cfg, [2], 3)
        return records

    free, again, clipped = run(0.0), run(0.0), run(1e-3)
    change = [r["value"] for r in free if r["quantity"] == "residual_change" and r["step"] == 3]
    assert free == again
    assert change and change != [r["value"] for r in clipped if r["quantity"] == "residual_change" and r["step"] == 3]


def test_command_line_checks_and_a_diverging_lr(sample_data: Path, tmp_path: Path) -> None:
    """Bad requests are one line before any work; a diverging LR ends those shapes, is reported, and
    the plot is still drawn (a log axis over nothing used to crash it)."""
    import json
    import subprocess
    import sys

    import yaml

    root = Path(__file__).resolve().parents[1]
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(config(sample_data, tmp_path, "depth_mup", "transformer", 1e30)))
    base = [sys.executable, "-m", "megadepth", "coord-check", str(cfg), "--steps", "3"]

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*base, *args], capture_output=True, text=True, cwd=root, timeout=300)

    (tmp_path / "afile").write_text("")
    for args, says in ((["--depths", "2,4", "--out", str(tmp_path / "afile")], "exists and is not a directory"),
                       (["--depths", "2,2,4", "--out", str(tmp_path / "o")], "given twice"),
                       (["--depths", "4", "--out", str(tmp_path / "o")], "at least two --depths"),
                       (["--depths", "2,4", "--out", str(tmp_path / "o"), "--set", "parallel.tensor=2"],
                        "in one process")):
        proc = run(*args)
        assert proc.returncode == 2 and says in proc.stderr and "Traceback" not in proc.stderr, (args, proc.stderr)
    assert not (tmp_path / "o").exists()
    proc = run("--depths", "2,4", "--out", str(tmp_path / "o"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "o" / "coord.json").read_text())
    assert {(d["depth"], d["step"]) for d in result["diverged"]} <= {(2, 1), (4, 1), (2, 2), (4, 2)}
    assert result["diverged"] and "diverged at step" in proc.stderr
    assert all(r["step"] < min(d["step"] for d in result["diverged"]) or
               (r["depth"], r["width"]) not in {(d["depth"], d["width"]) for d in result["diverged"]}
               for r in result["records"])
    assert (tmp_path / "o" / "coord.png").stat().st_size > 0


def test_every_shape_is_validated_before_any_trains(sample_data: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """A width the heads do not divide used to pass the up-front check (a model_copy skips validation)
    and fail only after the earlier shapes had trained; the error names the shape."""
    import yaml

    from megadepth.cli import main

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(config(sample_data, tmp_path, "mup", "transformer", 0.01, base_width=32)))
    code = main(["coord-check", str(cfg), "--depths", "2,4", "--widths", "32,50", "--steps", "2",
                 "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "depth 2 width 50: " in err and "heads" in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_slopes_leave_out_steps_a_shape_or_seed_is_missing_from() -> None:
    """After the deepest model diverges, a per-step slope over the survivors measures a different set of
    shapes: it used to enter the mean all the same. Values here follow depth^0.5 while every shape is
    there, and depth^1 among the survivors afterwards, so a leak shows in the mean."""
    from megadepth.analysis.coord_check import slopes

    summary = {}
    for step in (0, 1, 2, 3):
        for depth in (2, 4, 8):
            if step == 3 and depth == 8:
                continue  # depth 8 diverged at step 3
            exponent = 1.0 if step == 3 else 0.5
            for q in ("residual", "block_output", "residual_change", "block_change", "logits_change"):
                summary[(depth, 64, step, q)] = float(depth) ** exponent
    out = slopes(summary, "depth")
    for q, v in out.items():
        assert set(v["per_step"]) == {0, 1, 2}, q
        assert v["mean"] == pytest.approx(0.5) and v["incomplete_steps"] == [3], q
    # every shape survived, but a seed diverged at step 2 (the mean over seeds lost it): 2 and 3 left out
    full = {k: v for k, v in summary.items() if k[2] < 3}
    full.update({(d, 64, 3, q): float(d) ** 1.0 for d in (2, 4, 8) for q in ("residual", "block_output")})
    out = slopes(full, "depth", incomplete_from=2)
    assert set(out["residual"]["per_step"]) == {0, 1} and out["residual"]["incomplete_steps"] == [2, 3]
    assert out["residual"]["mean"] == pytest.approx(0.5)


def test_an_unset_base_shape_is_fixed_at_the_smallest_shape_checked(sample_data: Path, tmp_path: Path) -> None:
    """Without model.base_depth every depth was its own base (r = 1): depth_mup trained the SP model at
    every depth and the check reported SP's slopes under depth_mup's name."""
    import json
    import subprocess
    import sys

    import yaml

    root = Path(__file__).resolve().parents[1]
    results = {}
    for preset in ("sp", "depth_mup"):
        data = config(sample_data, tmp_path, preset, "transformer", 0.002)
        del data["model"]["base_depth"], data["model"]["base_width"]
        cfg = tmp_path / f"{preset}.yaml"
        cfg.write_text(yaml.safe_dump(data))
        out = tmp_path / preset
        proc = subprocess.run([sys.executable, "-m", "megadepth", "coord-check", str(cfg), "--depths", "2,4",
                               "--steps", "1", "--out", str(out)], capture_output=True, text=True, cwd=root,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "model.base_depth is not set: fixed at 2" in proc.stderr
        results[preset] = json.loads((out / "coord.json").read_text())
        assert results[preset]["base_depth"] == 2
    deep = {p: [r["value"] for r in results[p]["records"] if r["depth"] == 4] for p in results}
    assert deep["sp"] != deep["depth_mup"]  # the branch multiplier 2^-1/2 acts at depth 4


def test_a_width_check_without_base_heads_is_not_refused_as_ambiguous(tmp_path: Path) -> None:
    """The check keeps the heads fixed across widths, so it can say which way the width grew: the head size.
    Without that, a muP width check with no model.base_heads was refused at every shape."""
    from megadepth.analysis.coord_check import Shape, shaped_config, with_base_shape
    from megadepth.config import validate
    from megadepth.parametrize.checks import check_parametrization

    for base_width in (None, 32):
        cfg = validate(config(tmp_path, tmp_path, "mup", "transformer", 0.01,
                              **({"base_width": base_width} if base_width else {})))
        fixed, _ = with_base_shape(cfg, [2], [32, 64])
        assert fixed.model.base_heads == cfg.model.heads
        check_parametrization(shaped_config(fixed, Shape(depth=2, width=64), steps=1, seed=0))


def shipped(data: Path, tmp: Path, setting: str, preset: str) -> dict:
    """configs/coord/SETTING.yaml with configs/parametrization/PRESET.yaml, as the docs' commands run them,
    on the tests' sample data (its vocabulary of 512)."""
    from megadepth.config.load import load_config

    cfg = load_config([ROOT / "configs" / "coord" / f"{setting}.yaml",
                       ROOT / "configs" / "parametrization" / f"{preset}.yaml"]).model_dump(mode="json")
    cfg["data"]["path"] = str(data)
    cfg["model"]["vocab_size"] = 512
    cfg["train"]["out_dir"] = str(tmp / "unused")
    return cfg


@pytest.mark.parametrize(("setting", "preset"), [
    ("transformer", "sp"), ("transformer", "depth_mup"), ("transformer", "completep"),
    ("linear", "depth_mup"), ("linear", "completep"), ("width", "mup"), ("width", "sp"),
    ("llama", "sp"), ("llama", "depth_mup"), ("llama", "completep"),
    ("llama-width", "sp"), ("llama-width", "depth_mup"), ("llama-width", "completep"),
])
def test_measured_slopes_agree_with_the_predicted(sample_data: Path, tmp_path: Path, setting: str,
                                                  preset: str) -> None:
    """At the shipped settings (configs/coord/*.yaml, 5 steps, 3 seeds as in the docs' commands) every slope
    predicted for a quantity (docs/parametrizations.md, "Coordinate checks") is within TOLERANCE of the
    measured one: the final stream's change, each block's output at init and its change, the logits'
    change (SP in width: those with a single predicted power).

    The Llama block (configs/coord/llama*.yaml: RMSNorm, SwiGLU, grouped-query attention with QK-norm, rotary)
    runs cheaper: one seed, depths 2..16, widths 32..256 at micro-batch 2 (docs: 3 seeds, depths 2..32).
    SP in width has no single predicted power there (SwiGLU's gated product mixes m^3/2 into the attention's
    m^1): it must be far from flat, as the GPT-2 block's test_width asks."""
    from megadepth.analysis.coord_check import disagreements

    llama = setting.startswith("llama")
    depths, widths = ([4], WIDTHS) if setting.endswith("width") else (DEPTHS[:4] if llama else DEPTHS, None)
    cfg = shipped(sample_data, tmp_path, setting, preset)
    if llama and setting.endswith("width"):
        cfg["train"]["micro_batch"] = 2  # fewer tokens than the widths: one seed is as flat as three (docs)
    (result,) = run_ranks(coord_result_rank, 1, cfg, depths, widths, 5, [0] if llama else [0, 1, 2])
    (axis,) = result["slopes"]
    predicted = {q for q, v in result["slopes"][axis].items() if v["predicted"] is not None}
    if llama and preset == "sp" and axis == "width":
        assert predicted == set(), predicted
        measured = {q: v["measured"] for q, v in result["slopes"][axis].items()}
        assert measured["residual_change"] > 1.0 and measured["logits_change"] > 0.4, measured
        return
    must = {"residual_change", "block_output_init", "block_change"}
    assert must | ({"logits_change"} if preset != "sp" or axis == "depth" else set()) <= predicted, predicted
    assert disagreements(result) == [], result["slopes"]


@pytest.mark.parametrize(("setting", "preset"), [
    ("muon", "depth_mup"), ("muon", "completep"), ("llama-muon", "completep"),
])
def test_muon_depth_slopes_agree_with_the_predicted(sample_data: Path, tmp_path: Path, setting: str,
                                                    preset: str) -> None:
    """Muon (configs/coord/muon.yaml and llama-muon.yaml, LR 0.1: the Muon matrices' own updates dominate) with
    Adam's depth rules carried over gives Adam's predicted depth slopes (docs/parametrizations.md, "Muon").
    One seed, depths 2..16. Width under Muon (both adjust_lr modes flat) is checked by test_mutations' clean
    "coord muon mup width" and "coord muon-rms mup width" runs, which must pass before their mutations count."""
    from megadepth.analysis.coord_check import disagreements

    cfg = shipped(sample_data, tmp_path, setting, preset)
    (result,) = run_ranks(coord_result_rank, 1, cfg, DEPTHS[:4], None, 5, [0])
    predicted = {q for q, v in result["slopes"]["depth"].items() if v["predicted"] is not None}
    assert {"residual_change", "block_output_init", "block_change", "logits_change", "residual"} <= predicted
    assert disagreements(result) == [], result["slopes"]


# ---- the QK-norm gain's width rule, measured --------------------------------------------------------------
def _attention_logits(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Every layer's causal attention logits (scale q.k after QK-norm and rotary, each query head against its
    key/value head), concatenated: the quantity the QK-norm gains act on."""
    inputs: list[torch.Tensor] = []
    handles = [b.attn.register_forward_pre_hook(lambda _m, args: inputs.append(args[0])) for b in model.blocks]
    with torch.no_grad():
        model(tokens)
        out = []
        for block, x in zip(model.blocks, inputs, strict=True):
            attn, (batch, seq) = block.attn, x.shape[:2]
            q = attn.query(x).view(batch, seq, attn.heads, attn.head_dim).transpose(1, 2)
            k = attn.key_value(x).view(batch, seq, attn.kv_heads, 2, attn.head_dim)[..., 0, :].transpose(1, 2)
            q, k = attn.rotary(attn.q_norm(q)), attn.rotary(attn.k_norm(k))
            k = k.repeat_interleave(attn.heads // attn.kv_heads, dim=1)
            logits = attn.scale * q @ k.transpose(-1, -2)
            out.append(logits[..., torch.ones(seq, seq, dtype=torch.bool).tril()].flatten())
    for h in handles:
        h.remove()
    return torch.cat(out)


def qk_gain_measurements(data: Path, tmp: Path, preset: str, widths: list[int], grow: str,
                         factors: tuple[float, ...] = (), steps: int = 5) -> dict[str, list[float]]:
    """configs/coord/llama-width.yaml at depth 2 and each width, the width grown by wider heads (``grow`` "head_size": 4
    heads throughout) or by more heads ("heads": head size 8 throughout). Per width: the RMS of the QK-norm
    gains' and the attention RMSNorm gains' gradient entries at step 0 ("qk_grad", "gain_grad"), and, for each
    LR factor f in ``factors``, the RMS change of the attention logits after ``steps`` Adam steps in which only
    the QK-norm gains train, at f x (m when f is "m") their rule's LR ("logits_change f")."""
    import torch.nn.functional as F

    from megadepth.analysis.coord_check import Shape, shaped_config
    from megadepth.config.load import validate
    from megadepth.data import MicroBatchSampler, build_datasets, make_loader
    from megadepth.model import GPT
    from megadepth.parametrize import Parametrization, initialize, param_groups

    out: dict[str, list[float]] = {}
    for width in widths:
        base = shipped(data, tmp, "llama-width", preset)
        if grow == "heads":
            base["model"].update(heads=width // 8, kv_heads=width // 16, base_heads=4, base_kv_heads=2)
        cfg = shaped_config(validate(base), Shape(depth=2, width=width), steps, seed=0)
        ptz = Parametrization.from_config(cfg.model, cfg.parametrization, optimizer=cfg.optimizer.name)
        train_set, _ = build_datasets(cfg.data.path, seq_len=cfg.model.seq_len, seed=0,
                                      train_samples=(steps + 1) * cfg.train.micro_batch, valid_samples=0,
                                      valid_fraction=0.0, vocab_size=cfg.model.vocab_size)
        batches = list(make_loader(train_set, MicroBatchSampler(len(train_set), 0, cfg.train.micro_batch, 0, 1)))
        probe, batches = batches[0][:, :-1], batches[1:]

        def loss_of(model: GPT, batch: torch.Tensor) -> torch.Tensor:
            logits = model(batch[:, :-1])
            return F.cross_entropy(logits.flatten(0, 1).float(), batch[:, 1:].flatten())

        for run, factor in enumerate(factors or (None,)):
            model = GPT(cfg.model, ptz.multipliers())
            initialize(model, ptz, seed=0)
            groups = param_groups(model, ptz, cfg.optimizer)
            for g in groups:
                scale = ptz.m if factor == "m" else (factor or 0.0)
                g["lr"] = g["lr"] * scale if g["name"] == "qk_gain" else 0.0
            opt = torch.optim.AdamW(groups)
            before = _attention_logits(model, probe)
            for step, batch in enumerate(batches[:steps] if factor is not None else batches[:1]):
                opt.zero_grad()
                loss_of(model, batch).backward()
                if run == step == 0:  # the gradients at init
                    for key, suffix in (("qk_grad", ("q_norm.weight", "k_norm.weight")),
                                        ("gain_grad", ("attn_norm.weight",))):
                        grads = torch.cat([p.grad.flatten() for n, p in model.named_parameters() if n.endswith(suffix)])
                        out.setdefault(key, []).append(float(grads.pow(2).mean().sqrt()))
                opt.step()
            if factor is not None:
                change = _attention_logits(model, probe) - before
                out.setdefault(f"logits_change {factor}", []).append(float(change.pow(2).mean().sqrt()))
    return out


def test_qk_gain_lr_is_width_constant_under_adam(sample_data: Path, tmp_path: Path) -> None:
    """The QK-norm gain's rule (docs/parametrizations.md, "The QK-norm gain"), measured. Width grown by more
    heads (head size 8): with only the gains training, the attention logits' change is flat in width at the
    rule's Adam LR and grows like m at m times it (SGD's head_size rule, or a hidden matrix's inverse, carried
    to Adam). Its gradient entries, relative to width grown by wider heads, are larger by head_size /
    base_head_size = m (the heads' count multiplies one shared vector's gradient), the factor the SGD rule
    and eps_scaling: gradient use."""
    from megadepth.analysis.coord_check import fit_slope

    widths = [32, 64, 128]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread, as the rank processes, is faster on shared cores
    try:
        heads = qk_gain_measurements(sample_data, tmp_path, "mup", widths, "heads", (1.0, "m"))
        wider = qk_gain_measurements(sample_data, tmp_path, "mup", widths, "head_size")
    finally:
        torch.set_num_threads(threads)
    slope = {k: fit_slope(widths, v) for k, v in heads.items()}
    assert abs(slope["logits_change 1.0"]) < FLAT, slope
    assert slope["logits_change m"] > 0.8, slope
    assert -1.25 < fit_slope(widths, wider["qk_grad"]) - slope["qk_grad"] < -0.75, (wider, heads)


def test_the_header_promises_predictions_only_where_there_are_some() -> None:
    """SP across width (and other settings without a single power law) print measured slopes only: the header
    must not say 'predicted in brackets' over a table that has none."""
    from megadepth.analysis.coord_check import format_slopes

    def result(predicted: float | None) -> dict:
        return {"parametrization": "sp", "optimizer": "adamw",
                "slopes": {"width": {"residual": {"mean": 0.98, "predicted": predicted}}}}

    with_prediction, without = format_slopes(result(1.0)), format_slopes(result(None))
    assert "predicted in brackets" in with_prediction and "[+1.00]" in with_prediction
    assert "no predicted slopes for this setting" in without and "[" not in without and "brackets" not in without
