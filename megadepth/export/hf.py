"""``megadepth export RUN_DIR --format hf OUT``: a Hugging Face ``transformers`` GPT-2 checkpoint.

A megadepth model multiplies in its forward pass (embedding alpha_in, branch a * r^-alpha, readout
alpha_out / m, the attention scale); GPT-2 in ``transformers`` has none of these, so each is folded
into the weights it multiplies, exactly:

- embedding: token and position tables times alpha_in;
- branches: the output projection of attention and of the MLP (weight and bias) times the branch
  multiplier, since x + b * (W y + c) = x + (b W) y + b c;
- attention scale: GPT-2 divides by sqrt(head_dim); the query (weight and bias) carries the rest,
  scale * sqrt(head_dim);
- readout: the final LayerNorm's gain and bias times the readout multiplier, and, when the head is tied
  to the (now alpha_in-scaled) token table, divided by alpha_in.

Layouts are consolidated first (tensor- and pipeline-parallel checkpoints, see
megadepth.train.merge), padding rows of the vocabulary are dropped, missing biases become zeros.
Before anything is written the exported model's logits are compared with megadepth's own forward pass
on a batch of tokens; a mismatch is an error, so a checkpoint that does not reproduce the run is never
written. The output directory appears whole (written beside it, then renamed), its files with the mode
the umask gives (safetensors writes 0600 on its own; see :func:`_give_umask_modes`).

The tokenizer. Copying ``tokenizer.model`` alone is not enough: ``AutoTokenizer`` reads no
sentencepiece file for a GPT-2 config, it falls back to ``GPT2Tokenizer`` (a byte-level BPE), which in
transformers 5 is silently built from the model's pieces with other ids ("The Python tutorial" encodes
to different ids than training used). So the export also writes ``tokenizer.json`` (a ``tokenizers``
pipeline built from the sentencepiece model: same pieces, same ids, same normalisation) and a
``tokenizer_config.json`` naming ``PreTrainedTokenizerFast``, no BOS added (megadepth's data is
``sp.encode(text)`` then EOS at a document's end; prompts get neither), and special tokens not matched
in text (sentencepiece reads ``"</s>"`` in text as characters). See :func:`sentencepiece_to_tokenizers`
for what is exact. Before the output appears, the tokenizer ``AutoTokenizer`` loads from it is compared
with sentencepiece on varied text; if it is wrong, or the model is of a kind this cannot convert, no
``tokenizer.json`` is written, the sentencepiece model is kept as ``sentencepiece.model`` and
``tokenizer_config.json`` names a class that does not exist, so that ``AutoTokenizer`` fails loudly
instead of tokenizing wrongly (load ``sentencepiece.model`` with ``sentencepiece`` then; the export's
warning line, its ``README.md`` and ``megadepth_export.json`` say so, since transformers' own error asks
to install sentencepiece or tiktoken). The ``README.md`` also says how ``megadepth generate`` prompts the
model (an EOS first), which no exported tokenizer does on its own.
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
from megadepth.parametrize import Parametrization
from megadepth.parametrize.rules import Multipliers

_TOLERANCE = 1e-4  # max |logit difference| / max |logit|, fp32

# sentencepiece's ModelProto enums (sentencepiece_model.proto)
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6
_UNIGRAM, _BPE = 1, 2
#: Unigram scores are log-probabilities (a few tens at most); pieces sentencepiece never matches in text
#: (control, unknown, byte, unused) get this much less than the rarest normal piece in tokenizers, whose
#: Unigram has no way to leave a piece out of matching. See :func:`sentencepiece_to_tokenizers`.
_UNMATCHABLE_PENALTY = 1e4
#: What ``AutoTokenizer`` finds in ``tokenizer_config.json`` when no correct tokenizer could be written.
NO_HF_TOKENIZER_CLASS = "NoHfTokenizerLoadTokenizerModelWithSentencepiece"
#: Text the exported tokenizer must encode as sentencepiece does (unigram: up to ties): prose, code with indentation
#: and tabs, whitespace runs, CRLF, digits, accents, CJK, emoji, right-to-left text, invisible characters
#: and strings that look like special tokens.
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


def check_exportable(model: ModelConfig) -> None:
    """GPT-2's architecture: pre-LN transformer blocks, learned positions, gelu or relu."""
    if model.block != "transformer":
        raise ConfigError("model.block 'linear' has no GPT-2 counterpart: only transformer blocks export to hf")
    if model.position != "learned":
        raise ConfigError("model.position 'rotary' has no GPT-2 counterpart (learned positions): cannot export to hf")
    if model.activation not in ("gelu", "relu"):
        raise ConfigError(f"model.activation '{model.activation}' has no GPT-2 counterpart (gelu, relu)")


def gpt2_state_dict(model: ModelConfig, mult: Multipliers, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The GPT-2 (``GPT2LMHeadModel``) state dict of a consolidated megadepth state dict, multipliers folded."""
    width, vocab = model.width, model.vocab_size
    heads, head_dim = model.heads, model.head_dim

    def get(key: str, like: int | None = None) -> torch.Tensor:
        if key in state:
            return state[key].float()
        if like is None:
            raise KeyError(key)
        return torch.zeros(like)  # a bias the model does not have

    out: dict[str, torch.Tensor] = {}
    wte = mult.embedding * get("embed.token.weight")[:vocab]
    out["transformer.wte.weight"] = wte
    out["transformer.wpe.weight"] = mult.embedding * get("embed.position.weight")
    q_scale = mult.attn_scale * math.sqrt(head_dim)
    for i in range(model.depth):
        src, dst = f"blocks.{i}.", f"transformer.h.{i}."
        out[dst + "ln_1.weight"] = get(src + "attn_norm.weight")
        out[dst + "ln_1.bias"] = get(src + "attn_norm.bias", width)
        out[dst + "ln_2.weight"] = get(src + "mlp_norm.weight")
        out[dst + "ln_2.bias"] = get(src + "mlp_norm.bias", width)
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


def _gpt2_config(config: Config, tokenizer_ids: dict[str, int]):
    from transformers import GPT2Config

    m = config.model
    return GPT2Config(
        vocab_size=m.vocab_size,
        n_positions=m.positions,
        n_embd=m.width,
        n_layer=m.depth,
        n_head=m.heads,
        n_inner=m.mlp_width,
        activation_function=m.activation,
        layer_norm_epsilon=m.norm_eps,
        resid_pdrop=m.dropout,
        embd_pdrop=m.dropout,
        attn_pdrop=m.dropout,
        scale_attn_weights=True,
        tie_word_embeddings=m.tie_embeddings,
        **tokenizer_ids,
    )


def _find_tokenizer(config: Config) -> Path | None:
    """The run's sentencepiece model, found as the trainer and ``generate`` find it: ``data.tokenizer``
    when set, else the ``tokenizer.model`` next to the training data."""
    from megadepth.data import find_tokenizer

    if config.data.tokenizer:
        path = Path(config.data.tokenizer)
        if not path.is_file():
            raise ConfigError(f"data.tokenizer {path} (from the run's config) does not exist any more")
        return path
    return find_tokenizer(config.data.path)


class TokenizerNotConvertible(ValueError):
    """The sentencepiece model uses something :func:`sentencepiece_to_tokenizers` cannot reproduce."""


def _sentencepiece_proto(path: Path) -> Any:
    """The parsed ``ModelProto``: the processor API exposes neither the model type nor the normaliser."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(path.read_bytes())
    return proto


def sentencepiece_to_tokenizers(path: Path) -> Any:
    """A ``tokenizers.Tokenizer`` with the pieces, ids, normalisation and decoding of a sentencepiece model.

    What is reproduced: unigram and BPE models; the precompiled normalisation rules (none for megadepth's
    identity models); the dummy-prefix "▁", spaces as "▁", runs of spaces kept or collapsed as the model
    says; byte fallback, or consecutive unknown characters fused into one unknown piece without it;
    decoding (byte pieces back to UTF-8, the dummy prefix removed). Special (control) pieces are never
    matched in text, as in sentencepiece; :func:`_write_hf_tokenizer` also turns off the matching of
    added special tokens.

    Where it is not exact:

    - unigram: when two segmentations score the same, sentencepiece's choice comes from float32
      rounding of its path sums and tokenizers' (float64) may differ: the same pieces in another order,
      seen on runs of one repeated character (``*****`` underlines, ``-----`` rules, long indentation;
      about one document in seven of the sample corpus has one). Decoding is the same. BPE has no such ties (every piece has its own score): on the sample corpus and the probe
      texts both model types are otherwise exact.
    - decoding ids whose byte pieces do not form valid UTF-8 (a model emitting stray byte pieces): both
      put U+FFFD in, tokenizers for every byte of such a run, sentencepiece only for the invalid bytes.
      Encoded text always decodes the same.
    - decoding the unknown piece: sentencepiece writes " ⁇ ", tokenizers its name (byte-fallback models,
      all of megadepth's, never produce it); control pieces: sentencepiece drops them, transformers
      drops them only with ``skip_special_tokens=True`` (what generation pipelines pass).

    Raises :class:`TokenizerNotConvertible` for what it does not reproduce: word and char models,
    user-defined pieces (matched before segmentation, with a bonus), unused pieces in BPE (merged, then
    split again), whitespace as a suffix, unescaped whitespace, no unknown piece.
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
        ranked = []
        for piece, (i, score) in normal.items():
            for cut in range(1, len(piece)):
                left, right = piece[:cut], piece[cut:]
                if left in normal and right in normal:
                    ranked.append((-score, i, cut, left, right))
        ranked.sort()
        model = models.BPE(
            {p.piece: i for i, p in enumerate(pieces)},
            [(left, right) for *_, left, right in ranked],
            unk_token=pieces[unknown[0]].piece,
            fuse_unk=True,
            byte_fallback=bool(trainer.byte_fallback),
        )
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
    """``tokenizer_config.json``: the generic fast class, nothing added around the text, special tokens
    as the sentencepiece model defines them (no pad token unless it has one)."""
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,  # it would drop spaces before punctuation on decode
        "split_special_tokens": True,
        "model_max_length": model_max_length,
        "model_input_names": ["input_ids", "attention_mask"],
    }
    for name, index in (("unk_token", sp.unk_id()), ("bos_token", sp.bos_id()), ("eos_token", sp.eos_id()),
                        ("pad_token", sp.pad_id())):
        if 0 <= index < sp.get_piece_size():
            config[name] = sp.id_to_piece(index)
    return config


def _tokenizer_mismatch(folder: Path, sp: Any, unigram: bool) -> str | None:
    """How ``AutoTokenizer.from_pretrained(folder)`` differs from ``sp`` on :data:`PROBE_TEXTS`, or None.

    Exactly what users get is checked (their default ``encode``, ``decode``). For unigram models a tie
    (same pieces, same total score, another order) is accepted: see :func:`sentencepiece_to_tokenizers`.
    """
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(folder)
    if len(hf) != sp.get_piece_size():
        return f"{len(hf)} entries, sentencepiece has {sp.get_piece_size()}"
    for text in PROBE_TEXTS:
        ours, theirs = hf.encode(text, verbose=False), sp.encode(text)  # verbose: no length warning
        if ours != theirs:
            tie = unigram and sorted(ours) == sorted(theirs)
            if not tie:
                return f"encodes {text!r} as {ours[:12]}, sentencepiece as {theirs[:12]}"
        if hf.decode(theirs) != sp.decode(theirs):
            return f"decodes {text!r} as {hf.decode(theirs)!r}, sentencepiece as {sp.decode(theirs)!r}"
    return None


def _write_tokenizer(source: Path, folder: Path, model_max_length: int) -> dict[str, Any]:
    """Copy the sentencepiece model into ``folder`` as ``tokenizer.model``, write ``tokenizer.json`` and
    ``tokenizer_config.json`` beside it and check what AutoTokenizer loads from them; returns what was
    done, for ``megadepth_export.json``.

    When the model cannot be converted, or the check fails, ``tokenizer.json`` is removed, the model is
    renamed ``sentencepiece.model`` and the config names :data:`NO_HF_TOKENIZER_CLASS`: transformers 5
    builds a tokenizer from any ``tokenizer.model`` it finds (a GPT2Tokenizer for a GPT-2 config, one
    of a class it does not know otherwise) without checking it, so only both make AutoTokenizer fail.
    """
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


def _eos(path: Path | None, vocab: int) -> tuple[int, str] | None:
    """(id, piece) of the tokenizer's EOS, None without one (or outside the model's vocabulary)."""
    if path is None:
        return None
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(path))
    eos = sp.eos_id()
    return (eos, sp.id_to_piece(eos)) if 0 <= eos < min(vocab, sp.get_piece_size()) else None


def _readme(info: dict[str, Any], eos: tuple[int, str] | None, positions: int) -> str:
    """``README.md`` of the export: how to load the model and its tokenizer, and how megadepth prompts it.

    Hugging Face users meet the folder without megadepth: the card must say which tokenizer loads (or why
    none does: transformers' own error then speaks of installing sentencepiece, which is not the cause),
    and that ``megadepth generate`` puts an EOS before a prompt (:meth:`megadepth.generate.Generator.encode`),
    which no exported tokenizer adds, so the same prompt conditions the model differently unless they do
    the same."""
    hf_tok = info["hf_tokenizer"]
    lines = [
        "# GPT-2 (transformers) exported from a megadepth run",
        "",
        f"Exported by `megadepth export` from `{info['source']}` ({info['parametrization']} parametrization). "
        "Its multipliers (embedding, branch, readout, attention scale) are folded into the weights, so this "
        "is a plain `GPT2LMHeadModel`; its logits were checked against megadepth's own forward pass "
        f"(largest relative difference {info['max_relative_logit_difference']:.1e}).",
        "",
        "```python",
        "from transformers import GPT2LMHeadModel",
        "FOLDER = \"path/to/this/folder\"",
        "model = GPT2LMHeadModel.from_pretrained(FOLDER)",
        "```",
        "",
        "## Tokenizer",
        "",
    ]
    if hf_tok is None:
        lines += ["The run had no tokenizer (no `data.tokenizer`, no `tokenizer.model` beside its data): the "
                  "model takes and gives token ids only."]
    elif hf_tok["class"] is not None:
        lines += [
            "`tokenizer.json` is the run's sentencepiece model (`tokenizer.model`, also here) for the "
            "`tokenizers` library: the same pieces and ids, no BOS or EOS added.",
            "",
            "```python",
            "from transformers import AutoTokenizer",
            "tokenizer = AutoTokenizer.from_pretrained(FOLDER)",
            "```",
        ]
        if not hf_tok.get("exact", True):
            lines += ["", f"Not exact everywhere: {hf_tok.get('differences', '')}."]
    else:
        lines += [
            f"No `tokenizer.json` could be written ({hf_tok['problem']}), so "
            "`AutoTokenizer.from_pretrained(FOLDER)` fails on this folder (its message may ask to install "
            "sentencepiece or tiktoken: that is not the cause). Encode and decode with the run's own "
            f"sentencepiece model, kept as `{hf_tok['sentencepiece']}`:",
            "",
            "```python",
            "import sentencepiece",
            f"sp = sentencepiece.SentencePieceProcessor(model_file=f\"{{FOLDER}}/{hf_tok['sentencepiece']}\")",
            "ids = sp.encode(text)  # as training encoded text: no BOS, no EOS added",
            "```",
        ]
    if hf_tok is not None:
        encode = "tokenizer.encode(prompt)" if hf_tok["class"] is not None else "sp.encode(prompt)"
        decode = "tokenizer.decode" if hf_tok["class"] is not None else "sp.decode"
        lines += ["", "## Prompts", ""]
        if eos is None:
            lines += ["The tokenizer has no EOS piece: `megadepth generate` encodes a prompt as its pieces "
                      "alone."]
        else:
            eos_id, piece = eos
            lines += [
                f"megadepth's data preparation ends every document with EOS (id {eos_id}, `{piece}`), so in "
                f"training, text starts right after an EOS. `megadepth generate` therefore encodes a prompt as `[{eos_id}] + "
                "sentencepiece.encode(prompt)` and stops at the next EOS (unless `--ignore-eos`). The tokenizer "
                "adds no EOS or BOS; to condition the model as `megadepth generate` does, put the EOS in front "
                f"yourself (the model reads at most {positions} tokens, prompt and continuation together: "
                "`megadepth generate` keeps the last ones, `model.generate` fails past them):",
                "",
                "```python",
                "import torch",
                f"ids = [{eos_id}] + {encode}",
                "new = min(50, model.config.n_positions - len(ids))",
                "out = model.generate(torch.tensor([ids]), max_new_tokens=new, do_sample=False, "
                f"pad_token_id={eos_id})",
                f"print({decode}(out[0, 1:].tolist()))  # the prompt and its continuation",
                "```",
            ]
    lines += ["", "`megadepth_export.json` records what was exported and how."]
    return "\n".join(lines) + "\n"


def describe_export(out: str | Path, info: dict[str, Any]) -> tuple[str, str | None]:
    """(the line saying what was written, a warning about what was not, or None): printed by
    ``megadepth export``, so a folder AutoTokenizer cannot load is never reported as plain success."""
    written = (f"wrote {out}: GPT-2 (transformers) from {info['source']}, {info['parametrization']} "
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
    """Give every file in ``folder`` the mode a new file gets there (0o666 less the umask).

    safetensors (0.8) writes ``model.safetensors`` as 0600, unreadable to teammates on a shared cluster
    whatever the umask. The mode is learned from a probe file created with 0o666, so the kernel applies
    the umask (and a default ACL's mask) itself: reading the umask would mean changing it for a moment,
    which races with other threads.
    """
    probe = folder / f".mode-probe-{os.getpid()}"
    os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        mode = probe.stat().st_mode & 0o777
    finally:
        probe.unlink()
    for f in folder.iterdir():
        if f.is_file() and not f.is_symlink() and f.stat().st_mode & 0o777 != mode:
            f.chmod(mode)


def _tokenizer_ids(path: Path | None, vocab: int) -> dict[str, int]:
    if path is None:
        return {"bos_token_id": None, "eos_token_id": None}
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(path))
    ids = {"bos_token_id": sp.bos_id(), "eos_token_id": sp.eos_id()}
    return {k: (v if 0 <= v < vocab else None) for k, v in ids.items()}


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


def export_hf(run_dir: str | Path, out: str | Path, tag: str | None = None) -> dict:
    """Export ``run_dir`` (a run directory, or its checkpoints folder) to ``out``; returns what was
    written (also saved as ``out/megadepth_export.json``)."""
    try:
        from transformers import GPT2LMHeadModel
    except ImportError:
        raise ConfigError("export --format hf needs the transformers package: pip install 'megadepth[hf]'") from None
    from megadepth.train.checkpoint import check_tag, checkpoints_folder
    from megadepth.train.merge import consolidated_state

    check_tag(tag)
    run_dir, out = Path(run_dir), Path(out)
    ckpt_dir = checkpoints_folder(run_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} exists and is not an empty directory: choose a new output directory")
    config, state, tag = consolidated_state(ckpt_dir, tag)
    check_exportable(config.model)
    ptz = Parametrization.from_config(config.model, config.parametrization, optimizer=config.optimizer.name)
    mult = ptz.multipliers()
    tokenizer = _find_tokenizer(config)
    hf_config = _gpt2_config(config, _tokenizer_ids(tokenizer, config.model.vocab_size))
    hf_model = GPT2LMHeadModel(hf_config)
    missing, unexpected = hf_model.load_state_dict(gpt2_state_dict(config.model, mult, state), strict=False)
    missing = [k for k in missing if not k.endswith("attn.bias") and not k.endswith("masked_bias")]
    if missing or unexpected:
        raise ConfigError(f"GPT-2 weights did not line up (missing {missing[:3]}, unexpected {unexpected[:3]})")
    if config.model.tie_embeddings:
        hf_model.tie_weights()
    diff = _max_relative_difference(config, mult, state, hf_model)
    if not diff < _TOLERANCE:
        raise ConfigError(f"the exported model's logits differ from megadepth's by {diff:.2e} (relative): not written")
    info = {
        "format": "hf-gpt2",
        "source": str(ckpt_dir / tag),
        "step_tag": tag,
        "parametrization": config.parametrization.name,
        "multipliers_folded": {"embedding": mult.embedding, "branch": mult.branch, "readout": mult.readout,
                               "attn_scale": mult.attn_scale},
        "max_relative_logit_difference": diff,
        "tokenizer": "tokenizer.model" if tokenizer else None,
        "hf_tokenizer": None,
    }
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        hf_model.save_pretrained(tmp)
        if tokenizer is not None:
            info["hf_tokenizer"] = _write_tokenizer(tokenizer, tmp, config.model.positions)
            info["tokenizer"] = info["hf_tokenizer"]["sentencepiece"]
        (tmp / "README.md").write_text(_readme(info, _eos(tokenizer, config.model.vocab_size), config.model.positions), encoding="utf-8")
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
