"""Llama-shaped runs (RMSNorm, SwiGLU, rotary positions, grouped-query attention) as ``LlamaForCausalLM``, and
with QK-norm as ``Qwen3ForCausalLM``, megadepth's multipliers folded into the weights.

The folds are exact rescalings, as in the GPT-2 export: the token embedding times alpha_in; the attention
output and MLP down projections (and biases) times the branch multiplier; the final RMSNorm gain times the
readout multiplier (divided by alpha_in when the head is tied, since the tied head then reads the scaled
embedding). Transformers divides attention scores by sqrt(head_dim) where megadepth multiplies by its own
scale s, so s * sqrt(head_dim) goes into the queries: into q_proj (rotary positions are linear in the
query, so the factor passes through them), or with QK-norm into q_norm's gain (an RMSNorm undoes any
scaling of its input). The key/value rows, laid out [kv_heads, 2 (key, value), head_dim], split into
k_proj and v_proj. Only inference is exact: megadepth's dropout on the embedding and the branches has no
counterpart in these classes (their attention dropout is set to model.dropout).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from megadepth.config.schema import ModelConfig
from megadepth.parametrize.rules import Multipliers

#: transformers' class per export architecture
CLASSES = {"llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM"}


def llama_shape_problems(model: ModelConfig) -> list[str]:
    """What a Llama-shaped block (or Qwen3's, with QK-norm) cannot hold, one phrase per config key."""
    problems = []
    if model.norm != "rmsnorm":
        problems.append(f"model.norm '{model.norm}' (Llama normalises with RMSNorm)")
    if model.mlp != "swiglu":
        problems.append(f"model.mlp '{model.mlp}' (Llama's MLP is gated: swiglu)")
    if model.position != "rotary":
        problems.append(f"model.position '{model.position}' (Llama has rotary positions, no learned table)")
    if model.qk_norm and model.bias:
        problems.append("model.bias with model.qk_norm (Qwen3, the QK-norm architecture, has no MLP biases)")
    return problems


def architecture(model: ModelConfig) -> str:
    """'llama', or 'qwen3' for QK-norm (per-head RMSNorms of queries and keys before rotary, as megadepth's)."""
    return "qwen3" if model.qk_norm else "llama"


def hf_config(model: ModelConfig, bos: int | None, eos: int | None) -> Any:
    """The ``LlamaConfig`` / ``Qwen3Config`` of a Llama-shaped model."""
    from transformers import LlamaConfig, Qwen3Config

    common = dict(
        vocab_size=model.vocab_size, hidden_size=model.width, intermediate_size=model.mlp_width,
        num_hidden_layers=model.depth, num_attention_heads=model.heads, num_key_value_heads=model.n_kv_heads,
        head_dim=model.head_dim, hidden_act="silu", max_position_embeddings=model.positions,
        rms_norm_eps=model.norm_eps, tie_word_embeddings=model.tie_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": float(model.rope_theta)},
        attention_bias=model.bias, attention_dropout=model.dropout, bos_token_id=bos, eos_token_id=eos,
        pad_token_id=None,
    )
    if architecture(model) == "qwen3":
        return Qwen3Config(**common, use_sliding_window=False)
    return LlamaConfig(**common, mlp_bias=model.bias)


def llama_state_dict(model: ModelConfig, mult: Multipliers, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ``LlamaForCausalLM`` (or ``Qwen3ForCausalLM``) state dict of a consolidated megadepth state dict."""
    width, vocab, head_dim, kv_heads = model.width, model.vocab_size, model.head_dim, model.n_kv_heads

    def get(key: str) -> torch.Tensor:
        return state[key].float()

    embed = mult.embedding * get("embed.token.weight")[:vocab]
    out = {"model.embed_tokens.weight": embed}
    q_scale = mult.attn_scale * math.sqrt(head_dim)
    for i in range(model.depth):
        src, dst = f"blocks.{i}.", f"model.layers.{i}."
        out[dst + "input_layernorm.weight"] = get(src + "attn_norm.weight")
        out[dst + "post_attention_layernorm.weight"] = get(src + "mlp_norm.weight")
        attn = dst + "self_attn."
        if model.qk_norm:  # RMSNorm is blind to a scaling of its input: the factor goes on its gain
            out[attn + "q_proj.weight"] = get(src + "attn.query.weight")
            out[attn + "q_norm.weight"] = q_scale * get(src + "attn.q_norm.weight")
            out[attn + "k_norm.weight"] = get(src + "attn.k_norm.weight")
        else:
            out[attn + "q_proj.weight"] = q_scale * get(src + "attn.query.weight")
        kv = get(src + "attn.key_value.weight").view(kv_heads, 2, head_dim, width)
        out[attn + "k_proj.weight"] = kv[:, 0].reshape(kv_heads * head_dim, width)
        out[attn + "v_proj.weight"] = kv[:, 1].reshape(kv_heads * head_dim, width)
        out[attn + "o_proj.weight"] = mult.branch * get(src + "attn.out.weight")
        for name in ("gate", "up"):
            out[f"{dst}mlp.{name}_proj.weight"] = get(f"{src}mlp.{name}.weight")
        out[dst + "mlp.down_proj.weight"] = mult.branch * get(src + "mlp.down.weight")
        if model.bias:
            q_bias = get(src + "attn.query.bias")
            out[attn + "q_proj.bias"] = q_bias if model.qk_norm else q_scale * q_bias
            kv_b = get(src + "attn.key_value.bias").view(kv_heads, 2, head_dim)
            out[attn + "k_proj.bias"] = kv_b[:, 0].reshape(-1)
            out[attn + "v_proj.bias"] = kv_b[:, 1].reshape(-1)
            out[attn + "o_proj.bias"] = mult.branch * get(src + "attn.out.bias")
            for name in ("gate", "up"):
                out[f"{dst}mlp.{name}_proj.bias"] = get(f"{src}mlp.{name}.bias")
            out[dst + "mlp.down_proj.bias"] = mult.branch * get(src + "mlp.down.bias")
    final = mult.readout / (mult.embedding if model.tie_embeddings else 1.0)
    out["model.norm.weight"] = final * get("head.norm.weight")
    out["lm_head.weight"] = embed if model.tie_embeddings else get("head.proj.weight")[:vocab]
    return out
