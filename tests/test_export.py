"""`megadepth export --format hf`: the transformers GPT-2 (or Llama, or Qwen3 for QK-norm) computes what
megadepth computes, from any layout, with every multiplier folded into the weights. The reference is megadepth's own forward pass
on the checkpoint file as saved (TP = PP = 1), not the exporter's consolidation."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sentencepiece as spm
import torch
import yaml
from conftest import tiny_config
from distributed import run_ranks, train_rank

from megadepth.cli import main
from megadepth.common.errors import ConfigError
from megadepth.config import validate
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
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        return model(input_ids=TOKENS).logits


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / a.abs().max())


def export(run: Path, out: Path) -> None:
    assert main(["export", str(run), "--format", "hf", str(out)]) == 0


#: Text a user would prompt with: prose, code (indentation, tabs), whitespace runs, newlines, unicode.
VARIED = [
    "The Python tutorial explains lists.",
    "The standard library",
    "for item in items:\n    print(item)\n\tpass\n",
    "   three leading spaces,  two inner,\n\n\nthree newlines ",
    "naïve café, 日本語, emoji 😀, مرحبا",
    "</s> and <s> are text here",
]


@contextmanager
def umask(mask: int) -> Iterator[None]:
    """The process umask set to ``mask`` for the block (the export runs in this process)."""
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def test_export_matches_megadepth_and_generates_the_same(sample_data: Path, tmp_path: Path) -> None:
    """Tied head, biases, muP width scaling (readout and attention scale not GPT-2's defaults) and
    Depth-muP branches: logits equal; AutoTokenizer from the export encodes as sentencepiece (which
    made the training data) does; greedy generation from its ids, through generate and through the
    text-generation pipeline, equals megadepth's; files get the umask's modes."""
    from transformers import AutoTokenizer, GPT2LMHeadModel, pipeline

    cfg = tiny_config(sample_data, tmp_path / "run", model={"base_width": 16, "base_heads": 2, "bias": True},
                      train={"save_final": True})
    run_ranks(train_rank, 1, cfg)
    with umask(0o022):
        export(tmp_path / "run", tmp_path / "hf")
    with umask(0o077):
        export(tmp_path / "run", tmp_path / "private")
    assert {f.name: f.stat().st_mode & 0o777 for f in (tmp_path / "hf").iterdir()} == {
        name: 0o644 for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.model",
                                 "tokenizer.json", "tokenizer_config.json", "megadepth_export.json", "README.md")}
    assert {f.stat().st_mode & 0o777 for f in (tmp_path / "private").iterdir()} == {0o600}
    ours = megadepth_logits(tmp_path / "run")
    assert relative(ours, hf_logits(tmp_path / "hf")) < 1e-5
    info = json.loads((tmp_path / "hf" / "megadepth_export.json").read_text())
    assert info["multipliers_folded"]["branch"] != 1 and info["multipliers_folded"]["readout"] != 1
    assert info["hf_tokenizer"]["class"] == "PreTrainedTokenizerFast" and info["hf_tokenizer"]["exact"] is True

    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "hf" / "tokenizer.model"))
    hf_tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert len(hf_tok) == sp.get_piece_size() == 512
    for text in VARIED:
        ids = hf_tok(text)["input_ids"]
        assert ids == sp.encode(text), text  # no BOS: training saw sp.encode(document) + EOS
        assert hf_tok.decode(ids) == sp.decode(ids) == text
    assert hf_tok.eos_token_id == sp.eos_id() and hf_tok.unk_token_id == sp.unk_id() and hf_tok.pad_token is None
    model = GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    assert model.config.eos_token_id == sp.eos_id() and model.config.vocab_size == 512
    prompt = torch.tensor([hf_tok("The standard library")["input_ids"]])
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
    assert sp.eos_id() not in seq[0, prompt.shape[1]:].tolist()  # else the pipeline below stops early
    text = pipeline("text-generation", model=str(tmp_path / "hf"))(
        "The standard library", max_new_tokens=6, do_sample=False, pad_token_id=sp.eos_id())[0]["generated_text"]
    assert text == sp.decode(seq[0].tolist())


@pytest.mark.parametrize("layout", ["tensor", "pipeline"])
def test_export_of_parallel_layouts_matches_one_process(sample_data: Path, tmp_path: Path, layout: str) -> None:
    """CompleteP, untied head, no biases; TP=2 or PP=2 checkpoints export to what the one-process run
    computes (SGD keeps the layouts' training equal to rounding)."""
    common = {"model": {"base_width": 16, "base_heads": 2, "tie_embeddings": False, "bias": False},
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

    with pytest.raises(ConfigError, match="rotary") as refused:
        export_hf(tmp_path / "rot", tmp_path / "hf")
    assert "model.norm 'layernorm'" in str(refused.value)  # nor is it Llama-shaped
    assert not (tmp_path / "hf").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    with pytest.raises(ConfigError, match="not an empty directory"):
        export_hf(tmp_path / "rot", tmp_path / "full")
    assert (tmp_path / "full" / "x").read_text() == "keep me"


def test_export_takes_the_tokenizer_the_run_was_trained_with(sample_data: Path, tmp_path: Path) -> None:
    """``data.tokenizer`` names a tokenizer kept apart from the shards: the trainer and generate use it,
    so the export must ship it too (it wrote a model with no tokenizer and null EOS before)."""
    import shutil

    data = tmp_path / "shards"
    shutil.copytree(sample_data, data, ignore=shutil.ignore_patterns("tokenizer.model"))
    tok = tmp_path / "elsewhere" / "sp.model"
    tok.parent.mkdir()
    shutil.copy(sample_data / "tokenizer.model", tok)
    run = tmp_path / "run"
    run_ranks(train_rank, 1, tiny_config(data, run, data={"tokenizer": str(tok)}, train={"steps": 1, "save_final": True}))
    export(run, tmp_path / "hf")
    info = json.loads((tmp_path / "hf" / "megadepth_export.json").read_text())
    assert info["tokenizer"] is not None
    assert (tmp_path / "hf" / info["tokenizer"]).read_bytes() == tok.read_bytes()
    eos = spm.SentencePieceProcessor(model_file=str(tok)).eos_id()
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["eos_token_id"] == eos


def hf_folder_with(model_file: Path, folder: Path) -> Path:
    """What an export writes for a tokenizer, next to a GPT-2 config (which alone makes AutoTokenizer
    build a GPT2Tokenizer from tokenizer.model in transformers 5)."""
    from transformers import GPT2Config

    from megadepth.export.hf import _write_tokenizer

    GPT2Config(vocab_size=8, n_positions=64, n_embd=8, n_layer=1, n_head=1).save_pretrained(folder)
    _write_tokenizer(model_file, folder, 1024)
    return folder


def one_character_run(pieces: list[str]) -> bool:
    """Pieces that together are one repeated character, maybe after one "▁" (a word's space)."""
    joined = "".join(pieces)
    return len(set(joined)) == 1 or (joined[0] == "▁" and len(set(joined[1:])) == 1)


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_exported_tokenizer_encodes_the_corpus_as_sentencepiece(tmp_path: Path, model_type: str) -> None:
    """Every document of the sample corpus, the probe texts and the varied prompts: AutoTokenizer's ids are
    sentencepiece's (BPE: all of them; unigram: apart from equal-score orders of one-character runs,
    which sentencepiece breaks by float32 rounding), and decoding gives sentencepiece's text back."""
    from transformers import AutoTokenizer

    from data_prep.sample_text import python_docs_documents
    from data_prep.text_shards import train_tokenizer
    from megadepth.export.hf import PROBE_TEXTS

    docs = python_docs_documents()
    model_file = train_tokenizer(docs, tmp_path / "tok", 2048, model_type)
    hf = AutoTokenizer.from_pretrained(hf_folder_with(model_file, tmp_path / "hf"))
    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    assert type(hf).__name__ in ("PreTrainedTokenizerFast", "TokenizersBackend") and len(hf) == 2048
    ties = 0
    for text in [*docs, *PROBE_TEXTS, *VARIED]:
        ours, theirs = hf(text, verbose=False)["input_ids"], sp.encode(text)
        if ours != theirs:
            assert model_type == "unigram", text[:80]
            start = next(i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b)
            end = len(ours) - next(i for i, (a, b) in enumerate(zip(ours[::-1], theirs[::-1], strict=False)) if a != b)
            assert sorted(ours[start:end]) == sorted(theirs[start:end])
            assert one_character_run(sp.id_to_piece(ours[start:end])), sp.id_to_piece(theirs[start:end])
            ties += 1
        assert hf.decode(ours) == sp.decode(theirs) == text
    assert ties < len(docs) // 5


def test_a_tokenizer_that_would_be_wrong_is_not_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A conversion that encodes differently (here: the dummy prefix left out), or a model kind it does not
    convert: no tokenizer.json, no tokenizer.model for transformers 5 to convert on its own, and
    AutoTokenizer fails instead of returning a tokenizer with other ids."""
    import io

    from transformers import AutoTokenizer

    import megadepth.export.hf as hf_export
    from data_prep.sample_text import python_docs_documents

    real = hf_export.sentencepiece_to_tokenizers

    def no_dummy_prefix(path: Path):
        tokenizer = real(path)
        from tokenizers import normalizers

        tokenizer.normalizer = normalizers.Replace(" ", "▁")
        return tokenizer

    writer = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(python_docs_documents()), model_writer=writer,
                                   vocab_size=600, model_type="word", minloglevel=2)
    (tmp_path / "word.model").write_bytes(writer.getvalue())
    from data_prep.text_shards import train_tokenizer

    bpe = train_tokenizer(python_docs_documents(), tmp_path / "bpe", 512, "bpe")
    for name, model_file in (("word", tmp_path / "word.model"), ("patched", bpe)):
        with monkeypatch.context() as m:
            if name == "patched":
                m.setattr(hf_export, "sentencepiece_to_tokenizers", no_dummy_prefix)
            folder = hf_folder_with(model_file, tmp_path / name)
        files = {f.name for f in folder.iterdir()}
        assert "tokenizer.json" not in files and "tokenizer.model" not in files, name
        assert (folder / "sentencepiece.model").read_bytes() == model_file.read_bytes()
        assert json.loads((folder / "tokenizer_config.json").read_text())["tokenizer_class"] == (
            hf_export.NO_HF_TOKENIZER_CLASS)
        with pytest.raises((ValueError, OSError)):
            AutoTokenizer.from_pretrained(folder)


def readme_code(folder: Path, prompt: str) -> dict:
    """Run the Python blocks of the export's README.md as a user would, FOLDER pointing at the export."""
    import contextlib
    import io
    import re

    text = (folder / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    code = "\n".join(blocks).replace('FOLDER = "path/to/this/folder"', f"FOLDER = {str(folder)!r}")
    namespace: dict = {"prompt": prompt, "text": prompt}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, str(folder / "README.md"), "exec"), namespace)  # noqa: S102 - the README's own code
    namespace["printed"] = printed.getvalue()
    return namespace


def greedy_as_megadepth_generates(run: Path, prompt: str, tokens: int) -> tuple[list[int], list[int]]:
    """(context, new ids) of ``megadepth generate --temperature 0`` for ``prompt``."""
    from megadepth.generate import Generator, SamplingOptions

    gen = Generator(run, device="cpu")
    context = gen.encode(prompt)
    return context, gen.continue_ids(context, SamplingOptions(max_new_tokens=tokens, temperature=0))


def test_the_export_readme_prompts_as_megadepth_generate_does(sample_data: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """megadepth generate puts an EOS before the prompt; the exported tokenizer adds none. The README says
    so, and its code, run as written, conditions the model as megadepth generate does."""
    run = tmp_path / "run"
    run_ranks(train_rank, 1, tiny_config(sample_data, run, train={"save_final": True}))
    capsys.readouterr()
    export(run, tmp_path / "hf")
    written = capsys.readouterr().out.strip()
    files = sorted(f.name for f in (tmp_path / "hf").iterdir())
    listed = json.loads((tmp_path / "hf" / "megadepth_export.json").read_text())["files"]
    assert "README.md" in files and sorted(listed) == files
    assert written.startswith(f"wrote {tmp_path / 'hf'}: ") and written.endswith(f"files: {', '.join(listed)}")
    eos = spm.SentencePieceProcessor(model_file=str(sample_data / "tokenizer.model")).eos_id()
    readme = (tmp_path / "hf" / "README.md").read_text(encoding="utf-8")
    assert f"encodes a prompt as `[{eos}] + sentencepiece.encode(prompt)`" in readme
    assert "AutoTokenizer.from_pretrained(FOLDER)" in readme
    prompt = "The standard library"
    ns = readme_code(tmp_path / "hf", prompt)
    context, new = greedy_as_megadepth_generates(run, prompt, 8)
    assert ns["ids"] == context and context[0] == eos
    assert ns["out"][0, len(context):len(context) + len(new)].tolist() == new
    assert ns["printed"].startswith(prompt)


def test_an_export_without_a_transformers_tokenizer_says_so_and_how_to_load_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A tokenizer with user-defined pieces (common for chat markers) cannot become a tokenizer.json:
    the export printed plain success and AutoTokenizer later failed asking to install sentencepiece."""
    import io
    import re

    from transformers import AutoTokenizer

    from data_prep.sample_text import python_docs_documents
    from data_prep.text_shards import build_text_shards

    docs = python_docs_documents()
    writer = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(docs), model_writer=writer, vocab_size=512,
                                   model_type="bpe", user_defined_symbols=["<|user|>"], byte_fallback=True,
                                   minloglevel=2)
    (tmp_path / "chat.model").write_bytes(writer.getvalue())
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    build_text_shards([tmp_path / "docs.jsonl"], tmp_path / "data", tokenizer=tmp_path / "chat.model",
                      progress=False)
    run, out = tmp_path / "run", tmp_path / "hf"
    run_ranks(train_rank, 1, tiny_config(tmp_path / "data", run, train={"save_final": True}))
    capsys.readouterr()
    export(run, out)
    stdout, stderr = capsys.readouterr()
    written = stdout.strip()
    assert "sentencepiece.model" in written and "tokenizer.json" not in written and "\n" not in written
    (warning,) = [line for line in stderr.splitlines() if line.startswith("megadepth export: warning:")]
    assert "no tokenizer.json written (not convertible: user-defined pieces" in warning
    assert f"AutoTokenizer.from_pretrained('{out}') fails" in warning
    # the way to load it that the warning names works: the ids training used
    named = re.search(r"sentencepiece\.SentencePieceProcessor\(model_file='([^']+)'\)", warning)
    assert named and Path(named.group(1)) == out / "sentencepiece.model"
    kept = spm.SentencePieceProcessor(model_file=named.group(1))
    trained = spm.SentencePieceProcessor(model_file=str(tmp_path / "chat.model"))
    for text in [*VARIED, "<|user|> hello"]:
        assert kept.encode(text) == trained.encode(text)
    with pytest.raises((ValueError, OSError)):
        AutoTokenizer.from_pretrained(out)
    readme = (out / "README.md").read_text(encoding="utf-8")
    assert "No `tokenizer.json` could be written (not convertible: user-defined pieces" in readme
    # the README's own code (sentencepiece, EOS first) generates what megadepth generate does
    prompt = "The Python tutorial"
    ns = readme_code(out, prompt)
    context, new = greedy_as_megadepth_generates(run, prompt, 8)
    assert ns["ids"] == context and context[0] == trained.eos_id()
    assert ns["out"][0, len(context):len(context) + len(new)].tolist() == new


#: A Llama-shaped tiny model at twice its base width (muP's attention scale is not 1/sqrt(head_dim)).
LLAMA = {"norm": "rmsnorm", "mlp": "swiglu", "position": "rotary", "heads": 4, "ffn_multiple_of": 16,
         "base_width": 16, "base_heads": 4, "rope_theta": 500.0}


@pytest.mark.parametrize(("shape", "cls"), [
    pytest.param({"kv_heads": 2, "base_kv_heads": 2, "tie_embeddings": False, "bias": True}, "LlamaForCausalLM",
                 id="llama-gqa-untied-bias"),
    pytest.param({"kv_heads": 1, "base_kv_heads": 1, "tie_embeddings": True, "qk_norm": True}, "Qwen3ForCausalLM",
                 id="qwen3-mqa-tied"),
])
def test_llama_shaped_runs_export_to_llama_or_qwen3(sample_data: Path, tmp_path: Path, shape: dict, cls: str) -> None:
    """Grouped- and multi-query attention, untied and tied heads (alpha_in != 1: the tied head reads the scaled
    embedding, compensated in the final norm), biases, QK-norm (its gain takes the attention scale): the
    exported model's logits are megadepth's, and the export README's code, run as written, generates what
    megadepth generate does (transformers' generate has its own KV cache)."""
    from transformers import AutoModelForCausalLM

    run = tmp_path / "run"
    run_ranks(train_rank, 1, tiny_config(sample_data, run, model={**LLAMA, **shape},
                                         parametrization={"name": "depth_mup", "input_multiplier": 2.0},
                                         train={"save_final": True}))
    export(run, tmp_path / "hf")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert type(model).__name__ == cls
    assert model.config.num_key_value_heads == shape["kv_heads"] and model.config.tie_word_embeddings is shape[
        "tie_embeddings"]
    assert relative(megadepth_logits(run), hf_logits(tmp_path / "hf")) < 1e-5
    info = json.loads((tmp_path / "hf" / "megadepth_export.json").read_text())
    assert info["class"] == cls and info["multipliers_folded"]["embedding"] == 2.0
    readme = (tmp_path / "hf" / "README.md").read_text(encoding="utf-8")
    assert f"model = {cls}.from_pretrained(FOLDER)" in readme and "encodes a prompt as `[" in readme
    prompt = "The standard library"
    ns = readme_code(tmp_path / "hf", prompt)
    context, new = greedy_as_megadepth_generates(run, prompt, 8)
    assert ns["ids"] == context
    assert ns["out"][0, len(context):len(context) + len(new)].tolist() == new and new


@pytest.mark.parametrize(("model", "named"), [
    ({"norm": "layernorm", "mlp": "swiglu", "position": "rotary"}, ["model.norm 'layernorm'", "model.mlp 'swiglu'"]),
    ({"norm": "rmsnorm", "mlp": "gelu", "position": "rotary"}, ["model.mlp 'gelu'", "model.norm 'rmsnorm'"]),
    ({"norm": "rmsnorm", "mlp": "swiglu", "position": "learned"}, ["model.position 'learned'"]),
    ({"norm": "rmsnorm", "mlp": "relu", "position": "learned"}, ["model.norm 'rmsnorm'", "model.mlp 'relu'"]),
    ({"mlp": "abs"}, ["model.mlp 'abs'"]),
    ({"kv_heads": 1}, ["model.kv_heads 1", "model.norm 'layernorm'"]),
    ({"qk_norm": True}, ["model.qk_norm", "model.position 'learned'"]),
    ({**LLAMA, "qk_norm": True, "bias": True}, ["model.bias with model.qk_norm"]),
])
def test_export_refuses_what_neither_gpt2_nor_llama_holds(model: dict, named: list[str]) -> None:
    """Mixed blocks, learned positions with a Llama block, non-gated MLPs with RMSNorm, GQA or QK-norm in a
    GPT-2 block, QK-norm with MLP biases: refused before anything is read further, naming the keys."""
    from megadepth.export.hf import check_exportable

    cfg = validate({"model": {"width": 32, "heads": 4, **model}, "data": {"path": "."}})
    with pytest.raises(ConfigError, match="no transformers class holds this model") as refused:
        check_exportable(cfg.model)
    assert all(key in str(refused.value) for key in named), str(refused.value)


@pytest.mark.parametrize(("model", "arch"), [({}, "gpt2"), ({"mlp": "relu", "bias": True}, "gpt2"),
                                             ({**LLAMA, "kv_heads": 2}, "llama"), ({**LLAMA, "qk_norm": True}, "qwen3")])
def test_each_block_shape_goes_to_its_architecture(model: dict, arch: str) -> None:
    from megadepth.export.hf import check_exportable

    assert check_exportable(validate({"model": {"width": 32, "heads": 4, **model}, "data": {"path": "."}}).model) == arch
