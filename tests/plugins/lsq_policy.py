"""A policy as a plug-in: LSQ quantization-aware training at every role, then the counting pass."""

from __future__ import annotations

from quantgraph.ir.qspec import QuantSpec
from quantgraph.ir.roles import QUANTIZABLE_ROLES, Role
from quantgraph.policies import Policy, register_policy
from quantgraph.policies.base import GRAPH_PASSES

from . import count_pass, lsq_quantizer  # noqa: F401  (register the quantizer and the pass)


def lsq_qconfig(bits: int) -> dict[Role, QuantSpec]:
    spec = QuantSpec(bits=bits, signed=True, symmetric=True, quantizer="lsq")
    return dict.fromkeys(QUANTIZABLE_ROLES, spec)


LSQ = register_policy(
    Policy(
        name="lsq-plugin",
        description="LSQ learned step sizes (a plug-in policy)",
        pipeline=(
            *GRAPH_PASSES,
            "dropout-to-module",
            "annotate",
            "calibrate",
            "prepare-qat",
            "train-qat",
            "convert-qat",
            "count-quantize",
        ),
        qconfig=lsq_qconfig,
        defaults={"trace_training": True},
    )
)
