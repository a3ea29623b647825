"""Integer IR ops: what the ``fold-scales`` pass rewrites quantize/dequantize regions into.

* ``quantgraph::linear_int(x, x_zero_point, weight_t, weight_zero_point, bias)``:
  ``(x - zx) @ (weight_t - zw) + bias`` on integer values, an int32 accumulator. ``weight_t`` is the
  transposed integer weight ``[in, out]``; ``weight_zero_point`` is 0-d or one per output column;
  ``bias`` (int32, ``[out]``) is already at the accumulator's scale ``s_x * s_w``.
* ``quantgraph::requantize(acc, multiplier, zero_point, qmin, qmax, axis)``:
  ``clamp(round(float64(acc) * multiplier) + zero_point, qmin, qmax)``, rounding half to even. The
  multiplier is float64 (``s_in / s_out``, exact products of float32 scales), 0-d or 1-d along ``axis``.
  It is the only op of an integer region that touches floating point.

Aggregation needs no new op: ``quantgraph::gather`` and ``quantgraph::scatter`` (sum, max) run on int32
values, and ``aten.sub``/``aten.mul`` subtract zero points and apply integer edge weights.
"""

from __future__ import annotations

import torch
from torch import Tensor

from quantgraph.ir.ops import along

#: The largest value an int32 accumulator holds; integer passes and kernels prove their bounds against it.
INT32_MAX = 2**31 - 1


@torch.library.custom_op("quantgraph::linear_int", mutates_args=())
def linear_int(
    x: Tensor, x_zero_point: Tensor, weight_t: Tensor, weight_zero_point: Tensor, bias: Tensor | None
) -> Tensor:
    a = (x.to(torch.int64) - x_zero_point.to(torch.int64)).to(torch.float64)
    b = (weight_t.to(torch.int64) - weight_zero_point.to(torch.int64).reshape(1, -1)).to(torch.float64)
    # float64 matmul is exact here: the fold pass proves every partial sum stays below 2**31 < 2**53
    acc = torch.matmul(a, b)
    if bias is not None:
        acc = acc + bias.to(torch.float64)
    return acc.round().to(torch.int32)


@linear_int.register_fake
def _(
    x: Tensor, x_zero_point: Tensor, weight_t: Tensor, weight_zero_point: Tensor, bias: Tensor | None
) -> Tensor:
    return x.new_empty((*x.shape[:-1], weight_t.shape[1]), dtype=torch.int32)


@torch.library.custom_op("quantgraph::requantize", mutates_args=())
def requantize(
    acc: Tensor, multiplier: Tensor, zero_point: Tensor, qmin: Tensor, qmax: Tensor, axis: int
) -> Tensor:
    m = along(multiplier.to(torch.float64), acc, axis)
    z = along(zero_point.to(torch.float64), acc, axis)
    lo, hi = along(qmin.to(torch.float64), acc, axis), along(qmax.to(torch.float64), acc, axis)
    q = torch.round(acc.to(torch.float64) * m) + z
    return torch.maximum(torch.minimum(q, hi), lo).to(torch.int32)


@requantize.register_fake
def _(acc: Tensor, multiplier: Tensor, zero_point: Tensor, qmin: Tensor, qmax: Tensor, axis: int) -> Tensor:
    return acc.new_empty(acc.shape, dtype=torch.int32)


LINEAR_INT = torch.ops.quantgraph.linear_int.default
REQUANTIZE = torch.ops.quantgraph.requantize.default
