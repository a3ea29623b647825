"""Q/DQ lowering of ``quantgraph::quantize`` and ``quantgraph::dequantize`` (ONNX QuantizeLinear/DequantizeLinear).

* The ONNX integer type comes from the ``[qmin, qmax]`` range (and the zero points): within [-8, 7] INT4,
  [0, 15] UINT4, [-128, 127] INT8, [0, 255] UINT8; wider ranges are not exportable.
* Bitwidths narrower than the type (2, 3, 5, 6, 7 bits) are restricted exactly by clipping the *float input*
  to ``[scale * (qmin - zp), scale * (qmax - zp)]`` before QuantizeLinear (``Max``/``Min`` against 0-d or
  per-axis bound constants; not ``Clip``, which onnxruntime 1.31's ClipQuantFusion rejects before INT4 outputs). The bounds are exact multiples of the scale, so
  ``round(bound / scale) + zp`` lands exactly on ``qmin``/``qmax`` and every input inside the range is left
  untouched: the integers equal the IR's ``clamp(round(x / scale) + zp, qmin, qmax)``. (An integer ``Clip`` after
  QuantizeLinear would need scalar bounds and has no INT4 kernel in onnxruntime, so it cannot express per-channel
  bitwidths.)
* A quantize of a constant (a ``get_attr`` weight) is folded: the integers are computed with the IR op itself
  and stored as an INT8/INT4/... initializer (INT4 packed two per byte), followed only by DequantizeLinear.
* Scales are float32, zero points use the quantized type; per tensor (0-d) or per axis (1-D + ``axis``).
  Parameters computed in the graph (per-group quantization) are rejected.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from onnx import TensorProto, helper
from torch import fx

from quantgraph.backends.onnx_builder import OnnxBuilder, QValue, unsupported
from quantgraph.backends.onnx_ops import register
from quantgraph.ir import ops as qg_ops

FLOAT = TensorProto.FLOAT
QTYPES: tuple[tuple[int, int, int], ...] = (
    (TensorProto.INT4, -8, 7),
    (TensorProto.UINT4, 0, 15),
    (TensorProto.INT8, -128, 127),
    (TensorProto.UINT8, 0, 255),
)
BYTE_OF = {TensorProto.INT4: TensorProto.INT8, TensorProto.UINT4: TensorProto.UINT8}
_PER_GROUP_FIX = (
    "the QDQ backend needs parameters stored as constants (get_attr), or per-group tables gathered by "
    "a row index (quantgraph.gather(table, group), as the degree-buckets pass builds them)"
)


def choose_qtype(lo: int, hi: int) -> tuple[int, int, int] | None:
    """The smallest ONNX integer type holding ``[lo, hi]``: (type, type_min, type_max), or None."""
    for qtype, tmin, tmax in QTYPES:
        if tmin <= lo and hi <= tmax:
            return qtype, tmin, tmax
    return None


def _np_type(qtype: int) -> Any:
    return helper.tensor_dtype_to_np_dtype(qtype)


def _call_args(node: fx.Node, names: tuple[str, ...]) -> list[Any]:
    values = list(node.args) + [None] * (len(names) - len(node.args))
    return [node.kwargs.get(name, value) for name, value in zip(names, values, strict=True)]


def _constants(ctx: OnnxBuilder, node: fx.Node, params: dict[str, Any]) -> list[torch.Tensor]:
    tensors = []
    for name, arg in params.items():
        tensor = ctx.attr_tensor(arg)
        if tensor is None:
            raise unsupported(
                node, f"its {name} is computed in the graph (per-group quantization)", _PER_GROUP_FIX
            )
        tensors.append(tensor.detach().cpu())
    return tensors


def _broadcast(node: fx.Node, tensors: list[torch.Tensor]) -> tuple[list[torch.Tensor], bool]:
    """Per-tensor (all 0-d) or per-axis (all 1-D of one length) parameters."""
    length = max((t.numel() for t in tensors if t.dim() >= 1), default=1)
    if length == 1:
        return [t.reshape(-1)[0] for t in tensors], False
    out = []
    for t in tensors:
        flat = t.reshape(-1)
        if flat.numel() == 1:
            flat = flat.expand(length)
        elif flat.numel() != length or t.dim() > 1:
            raise unsupported(
                node, f"quantization parameters of shapes {[tuple(p.shape) for p in tensors]}", _PER_GROUP_FIX
            )
        out.append(flat.contiguous())
    return out, True


def const_along(ctx: OnnxBuilder, values: np.ndarray, elem_type: int, rank: int, axis: int) -> str:
    """A constant broadcasting along ``axis`` of a rank-``rank`` tensor."""
    if values.ndim == 0:
        return ctx.const(values, elem_type, [])
    shape = [1] * rank
    shape[axis if axis >= 0 else axis + rank] = values.shape[0]
    return ctx.const(values, elem_type, shape)


def _unclip(ctx: OnnxBuilder, value: str) -> None:
    """Rewrite a ``Clip`` producing ``value`` as ``Max``/``Min``.

    onnxruntime 1.31 fails to create a session when a Clip feeds a QuantizeLinear with an INT4/UINT4 zero point
    (its ClipQuantFusion only knows 8/16-bit types), so 4-bit quantize inputs must not come from a Clip.
    """
    index = next((i for i, n in enumerate(ctx.nodes) if value in n.output), None)
    if index is None or ctx.nodes[index].op_type != "Clip":
        return
    clip = ctx.nodes[index]
    data, low, high = (list(clip.input) + ["", ""])[:3]
    steps = [(op, bound) for op, bound in (("Max", low), ("Min", high)) if bound]
    if not steps:
        ctx.nodes[index] = helper.make_node("Identity", [data], [value], name=clip.name)
        return
    nodes, current = [], data
    for k, (op, bound) in enumerate(steps):
        out = value if k == len(steps) - 1 else ctx.fresh()
        if out != value:
            ctx.set_info(out, *ctx.info[value])
        nodes.append(helper.make_node(op, [current, bound], [out], name=f"{clip.name}/{op}"))
        current = out
    ctx.nodes[index : index + 1] = nodes


def _computed(ctx: OnnxBuilder, args: Sequence[Any]) -> bool:
    """Whether the parameters are per group: each computed one a ``gather`` of a constant table by a row index.

    Other computed parameters are not lowered (``_constants`` names them in its error).
    """
    computed = [a for a in args if isinstance(a, fx.Node) and ctx.attr_tensor(a) is None]
    return bool(computed) and all(
        a.target == qg_ops.GATHER and ctx.attr_tensor(a.args[0]) is not None for a in computed
    )


def _per_row(ctx: OnnxBuilder, node: fx.Node, arg: Any, elem_type: int, rank: int, axis: int) -> str:
    """A computed per-row parameter ``[N]`` as ``[N, 1, ...]`` of ``elem_type`` (broadcasts along rows)."""
    if axis % rank != 0:
        raise unsupported(node, "its computed parameters are not per row (axis 0)", "quantize per row")
    value = ctx.cast(ctx.t(arg), elem_type)
    if rank == 1:
        return value
    axes = ctx.const(np.arange(1, rank, dtype=np.int64), TensorProto.INT64, [rank - 1])
    return ctx.op("Unsqueeze", [value, axes], dtype=elem_type, rank=rank)


def _quantize_computed(ctx: OnnxBuilder, node: fx.Node, x_arg: Any, params: Sequence[Any], axis: int) -> str:
    """``clamp(round(x / s) + z, qmin, qmax)`` with per-row parameters gathered in the graph (int32 out)."""
    x = ctx.cast(ctx.t(x_arg), FLOAT)
    rank = ctx.rank(x)
    scale, zp, qmin, qmax = (_per_row(ctx, node, a, FLOAT, rank, axis) for a in params)
    q = ctx.op("Round", [ctx.op("Div", [x, scale])])
    q = ctx.op("Min", [ctx.op("Max", [ctx.op("Add", [q, zp]), qmin]), qmax])
    return ctx.op("Cast", [q], dtype=TensorProto.INT32, rank=rank, to=TensorProto.INT32)


def _dequantize_computed(
    ctx: OnnxBuilder, node: fx.Node, q_arg: Any, params: Sequence[Any], axis: int
) -> str:
    """``float32(q - z) * s`` with per-row parameters gathered in the graph."""
    q = ctx.cast(ctx.t(q_arg), TensorProto.INT32)
    rank = ctx.rank(q)
    shifted = ctx.op("Sub", [q, _per_row(ctx, node, params[1], TensorProto.INT32, rank, axis)])
    as_float = ctx.op("Cast", [shifted], dtype=FLOAT, rank=rank, to=FLOAT)
    return ctx.op("Mul", [as_float, _per_row(ctx, node, params[0], FLOAT, rank, axis)])


@register(qg_ops.QUANTIZE)
def _quantize(ctx: OnnxBuilder, node: fx.Node) -> QValue | str:
    x_arg, scale_arg, zp_arg, qmin_arg, qmax_arg, axis = _call_args(
        node, ("x", "scale", "zero_point", "qmin", "qmax", "axis")
    )
    if _computed(ctx, (scale_arg, zp_arg, qmin_arg, qmax_arg)):
        return _quantize_computed(ctx, node, x_arg, (scale_arg, zp_arg, qmin_arg, qmax_arg), int(axis or 0))
    raw = _constants(
        ctx, node, {"scale": scale_arg, "zero_point": zp_arg, "qmin": qmin_arg, "qmax": qmax_arg}
    )
    (scale, zp, qmin, qmax), per_axis = _broadcast(node, raw)
    zp64, qmin64, qmax64 = zp.to(torch.int64), qmin.to(torch.int64), qmax.to(torch.int64)
    lo = int(min(qmin64.min(), zp64.min()))
    hi = int(max(qmax64.max(), zp64.max()))
    chosen = choose_qtype(lo, hi)
    if chosen is None:
        raise unsupported(
            node, f"integer range [{lo}, {hi}] fits no ONNX INT4/UINT4/INT8/UINT8 type", "use at most 8 bits"
        )
    if ctx.integer_storage and chosen[0] in BYTE_OF:
        chosen = next(t for t in QTYPES if t[0] == BYTE_OF[chosen[0]])
    qtype, tmin, tmax = chosen
    axis = int(axis or 0)
    offset = 0
    if qtype == TensorProto.INT8 and not per_axis and not ctx.integer_storage and _gathered_and_linear(node):
        # stored as uint8 (+128, the same values): onnxruntime fuses a linear layer on int8 activations only
        # after converting its Q/DQ pair to uint8, which it cannot do when the Q also feeds a Gather (SAGE)
        offset, (qtype, tmin, tmax) = 128, QTYPES[3]
        zp64, qmin64, qmax64 = zp64 + offset, qmin64 + offset, qmax64 + offset

    weight = ctx.attr_tensor(x_arg)
    if weight is not None and weight.is_floating_point():  # constant: fold the integers into the file
        ints = qg_ops.quantize(weight.detach().float(), *raw, axis)
        name = f"{x_arg.target}.quantized"
        name = name if name not in ctx.used else ctx.fresh("q")
        ctx.initializer(ints.numpy().astype(_np_type(qtype)), name)
        return QValue(name, qtype, ints.dim())

    x = ctx.t(x_arg)
    if ctx.dtype(x) != FLOAT:
        x = ctx.cast(x, FLOAT)
    rank = ctx.rank(x)
    scale_np = scale.to(torch.float32).numpy()
    if bool((qmin64 > tmin).any()) or bool((qmax64 < tmax).any()):  # narrower than the type: clip exactly
        low = ((qmin64 - zp64).to(torch.float32) * scale.to(torch.float32)).numpy()
        high = ((qmax64 - zp64).to(torch.float32) * scale.to(torch.float32)).numpy()
        x = ctx.op("Max", [x, const_along(ctx, low, FLOAT, rank, axis)], rank=rank)
        x = ctx.op("Min", [x, const_along(ctx, high, FLOAT, rank, axis)], rank=rank)
    elif qtype in (TensorProto.INT4, TensorProto.UINT4):
        _unclip(ctx, x)
    inputs = [x, ctx.const(scale_np, FLOAT), ctx.const(zp64.numpy(), qtype)]
    out = ctx.op("QuantizeLinear", inputs, dtype=qtype, rank=rank, axis=axis if per_axis else None)
    return QValue(out, qtype, rank, offset)


_LINEAR_TARGETS = ("linear.default", "addmm.default", "mm.default", "matmul.default")


def _gathered_and_linear(node: fx.Node) -> bool:
    """Whether the dequantized value of this quantize feeds both a linear layer and an IR gather."""
    linear = {getattr(torch.ops.aten, t.split(".")[0]).default for t in _LINEAR_TARGETS}
    readers = [u for dq in node.users if dq.target == qg_ops.DEQUANTIZE for u in dq.users]
    return any(u.target in linear for u in readers) and any(u.target == qg_ops.GATHER for u in readers)


@register(qg_ops.DEQUANTIZE)
def _dequantize(ctx: OnnxBuilder, node: fx.Node) -> str:
    q_arg, scale_arg, zp_arg, axis = _call_args(node, ("q", "scale", "zero_point", "axis"))
    if _computed(ctx, (scale_arg, zp_arg)):
        return _dequantize_computed(ctx, node, q_arg, (scale_arg, zp_arg), int(axis or 0))
    (scale, zp), per_axis = _broadcast(
        node, _constants(ctx, node, {"scale": scale_arg, "zero_point": zp_arg})
    )
    zp64 = zp.to(torch.int64)
    axis = int(axis or 0)
    source = ctx.env.get(q_arg) if isinstance(q_arg, fx.Node) else None
    name, qtype, rank = None, None, None
    if isinstance(source, QValue):
        name, qtype, rank = source.name, source.dtype, source.rank
        zp64 = zp64 + source.offset
    else:
        ints = ctx.attr_tensor(q_arg)
        if ints is not None and not ints.is_floating_point() and ints.numel():
            chosen = choose_qtype(int(min(ints.min(), zp64.min())), int(max(ints.max(), zp64.max())))
            if chosen is not None:  # stored integers: keep them in the small type
                qtype, rank = chosen[0], ints.dim()
                name = f"{q_arg.target}.quantized"
                name = name if name not in ctx.used else ctx.fresh("q")
                ctx.initializer(ints.numpy().astype(_np_type(qtype)), name)
    scale_np = scale.to(torch.float32).numpy()
    if name is not None:
        tmin, tmax = next((a, b) for t, a, b in QTYPES if t == qtype)
        if int(zp64.min()) >= tmin and int(zp64.max()) <= tmax:
            inputs = [name, ctx.const(scale_np, FLOAT), ctx.const(zp64.numpy(), qtype)]
            return ctx.op("DequantizeLinear", inputs, dtype=FLOAT, rank=rank, axis=axis if per_axis else None)
        q = ctx.op("Cast", [name], dtype=TensorProto.INT32, rank=rank, to=TensorProto.INT32)
    else:
        q = ctx.cast(ctx.t(q_arg), TensorProto.INT32)
    # integers wider than 8 bits (or a zero point outside the type): the IR formula in plain arithmetic
    rank = ctx.rank(q)
    shifted = ctx.op(
        "Sub", [q, const_along(ctx, zp64.to(torch.int32).numpy(), TensorProto.INT32, rank, axis)]
    )
    as_float = ctx.cast(shifted, FLOAT)
    return ctx.op("Mul", [as_float, const_along(ctx, scale_np, FLOAT, rank, axis)])
