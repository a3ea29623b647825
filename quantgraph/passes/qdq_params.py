"""Reading quantize/dequantize/requantize nodes: their constant parameters and integer ranges."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, fx

from quantgraph.ir.int_ops import REQUANTIZE
from quantgraph.ir.meta import EXACT_SCALE_KEY
from quantgraph.ir.ops import DEQUANTIZE, QUANTIZE
from quantgraph.passes.infra import attr_tensor

__all__ = ["QuantParams", "const", "dequantize_params", "quantize_params"]


@dataclass(frozen=True)
class QuantParams:
    """The constants of a quantize/requantize (or the dequantize reading it)."""

    scale: Tensor  # float64, 0-d or 1-d
    zero_point: Tensor  # int64, 0-d or 1-d
    qmin: Tensor  # int64
    qmax: Tensor  # int64
    axis: int

    @property
    def per_tensor(self) -> bool:
        return self.scale.numel() == 1

    def bound(self) -> int:
        """The largest ``|q - zero_point|`` a value in ``[qmin, qmax]`` can have."""
        return int(
            torch.maximum((self.qmin - self.zero_point).abs(), (self.qmax - self.zero_point).abs()).max()
        )


def const(gm: fx.GraphModule, arg: object) -> Tensor | None:
    """The tensor of a ``get_attr`` argument (None for anything computed in the graph)."""
    if isinstance(arg, fx.Node) and arg.op == "get_attr":
        value = attr_tensor(gm, str(arg.target))
        return value if isinstance(value, Tensor) else None
    return None


def _scalarize(t: Tensor) -> Tensor:
    return t.reshape(()) if t.numel() == 1 else t.reshape(-1)


def dequantize_params(gm: fx.GraphModule, dq: fx.Node) -> QuantParams | None:
    """Parameters of a dequantize: scale and zero point from its arguments, range from its producer."""
    if dq.target != DEQUANTIZE:
        return None
    q, scale_arg, zp_arg, axis = (list(dq.args) + [0])[:4]
    scale, zp = const(gm, scale_arg), const(gm, zp_arg)
    if scale is None or zp is None:
        return None
    exact = dq.meta.get(EXACT_SCALE_KEY)
    scale64 = (exact if exact is not None else scale).to(torch.float64)
    zp64 = zp.to(torch.int64)
    if isinstance(q, fx.Node) and q.target in (QUANTIZE, REQUANTIZE):
        qmin, qmax = const(gm, q.args[3]), const(gm, q.args[4])
        if qmin is None or qmax is None:
            return None
        qmin64, qmax64 = qmin.to(torch.int64), qmax.to(torch.int64)
    else:
        values = const(gm, q)
        if values is None:
            return None
        qmin64, qmax64 = values.min().to(torch.int64), values.max().to(torch.int64)
    return QuantParams(
        _scalarize(scale64), _scalarize(zp64), _scalarize(qmin64), _scalarize(qmax64), int(axis or 0)
    )


def quantize_params(gm: fx.GraphModule, q: fx.Node) -> QuantParams | None:
    """Parameters of a quantize node (all constants), or None."""
    if q.target != QUANTIZE:
        return None
    _x, scale_arg, zp_arg, qmin_arg, qmax_arg, axis = (list(q.args) + [0])[:6]
    parts = [const(gm, a) for a in (scale_arg, zp_arg, qmin_arg, qmax_arg)]
    if any(p is None for p in parts):
        return None
    scale, zp, qmin, qmax = parts
    return QuantParams(
        _scalarize(scale.to(torch.float64)),
        _scalarize(zp.to(torch.int64)),
        _scalarize(qmin.to(torch.int64)),
        _scalarize(qmax.to(torch.int64)),
        int(axis or 0),
    )
