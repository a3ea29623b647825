"""Quantize biases to int32 at the scale of the value they are added to (as ONNX Runtime and PT2E do).

* ``linear(DQ(x), DQ(w), b)``: ``b`` becomes ``DQ(round(b / (s_x * s_w)), s_x * s_w)``, per output
  channel when the weight scale is.
* ``add(DQ(q), b)`` with a constant ``b`` (GCN's bias after aggregation): ``b`` becomes
  ``DQ(round(b / s_q), s_q)``.

The bias scale is stored as float32 for the Q/DQ model; the exact float64 product is kept in the
dequantize's ``meta[EXACT_SCALE_KEY]`` so the integer rewrite and the float64 reference agree bit for bit.
After this pass the Q/DQ model is the reference the integer IR must equal.
"""

from __future__ import annotations

import torch
from torch import Tensor, fx

from quantgraph.errors import InputError
from quantgraph.ir.int_ops import INT32_MAX
from quantgraph.ir.meta import EXACT_SCALE_KEY, LAYER_KEY, ROLE_KEY
from quantgraph.ir.ops import DEQUANTIZE
from quantgraph.passes.infra import CompileContext, PassBase, PassResult, add_constant
from quantgraph.passes.qdq_params import const, dequantize_params
from quantgraph.passes.registry import register_pass

aten = torch.ops.aten


def _bias_dq(gm: fx.GraphModule, user: fx.Node, bias: fx.Node, scale: Tensor, axis: int) -> fx.Node:
    value = const(gm, bias)
    ints = torch.round(value.to(torch.float64) / scale)
    if ints.numel() and float(ints.detach().abs().max()) > INT32_MAX:
        raise InputError(
            f"the bias {bias.target} of {user.name} does not fit int32 at scale {float(scale.min()):.3g}",
            "calibrate with a wider range for the layer input or keep this layer in float",
        )
    prefix = f"qg_{user.name}_bias"
    q = add_constant(gm, f"{prefix}_int", ints.to(torch.int32), user)
    s = add_constant(gm, f"{prefix}_scale", scale.to(torch.float32), user)
    z = add_constant(gm, f"{prefix}_zero_point", torch.zeros(scale.shape, dtype=torch.int32), user)
    with gm.graph.inserting_before(user):
        dq = gm.graph.call_function(DEQUANTIZE, (q, s, z, axis))
    dq.meta[EXACT_SCALE_KEY] = scale
    dq.meta[ROLE_KEY] = user.meta.get(ROLE_KEY)
    dq.meta[LAYER_KEY] = user.meta.get(LAYER_KEY)
    return dq


def _float_const(gm: fx.GraphModule, arg: object) -> bool:
    value = const(gm, arg)
    return value is not None and value.is_floating_point() and value.dim() == 1


@register_pass
class QuantizeBiasPass(PassBase):
    """Replace float biases next to quantized operands by int32 biases at the operands' scale."""

    name = "quantize-bias"
    description = "store biases as int32 at the accumulator scale (s_x * s_w, or the scale they are added to)"

    def call(self, gm: fx.GraphModule, ctx: CompileContext) -> PassResult:
        changed = False
        for node in list(gm.graph.nodes):
            if node.target == aten.linear.default and len(node.args) >= 3 and _float_const(gm, node.args[2]):
                x, w, bias = node.args[:3]
                px = dequantize_params(gm, x) if isinstance(x, fx.Node) else None
                pw = dequantize_params(gm, w) if isinstance(w, fx.Node) else None
                if px is None or pw is None or not px.per_tensor or pw.axis not in (0, -2):
                    continue
                scale = px.scale * pw.scale  # exact: a product of two float32 values fits float64
                dq = _bias_dq(gm, node, bias, scale, 0)
                node.args = (x, w, dq, *node.args[3:])
                changed = True
            elif node.target == aten.add.Tensor and len(node.args) == 2:
                for i in (0, 1):
                    operand, bias = node.args[i], node.args[1 - i]
                    if not (isinstance(operand, fx.Node) and _float_const(gm, bias)):
                        continue
                    p = dequantize_params(gm, operand)
                    if p is None or not p.per_tensor:
                        continue
                    dq = _bias_dq(gm, node, bias, p.scale, 0)
                    args = list(node.args)
                    args[1 - i] = dq
                    node.args = tuple(args)
                    changed = True
                    break
        if changed:
            gm.graph.eliminate_dead_code()
            gm.recompile()
        return PassResult(gm, changed)
