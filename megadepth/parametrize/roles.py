"""Parameter roles: what a parameter IS, which is all the parametrization needs to know about it.

The model tags every parameter with a role; :mod:`megadepth.parametrize.rules` maps roles to numbers.
A parameter without a role is an error (an untagged parameter would silently keep base settings, the
way muP silently did nothing in other trainers).
"""

from __future__ import annotations

from enum import Enum


class Role(str, Enum):
    """Roles of docs/parametrizations.md. Matrices' width scaling uses global (unsharded) shapes."""

    EMBEDDING = "embedding"  # Token embedding matrix (also the readout when embeddings are tied)
    POSITION = "position"  # Learned position table
    QUERY = "query"  # Query projection: a hidden matrix that muP may initialise at zero
    HIDDEN = "hidden"  # Hidden matrices inside a residual branch that do not close it (key/value, MLP in)
    OUTPUT_PROJ = "output_proj"
    """Hidden matrices that close a residual branch (attention out, MLP out): GPT-2 shrinks their init
    with depth; the depth parametrizations freeze that factor at the base depth."""
    BRANCH_GAIN = "branch_gain"  # LayerNorm gains inside residual branches (init 1)
    QK_GAIN = "qk_gain"
    """RMSNorm gains of queries and keys (model.qk_norm): one vector of the head size shared by every head,
    inside the attention branch (init 1, no weight decay)."""
    BRANCH_BIAS = "branch_bias"  # Biases and LayerNorm biases inside residual branches (init 0)
    FINAL_GAIN = "final_gain"  # Final LayerNorm gain (init 1), outside every branch
    FINAL_BIAS = "final_bias"  # Final LayerNorm bias (init 0)
    READOUT = "readout"  # Untied LM head matrix

    @property
    def is_hidden_matrix(self) -> bool:
        return self in (Role.QUERY, Role.HIDDEN, Role.OUTPUT_PROJ)

    @property
    def in_branch(self) -> bool:
        return self.is_hidden_matrix or self in (Role.BRANCH_GAIN, Role.QK_GAIN, Role.BRANCH_BIAS)

    @property
    def is_gain_or_bias(self) -> bool:
        """Norm gains and biases: constant init, no weight decay."""
        return self in (Role.BRANCH_GAIN, Role.QK_GAIN, Role.BRANCH_BIAS, Role.FINAL_GAIN, Role.FINAL_BIAS)
