"""`megadepth generate`: greedy continuation equals the transformers export's own greedy generate (an
independent implementation of the same model, GPT-2 and Llama), the KV cache gives what recomputing the
context gives (learned positions and rotary/grouped-query attention), sampling is reproducible per seed,
top-k 1 is greedy, and the command line prints the prompt's continuation or one line of error."""

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


@pytest.fixture(scope="module")
def llama_trained(sample_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """RMSNorm, SwiGLU, rotary positions, 4 query heads on 2 key/value heads."""
    out = tmp_path_factory.mktemp("gen") / "llama"
    cfg = tiny_config(sample_data, out, model={"norm": "rmsnorm", "mlp": "swiglu", "position": "rotary", "heads": 4,
                                               "kv_heads": 2, "ffn_multiple_of": 16, "tie_embeddings": False},
                      train={"steps": 20, "save_final": True, "log_every": 10})
    run_ranks(train_rank, 1, cfg)
    return out


@pytest.mark.parametrize("run", ["trained", "llama_trained"])
def test_greedy_equals_the_exported_model_greedy_generate(run: str, tmp_path: Path,
                                                          request: pytest.FixtureRequest) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from megadepth.export import export_hf

    trained = request.getfixturevalue(run)
    export_hf(trained, tmp_path / "hf")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    gen = Generator(trained, device="cpu")
    context = gen.encode("The Python")
    ours = gen.continue_ids(context, SamplingOptions(max_new_tokens=12, temperature=0, stop_at_eos=False))
    with torch.no_grad():
        theirs = hf.generate(torch.tensor([context]), max_new_tokens=12, min_new_tokens=12, do_sample=False,
                             pad_token_id=0)[0, len(context):].tolist()
    assert ours == theirs and len(ours) == 12


@pytest.mark.parametrize("run", ["trained", "llama_trained"])
def test_the_kv_cache_computes_what_recomputing_the_context_does(run: str, request: pytest.FixtureRequest) -> None:
    """Logits of a context fed in pieces through the cache (a prompt, single tokens, a few tokens at once)
    equal one forward pass over it; greedy and seeded sampling give the same tokens with and without the
    cache, also past the model's 32 positions (where both recompute a sliding window)."""
    import torch

    trained = request.getfixturevalue(run)
    cached, plain = Generator(trained, device="cpu"), Generator(trained, device="cpu", kv_cache=False)
    assert cached.kv_cache and not plain.kv_cache
    tokens = torch.randint(0, 512, (2, 32), generator=torch.Generator().manual_seed(1))
    model = cached.model
    with torch.no_grad():
        whole = model(tokens)
        cache = model.new_cache()
        pieces = [model(tokens[:, a:b], cache=cache) for a, b in ((0, 9), (9, 10), (10, 11), (11, 15), (15, 32))]
    assert cache.length == 32
    assert float((torch.cat(pieces, dim=1) - whole).abs().max() / whole.abs().max()) < 1e-5
    context = cached.encode("The Python")
    for options in (SamplingOptions(max_new_tokens=40, temperature=0, stop_at_eos=False),
                    SamplingOptions(max_new_tokens=40, temperature=1.0, top_k=0, seed=5, stop_at_eos=False)):
        ours = cached.continue_ids(context, options)
        assert ours == plain.continue_ids(context, options) and len(context) + len(ours) > 32


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
    printed = capsys.readouterr()
    out = printed.out.strip().split("\n" + "-" * 40 + "\n")
    assert len(out) == 2 and all(text.startswith("The standard library") for text in out)
    eos = Generator(trained, device="cpu").eos_id
    assert f"the context is EOS (id {eos}, '</s>') and then the prompt" in printed.err
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
