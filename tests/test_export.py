"""`megadepth export --format hf`: the transformers GPT-2 computes what megadepth computes, from any
layout, with every multiplier folded into the weights. The reference is megadepth's own forward pass
on the checkpoint file as saved (TP = PP = 1), not the exporter's consolidation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sentencepiece as spm
import torch
import yaml
from conftest import tiny_config
from distributed import run_ranks, train_rank

from megadepth.cli import main
from megadepth.config import ConfigError, validate
from megadepth.model import GPT
from megadepth.parametrize import Parametrization

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

TOKENS = torch.randint(0, 512, (3, 32), generator=torch.Generator().manual_seed(7))


def megadepth_logits(run: Path) -> torch.Tensor:
    """Logits of megadepth's GPT loaded straight from a TP=1, PP=1 checkpoint file."""
    tag = (run / "checkpoints" / "latest").read_text().strip()
    config = validate(yaml.safe_load((run / "checkpoints" / tag / "config.yaml").read_text()))
    ptz = Parametrization.from_config(config.model, config.parametrization, optimizer=config.optimizer.name)
    model = GPT(config.model, ptz.multipliers())
    state = torch.load(run / "checkpoints" / tag / "mp_rank_00_model_states.pt", weights_only=True)["module"]
    model.load_state_dict(state)
    with torch.no_grad():
        return model.eval()(TOKENS)


def hf_logits(out: Path) -> torch.Tensor:
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(out).eval()
    with torch.no_grad():
        return model(input_ids=TOKENS).logits


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / a.abs().max())


def export(run: Path, out: Path) -> None:
    assert main(["export", str(run), "--format", "hf", str(out)]) == 0


def test_export_matches_megadepth_and_generates_the_same(sample_data: Path, tmp_path: Path) -> None:
    """Tied head, biases, muP width scaling (readout and attention scale not GPT-2's defaults) and
    Depth-muP branches: logits equal, greedy generation equal, the tokenizer and its ids carried over."""
    from transformers import GPT2LMHeadModel

    cfg = tiny_config(sample_data, tmp_path / "run", model={"base_width": 16, "bias": True},
                      train={"save_final": True})
    run_ranks(train_rank, 1, cfg)
    export(tmp_path / "run", tmp_path / "hf")
    ours = megadepth_logits(tmp_path / "run")
    assert relative(ours, hf_logits(tmp_path / "hf")) < 1e-5
    info = json.loads((tmp_path / "hf" / "megadepth_export.json").read_text())
    assert info["multipliers_folded"]["branch"] != 1 and info["multipliers_folded"]["readout"] != 1

    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "hf" / "tokenizer.model"))
    model = GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    assert model.config.eos_token_id == sp.eos_id() and model.config.vocab_size == 512
    prompt = torch.tensor([sp.encode("The standard library")])
    generated = model.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=sp.eos_id())
    tag = (tmp_path / "run" / "checkpoints" / "latest").read_text().strip()
    config = validate(yaml.safe_load((tmp_path / "run" / "checkpoints" / tag / "config.yaml").read_text()))
    gpt = GPT(config.model, Parametrization.from_config(config.model, config.parametrization,
                                                        optimizer="adamw").multipliers())
    gpt.load_state_dict(torch.load(tmp_path / "run" / "checkpoints" / tag / "mp_rank_00_model_states.pt",
                                   weights_only=True)["module"])
    seq = prompt
    with torch.no_grad():
        for _ in range(6):
            seq = torch.cat([seq, gpt.eval()(seq)[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(generated, seq)


@pytest.mark.parametrize("layout", ["tensor", "pipeline"])
def test_export_of_parallel_layouts_matches_one_process(sample_data: Path, tmp_path: Path, layout: str) -> None:
    """CompleteP, untied head, no biases; TP=2 or PP=2 checkpoints export to what the one-process run
    computes (SGD keeps the layouts' training equal to rounding)."""
    common = {"model": {"base_width": 16, "tie_embeddings": False, "bias": False},
              "parametrization": {"name": "completep"},
              "optimizer": {"name": "sgd", "lr": 0.3, "momentum": 0.9},
              "train": {"save_final": True}, "parallel": {"zero_stage": 1}}
    one = tiny_config(sample_data, tmp_path / "one", **common)
    two = tiny_config(sample_data, tmp_path / "two", **{**common, "parallel": {"zero_stage": 1, layout: 2}})
    run_ranks(train_rank, 1, one)
    run_ranks(train_rank, 2, two)
    export(tmp_path / "two", tmp_path / "hf")
    assert relative(megadepth_logits(tmp_path / "one"), hf_logits(tmp_path / "hf")) < 1e-4


def test_export_refuses_what_gpt2_cannot_hold(sample_data: Path, tmp_path: Path) -> None:
    run_ranks(train_rank, 1, tiny_config(sample_data, tmp_path / "rot", model={"position": "rotary"},
                                         train={"steps": 1, "save_final": True}))
    from megadepth.export import export_hf

    with pytest.raises(ConfigError, match="rotary"):
        export_hf(tmp_path / "rot", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    with pytest.raises(ConfigError, match="not an empty directory"):
        export_hf(tmp_path / "rot", tmp_path / "full")
    assert (tmp_path / "full" / "x").read_text() == "keep me"
