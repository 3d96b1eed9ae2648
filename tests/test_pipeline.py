"""Pipeline parallelism through DeepSpeed's pipeline engine, alone and in 3D layouts, against one process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from distributed import run_ranks, train_rank
from pp_ranks import built_stage

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


#: The Llama block (RMSNorm, SwiGLU, rotary, QK-norm, no biases, untied head), multi-query: under TP=2 each
#: rank holds the whole key/value matrix and sums its gradient (the path a split would not exercise).
LLAMA = {"norm": "rmsnorm", "mlp": "swiglu", "ffn_multiple_of": 32, "position": "rotary", "kv_heads": 1,
         "base_kv_heads": 1, "qk_norm": True, "bias": False, "tie_embeddings": False}


def shape(data: Path, out: Path, pipeline: int = 1, tensor: int = 1, grad_accum: int = 4, model: dict | None = None,
          **train) -> dict:
    return tiny_config(
        data, out,
        model={"width": 64, "base_width": 32, "heads": 4, "base_heads": 4, "depth": 4, "base_depth": 2, "seq_len": 32,
               "vocab_size": 512, "bias": True, **(model or {})},
        parametrization={"name": "depth_mup"},
        parallel={"pipeline": pipeline, "tensor": tensor, "zero_stage": 1},
        train={"grad_accum": grad_accum, "micro_batch": 2, "eval_samples": 8, **train},
    )


def llama_shape(data: Path, out: Path, pipeline: int = 1, tensor: int = 1, grad_accum: int = 4) -> dict:
    """The Llama block, trained with SGD (its weights stay comparable between layouts, AdamW's do not: it
    rounds tiny gradients differently), saving its final checkpoint."""
    cfg = shape(data, out, pipeline, tensor, grad_accum, model=LLAMA, save_final=True)
    cfg["optimizer"] = {"name": "sgd", "lr": 0.5, "momentum": 0.9}
    return cfg


def records(out: Path, key: str) -> dict[int, float]:
    return {r["step"]: r[key] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if key in r}


def assert_close(a: dict[int, float], b: dict[int, float], rel: float) -> None:
    assert a.keys() == b.keys() and len(a) >= 3
    for step in a:
        assert a[step] == pytest.approx(b[step], rel=rel), (step, a[step], b[step])


@pytest.fixture(scope="module")
def reference(sample_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One process, 4 micro-batches of 2 per step: the run every layout must reproduce."""
    out = tmp_path_factory.mktemp("ref") / "run"
    run_ranks(train_rank, 1, shape(sample_data, out))
    return out


@pytest.fixture(scope="module")
def llama_reference(sample_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same for the Llama block, with its final checkpoint."""
    out = tmp_path_factory.mktemp("llama-ref") / "run"
    run_ranks(train_rank, 1, llama_shape(sample_data, out))
    return out


@pytest.mark.parametrize(
    ("pipeline", "tensor", "data", "llama"),
    [(2, 1, 1, False), (2, 1, 2, False), (2, 2, 1, False), (2, 2, 2, False), (2, 1, 1, True), (2, 2, 2, True)],
    ids=["pp2", "pp2-dp2", "pp2-tp2", "pp2-tp2-dp2", "llama-pp2", "llama-pp2-tp2-dp2"],
)
def test_layouts_train_like_one_process(sample_data: Path, tmp_path: Path, request: pytest.FixtureRequest,
                                        pipeline: int, tensor: int, data: int, llama: bool) -> None:
    """Losses, gradient norms (replicated parameters counted once: the Llama block's QK gains and, at TP=2,
    its multi-query key/value matrix) and the eval loss equal one process's; the Llama block's pipeline
    checkpoint merges (per-layer files, the key/value matrix equal on both tensor ranks) into its weights."""
    reference = request.getfixturevalue("llama_reference" if llama else "reference")
    out = tmp_path / "run"
    world = pipeline * tensor * data
    cfg = (llama_shape if llama else shape)(sample_data, out, pipeline, tensor, grad_accum=4 // data)
    summaries = run_ranks(train_rank, world, cfg, timeout=300)
    assert summaries[0]["status"] == "completed" and summaries[0]["world_size"] == world
    assert_close(records(out, "loss"), records(reference, "loss"), rel=1e-5)
    assert_close(records(out, "grad_norm"), records(reference, "grad_norm"), rel=1e-4)
    assert records(out, "eval_loss")[3] == pytest.approx(records(reference, "eval_loss")[3], rel=1e-5)
    if llama:
        from megadepth.train.merge import consolidated_state

        _, got, _ = consolidated_state(out)
        _, ref, _ = consolidated_state(reference)
        assert got.keys() == ref.keys()
        for key in ref:
            assert torch.allclose(got[key], ref[key], rtol=1e-5, atol=1e-6), key


def test_stages_hold_the_same_model(sample_data: Path, tmp_path: Path) -> None:
    """Initial weights under PP=2 (by their plain-GPT names) equal PP=1's; every stage has the same
    per-role optimizer settings and scales its branches with the TOTAL depth (r = 4/2)."""
    (ref,) = run_ranks(built_stage, 1, shape(sample_data, tmp_path / "a"))
    stages = run_ranks(built_stage, 2, shape(sample_data, tmp_path / "b", pipeline=2))
    assert [s["stage"] for s in stages] == [0, 1]
    merged: dict = {}
    for s in stages:
        merged.update(s["state"])
        assert s["branches"] == pytest.approx([2 ** -0.5])
        ref_groups = {g[0]: g[1:] for g in ref["groups"]}
        for name, *settings in s["groups"]:
            assert tuple(settings) == pytest.approx(ref_groups[name]), name
    ref_state = {k: v for k, v in ref["state"].items() if not k.startswith("head.tied")}
    assert merged.keys() == ref_state.keys()
    for name, value in ref_state.items():
        assert (merged[name] == value).all(), name
    # the tied embedding lives on both the first and the last stage, identical
    assert (stages[0]["state"]["embed.token.weight"] == stages[1]["state"]["embed.token.weight"]).all()


def test_pipeline_save_resume_and_tied_weights(sample_data: Path, tmp_path: Path) -> None:
    straight = shape(sample_data, tmp_path / "straight", pipeline=2, steps=5, save_final=True)
    run_ranks(train_rank, 2, straight)
    first = shape(sample_data, tmp_path / "resumed", pipeline=2, steps=5, save_final=True, stop_after_steps=2)
    assert run_ranks(train_rank, 2, first)[0]["status"] == "stopped"
    second = shape(sample_data, tmp_path / "resumed", pipeline=2, steps=5, save_final=True, resume="must")
    assert run_ranks(train_rank, 2, second)[0]["status"] == "completed"
    assert_close(records(tmp_path / "resumed", "loss"), records(tmp_path / "straight", "loss"), rel=1e-6)



def test_tied_embedding_stays_equal_on_first_and_last_stage(sample_data: Path, tmp_path: Path) -> None:
    from pp_ranks import tied_weights_after_steps

    first, last = run_ranks(tied_weights_after_steps, 2, shape(sample_data, tmp_path, pipeline=2), 3)
    assert (first["stage"], last["stage"]) == (0, 1)
    assert (first["before"] == last["before"]).all()
    assert not (first["after"] == first["before"]).all()  # it trained
    assert (first["after"] == last["after"]).all()


@pytest.mark.parametrize(
    ("sections", "world", "message"),
    [
        ({"model": {"depth": 3}, "parallel": {"pipeline": 2}}, 2, "not divisible by parallel.pipeline (2)"),
        ({"parallel": {"pipeline": 2, "zero_stage": 0}}, 2, "needs parallel.zero_stage: 1"),
        ({"parallel": {"pipeline": 2, "tensor": 2}}, 6, "does not divide the world size (6 processes)"),
        ({"model": {"depth": 1}, "parallel": {"pipeline": 2, "partition": "parameters"}}, 2, "smaller than"),
        # the checkpointed recompute would draw other dropout masks (it did, silently, before)
        ({"model": {"dropout": 0.1}, "parallel": {"pipeline": 2, "activation_checkpoint_interval": 1}}, 2,
         "would recompute different dropout masks"),
        ({"model": {"dropout": 0.1}, "parallel": {"activation_checkpoint_interval": 1}}, 1,
         "would recompute different dropout masks"),
        # DeepSpeed's unfused bf16 optimizer at ZeRO 0: an extra Adam step, a wrong norm under TP
        ({"train": {"precision": "bf16"}, "parallel": {"zero_stage": 0}}, 1, "needs parallel.zero_stage: 1"),
    ],
)
def test_impossible_pipeline_layouts(sections: dict, world: int, message: str) -> None:
    from megadepth.common.errors import ConfigError
    from megadepth.config import validate
    from megadepth.parallel.distributed import check_layout

    cfg = {"model": {"width": 64, "heads": 4, "depth": 4}, "parallel": {"zero_stage": 1}}
    for key, values in sections.items():
        cfg[key] = {**cfg.get(key, {}), **values}
    with pytest.raises(ConfigError) as info:
        check_layout(validate(cfg), world)
    assert message in str(info.value)


@pytest.mark.parametrize("pipeline", [1, 2])
def test_activation_checkpointing_changes_nothing(sample_data: Path, tmp_path: Path, reference: Path,
                                                  pipeline: int) -> None:
    cfg = shape(sample_data, tmp_path / "run", pipeline=pipeline)
    cfg["parallel"]["activation_checkpoint_interval"] = 1
    run_ranks(train_rank, pipeline, cfg)
    assert_close(records(tmp_path / "run", "loss"), records(reference, "loss"), rel=1e-5)
