"""The muP attention scale attn_multiplier * sqrt(base head size) / head size, whichever way the width grew.

The base head size is model.base_width / model.base_heads. Width grows by more heads at a fixed head size
(the GPT-2 family: 768 = 12 x 64, 1024 = 16 x 64), by wider heads at a fixed head count, or both; the
three give different scales, so a width-scaled config away from its base width has to say which (it used
to take the current head count as the base's, which is wrong for the first: 0.125 instead of 1/sqrt(32)).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from conftest import tiny_config
from distributed import run_ranks
from tp_ranks import attention_forward

from megadepth.cli import main
from megadepth.common.errors import ConfigError
from megadepth.config import Config, load_config, validate
from megadepth.parametrize import Parametrization
from megadepth.parametrize.checks import check_parametrization

ROOT = Path(__file__).resolve().parents[1]
WIDTH_SCALED = ["mup", "depth_mup", "completep", "custom"]


def resolve(preset: str = "mup", optimizer: str = "adamw", parametrization: dict | None = None,
            **model: int) -> tuple[Config, Parametrization]:
    """(validated config, Parametrization) after the start-up check passed."""
    ptz = {"name": preset, **(parametrization or {})}
    if preset == "custom":
        ptz.update(alpha=0.5, gamma=0.5)
    cfg = validate({"model": {"depth": 2, **model}, "parametrization": ptz, "optimizer": {"name": optimizer}})
    check_parametrization(cfg)
    return cfg, Parametrization.from_config(cfg.model, cfg.parametrization, optimizer=optimizer)


@pytest.mark.parametrize("preset", WIDTH_SCALED)
def test_more_heads_at_a_fixed_head_size(preset: str) -> None:
    """Base 4 heads of 32 at width 128, grown to 8 heads of 32: sqrt(32) / 32 = 1/sqrt(32), which is also
    SP's scale at that head size (the head size did not grow, so neither does the logit)."""
    _, ptz = resolve(preset, width=256, heads=8, base_width=128, base_heads=4)
    assert ptz.base_head_dim == 32 and ptz.head_dim == 32
    assert ptz.multipliers().attn_scale == pytest.approx(1 / math.sqrt(32), rel=1e-12)
    _, sp = resolve("sp", width=256, heads=8, base_width=128, base_heads=4)
    assert ptz.multipliers().attn_scale == pytest.approx(sp.multipliers().attn_scale, rel=1e-12)
    # the GPT-2 family: a 384-wide proxy of 6 heads of 64 scaled to gpt-124m's 12 heads of 64
    _, gpt2 = resolve(preset, width=768, heads=12, base_width=384, base_heads=6)
    assert gpt2.multipliers().attn_scale == pytest.approx(1 / 8, rel=1e-12)


@pytest.mark.parametrize("preset", WIDTH_SCALED)
def test_wider_heads_at_a_fixed_head_count(preset: str) -> None:
    """Base 4 heads of 16 at width 64, grown to 4 heads of 64 (m = 4): muP's 1/d_head with the base-shape
    correction, sqrt(16) / 64 = 1/16, half of SP's 1/sqrt(64) (sqrt of the head size's growth, 4)."""
    _, ptz = resolve(preset, width=256, heads=4, base_width=64, base_heads=4)
    assert (ptz.base_head_dim, ptz.head_dim) == (16, 64)
    assert ptz.multipliers().attn_scale == pytest.approx(1 / 16, rel=1e-12)
    _, sp = resolve("sp", width=256, heads=4, base_width=64, base_heads=4)
    assert sp.multipliers().attn_scale == pytest.approx(1 / 8, rel=1e-12)


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_both_heads_and_head_size_grow(optimizer: str) -> None:
    """Base 2 heads of 32 (width 64), grown to 8 heads of 64 (width 512): 0.5 * sqrt(32) / 64, whatever the
    optimizer (the forward does not depend on it)."""
    _, ptz = resolve("completep", optimizer, parametrization={"attn_multiplier": 0.5}, width=512, heads=8,
                     base_width=64, base_heads=2)
    assert ptz.multipliers().attn_scale == pytest.approx(0.5 * math.sqrt(32) / 64, rel=1e-12)


def test_base_head_dim_still_says_the_same() -> None:
    """parametrization.base_head_dim, the older spelling, gives the same scale as the base_heads it means,
    alone or beside a base_heads that agrees."""
    shape = {"width": 256, "heads": 8, "base_width": 128}
    scale = resolve(**shape, base_heads=4)[1].multipliers().attn_scale
    for extra in ({}, {"base_heads": 4}):
        _, ptz = resolve(parametrization={"base_head_dim": 32}, **shape, **extra)
        assert ptz.multipliers().attn_scale == scale


def test_at_the_base_width_base_heads_defaults_to_heads() -> None:
    """m = 1 needs no base_heads (the model is its base shape): the scale is 1/sqrt(head size), as SP's."""
    for base_width in (None, 96):
        _, ptz = resolve(width=96, heads=3, **({"base_width": base_width} if base_width else {}))
        assert ptz.base_head_dim == 32 and ptz.multipliers().attn_scale == pytest.approx(1 / math.sqrt(32))


@pytest.mark.parametrize("preset", WIDTH_SCALED)
def test_an_unsaid_scaling_is_refused_with_both_choices(preset: str) -> None:
    exponents = {"alpha": 0.5, "gamma": 0.5} if preset == "custom" else {}
    cfg = validate({"model": {"width": 256, "heads": 8, "base_width": 128},
                    "parametrization": {"name": preset, **exponents}})
    with pytest.raises(ConfigError) as info:
        check_parametrization(cfg)
    message = str(info.value)
    assert "\n" not in message and "the base head size is ambiguous" in message and preset in message
    assert ("set model.base_heads: 4 (heads grew, head size 32 fixed) or 8 (head size grew from 16, 8 heads "
            "fixed)") in message


def test_refusal_offers_only_the_choices_that_exist() -> None:
    # 128 -> 384 with 12 heads of 32: 128 / 12 is no head size, so only "heads grew" (4 heads of 32) remains
    with pytest.raises(ConfigError, match=r"set model\.base_heads: 4 \(heads grew, head size 32 fixed\)$"):
        check_parametrization(validate({"model": {"width": 384, "heads": 12, "base_width": 128},
                                        "parametrization": {"name": "mup"}}))
    # 90 -> 128 with 4 heads of 32: neither 90 / 32 nor 90 / 4 is whole
    with pytest.raises(ConfigError, match=r"the head count of the base shape \(a divisor of 90\)"):
        check_parametrization(validate({"model": {"width": 128, "heads": 4, "base_width": 90},
                                        "parametrization": {"name": "depth_mup"}}))


def test_what_is_not_refused() -> None:
    """SP's scale does not depend on the base; a linear block has no attention; m = 1 is its own base."""
    check_parametrization(validate({"model": {"width": 256, "heads": 8, "base_width": 128},
                                    "parametrization": {"name": "sp"}}))
    check_parametrization(validate({"model": {"width": 256, "heads": 8, "base_width": 128, "block": "linear"},
                                    "parametrization": {"name": "depth_mup"}}))
    check_parametrization(validate({"model": {"width": 256, "heads": 8, "base_width": 256},
                                    "parametrization": {"name": "mup"}}))


def test_base_heads_and_base_head_dim_that_disagree_are_refused() -> None:
    cfg = validate({"model": {"width": 256, "heads": 8, "base_width": 128, "base_heads": 4},
                    "parametrization": {"name": "mup", "base_head_dim": 16}})
    expected = ("model.base_heads (4) and parametrization.base_head_dim (16) disagree: model.base_width "
                "128 / 4 heads is head size 32")
    with pytest.raises(ConfigError, match=re.escape(expected)):
        check_parametrization(cfg)
    with pytest.raises(ValueError, match=re.escape(expected)):  # and never resolved to either
        Parametrization.from_config(cfg.model, cfg.parametrization, optimizer="adamw")
    # a contradiction even where it changes nothing (SP)
    sp = cfg.model_copy(update={"parametrization": cfg.parametrization.model_copy(update={"name": "sp"})})
    with pytest.raises(ConfigError, match="disagree"):
        check_parametrization(sp)


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ({"width": 256, "heads": 8, "base_width": 128, "base_heads": 3},
         "model.base_heads (3) must divide model.base_width (128)"),
        ({"width": 256, "heads": 8, "base_heads": 4},
         "model.base_heads (4) differs from model.heads (8) but model.base_width is unset"),
        ({"width": 256, "heads": 8, "base_width": 256, "base_heads": 4},
         "model.base_heads (4) differs from model.heads (8) but model.base_width equals model.width (256)"),
    ],
)
def test_impossible_base_heads_are_refused_at_load(model: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config([], [f"model.{k}={v}" for k, v in model.items()])
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("model", "base_head_dim", "message"),
    [
        ({"width": 256, "heads": 8, "base_width": 128}, 12,
         "parametrization.base_head_dim (12) does not divide"),
        ({"width": 256, "heads": 8}, 16,
         "parametrization.base_head_dim (16) differs from the head size (32)"),
        ({"width": 64, "heads": 4, "block": "linear"}, 16,
         "base_head_dim has no effect with model.block: linear"),
    ],
)
def test_impossible_base_head_dim_is_refused(model: dict, base_head_dim: int, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_parametrization(validate({"model": model,
                                        "parametrization": {"name": "mup", "base_head_dim": base_head_dim}}))


def test_base_heads_with_a_linear_block_is_refused() -> None:
    with pytest.raises(ConfigError, match="model.base_heads has no effect with model.block: linear"):
        check_parametrization(validate({"model": {"width": 64, "heads": 4, "base_width": 32, "base_heads": 4,
                                                  "block": "linear"}}))


def test_shipped_configs_say_which_way_they_scale() -> None:
    """Every shipped config away from its base width passes the check, with the numbers it meant."""
    for path in sorted((ROOT / "configs").rglob("*.yaml")):
        if path.parent.name == "sweeps":
            continue  # sweep specs, not configs (their base widths equal their widths)
        check_parametrization(load_config([path]))
    bench = load_config([ROOT / "configs" / "bench" / "gpt-124m.yaml"])
    ptz = Parametrization.from_config(bench.model, bench.parametrization, optimizer="adamw")
    assert ptz.multipliers().attn_scale == pytest.approx(math.sqrt(32) / 64)  # 12 heads of 32 at the base
    coord = load_config([ROOT / "configs" / "coord" / "width.yaml"])
    coord_ptz = Parametrization.from_config(coord.model, coord.parametrization, optimizer="adamw")
    assert coord_ptz.base_head_dim == 8  # 4 heads of 8 at the base: the check's widths keep the 4 heads


def _dry_run(sample_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
             *sets: str) -> tuple[int, str, str]:
    """``megadepth train --dry-run`` of the quickstart widened to 8 heads of 32 from a 128-wide base."""
    args = ["train", str(ROOT / "configs" / "quickstart.yaml"), "--dry-run"]
    for item in ("parametrization.name=mup", "model.width=256", "model.heads=8", "model.base_width=128",
                 f"train.out_dir={tmp_path / 'x'}", f"data.path={sample_data}", "model.vocab_size=512",
                 *sets):
        args += ["--set", item]
    capsys.readouterr()
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_dry_run_prints_the_scale_or_the_choice(sample_data: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _dry_run(sample_data, tmp_path, capsys)
    assert code == 2 and "set model.base_heads: 4 (heads grew, head size 32 fixed) or 8" in err, err
    assert len(err.strip().splitlines()) == 1
    code, out, err = _dry_run(sample_data, tmp_path, capsys, "model.base_heads=4")
    assert code == 0, err
    assert "attention scale 0.1768 (head size 32, base 32)" in out
    code, out, err = _dry_run(sample_data, tmp_path, capsys, "model.base_heads=8")
    assert code == 0 and "attention scale 0.125 (head size 32, base 16)" in out, err


@pytest.mark.distributed
def test_tensor_parallel_heads_keep_the_scale_and_the_forward(sample_data: Path, tmp_path: Path) -> None:
    """Two tensor-parallel ranks (2 of the 4 heads each) use the whole model's attention scale and produce
    the logits of the unsharded model, for heads grown (base 2 heads of 16) and head size grown (base 4
    heads of 8)."""
    configs = []
    for base_heads in (2, 4):
        model = {"width": 64, "heads": 4, "base_width": 32, "base_heads": base_heads, "seq_len": 16,
                 "bias": True}
        cfg = tiny_config(sample_data, tmp_path, model=model, parametrization={"name": "mup"},
                          parallel={"tensor": 2})
        check_parametrization(validate(cfg))
        configs.append(cfg)
    ranks = run_ranks(attention_forward, 2, configs)
    expected = [1 / 4, math.sqrt(8) / 16]
    for result in ranks:
        for (scales, local_heads, diff, _), scale in zip(result["runs"], expected, strict=True):
            assert local_heads == 2
            assert scales == pytest.approx([scale, scale], rel=1e-12)
            assert diff < 1e-5
    # the scale reaches the forward: the two base shapes give different logits
    (_, _, _, heads_grew), (_, _, _, size_grew) = ranks[0]["runs"]
    assert abs(heads_grew - size_grew).max() > 1e-4


@pytest.mark.distributed
def test_a_run_from_before_base_heads_resumes_with_the_scale_it_trained_with(sample_data: Path,
                                                                             tmp_path: Path) -> None:
    """A checkpoint whose config has no model.base_heads (written before the key; here one with the key
    taken out) resolves as it trained: heads fixed, base head size base_width / heads. Saying so
    (base_heads = heads) resumes; saying the heads grew is another attention scale, refused by name."""
    import yaml
    from distributed import train_rank

    from megadepth.train.loop import plan_training

    out = tmp_path / "run"
    cfg = tiny_config(sample_data, out, model={"base_width": 16, "base_heads": 2},
                      train={"steps": 2, "save_final": True})
    run_ranks(train_rank, 1, cfg)
    for saved in [out / "config.yaml", *out.glob("checkpoints/step_*/config.yaml")]:
        data = yaml.safe_load(saved.read_text())
        del data["model"]["base_heads"]
        saved.write_text(yaml.safe_dump(data))
    again = tiny_config(sample_data, out, model={"base_width": 16, "base_heads": 2}, train={"steps": 4})
    plan_training(validate(again))
    grew = tiny_config(sample_data, out, model={"base_width": 16, "base_heads": 1}, train={"steps": 4})
    with pytest.raises(ConfigError, match=re.escape("parametrization.base_head_dim) 8.0 there, 16.0 here")):
        plan_training(validate(grew))
