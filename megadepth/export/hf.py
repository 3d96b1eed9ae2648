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
megadepth.parallel.merge), padding rows of the vocabulary are dropped, missing biases become zeros.
Before anything is written the exported model's logits are compared with megadepth's own forward pass
on a batch of tokens; a mismatch is an error, so a checkpoint that does not reproduce the run is never
written. The output directory appears whole (written beside it, then renamed).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import torch

from megadepth.config.load import ConfigError
from megadepth.config.schema import Config, ModelConfig
from megadepth.parametrize import Parametrization
from megadepth.parametrize.rules import Multipliers

_TOLERANCE = 1e-4  # max |logit difference| / max |logit|, fp32


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
    """The sentencepiece model next to the training data (a data directory, or a shard prefix's folder)."""
    paths = config.data.path if isinstance(config.data.path, list) else [config.data.path]
    for entry in paths:
        if isinstance(entry, str):
            p = Path(entry)
            for folder in (p, p.parent):
                if (folder / "tokenizer.model").is_file():
                    return folder / "tokenizer.model"
    return None


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
    from megadepth.parallel.merge import consolidated_state

    run_dir, out = Path(run_dir), Path(out)
    ckpt_dir = run_dir / "checkpoints" if (run_dir / "checkpoints").is_dir() else run_dir
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
    }
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        hf_model.save_pretrained(tmp)
        if tokenizer is not None:
            shutil.copyfile(tokenizer, tmp / "tokenizer.model")
        (tmp / "megadepth_export.json").write_text(json.dumps(info, indent=1) + "\n")
        if out.exists():
            out.rmdir()  # empty (checked above)
        tmp.replace(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a half-written export never stays behind
        raise
    return info
