"""First-class IR ops, registered with torch.library so IR graphs run in PyTorch.

* ``quantgraph::gather(src, index)``: rows of a node tensor picked by an edge index (``src[index]``).
* ``quantgraph::scatter(src, index, num_nodes, reduce)``: per-edge rows reduced into ``num_nodes`` rows
  by target index; ``reduce`` is ``sum``, ``mean`` or ``max`` (rows with no edge are 0).
* ``quantgraph::quantize(x, scale, zero_point, qmin, qmax, axis)``: ``clamp(round(x / scale) + zp, qmin, qmax)``,
  rounding half to even (as ONNX QuantizeLinear); returns integer values in an int32 tensor.
* ``quantgraph::dequantize(q, scale, zero_point, axis)``: ``(q - zp) * scale`` as float32.

``scale``, ``zero_point``, ``qmin`` and ``qmax`` are tensors: 0-d (per tensor) or 1-d along ``axis``
(per channel, per node row, or per group after a gather of a parameter table), so bitwidths may vary per
channel or node. Executing these ops is the reference semantics that every backend is checked against.
"""

from __future__ import annotations

import torch
from torch import Tensor

REDUCTIONS = ("sum", "mean", "max")


def along(param: Tensor, x: Tensor, axis: int) -> Tensor:
    """Reshape a 0-d or 1-d parameter so it broadcasts along ``axis`` of ``x``."""
    if param.dim() == 0 or param.numel() == 1 and x.dim() == 0:
        return param.reshape(())
    shape = [1] * x.dim()
    shape[axis] = -1
    return param.reshape(shape)


@torch.library.custom_op("quantgraph::gather", mutates_args=())
def gather(src: Tensor, index: Tensor) -> Tensor:
    return src.index_select(0, index).clone()


@gather.register_fake
def _(src: Tensor, index: Tensor) -> Tensor:
    return src.new_empty((index.shape[0], *src.shape[1:]))


@torch.library.custom_op("quantgraph::scatter", mutates_args=())
def scatter(src: Tensor, index: Tensor, num_nodes: int, reduce: str) -> Tensor:
    if reduce not in REDUCTIONS:
        raise ValueError(f"scatter reduce must be one of {REDUCTIONS}, got {reduce!r}")
    shape = (num_nodes, *src.shape[1:])
    idx = index.view(-1, *([1] * (src.dim() - 1))).expand_as(src)
    if reduce == "max":
        out = src.new_zeros(shape).scatter_reduce(0, idx, src, "amax", include_self=False)
        return out
    out = src.new_zeros(shape).scatter_add(0, idx, src)
    if reduce == "mean":
        count = src.new_zeros(num_nodes).scatter_add(0, index, src.new_ones(index.shape[0]))
        out = out / count.clamp(min=1).view(-1, *([1] * (src.dim() - 1)))
    return out


@scatter.register_fake
def _(src: Tensor, index: Tensor, num_nodes: int, reduce: str) -> Tensor:
    return src.new_empty((num_nodes, *src.shape[1:]))


@torch.library.custom_op("quantgraph::quantize", mutates_args=())
def quantize(x: Tensor, scale: Tensor, zero_point: Tensor, qmin: Tensor, qmax: Tensor, axis: int) -> Tensor:
    s, z = along(scale, x, axis), along(zero_point, x, axis)
    lo, hi = along(qmin, x, axis), along(qmax, x, axis)
    q = torch.round(x / s) + z.to(x.dtype)
    return torch.maximum(torch.minimum(q, hi.to(q.dtype)), lo.to(q.dtype)).to(torch.int32)


@quantize.register_fake
def _(x: Tensor, scale: Tensor, zero_point: Tensor, qmin: Tensor, qmax: Tensor, axis: int) -> Tensor:
    return x.new_empty(x.shape, dtype=torch.int32)


@torch.library.custom_op("quantgraph::dequantize", mutates_args=())
def dequantize(q: Tensor, scale: Tensor, zero_point: Tensor, axis: int) -> Tensor:
    s, z = along(scale, q, axis), along(zero_point, q, axis)
    return ((q - z.to(q.dtype)).to(torch.float32) * s).to(torch.float32)


@dequantize.register_fake
def _(q: Tensor, scale: Tensor, zero_point: Tensor, axis: int) -> Tensor:
    return q.new_empty(q.shape, dtype=torch.float32)


def _gather_setup(ctx, inputs, output) -> None:
    src, index = inputs
    ctx.save_for_backward(index)
    ctx.num_rows = src.shape[0]


def _gather_backward(ctx, grad: Tensor):
    (index,) = ctx.saved_tensors
    return scatter(grad, index, ctx.num_rows, "sum"), None


def _scatter_setup(ctx, inputs, output) -> None:
    src, index, _num_nodes, reduce = inputs
    ctx.reduce = reduce
    ctx.save_for_backward(index, src, output if reduce == "max" else torch.empty(0))


def _scatter_backward(ctx, grad: Tensor):
    index, src, out = ctx.saved_tensors
    grad_src = gather(grad, index)
    if ctx.reduce == "mean":
        count = torch.zeros(grad.shape[0], dtype=grad.dtype).index_add_(
            0, index, torch.ones_like(index, dtype=grad.dtype)
        )
        grad_src = grad_src / gather(count.clamp(min=1), index).view(-1, *([1] * (src.dim() - 1)))
    elif ctx.reduce == "max":
        grad_src = grad_src * (src == gather(out, index)).to(grad.dtype)
    return grad_src, None, None, None


gather.register_autograd(_gather_backward, setup_context=_gather_setup)
scatter.register_autograd(_scatter_backward, setup_context=_scatter_setup)

GATHER = torch.ops.quantgraph.gather.default
SCATTER = torch.ops.quantgraph.scatter.default
QUANTIZE = torch.ops.quantgraph.quantize.default
DEQUANTIZE = torch.ops.quantgraph.dequantize.default
