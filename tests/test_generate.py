"""`megadepth generate`: greedy continuation equals the transformers export's own greedy generate (an
independent implementation of the same model), sampling is reproducible per seed, top-k 1 is greedy,
and the command line prints the prompt's continuation or one line of error."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import tiny_config
from distributed import run_ranks, train_rank

from megadepth.common.errors import ConfigError
from megadepth.generate import Generator, SamplingOptions

pytestmark = [pytest.mark.distributed]


@pytest.fixture(scope="module")
def trained(sample_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gen") / "run"
    cfg = tiny_config(sample_data, out, model={"base_width": 16, "base_heads": 2, "bias": True},
                      train={"steps": 20, "save_final": True, "log_every": 10})
    run_ranks(train_rank, 1, cfg)
    return out


def test_greedy_equals_the_exported_model_greedy_generate(trained: Path, tmp_path: Path) -> None:
    import torch
    from transformers import GPT2LMHeadModel

    from megadepth.export import export_hf

    export_hf(trained, tmp_path / "hf")
    hf = GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    gen = Generator(trained, device="cpu")
    context = gen.encode("The Python")
    ours = gen.continue_ids(context, SamplingOptions(max_new_tokens=12, temperature=0, stop_at_eos=False))
    with torch.no_grad():
        theirs = hf.generate(torch.tensor([context]), max_new_tokens=12, min_new_tokens=12, do_sample=False,
                             pad_token_id=0)[0, len(context):].tolist()
    assert ours == theirs and len(ours) == 12


def test_sampling_is_reproducible_per_seed_and_top_k_1_is_greedy(trained: Path) -> None:
    gen = Generator(trained, device="cpu")
    context = gen.encode("def f(x):")
    opts = SamplingOptions(max_new_tokens=15, temperature=1.0, top_k=0, seed=3, stop_at_eos=False)
    first = gen.continue_ids(context, opts)
    assert gen.continue_ids(context, opts) == first
    others = [gen.continue_ids(context, SamplingOptions(max_new_tokens=15, temperature=1.0, top_k=0, seed=s,
                                                        stop_at_eos=False)) for s in range(4, 8)]
    assert any(o != first for o in others)  # a 20-step model is far from deterministic
    greedy = gen.continue_ids(context, SamplingOptions(max_new_tokens=15, temperature=0, stop_at_eos=False))
    assert gen.continue_ids(context, SamplingOptions(max_new_tokens=15, temperature=1.0, top_k=1, seed=9,
                                                     stop_at_eos=False)) == greedy


def test_options_and_command_line(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from megadepth.cli import main

    with pytest.raises(ConfigError, match="temperature must be >= 0"):
        SamplingOptions(temperature=-1)
    assert main(["generate", str(trained), "--prompt", "The standard library", "--max-new-tokens", "8",
                 "--samples", "2", "--device", "cpu"]) == 0
    out = capsys.readouterr().out.strip().split("\n" + "-" * 40 + "\n")
    assert len(out) == 2 and all(text.startswith("The standard library") for text in out)
    assert main(["generate", str(tmp_path / "nothing")]) == 2
    assert "no complete checkpoint" in capsys.readouterr().err


def test_tag_is_a_checkpoint_name_not_a_path(trained: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """--tag reached any folder through '..' (another run's checkpoint, or anything with a config.yaml);
    --device bogus was a traceback after the checkpoint had been read."""
    from megadepth.cli import main

    other = tmp_path / "elsewhere"
    other.mkdir()
    tag = sorted(p.name for p in (trained / "checkpoints").iterdir() if p.name.startswith("step_"))[-1]
    for bad in (f"../checkpoints/{tag}", f"{tag}/../{tag}", str(trained / "checkpoints" / tag),
                f"../../{other.name}"):
        assert main(["generate", str(trained), "--device", "cpu", "--tag", bad, "--max-new-tokens", "1"]) == 2
        err = capsys.readouterr().err.strip()
        assert "names look like step_00000100" in err and "\n" not in err
    assert main(["generate", str(trained), "--device", "bogus"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("megadepth: error: --device 'bogus' is not a device") and "\n" not in err
    assert main(["generate", str(trained), "--device", "cpu", "--tag", tag, "--max-new-tokens", "1"]) == 0


def test_padded_vocabulary_rows_are_never_sampled(sample_data: Path, tmp_path: Path) -> None:
    """model.vocab_size may exceed the tokenizer (it is padded up, or left room): the rows past the
    tokenizer's pieces have no text, so sampling them crashed the decode."""
    import sentencepiece as spm

    from megadepth.data import find_tokenizer

    pieces = spm.SentencePieceProcessor(model_file=str(find_tokenizer(sample_data))).get_piece_size()
    out = tmp_path / "run"
    run_ranks(train_rank, 1, tiny_config(sample_data, out, model={"vocab_size": 2 * pieces},
                                         train={"steps": 1, "save_final": True}))
    gen = Generator(out, device="cpu")
    context = gen.encode("The")
    hot = gen.continue_ids(context, SamplingOptions(max_new_tokens=60, temperature=5.0, top_k=0, seed=1,
                                                    stop_at_eos=False))
    assert len(hot) == 60 and max(hot) < pieces
    gen.tokenizer.decode(hot)  # raised "piece id is out of range" before
    greedy = gen.continue_ids(context, SamplingOptions(max_new_tokens=8, temperature=0, stop_at_eos=False))
    tiny = SamplingOptions(max_new_tokens=8, temperature=1e-300, top_k=0, seed=2, stop_at_eos=False)
    assert gen.continue_ids(context, tiny) == greedy  # inf/nan probabilities before
    with pytest.raises(ConfigError, match="temperature must be >= 0"):
        SamplingOptions(temperature=float("nan"))
