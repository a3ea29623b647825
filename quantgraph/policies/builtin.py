"""Built-in policies: ``fp32`` (export only) and ``minmax`` (post-training min/max calibration)."""

from __future__ import annotations

from quantgraph.ir.qspec import Granularity, QuantSpec
from quantgraph.ir.roles import QUANTIZABLE_ROLES, Role
from quantgraph.policies.base import Policy, register_policy

GRAPH_PASSES = ("canonicalize", "tag-roles")
PTQ_PASSES = (*GRAPH_PASSES, "annotate", "calibrate", "insert-qdq")


def minmax_qconfig(bits: int) -> dict[Role, QuantSpec]:
    """Per-channel symmetric weights; per-tensor affine activations at every activation role."""
    weight = QuantSpec(bits=bits, signed=True, symmetric=True, granularity=Granularity.PER_CHANNEL, axis=0)
    activation = QuantSpec(bits=bits, signed=True, symmetric=False, granularity=Granularity.PER_TENSOR)
    return {role: (weight if role == Role.WEIGHT else activation) for role in QUANTIZABLE_ROLES}


FP32 = register_policy(
    Policy(
        name="fp32",
        description="no quantization: canonicalize and export the FP32 model",
        pipeline=GRAPH_PASSES,
        quantizes=False,
    )
)

MINMAX = register_policy(
    Policy(
        name="minmax",
        description="post-training quantization: per-channel symmetric weights, per-tensor affine "
        "activations at every role, min/max ranges from the calibration graph",
        pipeline=PTQ_PASSES,
        qconfig=minmax_qconfig,
    )
)
