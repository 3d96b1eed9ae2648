"""The plain-PyTorch reference for `megadepth bench`: a minimal GPT trained the fastest simple way.

bf16 autocast, torch.compile, fused AdamW, SDPA (flash attention on the GPU), tied embeddings, no
biases, random tokens: what a nanoGPT-style training loop does, written here from scratch so that the
ratio megadepth / plain is measured on the same machine in the same run.

A config with model.mlp: swiglu gets the Llama block instead (RMSNorm, SwiGLU, grouped-query attention
through SDPA, rotary positions; the head tied or not as the config says), written as plainly.

    python benchmarks/plain_gpt.py configs/bench/gpt-124m.yaml --steps 20 --json out.json

The shape (depth, width, heads, seq_len, micro_batch, vocab) is read from a megadepth config, so both
sides run exactly the same model shape.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from megadepth.config import load_config
from megadepth.config.schema import ModelConfig
from megadepth.train.bench import H200_PEAK_TFLOPS, model_flops_per_token


class Block(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(width, bias=False)
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.proj = nn.Linear(width, width, bias=False)
        self.ln2 = nn.LayerNorm(width, bias=False)
        self.up = nn.Linear(width, 4 * width, bias=False)
        self.down = nn.Linear(4 * width, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.down(F.gelu(self.up(self.ln2(x))))


class LlamaBlock(nn.Module):
    """RMSNorm, one fused q/k/v matmul, rotary (rotate-half), SDPA with grouped key/value heads, SwiGLU."""

    def __init__(self, width: int, heads: int, kv_heads: int, hidden: int, eps: float) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, width // heads
        self.norm1 = nn.RMSNorm(width, eps=eps)
        self.qkv = nn.Linear(width, (heads + 2 * kv_heads) * self.head_dim, bias=False)
        self.proj = nn.Linear(width, width, bias=False)
        self.norm2 = nn.RMSNorm(width, eps=eps)
        self.gate = nn.Linear(width, hidden, bias=False)
        self.up = nn.Linear(width, hidden, bias=False)
        self.down = nn.Linear(hidden, width, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        hd = self.head_dim
        q, k, v = self.qkv(self.norm1(x)).split([self.heads * hd, self.kv_heads * hd, self.kv_heads * hd], dim=2)
        q = q.view(b, t, self.heads, hd).transpose(1, 2)
        k, v = (z.view(b, t, self.kv_heads, hd).transpose(1, 2) for z in (k, v))
        q, k = (z * cos + torch.cat((-z[..., hd // 2:], z[..., : hd // 2]), dim=-1) * sin for z in (q, k))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.kv_heads != self.heads)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        h = self.norm2(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


class PlainLlama(nn.Module):
    def __init__(self, vocab: int, seq: int, width: int, depth: int, heads: int, kv_heads: int, hidden: int,
                 theta: float, eps: float, tied: bool) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, width)
        self.blocks = nn.ModuleList(LlamaBlock(width, heads, kv_heads, hidden, eps) for _ in range(depth))
        self.norm = nn.RMSNorm(width, eps=eps)
        self.head = None if tied else nn.Linear(width, vocab, bias=False)
        hd = width // heads
        angles = torch.outer(torch.arange(seq, dtype=torch.float32),
                             1.0 / theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
        self.register_buffer("cos", torch.cat((angles.cos(), angles.cos()), dim=-1), persistent=False)
        self.register_buffer("sin", torch.cat((angles.sin(), angles.sin()), dim=-1), persistent=False)
        for p in self.parameters():
            if p.dim() == 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx)
        t = idx.shape[1]
        cos, sin = self.cos[:t].to(x.dtype), self.sin[:t].to(x.dtype)
        for block in self.blocks:
            x = block(x, cos, sin)
        h = self.norm(x)
        logits = F.linear(h, self.tok.weight) if self.head is None else self.head(h)
        return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.reshape(-1))


def build(m: ModelConfig) -> nn.Module:
    """The plain model of the config's shape: PlainLlama for model.mlp swiglu, else PlainGPT."""
    if m.mlp == "swiglu":
        return PlainLlama(m.padded_vocab, m.seq_len, m.width, m.depth, m.heads, m.n_kv_heads, m.mlp_width,
                          m.rope_theta, m.norm_eps, m.tie_embeddings)
    return PlainGPT(m.padded_vocab, m.seq_len, m.width, m.depth, m.heads)


class PlainGPT(nn.Module):
    def __init__(self, vocab: int, seq: int, width: int, depth: int, heads: int) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, width)
        self.pos = nn.Embedding(seq, width)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(depth))
        self.ln = nn.LayerNorm(width, bias=False)
        for p in self.parameters():
            if p.dim() == 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos.weight[: idx.shape[1]]
        for block in self.blocks:
            x = block(x)
        logits = F.linear(self.ln(x), self.tok.weight)
        return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.reshape(-1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="a megadepth config giving the shape (e.g. configs/bench/gpt-124m.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--peak-tflops", type=float, default=H200_PEAK_TFLOPS)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if not (args.peak_tflops > 0 and math.isfinite(args.peak_tflops)):
        parser.error(f"--peak-tflops must be a number above 0, got {args.peak_tflops}")
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be at least 1 and --warmup at least 0")

    cfg = load_config([args.config], args.overrides)
    m, batch = cfg.model, cfg.train.micro_batch
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    torch.manual_seed(0)
    model = build(m).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    step_fn = model if args.no_compile else torch.compile(model)
    gen = torch.Generator().manual_seed(0)
    pool = [torch.randint(0, m.vocab_size, (batch, m.seq_len + 1), generator=gen).to(device) for _ in range(4)]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda)

    def train_step(i: int) -> torch.Tensor:
        tokens = pool[i % len(pool)]
        with autocast:
            loss = step_fn(tokens[:, :-1], tokens[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    for i in range(args.warmup):
        train_step(i)
    if cuda:
        torch.cuda.synchronize()
    start, cpu_start = time.perf_counter(), time.process_time()
    loss = None
    for i in range(args.steps):
        loss = train_step(args.warmup + i)
    if cuda:
        torch.cuda.synchronize()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    tokens_per_s = args.steps * batch * m.seq_len / elapsed
    fpt = model_flops_per_token(m)
    result = {
        "tokens_per_s": tokens_per_s,
        "step_ms": 1000 * elapsed / args.steps,
        "cpu_ms_per_step": 1000 * cpu / args.steps,
        "mfu": tokens_per_s * fpt / (args.peak_tflops * 1e12),
        "peak_mem": torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan"),
        "final_loss": float(loss) if loss is not None else math.nan,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "compile": not args.no_compile,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
