"""The IR: a torch.fx GraphModule with first-class message-passing and quantization ops."""

from quantgraph.ir import ops as ops  # noqa: F401  (registers torch.ops.quantgraph.*)
from quantgraph.ir.qspec import Granularity, QParams, QuantSpec
from quantgraph.ir.roles import Role

__all__ = ["Granularity", "QParams", "QuantSpec", "Role"]
