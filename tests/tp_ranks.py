"""Rank functions for the tensor-parallel tests (importable by the forkserver ranks)."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def _init(world: int) -> None:
    import os

    if not dist.is_initialized():
        dist.init_process_group("gloo", rank=int(os.environ["RANK"]), world_size=world)


def _tp(world: int, sequence_parallel: bool = False):
    from megadepth.parallel.topology import TensorParallel

    _init(world)
    group = dist.new_group(list(range(world)))
    return TensorParallel(group=group, rank=dist.get_rank(), size=world, sequence_parallel=sequence_parallel)


def _rel(got: torch.Tensor, ref: torch.Tensor) -> float:
    """Max abs difference relative to the reference's largest entry (float32 sums differ in order)."""
    got, ref = got.detach().double(), ref.detach().double()
    return float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-12))


def _full(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).float()


def layer_checks(world: int) -> dict[str, float]:
    """Each parallel layer against an unsharded copy: max abs differences of outputs and gradients."""
    import torch.nn.functional as F

    from megadepth.parallel.cross_entropy import vocab_parallel_cross_entropy
    from megadepth.parallel.layers import ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding
    from megadepth.parametrize.roles import Role

    tp = _tp(world)
    r, n = tp.rank, tp.size
    diffs: dict[str, float] = {}
    x = _full((3, 4, 8), 1).requires_grad_(True)
    w = _full((12, 8), 2)
    b = _full((12,), 3)
    up = _full((3, 4, 12), 4)

    for gather in (False, True):
        col = ColumnParallelLinear(8, 12, True, Role.HIDDEN, tp, gather_output=gather)
        with torch.no_grad():
            col.weight.copy_(w.chunk(n, 0)[r])
            col.bias.copy_(b.chunk(n, 0)[r])
        xs = x.detach().clone().requires_grad_(True)
        y = col(xs)
        ref_x = x.detach().clone().requires_grad_(True)
        ref = F.linear(ref_x, w, b)
        g = up if gather else up.chunk(n, -1)[r]
        y.backward(g)
        ref.backward(up)
        diffs[f"column(gather={gather}) out"] = _rel(y, (ref if gather else ref.chunk(n, -1)[r]))
        diffs[f"column(gather={gather}) dx"] = _rel(xs.grad, ref_x.grad)
        ref_w = torch.autograd.grad(F.linear(x.detach(), w.requires_grad_(True), b), w, up)[0]
        w.requires_grad_(False)
        diffs[f"column(gather={gather}) dW"] = _rel(col.weight.grad, ref_w.chunk(n, 0)[r])

    row = RowParallelLinear(12, 8, True, Role.OUTPUT_PROJ, tp)
    w2, b2 = _full((8, 12), 5), _full((8,), 6)
    with torch.no_grad():
        row.weight.copy_(w2.chunk(n, 1)[r])
        row.bias.copy_(b2)
    xin = _full((3, 4, 12), 7)
    xs = xin.chunk(n, -1)[r].clone().requires_grad_(True)
    y = row(xs)
    ref_x = xin.clone().requires_grad_(True)
    ref = F.linear(ref_x, w2, b2)
    up2 = _full((3, 4, 8), 8)
    y.backward(up2)
    ref.backward(up2)
    diffs["row out"] = _rel(y, ref)
    diffs["row dx"] = _rel(xs.grad, ref_x.grad.chunk(n, -1)[r])
    diffs["row db"] = _rel(row.bias.grad, up2.sum((0, 1)))

    emb = VocabParallelEmbedding(16, 8, tp)
    table = _full((16, 8), 9)
    with torch.no_grad():
        emb.weight.copy_(table.chunk(n, 0)[r])
    ids = torch.tensor([[0, 3, 15, 8], [7, 9, 1, 12]])
    out = emb(ids)
    out.backward(_full((2, 4, 8), 10))
    ref_t = table.clone().requires_grad_(True)
    F.embedding(ids, ref_t).backward(_full((2, 4, 8), 10))
    diffs["embedding out"] = _rel(out, F.embedding(ids, table))
    diffs["embedding dW"] = _rel(emb.weight.grad, ref_t.grad.chunk(n, 0)[r])

    # vocab-parallel cross-entropy, 16 rows of which 13 are real (3 padding rows never predicted)
    logits = _full((5, 16), 11)
    target = torch.tensor([0, 12, 5, 9, 3])
    local = logits.chunk(n, -1)[r].clone().requires_grad_(True)
    loss = vocab_parallel_cross_entropy(local, target, vocab_start=r * (16 // n), vocab_size=13, group=tp.group)
    loss.sum().backward()
    ref_l = logits[:, :13].clone().requires_grad_(True)
    ref_loss = F.cross_entropy(ref_l, target, reduction="none")
    ref_loss.sum().backward()
    ref_grad = torch.cat([ref_l.grad, torch.zeros(5, 3)], dim=-1)
    diffs["cross-entropy loss"] = _rel(loss, ref_loss)
    diffs["cross-entropy dlogits"] = _rel(local.grad, ref_grad.chunk(n, -1)[r])
    diffs["cross-entropy leaves fp32 logits alone"] = _rel(local.detach(), logits.chunk(n, -1)[r])  # works in place
    return diffs


def sequence_parallel_checks(world: int) -> dict[str, float]:
    """A LayerNorm + column/row MLP on sequence shards against the unsharded computation."""
    import torch.nn.functional as F

    from megadepth.config import validate
    from megadepth.model.layers import MLP, Norm
    from megadepth.parallel.mappings import gather_from_sequence, scatter_to_sequence

    tp = _tp(world, sequence_parallel=True)
    r, n = tp.rank, tp.size
    cfg = validate({"model": {"width": 8, "heads": 2, "seq_len": 4, "mlp_ratio": 2.0, "bias": True}}).model
    norm, mlp = Norm("layernorm", 8, 1e-5, True, True, tp), MLP(cfg, tp)
    g, bb = _full((8,), 20), _full((8,), 21)
    w_up, b_up, w_down, b_down = _full((16, 8), 22), _full((16,), 23), _full((8, 16), 24), _full((8,), 25)
    with torch.no_grad():
        norm.weight.copy_(g)
        norm.bias.copy_(bb)
        mlp.up.weight.copy_(w_up.chunk(n, 0)[r])
        mlp.up.bias.copy_(b_up.chunk(n, 0)[r])
        mlp.down.weight.copy_(w_down.chunk(n, 1)[r])
        mlp.down.bias.copy_(b_down)
    x = _full((2, 4, 8), 26)
    up = _full((2, 4, 8), 27)
    xs = scatter_to_sequence(x.clone().requires_grad_(True), tp.group)
    y = gather_from_sequence(mlp(norm(xs)), tp.group)
    y.backward(up / n)  # each rank's copy of the gathered output carries 1/n of the gradient

    params = [t.clone().requires_grad_(True) for t in (g, bb, w_up, b_up, w_down, b_down)]
    ref = F.linear(F.gelu(F.linear(F.layer_norm(x, (8,), params[0], params[1]), params[2], params[3])),
                   params[4], params[5])
    ref.backward(up)
    return {
        "out": _rel(y, ref),
        "d norm gain": _rel(norm.weight.grad, params[0].grad),
        "d norm bias": _rel(norm.bias.grad, params[1].grad),
        "d up": _rel(mlp.up.weight.grad, params[2].grad.chunk(n, 0)[r]),
        "d down": _rel(mlp.down.weight.grad, params[4].grad.chunk(n, 1)[r]),
        "d down bias": _rel(mlp.down.bias.grad, params[5].grad),
    }


def gathered_initial_state(config_dict: dict) -> dict[str, Any]:
    """Build and initialise the model at the config's TP size; return the gathered (global) weights and
    the param-group settings, as seen from rank 0."""
    from megadepth.config import validate
    from megadepth.model import GPT
    from megadepth.parametrize import Parametrization, initialize, param_groups

    config = validate(config_dict)
    tp_size = config.parallel.tensor
    tp = _tp(tp_size) if tp_size > 1 else None
    ptz = Parametrization.from_config(config.model, config.parametrization, optimizer=config.optimizer.name)
    model = GPT(config.model, ptz.multipliers(), tp)
    initialize(model, ptz, config.train.seed)
    state = {}
    for name, p in model.named_parameters():
        t = p.detach()
        if getattr(p, "tp_size", 1) > 1:
            parts = [torch.empty_like(t) for _ in range(tp_size)]
            dist.all_gather(parts, t.contiguous(), group=tp.group)
            t = torch.cat(parts, dim=p.partition_dim)
        state[name] = t.numpy().copy()  # numpy: pickled by value (tensors would be shared by fd)
    groups = [(g["name"], g["lr"], g.get("eps"), g["weight_decay"]) for g in param_groups(model, ptz, config.optimizer)]
    return {"state": state, "groups": groups}


def module_state(path: str) -> dict[str, Any]:
    """The module weights of a (merged) checkpoint file, as numpy arrays."""
    state = torch.load(path, map_location="cpu", weights_only=True)["module"]
    return {k: v.numpy() for k, v in state.items()}


def attention_forward(config_dicts: list[dict]) -> dict[str, Any]:
    """For each config (its parallel.tensor = this world's size): the attention scale every block of the
    tensor-parallel model holds, its local head count, the relative difference of its logits from the
    unsharded model's (same seed, built in this process without a tensor-parallel group), and those logits."""
    from megadepth.config import validate
    from megadepth.model import GPT
    from megadepth.parametrize import Parametrization, initialize

    runs = []
    for config_dict in config_dicts:
        config = validate(config_dict)
        tp = _tp(config.parallel.tensor)
        ptz = Parametrization.from_config(config.model, config.parametrization,
                                          optimizer=config.optimizer.name)
        sharded, whole = GPT(config.model, ptz.multipliers(), tp), GPT(config.model, ptz.multipliers())
        for model in (sharded, whole):
            initialize(model, ptz, config.train.seed)
            model.eval()
        tokens = torch.randint(0, config.model.vocab_size, (2, config.model.seq_len),
                               generator=torch.Generator().manual_seed(5))
        with torch.no_grad():
            got, ref = sharded(tokens), whole(tokens)
        runs.append(([b.attn.scale for b in sharded.blocks], sharded.blocks[0].attn.heads, _rel(got, ref),
                     ref.numpy().copy()))
    return {"runs": runs}


def gathered_gradients(config_dicts: list[dict]) -> dict[str, Any]:
    """For each config (its parallel.tensor = this world's size): one forward and backward of the LM loss
    through the tensor-parallel model and through the unsharded model of the same seed (built here without a
    group); the relative differences of the loss, of every parameter's gradient (shards gathered first) and
    of megadepth's own replica gradient norm (which counts replicated parameters once)."""
    from megadepth.config import validate
    from megadepth.model import GPT
    from megadepth.parallel.topology import TensorParallel
    from megadepth.parametrize import Parametrization, initialize
    from megadepth.train.step import replica_grad_norm

    runs = []
    for config_dict in config_dicts:
        config = validate(config_dict)
        tp = _tp(config.parallel.tensor, config.parallel.sequence_parallel)
        ptz = Parametrization.from_config(config.model, config.parametrization, optimizer=config.optimizer.name)
        sharded, whole = GPT(config.model, ptz.multipliers(), tp), GPT(config.model, ptz.multipliers())
        tokens = torch.randint(0, config.model.vocab_size, (2, config.model.seq_len + 1),
                               generator=torch.Generator().manual_seed(6))
        losses = []
        for model in (sharded, whole):
            initialize(model, ptz, config.train.seed)
            loss = model(tokens[:, :-1], tokens[:, 1:])
            loss.backward()
            losses.append(loss)
        diffs = {"loss": _rel(losses[0], losses[1]),
                 "grad norm": _rel(replica_grad_norm(sharded, tp), replica_grad_norm(whole, TensorParallel()))}
        ref = dict(whole.named_parameters())
        for name, p in sharded.named_parameters():
            grad = p.grad
            if getattr(p, "tp_size", 1) > 1:
                parts = [torch.empty_like(grad) for _ in range(tp.size)]
                dist.all_gather(parts, grad.contiguous(), group=tp.group)
                grad = torch.cat(parts, dim=p.partition_dim)
            diffs[name] = _rel(grad, ref[name].grad)
        runs.append(diffs)
    return {"runs": runs}
