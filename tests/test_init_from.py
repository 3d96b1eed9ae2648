"""train.init_from: a new run starts from another run's weights, at any layout (gloo ranks)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from distributed import run_ranks, train_rank
from test_pipeline import assert_close, records, shape

from megadepth.common.errors import ConfigError
from megadepth.config import validate
from megadepth.train.merge import consolidated_state, merge_tensor_parallel

pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def source(sample_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TP=2 run trained 2 steps, with its final checkpoint: the weights to start from."""
    out = tmp_path_factory.mktemp("init") / "source"
    run_ranks(train_rank, 2, shape(sample_data, out, tensor=2, grad_accum=2, steps=2, save_final=True))
    return out


@pytest.mark.parametrize(("ranks", "layout"), [(1, {}), (2, {"pipeline": 2}), (2, {"tensor": 2})])
def test_every_rank_holds_the_sources_weights(source: Path, sample_data: Path, tmp_path: Path, ranks: int,
                                              layout: dict) -> None:
    from pp_ranks import weights_from_checkpoint

    _, merged, _ = consolidated_state(source / "checkpoints")
    cfg = shape(sample_data, tmp_path / "new", init_from=str(source), **layout)
    held: dict = {}
    for rank_state in run_ranks(weights_from_checkpoint, ranks, cfg):
        for name, (value, tp_size, dim, tp_rank) in rank_state.items():
            expected = merged[name] if tp_size == 1 else merged[name].chunk(tp_size, dim=dim)[tp_rank]
            assert torch.equal(torch.from_numpy(value), expected), name  # bit for bit
            held[name] = True
    assert set(held) == {k for k in merged if not k.startswith("head.tied")}  # nothing left at its init


def test_a_run_from_weights_trains_the_same_under_any_layout_and_resumes_its_own(
        source: Path, sample_data: Path, tmp_path: Path) -> None:
    one = tmp_path / "one"
    (summary,) = run_ranks(train_rank, 1, shape(sample_data, one, steps=3, save_final=True,
                                                   init_from=str(source / "checkpoints")))
    assert summary["status"] == "completed"
    fresh = tmp_path / "fresh"
    run_ranks(train_rank, 1, shape(sample_data, fresh, steps=3))
    # same seed and data order: only the starting weights differ, and the trained ones start lower
    assert records(one, "loss")[1] < records(fresh, "loss")[1] - 0.1
    # from merge-tp output, at PP=2: the same run
    merged = merge_tensor_parallel(source / "checkpoints", tmp_path / "merged")
    pp = tmp_path / "pp"
    run_ranks(train_rank, 2, shape(sample_data, pp, pipeline=2, steps=3, init_from=str(merged.parent.parent)))
    assert_close(records(pp, "loss"), records(one, "loss"), rel=1e-5)
    # one checkpoint folder under another name (kept aside as 'best'): the same weights
    tag = (source / "checkpoints" / "latest").read_text().strip()
    shutil.copytree(source / "checkpoints" / tag, tmp_path / "best")
    best = tmp_path / "from_best"
    run_ranks(train_rank, 1, shape(sample_data, best, steps=3, init_from=str(tmp_path / "best")))
    assert_close(records(best, "loss"), records(one, "loss"), rel=1e-6)
    # once the run has its own checkpoint, it resumes from that (the source is not read again)
    from megadepth.train.loop import plan_training

    again = plan_training(validate(shape(sample_data, one, steps=4, init_from=str(tmp_path / "gone"))))
    assert again.resume_tag == "step_00000003" and again.init_source is None
    assert json.loads((one / "summary.json").read_text())["steps"] == 3


def test_bad_sources_are_named_before_any_work(source: Path, sample_data: Path, tmp_path: Path) -> None:
    from megadepth.train.loop import plan_training

    def plan(init_from: Path, **model) -> None:
        cfg = shape(sample_data, tmp_path / "new", init_from=str(init_from))
        cfg["model"].update(model)
        plan_training(validate(cfg))

    with pytest.raises(ConfigError, match=r"does not exist"):
        plan(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match=r"holds no complete checkpoint"):
        plan(tmp_path)
    with pytest.raises(ConfigError, match=r"another shape \(model.depth 4 there, 6 here\)"):
        plan(source, depth=6)
    broken = tmp_path / "copy" / "checkpoints"
    broken.mkdir(parents=True)
    (broken / "step_00000002").mkdir()  # a save cut short: model files but no config.yaml (written last)
    (broken / "step_00000002" / "mp_rank_00_model_states.pt").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"holds no complete checkpoint"):
        plan(broken / "step_00000002")
    assert not (tmp_path / "new").exists()


def test_zero3_checkpoints_give_their_weights_to_the_tools(sample_data: Path, tmp_path: Path) -> None:
    """ZeRO-3 keeps each parameter in pieces across data-parallel ranks; its checkpoints also hold each
    tensor rank's gathered weights, so merge-tp, export, generate and init_from read them (they failed
    with 'mp_rank_00_model_states.pt is missing'). Compared with the same run at ZeRO 1 (2 data ranks)."""
    runs = {}
    for stage in (1, 3):
        runs[stage] = tmp_path / f"z{stage}"
        cfg = shape(sample_data, runs[stage], grad_accum=2, steps=2, save_final=True)
        cfg["parallel"]["zero_stage"] = stage
        run_ranks(train_rank, 2, cfg)
    assert (runs[3] / "checkpoints" / "step_00000002" / "gathered_mp_rank_00_weights.pt").is_file()
    _, z1, _ = consolidated_state(runs[1] / "checkpoints")
    _, z3, _ = consolidated_state(runs[3] / "checkpoints")
    # merge-tp output of it is a plain checkpoint again (its config said zero_stage 3 and sent readers
    # looking for gathered files)
    merged = merge_tensor_parallel(runs[3] / "checkpoints", tmp_path / "merged")
    _, again, _ = consolidated_state(merged.parent.parent)
    assert all(torch.equal(again[k], z3[k]) for k in z3)
    assert z3.keys() == z1.keys()
    for key in z1:  # atol: the key bias gets only round-off gradients (softmax ignores it), Adam scales them up
        assert torch.allclose(z3[key], z1[key], rtol=1e-5, atol=1e-5), key
