"""Roles: what a value in a GNN graph is, so policies can pick quantization per role."""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    """The role of an IR value, stored in ``node.meta[ROLE_KEY]``."""

    STRUCTURE = "structure"  # computed from the graph structure only (degrees, normalisation, indices)
    INPUT = "input"  # float model input (node features), after any preprocessing module
    PREPROCESS = "preprocess"  # inside a preprocessing module (``qg_preprocess = True``): never quantized
    WEIGHT = "weight"  # a parameter used as a weight (linear weight, attention vector, ...)
    BIAS = "bias"  # a parameter added after a linear layer
    LINEAR_OUT = "linear_out"  # output of a linear layer
    GATHER = "gather"  # node rows gathered by source index (an exact copy: no new quantization needed)
    EDGE_WEIGHT = (
        "edge_weight"  # per-edge scalar multiplying a message (normalisation, attention coefficient)
    )
    ATTENTION = "attention"  # other per-edge feature-dependent values (attention logits)
    MESSAGE = "message"  # per-edge value that is scattered
    AGGREGATION = "aggregation"  # output of a scatter-reduce
    UPDATE = "update"  # node-level value after aggregation (bias, root term, activation)
    OUTPUT = "output"  # model output
    OTHER = "other"  # anything else (integer bookkeeping, shapes)


#: Roles whose values are float activations or weights that a policy may quantize.
QUANTIZABLE_ROLES = (
    Role.INPUT,
    Role.WEIGHT,
    Role.LINEAR_OUT,
    Role.EDGE_WEIGHT,
    Role.ATTENTION,
    Role.MESSAGE,
    Role.AGGREGATION,
    Role.UPDATE,
    Role.OUTPUT,
)
