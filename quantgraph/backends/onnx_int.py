"""Integer ONNX lowering of ``quantgraph::linear_int`` and ``quantgraph::requantize`` (``--backend onnx-int``).

* ``linear_int`` -> ``MatMulInteger`` on the int8/uint8 activation (as stored by its quantize or
  requantize) and an int8 weight initializer ``[in, out]``, with the activation zero point and one weight
  zero point per output column; the int32 bias is an ``Add``.
* ``requantize`` -> ``Cast(double)``, ``Mul`` by the float64 multiplier, ``Round`` (half to even), ``Add``
  the zero point, ``Max``/``Min`` against ``qmin``/``qmax`` and ``Cast`` to int8/uint8: the only float ops of
  an integer region, computed exactly as the IR op computes them, so the integers agree bit for bit.
* Gathers of quantized rows stay int8 (``Gather`` then ``Cast`` to int32 where arithmetic needs it); the
  int32 ``ScatterElements(reduction="add")`` comes from the generic scatter lowering.
"""

from __future__ import annotations

import numpy as np
import torch
from onnx import TensorProto
from torch import fx

from quantgraph.backends.onnx_builder import OnnxBuilder, QValue, unsupported
from quantgraph.backends.onnx_ops import register
from quantgraph.backends.onnx_qdq import BYTE_OF, choose_qtype, const_along
from quantgraph.ir.int_ops import LINEAR_INT, REQUANTIZE

DOUBLE, INT32 = TensorProto.DOUBLE, TensorProto.INT32
EIGHT_BIT = (TensorProto.INT8, TensorProto.UINT8)


def _constant(ctx: OnnxBuilder, node: fx.Node, arg: object, what: str) -> torch.Tensor:
    value = ctx.attr_tensor(arg)
    if value is None:
        raise unsupported(node, f"its {what} is computed in the graph", "re-run the fold-scales pass")
    return value.detach().cpu()


def storage_type(lo: int, hi: int) -> int | None:
    """INT8 or UINT8 holding ``[lo, hi]`` (the integer backend stores 2- to 8-bit values in bytes)."""
    chosen = choose_qtype(lo, hi)
    if chosen is None:
        return None
    return BYTE_OF.get(chosen[0], chosen[0])


@register(LINEAR_INT)
def _linear_int(ctx: OnnxBuilder, node: fx.Node) -> str:
    x_arg, x_zp_arg, w_arg, w_zp_arg, bias_arg = (list(node.args) + [None] * 5)[:5]
    w = _constant(ctx, node, w_arg, "weight").to(torch.int64)
    w_zp = _constant(ctx, node, w_zp_arg, "weight zero point").to(torch.int64).reshape(-1)
    x_zp = _constant(ctx, node, x_zp_arg, "input zero point").to(torch.int64).reshape(())
    w_type = storage_type(int(min(w.min(), w_zp.min())), int(max(w.max(), w_zp.max())))
    x_value = ctx.env.get(x_arg)
    if not isinstance(x_value, QValue) or x_value.dtype not in EIGHT_BIT or w_type is None:
        raise unsupported(
            node, "its operands are not 8-bit integers", "quantize the layer input to <= 8 bits"
        )
    np_w = {TensorProto.INT8: np.int8, TensorProto.UINT8: np.uint8}[w_type]
    np_x = {TensorProto.INT8: np.int8, TensorProto.UINT8: np.uint8}[x_value.dtype]
    weight = ctx.initializer(w.numpy().astype(np_w), f"{w_arg.target}.int8")
    zero_w = ctx.const(w_zp.numpy().astype(np_w), w_type, [w_zp.numel()] if w_zp.numel() > 1 else [])
    zero_x = ctx.const(x_zp.numpy().astype(np_x), x_value.dtype, [])
    out = ctx.op("MatMulInteger", [x_value.name, weight, zero_x, zero_w], dtype=INT32, rank=x_value.rank)
    if bias_arg is not None:
        out = ctx.op("Add", [out, ctx.cast(ctx.t(bias_arg), INT32)], dtype=INT32, rank=x_value.rank)
    return out


@register(REQUANTIZE)
def _requantize(ctx: OnnxBuilder, node: fx.Node) -> QValue:
    acc_arg, mult_arg, zp_arg, qmin_arg, qmax_arg, axis = (list(node.args) + [0] * 6)[:6]
    zp = _constant(ctx, node, zp_arg, "zero point").to(torch.int64).reshape(-1)
    qmin = _constant(ctx, node, qmin_arg, "qmin").to(torch.int64).reshape(-1)
    qmax = _constant(ctx, node, qmax_arg, "qmax").to(torch.int64).reshape(-1)
    qtype = storage_type(int(min(qmin.min(), zp.min())), int(max(qmax.max(), zp.max())))
    if qtype is None:
        raise unsupported(node, f"range [{int(qmin.min())}, {int(qmax.max())}]", "use at most 8 bits")
    acc = ctx.cast(ctx.t(acc_arg), DOUBLE)
    rank = ctx.rank(acc)
    axis = int(axis or 0)
    multiplier = ctx.attr_tensor(mult_arg)
    if multiplier is not None:
        mult = const_along(ctx, multiplier.to(torch.float64).numpy(), DOUBLE, rank, axis)
    else:  # computed per row (mean aggregation): [rows] -> [rows, 1, ...]
        mult = ctx.cast(ctx.t(mult_arg), DOUBLE)
        if ctx.rank(mult) == 1 and rank > 1:
            mult = ctx.op("Reshape", [mult, ctx.ints([-1] + [1] * (rank - 1))], rank=rank)

    def bound(values: torch.Tensor) -> str:
        flat = values.to(torch.float64)
        return const_along(ctx, (flat.reshape(()) if flat.numel() == 1 else flat).numpy(), DOUBLE, rank, axis)

    y = ctx.op("Round", [ctx.op("Mul", [acc, mult], dtype=DOUBLE, rank=rank)])
    y = ctx.op("Add", [y, bound(zp)], dtype=DOUBLE, rank=rank)
    y = ctx.op("Max", [y, bound(qmin)], dtype=DOUBLE, rank=rank)
    y = ctx.op("Min", [y, bound(qmax)], dtype=DOUBLE, rank=rank)
    out = ctx.op("Cast", [y], dtype=qtype, rank=rank, to=qtype)
    return QValue(out, qtype, rank)
