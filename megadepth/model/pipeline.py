"""The GPT as DeepSpeed pipeline stages: the same layers as megadepth.model.gpt, as layer specs.

Layer list (L = model.depth):

    0       token embedding            TiedLayerSpec "embed" (tied: shared with the LM head)
    1       positions, multiplier      Embedding(with_token=False).finish
    2..L+1  blocks                     Block / LinearBlock
    L+2     final norm + readout mult  Head(with_proj=False)
    L+3     LM head                    TiedLayerSpec "embed" with tied_logits, or its own ColumnParallelLinear

The multipliers come from the parametrization of the WHOLE model (total depth), so every stage scales
its branches by the same a * r^-alpha. Parameter names inside a PipelineModule are stage-local
("tied_modules.embed.weight", "5.attn.query.weight"); :func:`canonical_name` maps them to the names of
the plain GPT ("embed.token.weight", "blocks.3.attn.query.weight"), which seed initialisation, so the
weights do not depend on the pipeline layout either.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from megadepth.config.schema import Config
from megadepth.model.layers import Embedding, Head, LMLoss, block_spec, tied_logits
from megadepth.parallel.layers import ColumnParallelLinear, VocabParallelEmbedding
from megadepth.parallel.topology import TensorParallel
from megadepth.parametrize.roles import Role
from megadepth.parametrize.rules import Multipliers


class EmbeddingFinish(Embedding):
    """Positions, multiplier, sequence scatter and dropout: the stage after the token lookup."""

    def __init__(self, config: Config, multiplier: float, tp: TensorParallel) -> None:
        super().__init__(config.model, multiplier, tp, with_token=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.finish(h)


def build_pipeline(config: Config, mult: Multipliers, tp: TensorParallel, checkpoint_interval: int) -> Any:
    """The PipelineModule for this rank's stage (all ranks call it; each builds only its own layers)."""
    from deepspeed.pipe import LayerSpec, PipelineModule, TiedLayerSpec
    from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology

    cfg, par = config.model, config.parallel
    world = torch.distributed.get_world_size()
    topo = PipeModelDataParallelTopology(num_pp=par.pipeline, num_mp=par.tensor,
                                         num_dp=world // (par.pipeline * par.tensor))
    token = TiedLayerSpec("embed", VocabParallelEmbedding, cfg.padded_vocab, cfg.width, tp, tied_weight_attr="weight")
    layers: list[Any] = [token, LayerSpec(EmbeddingFinish, config, mult.embedding, tp)]
    block, args = block_spec(cfg, mult, tp)
    layers += [LayerSpec(block, *args) for _ in range(cfg.depth)]
    layers.append(LayerSpec(Head, cfg, mult.readout, tp, tied=None, with_proj=False))  # final norm, multiplier
    if cfg.tie_embeddings:
        layers.append(TiedLayerSpec("embed", VocabParallelEmbedding, cfg.padded_vocab, cfg.width, tp,
                                    forward_fn=tied_logits, tied_weight_attr="weight"))
    else:
        layers.append(LayerSpec(ColumnParallelLinear, cfg.width, cfg.padded_vocab, False, Role.READOUT, tp))
    method = f"type:^{block.__name__}$" if par.partition == "uniform" else "parameters"
    return PipelineModule(
        layers=layers,
        topology=topo,
        loss_fn=LMLoss(cfg, tp),
        partition_method=method,
        activation_checkpoint_interval=checkpoint_interval,
        checkpointable_layers=[block.__name__],  # never the token stage: its input is integer ids
    )


def add_role_placeholders(stage: torch.nn.Module, config: Config, mult: Multipliers, tp: TensorParallel) -> list[Role]:
    """Give this stage one tiny unused parameter for every role the whole model has and it lacks.

    DeepSpeed's ZeRO runs one collective over the pipeline per optimizer group: stages with different
    groups would hang. The placeholders never take part in the forward pass: their gradients are zero,
    so they change no norm and no update.
    """
    from megadepth.model.gpt import GPT
    from megadepth.parametrize.apply import roles_present

    with torch.device("meta"):
        whole = roles_present(GPT(config.model, mult, TensorParallel(size=tp.size)))
    here = set(roles_present(stage))
    missing = [r for r in whole if r not in here]
    roles = dict(getattr(stage, "param_roles", {}))
    for role in missing:
        name = f"placeholder_{role.value}"
        stage.register_parameter(name, torch.nn.Parameter(torch.zeros(1)))
        roles[name] = role
    stage.param_roles = roles
    return missing


_LAYER = re.compile(r"^(\d+)\.(.*)$")


def canonical_name(pipe_name: str, depth: int, tied: bool) -> str:
    """The plain-GPT name of a PipelineModule parameter (what initialisation is seeded with)."""
    if pipe_name.startswith("placeholder_"):
        return pipe_name
    if pipe_name.startswith("tied_modules.embed."):
        return "embed.token." + pipe_name.removeprefix("tied_modules.embed.")
    match = _LAYER.match(pipe_name)
    if not match:
        raise ValueError(f"unexpected pipeline parameter name '{pipe_name}'")
    idx, rest = int(match.group(1)), match.group(2)
    if idx == 1:
        return f"embed.{rest}"
    if 2 <= idx < depth + 2:
        return f"blocks.{idx - 2}.{rest}"
    if idx == depth + 2:
        return f"head.{rest}"
    if idx == depth + 3 and not tied:
        return f"head.proj.{rest}"
    raise ValueError(f"unexpected pipeline layer {idx} in '{pipe_name}'")
