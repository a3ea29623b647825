"""The float64 fake-quant reference and integer-tensor capture, for checking the integer IR exactly.

The Q/DQ model in float32 rounds its sums; the integer IR does not. Evaluated in float64 (constants and
dequantized values in float64, bias scales as their exact products) the Q/DQ model computes the same
real numbers the integer IR computes exactly, so both give the same integers at every quantize.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, fx

from quantgraph.ir.int_ops import REQUANTIZE
from quantgraph.ir.meta import EXACT_SCALE_KEY, SOURCE_KEY
from quantgraph.ir.ops import DEQUANTIZE, QUANTIZE, along


def dequantize64(q: Tensor, scale: Tensor, zero_point: Tensor, axis: int) -> Tensor:
    """``(q - zp) * scale`` in float64."""
    s, z = along(scale.to(torch.float64), q, axis), along(zero_point, q, axis)
    return (q - z.to(q.dtype)).to(torch.float64) * s


def float64_reference(gm: fx.GraphModule) -> fx.GraphModule:
    """A copy of a Q/DQ graph module that computes in float64 (same quantize integers, exact sums).

    Constants that feed a quantize (weights) stay float32, so their integers are those of the model.
    """
    ref = copy.deepcopy(gm)
    for node in list(ref.graph.nodes):
        if node.op == "get_attr" and not any(u.target == QUANTIZE for u in node.users):
            # constants that are quantized keep float32 (their integers must not change); others widen
            owner, _, name = str(node.target).rpartition(".")
            module = ref.get_submodule(owner) if owner else ref
            value = getattr(module, name)
            if isinstance(value, Tensor) and value.is_floating_point():
                double = value.detach().to(torch.float64)
                if isinstance(value, torch.nn.Parameter):
                    double = torch.nn.Parameter(double, requires_grad=False)
                setattr(module, name, double)
        elif node.target == DEQUANTIZE:
            exact = node.meta.get(EXACT_SCALE_KEY)
            if exact is not None:
                target = f"{node.name}_exact_scale"
                ref.register_buffer(target, exact.to(torch.float64))
                with ref.graph.inserting_before(node):
                    scale = ref.graph.get_attr(target)
                node.args = (node.args[0], scale, *node.args[2:])
            node.target = dequantize64
    ref.recompile()
    return ref


def integer_values(gm: fx.GraphModule, inputs: list[Tensor]) -> dict[str, Tensor]:
    """The integers of every quantize and requantize, keyed by the node they quantize (``qg_source``)."""
    values: dict[str, Tensor] = {}

    class _Capture(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            value = super().run_node(n)
            if n.target in (QUANTIZE, REQUANTIZE) and isinstance(value, Tensor):
                values[n.meta.get(SOURCE_KEY, n.name)] = value
            return value

    with torch.no_grad():
        _Capture(gm).run(*inputs)
    return values
