"""``megadepth export RUN_DIR --format hf OUT``: a Hugging Face ``transformers`` checkpoint, ``GPT2LMHeadModel``
for GPT-2-shaped runs (LayerNorm, gelu or relu MLP, learned positions), ``LlamaForCausalLM`` for Llama-shaped
ones (RMSNorm, SwiGLU, rotary positions, grouped-query attention; ``Qwen3ForCausalLM`` with QK-norm:
:mod:`megadepth.export.llama`); anything else is refused, naming the config keys neither can hold.

Each of megadepth's forward-pass multipliers is folded exactly into the weights it multiplies (GPT-2
has none): embedding tables times alpha_in; attention and MLP output projections (weight and bias) times
the branch multiplier; the query (weight and bias) times scale * sqrt(head_dim), since GPT-2 divides by
sqrt(head_dim); the final LayerNorm times the readout multiplier (divided by alpha_in for a tied head).
Layouts are consolidated first, vocabulary padding dropped, missing biases become zeros, and the
exported logits must match megadepth's own before anything is written; the output appears whole.

The tokenizer: for a GPT-2 config ``AutoTokenizer`` ignores ``tokenizer.model`` and silently builds a
byte-level BPE with other ids, so the export also writes ``tokenizer.json`` (the sentencepiece model as a
``tokenizers`` pipeline, :func:`sentencepiece_to_tokenizers`) and a ``tokenizer_config.json``, checked
against sentencepiece before the output appears. Where that fails, the model is kept as
``sentencepiece.model`` and the config names a class that does not exist, so ``AutoTokenizer`` fails
loudly instead of tokenizing wrongly; the warning, ``README.md`` and ``megadepth_export.json`` say so.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from megadepth.common.errors import ConfigError
from megadepth.config.schema import Config, ModelConfig
from megadepth.export.llama import CLASSES, hf_config, llama_shape_problems, llama_state_dict
from megadepth.export.llama import architecture as llama_architecture
from megadepth.parametrize import Parametrization
from megadepth.parametrize.rules import Multipliers

_TOLERANCE = 1e-4  # max |logit difference| / max |logit|, fp32

# sentencepiece's ModelProto enums (sentencepiece_model.proto)
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6
_UNIGRAM, _BPE = 1, 2
#: How much below the rarest normal piece's log-probability the pieces sentencepiece never matches in text
#: score in tokenizers' Unigram (which cannot leave a piece out of matching).
_UNMATCHABLE_PENALTY = 1e4
#: What ``AutoTokenizer`` finds in ``tokenizer_config.json`` when no correct tokenizer could be written.
NO_HF_TOKENIZER_CLASS = "NoHfTokenizerLoadTokenizerModelWithSentencepiece"
#: Text the exported tokenizer must encode as sentencepiece does (unigram: up to ties).
PROBE_TEXTS = (
    "The Python tutorial explains lists.",
    "Assignment statements\n*********************\n\nAssignment statements are used to (re)bind names.",
    "def f(x):\n    if x > 0:\n\treturn [1, 22, 333, 4096]\n    return None\r\n",
    "  leading, trailing and   inner   spaces  ",
    " ",
    "",
    "\n\n\n",
    "naïve café, Größe, ½ — “quotes” and ‘apostrophes’",
    "日本語のテキストと中文文本",
    "emoji 😀🚀👩‍💻 and symbols ∑∫√",
    "مرحبا بالعالم and עברית",
    "zero\u200bwidth and no-break\u00a0space",
    "<s> </s> <unk> <pad> <0x41> [CLS] <|endoftext|>",
    "3.14159 + 2,718 = 5.85",
)


def gpt2_shape_problems(model: ModelConfig) -> list[str]:
    """What GPT-2's block (pre-LN, learned positions, gelu or relu MLP, multi-head attention) cannot hold."""
    problems = []
    if model.norm != "layernorm":
        problems.append(f"model.norm '{model.norm}' (GPT-2 has LayerNorms)")
    if model.mlp not in ("gelu", "relu"):
        problems.append(f"model.mlp '{model.mlp}' (GPT-2's MLP: gelu or relu)")
    if model.position != "learned":
        problems.append(f"model.position '{model.position}' (GPT-2 learns a position table)")
    if model.n_kv_heads != model.heads:
        problems.append(f"model.kv_heads {model.kv_heads} (GPT-2 has as many key/value heads as query heads)")
    if model.qk_norm:
        problems.append("model.qk_norm (GPT-2 does not normalise queries and keys)")
    return problems


def check_exportable(model: ModelConfig) -> str:
    """The architecture that holds the model exactly: 'gpt2', 'llama' or 'qwen3' (Llama with QK-norm); a
    ConfigError naming the config keys that neither GPT-2 nor Llama can hold."""
    if model.block != "transformer":
        raise ConfigError("model.block 'linear' has no transformers counterpart: only transformer blocks export to hf")
    gpt2 = gpt2_shape_problems(model)
    if not gpt2:
        return "gpt2"
    llama = llama_shape_problems(model)
    if not llama:
        return llama_architecture(model)
    raise ConfigError(f"no transformers class holds this model, so it cannot be exported to hf: as GPT2LMHeadModel, "
                      f"{'; '.join(gpt2)}; as LlamaForCausalLM/Qwen3ForCausalLM, {'; '.join(llama)}")


def gpt2_state_dict(model: ModelConfig, mult: Multipliers, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The GPT-2 (``GPT2LMHeadModel``) state dict of a consolidated megadepth state dict, multipliers folded."""
    width, vocab, heads, head_dim = model.width, model.vocab_size, model.heads, model.head_dim

    def get(key: str, like: int | None = None) -> torch.Tensor:
        if key in state:
            return state[key].float()
        if like is None:
            raise KeyError(key)
        return torch.zeros(like)  # a bias the model does not have

    wte = mult.embedding * get("embed.token.weight")[:vocab]
    out = {"transformer.wte.weight": wte,
           "transformer.wpe.weight": mult.embedding * get("embed.position.weight")}
    q_scale = mult.attn_scale * math.sqrt(head_dim)
    for i in range(model.depth):
        src, dst = f"blocks.{i}.", f"transformer.h.{i}."
        for theirs, ours in (("ln_1", "attn_norm"), ("ln_2", "mlp_norm")):
            out[f"{dst}{theirs}.weight"] = get(f"{src}{ours}.weight")
            out[f"{dst}{theirs}.bias"] = get(f"{src}{ours}.bias", width)
        # key_value rows are laid out [heads, 2 (key, value), head_dim]; GPT-2 wants [q | k | v] columns
        kv_w = get(src + "attn.key_value.weight").view(heads, 2, head_dim, width)
        kv_b = get(src + "attn.key_value.bias", 2 * width).view(heads, 2, head_dim)
        q_w = q_scale * get(src + "attn.query.weight")
        q_b = q_scale * get(src + "attn.query.bias", width)
        qkv_w = torch.cat([q_w, kv_w[:, 0].reshape(width, width), kv_w[:, 1].reshape(width, width)], dim=0)
        qkv_b = torch.cat([q_b, kv_b[:, 0].reshape(width), kv_b[:, 1].reshape(width)])
        out[dst + "attn.c_attn.weight"] = qkv_w.t().contiguous()  # Conv1D: [in, out]
        out[dst + "attn.c_attn.bias"] = qkv_b
        out[dst + "attn.c_proj.weight"] = (mult.branch * get(src + "attn.out.weight")).t().contiguous()
        out[dst + "attn.c_proj.bias"] = mult.branch * get(src + "attn.out.bias", width)
        out[dst + "mlp.c_fc.weight"] = get(src + "mlp.up.weight").t().contiguous()
        out[dst + "mlp.c_fc.bias"] = get(src + "mlp.up.bias", model.mlp_width)
        out[dst + "mlp.c_proj.weight"] = (mult.branch * get(src + "mlp.down.weight")).t().contiguous()
        out[dst + "mlp.c_proj.bias"] = mult.branch * get(src + "mlp.down.bias", width)
    final = mult.readout / (mult.embedding if model.tie_embeddings else 1.0)
    out["transformer.ln_f.weight"] = final * get("head.norm.weight")
    out["transformer.ln_f.bias"] = final * get("head.norm.bias", width)
    out["lm_head.weight"] = wte if model.tie_embeddings else get("head.proj.weight")[:vocab]
    return out


class TokenizerNotConvertible(ValueError):
    """The sentencepiece model uses something :func:`sentencepiece_to_tokenizers` cannot reproduce."""


def _sentencepiece_proto(path: Path) -> Any:
    """The parsed ``ModelProto``: the processor API exposes neither the model type nor the normaliser."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(path.read_bytes())
    return proto


def sentencepiece_to_tokenizers(path: Path) -> Any:
    """A ``tokenizers.Tokenizer`` with the pieces, ids, normalisation and decoding of a sentencepiece model
    (unigram or BPE; precompiled normalisation, dummy prefix, whitespace handling, byte fallback; control
    pieces never matched in text).

    Not exact: unigram ties (equal-score segmentations, e.g. runs of one character, may order pieces
    differently: float32 vs float64 path sums; decoding is the same); decoding byte pieces that are not
    valid UTF-8; decoding the unknown piece and control pieces. Raises :class:`TokenizerNotConvertible`
    for what it does not reproduce (word and char models, user-defined pieces, unused pieces in BPE,
    whitespace as a suffix or unescaped, no unknown piece).
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers

    proto = _sentencepiece_proto(path)
    pieces = list(proto.pieces)
    trainer, norm = proto.trainer_spec, proto.normalizer_spec
    kind = trainer.model_type
    if kind not in (_UNIGRAM, _BPE):
        raise TokenizerNotConvertible(f"a sentencepiece {trainer.ModelType.Name(kind).lower()} model")
    kinds = {p.type for p in pieces}
    if _USER_DEFINED in kinds:
        raise TokenizerNotConvertible("user-defined pieces (sentencepiece matches them before segmenting)")
    if kind == _BPE and _UNUSED in kinds:
        raise TokenizerNotConvertible("unused pieces in a BPE model")
    if trainer.treat_whitespace_as_suffix or not norm.escape_whitespaces:
        raise TokenizerNotConvertible("whitespace as a suffix, or whitespace not escaped as '▁'")
    unknown = [i for i, p in enumerate(pieces) if p.type == _UNKNOWN]
    if len(unknown) != 1:
        raise TokenizerNotConvertible("no unknown piece")
    normal = {p.piece: (i, p.score) for i, p in enumerate(pieces) if p.type == _NORMAL}
    if kind == _UNIGRAM:
        # every piece stays at its id; the ones sentencepiece never matches get a score no segmentation
        # picks (byte pieces are only reached through byte fallback, by name)
        low = min(score for _, score in normal.values()) - _UNMATCHABLE_PENALTY
        vocab = [(p.piece, p.score if p.type == _NORMAL else low) for p in pieces]
        model = models.Unigram(vocab, unknown[0], bool(trainer.byte_fallback))
    else:
        # sentencepiece's BPE repeatedly merges the adjacent pair whose concatenation is the normal piece
        # of highest score (leftmost on ties); as ranked merges, every split of every normal piece into
        # two normal pieces, ranked by the whole piece's score
        ranked = sorted((-score, i, cut, piece[:cut], piece[cut:]) for piece, (i, score) in normal.items()
                        for cut in range(1, len(piece)) if piece[:cut] in normal and piece[cut:] in normal)
        model = models.BPE({p.piece: i for i, p in enumerate(pieces)}, [(a, b) for *_, a, b in ranked],
                           unk_token=pieces[unknown[0]].piece, fuse_unk=True,
                           byte_fallback=bool(trainer.byte_fallback))
    tokenizer = Tokenizer(model)
    steps = []
    if norm.precompiled_charsmap:
        steps.append(normalizers.Precompiled(norm.precompiled_charsmap))
    if norm.remove_extra_whitespaces:  # sentencepiece removes spaces (U+0020 only) at the ends and in runs
        steps += [normalizers.Replace(Regex(" {2,}"), " "), normalizers.Replace(Regex("^ | $"), "")]
    if norm.add_dummy_prefix:
        steps.append(normalizers.Prepend("▁"))
    steps.append(normalizers.Replace(" ", "▁"))
    tokenizer.normalizer = normalizers.Sequence(steps)
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if norm.add_dummy_prefix:
        steps.append(decoders.Strip(" ", 1, 0))
    tokenizer.decoder = decoders.Sequence(steps)
    tokenizer.add_special_tokens(
        [AddedToken(p.piece, special=True, normalized=False) for p in pieces if p.type in (_CONTROL, _UNKNOWN)]
    )
    tokenizer.encode_special_tokens = True  # "</s>" in text is text, as in sentencepiece
    return tokenizer


def _tokenizer_config(sp: Any, model_max_length: int) -> dict[str, Any]:
    """``tokenizer_config.json``: the generic fast class, nothing added around the text."""
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": False, "add_eos_token": False,
        "clean_up_tokenization_spaces": False,  # it would drop spaces before punctuation on decode
        "split_special_tokens": True, "model_max_length": model_max_length,
        "model_input_names": ["input_ids", "attention_mask"],
    }
    for name, index in (("unk_token", sp.unk_id()), ("bos_token", sp.bos_id()), ("eos_token", sp.eos_id()),
                        ("pad_token", sp.pad_id())):
        if 0 <= index < sp.get_piece_size():
            config[name] = sp.id_to_piece(index)
    return config


def _tokenizer_mismatch(folder: Path, sp: Any, unigram: bool) -> str | None:
    """How AutoTokenizer's encode and decode differ from ``sp`` on PROBE_TEXTS, or None."""
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(folder)
    if len(hf) != sp.get_piece_size():
        return f"{len(hf)} entries, sentencepiece has {sp.get_piece_size()}"
    for text in PROBE_TEXTS:
        ours, theirs = hf.encode(text, verbose=False), sp.encode(text)  # verbose: no length warning
        if ours != theirs and not (unigram and sorted(ours) == sorted(theirs)):  # a unigram tie is accepted
            return f"encodes {text!r} as {ours[:12]}, sentencepiece as {theirs[:12]}"
        if hf.decode(theirs) != sp.decode(theirs):
            return f"decodes {text!r} as {hf.decode(theirs)!r}, sentencepiece as {sp.decode(theirs)!r}"
    return None


def _write_tokenizer(source: Path, folder: Path, model_max_length: int) -> dict[str, Any]:
    """Copy the sentencepiece model into ``folder``, write and check ``tokenizer.json``; on failure keep
    ``sentencepiece.model`` and name :data:`NO_HF_TOKENIZER_CLASS` (transformers builds an unchecked
    tokenizer from any ``tokenizer.model``). Returns what was done."""
    import sentencepiece as spm

    sp_path = folder / "tokenizer.model"
    shutil.copyfile(source, sp_path)
    sp = spm.SentencePieceProcessor(model_file=str(sp_path))
    proto = _sentencepiece_proto(sp_path)
    unigram = proto.trainer_spec.model_type == _UNIGRAM
    model_type = proto.trainer_spec.ModelType.Name(proto.trainer_spec.model_type).lower()
    config_file, json_file = folder / "tokenizer_config.json", folder / "tokenizer.json"
    problem: str | None
    try:
        converted = sentencepiece_to_tokenizers(sp_path)
    except TokenizerNotConvertible as e:
        problem = f"not convertible: {e}"
    else:
        converted.save(str(json_file))
        config_file.write_text(json.dumps(_tokenizer_config(sp, model_max_length), indent=2) + "\n")
        try:
            problem = _tokenizer_mismatch(folder, sp, unigram)
        except Exception as e:  # noqa: BLE001 -- whatever stops AutoTokenizer loading it is a reason to refuse
            problem = f"AutoTokenizer could not load it: {type(e).__name__}: {e}"
    if problem is None:
        done: dict[str, Any] = {"sentencepiece": sp_path.name, "class": "PreTrainedTokenizerFast",
                                "files": [json_file.name, config_file.name],
                                "sentencepiece_model_type": model_type, "exact": not unigram}
        if unigram:
            done["differences"] = "equal-score segmentations (runs of one character) may order pieces differently"
        return done
    json_file.unlink(missing_ok=True)
    kept = sp_path.rename(folder / "sentencepiece.model")
    config_file.write_text(json.dumps({
        "tokenizer_class": NO_HF_TOKENIZER_CLASS,
        "megadepth_note": f"no transformers tokenizer reproduces {kept.name}: load it with sentencepiece "
                          f"(SentencePieceProcessor(model_file='{kept.name}')). Reason: {problem}",
    }, indent=2) + "\n")
    return {"sentencepiece": kept.name, "class": None, "files": [config_file.name],
            "sentencepiece_model_type": model_type, "problem": problem}


def _eos(sp: Any, vocab: int) -> tuple[int, str] | None:
    """(id, piece) of the tokenizer's EOS, None without one (or outside the model's vocabulary)."""
    eos = -1 if sp is None else sp.eos_id()
    return (eos, sp.id_to_piece(eos)) if 0 <= eos < min(vocab, sp.get_piece_size()) else None


def _readme(info: dict[str, Any], eos: tuple[int, str] | None, positions: int) -> str:
    """``README.md`` of the export: loading the model and tokenizer, and how megadepth prompts it."""
    hf_tok = info["hf_tokenizer"]
    cls = info["class"]
    family = {"GPT2LMHeadModel": "GPT-2", "LlamaForCausalLM": "Llama", "Qwen3ForCausalLM": "Qwen3"}[cls]
    max_positions = "n_positions" if cls == "GPT2LMHeadModel" else "max_position_embeddings"

    def code(*body: str) -> list[str]:
        return ["", "```python", *body, "```"]

    lines = [
        f"# {family} (transformers) exported from a megadepth run",
        "",
        f"Exported by `megadepth export` from `{info['source']}` ({info['parametrization']} parametrization). "
        "Its multipliers (embedding, branch, readout, attention scale) are folded into the weights, so this "
        f"is a plain `{cls}`; its logits were checked against megadepth's own forward pass "
        f"(largest relative difference {info['max_relative_logit_difference']:.1e}).",
        *code(f"from transformers import {cls}", "FOLDER = \"path/to/this/folder\"",
              f"model = {cls}.from_pretrained(FOLDER)"),
        "", "## Tokenizer", "",
    ]
    if hf_tok is None:
        lines += ["The run had no tokenizer (no `data.tokenizer`, no `tokenizer.model` beside its data): the "
                  "model takes and gives token ids only."]
    elif hf_tok["class"] is not None:
        lines += ["`tokenizer.json` is the run's sentencepiece model (`tokenizer.model`, also here) for the "
                  "`tokenizers` library: the same pieces and ids, no BOS or EOS added.",
                  *code("from transformers import AutoTokenizer",
                        "tokenizer = AutoTokenizer.from_pretrained(FOLDER)")]
        if not hf_tok.get("exact", True):
            lines += ["", f"Not exact everywhere: {hf_tok.get('differences', '')}."]
    else:
        lines += [
            f"No `tokenizer.json` could be written ({hf_tok['problem']}), so "
            "`AutoTokenizer.from_pretrained(FOLDER)` fails on this folder (its message may ask to install "
            "sentencepiece or tiktoken: that is not the cause). Encode and decode with the run's own "
            f"sentencepiece model, kept as `{hf_tok['sentencepiece']}`:",
            *code("import sentencepiece",
                  "sp = sentencepiece.SentencePieceProcessor(model_file=f\"{FOLDER}/"
                  f"{hf_tok['sentencepiece']}\")",
                  "ids = sp.encode(text)  # as training encoded text: no BOS, no EOS added"),
        ]
    if hf_tok is not None:
        name = "tokenizer" if hf_tok["class"] is not None else "sp"
        lines += ["", "## Prompts", ""]
        if eos is None:
            lines += ["The tokenizer has no EOS piece: `megadepth generate` encodes a prompt as its pieces "
                      "alone."]
        else:
            eos_id, piece = eos
            past = ("fails past them" if cls == "GPT2LMHeadModel" else
                    "goes on past them, at positions the model never saw")
            lines += [
                f"megadepth's data preparation ends every document with EOS (id {eos_id}, `{piece}`), so in "
                f"training, text starts right after an EOS. `megadepth generate` therefore encodes a prompt as `[{eos_id}] + "
                "sentencepiece.encode(prompt)` and stops at the next EOS (unless `--ignore-eos`). The tokenizer "
                "adds no EOS or BOS; to condition the model as `megadepth generate` does, put the EOS in front "
                f"yourself (the model reads at most {positions} tokens, prompt and continuation together: "
                f"`megadepth generate` keeps the last ones, `model.generate` {past}):",
                *code("import torch", f"ids = [{eos_id}] + {name}.encode(prompt)",
                      f"new = min(50, model.config.{max_positions} - len(ids))",
                      "out = model.generate(torch.tensor([ids]), max_new_tokens=new, do_sample=False, "
                      f"pad_token_id={eos_id})",
                      f"print({name}.decode(out[0, 1:].tolist()))  # the prompt and its continuation"),
            ]
    lines += ["", "`megadepth_export.json` records what was exported and how."]
    return "\n".join(lines) + "\n"


def describe_export(out: str | Path, info: dict[str, Any]) -> tuple[str, str | None]:
    """(what was written, a warning about what was not, or None), as ``megadepth export`` prints them."""
    written = (f"wrote {out}: {info['class']} (transformers) from {info['source']}, {info['parametrization']} "
               "multipliers folded into the weights; logits match megadepth's to "
               f"{info['max_relative_logit_difference']:.1e}; files: {', '.join(info['files'])}")
    hf_tok = info["hf_tokenizer"]
    if hf_tok is None:
        return written, ("megadepth export: note: the run's data has no tokenizer.model and data.tokenizer is not "
                         "set, so the export holds no tokenizer (token ids only)")
    if hf_tok["class"] is None:
        kept = Path(out) / hf_tok["sentencepiece"]
        return written, (f"megadepth export: warning: no tokenizer.json written ({hf_tok['problem']}), so "
                         f"AutoTokenizer.from_pretrained('{out}') fails (its message may ask to install "
                         "sentencepiece or tiktoken: that is not the cause); load the tokenizer with "
                         f"sentencepiece.SentencePieceProcessor(model_file='{kept}') "
                         f"(see {Path(out) / 'README.md'})")
    return written, None


def _give_umask_modes(folder: Path) -> None:
    """Give every file in ``folder`` the mode a new file gets there (safetensors writes 0600); a
    probe file learns it, since reading the umask means changing it, which races with threads."""
    probe = folder / f".mode-probe-{os.getpid()}"
    os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        mode = probe.stat().st_mode & 0o777
    finally:
        probe.unlink()
    for f in folder.iterdir():
        if f.is_file() and not f.is_symlink() and f.stat().st_mode & 0o777 != mode:
            f.chmod(mode)


def _max_relative_difference(config: Config, mult: Multipliers, state: dict[str, torch.Tensor], hf_model) -> float:
    """Logits of megadepth's forward pass and of the exported model on the same (seeded) tokens."""
    from megadepth.model import GPT

    ours = GPT(config.model, mult)
    ours.load_state_dict({k: v.float() for k, v in state.items()})
    ours.eval()
    hf_model.eval()
    seq = min(config.model.seq_len, 64)
    tokens = torch.randint(0, config.model.vocab_size, (2, seq), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = ours(tokens).float()
        b = hf_model(input_ids=tokens).logits.float()
    return float((a - b).abs().max() / a.abs().max().clamp_min(1e-12))


_CLASSES = {"gpt2": "GPT2LMHeadModel", **CLASSES}


def _hf_model(arch: str, m: ModelConfig, mult: Multipliers, state: dict[str, torch.Tensor], bos: int | None,
              eos: int | None) -> Any:
    """The transformers model of ``arch`` holding the run's weights, multipliers folded in."""
    import transformers

    if arch == "gpt2":
        config = transformers.GPT2Config(
            vocab_size=m.vocab_size, n_positions=m.positions, n_embd=m.width, n_layer=m.depth, n_head=m.heads,
            n_inner=m.mlp_width, activation_function=m.mlp, layer_norm_epsilon=m.norm_eps,
            resid_pdrop=m.dropout, embd_pdrop=m.dropout, attn_pdrop=m.dropout, scale_attn_weights=True,
            tie_word_embeddings=m.tie_embeddings, bos_token_id=bos, eos_token_id=eos)
        weights = gpt2_state_dict(m, mult, state)
    else:
        config = hf_config(m, bos, eos)
        weights = llama_state_dict(m, mult, state)
    hf_model = getattr(transformers, _CLASSES[arch])(config)
    missing, unexpected = hf_model.load_state_dict(weights, strict=False)
    missing = [k for k in missing if not k.endswith("attn.bias") and not k.endswith("masked_bias")
               and not (m.tie_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise ConfigError(f"{_CLASSES[arch]} weights did not line up (missing {missing[:3]}, unexpected {unexpected[:3]})")
    if m.tie_embeddings:
        hf_model.tie_weights()
    return hf_model


def export_hf(run_dir: str | Path, out: str | Path, tag: str | None = None) -> dict:
    """Export ``run_dir`` (or its checkpoints folder) to ``out``; returns megadepth_export.json's content."""
    try:
        import transformers  # noqa: F401 -- only to say what to install
    except ImportError:
        raise ConfigError("export --format hf needs the transformers package: pip install 'megadepth[hf]'") from None
    from megadepth.data import find_tokenizer
    from megadepth.train.checkpoint import check_tag, checkpoints_folder
    from megadepth.train.merge import consolidated_state

    check_tag(tag)
    run_dir, out = Path(run_dir), Path(out)
    ckpt_dir = checkpoints_folder(run_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} exists and is not an empty directory: choose a new output directory")
    config, state, tag = consolidated_state(ckpt_dir, tag)
    arch = check_exportable(config.model)
    ptz = Parametrization.from_config(config.model, config.parametrization, optimizer=config.optimizer.name)
    mult = ptz.multipliers()
    # the run's sentencepiece model, found as the trainer and ``generate`` find it
    tokenizer = Path(config.data.tokenizer) if config.data.tokenizer else find_tokenizer(config.data.path)
    if config.data.tokenizer and not tokenizer.is_file():
        raise ConfigError(f"data.tokenizer {tokenizer} (from the run's config) does not exist any more")
    sp = None
    if tokenizer is not None:
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=str(tokenizer))
    m = config.model
    ids = [-1, -1] if sp is None else [sp.bos_id(), sp.eos_id()]
    bos, eos = (v if 0 <= v < m.vocab_size else None for v in ids)
    hf_model = _hf_model(arch, m, mult, state, bos, eos)
    diff = _max_relative_difference(config, mult, state, hf_model)
    if not diff < _TOLERANCE:
        raise ConfigError(f"the exported model's logits differ from megadepth's by {diff:.2e} (relative): not written")
    info = {
        "format": f"hf-{arch}", "class": _CLASSES[arch], "source": str(ckpt_dir / tag), "step_tag": tag,
        "parametrization": config.parametrization.name,
        "multipliers_folded": {"embedding": mult.embedding, "branch": mult.branch, "readout": mult.readout,
                               "attn_scale": mult.attn_scale},
        "tied_head": m.tie_embeddings,
        "max_relative_logit_difference": diff, "tokenizer": "tokenizer.model" if tokenizer else None,
        "hf_tokenizer": None,
    }
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        hf_model.save_pretrained(tmp)
        if tokenizer is not None:
            info["hf_tokenizer"] = _write_tokenizer(tokenizer, tmp, config.model.positions)
            info["tokenizer"] = info["hf_tokenizer"]["sentencepiece"]
        readme = _readme(info, _eos(sp, config.model.vocab_size), config.model.positions)
        (tmp / "README.md").write_text(readme, encoding="utf-8")
        info["files"] = sorted(f.name for f in tmp.iterdir()) + ["megadepth_export.json"]
        (tmp / "megadepth_export.json").write_text(json.dumps(info, indent=1) + "\n")
        _give_umask_modes(tmp)
        if out.exists():
            out.rmdir()  # empty (checked above)
        tmp.replace(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a half-written export never stays behind
        raise
    return info
