"""ONNX lowerings of ATen ops, SymInt arithmetic and the quantgraph message-passing ops.

``LOWERINGS`` maps an FX call target (an ``OpOverload`` such as ``torch.ops.aten.add.Tensor``, or a python
function such as ``operator.add``) to ``fn(ctx, node) -> value``: ``ctx`` is the
:class:`~quantgraph.backends.onnx_builder.OnnxBuilder`, ``node`` the FX node; the function emits ONNX nodes
with ``ctx.op(...)`` and returns the name of the value standing for the node's result (a tuple of names, or a
:class:`~quantgraph.backends.onnx_builder.Lazy`, for multi-output ops). Other backends may add entries.

Conventions: SymInts are 0-d int64 values; shape arguments mixing python ints and SymInt nodes become a
``Concat`` of ``Unsqueeze``'d pieces; python scalars become constants of the other operand's (promoted) type.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from onnx import TensorProto, helper
from torch import fx

from quantgraph.backends import onnx_segment
from quantgraph.backends.onnx_builder import (
    INT64_MAX,
    Args,
    Lazy,
    OnnxBuilder,
    QValue,
    is_float,
    onnx_type,
    unsupported,
)
from quantgraph.ir import ops as qg_ops
from quantgraph.ir.smp_ops import SMP_MULTIPLIER

aten = torch.ops.aten
FLOAT, INT64, BOOL = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL

Lowering = Callable[[OnnxBuilder, fx.Node], Any]
LOWERINGS: dict[Any, Lowering] = {}


def _resolve(spec: Any) -> Any:
    """``"add.Tensor"`` -> ``torch.ops.aten.add.Tensor`` (None when this PyTorch lacks the overload)."""
    if not isinstance(spec, str):
        return spec
    packet, _, overload = spec.partition(".")
    packet_obj = getattr(aten, packet, None)
    return getattr(packet_obj, overload or "default", None) if packet_obj is not None else None


def register(*targets: Any) -> Callable[[Lowering], Lowering]:
    """Decorator: add ``fn`` to ``LOWERINGS`` for each target (ATen overloads may be given as strings)."""

    def deco(fn: Lowering) -> Lowering:
        for spec in targets:
            target = _resolve(spec)
            if target is not None:
                LOWERINGS[target] = fn
        return fn

    return deco


# ---------------------------------------------------------------------------------------------- helpers
def _rank_of(ctx: OnnxBuilder, arg: Any) -> int:
    return ctx.rank(ctx.t(arg)) if isinstance(arg, fx.Node) else 0


def _norm(dim: int, rank: int) -> int:
    return dim + rank if dim < 0 else dim


def _dim_list(dim: Any) -> list[int] | None:
    """A reduction ``dim`` argument as a list (None: all dims)."""
    if dim is None:
        return None
    if isinstance(dim, int):
        return [dim]
    dims = list(dim)
    return dims or None


def _reduce(ctx: OnnxBuilder, op_type: str, x: str, dims: list[int] | None, keepdim: bool, **kw: Any) -> str:
    rank = ctx.rank(x)
    if dims is None:
        return ctx.op(op_type, [x], rank=rank if keepdim else 0, keepdims=int(bool(keepdim)), **kw)
    out_rank = rank if keepdim else rank - len({_norm(d, max(rank, 1)) for d in dims})
    return ctx.op(op_type, [x, ctx.ints(dims)], rank=out_rank, keepdims=int(bool(keepdim)), **kw)


def _lowest(elem_type: int) -> float | int:
    if is_float(elem_type):
        return -math.inf
    return int(np.iinfo(helper.tensor_dtype_to_np_dtype(elem_type)).min)


def _highest(elem_type: int) -> float | int:
    if is_float(elem_type):
        return math.inf
    return int(np.iinfo(helper.tensor_dtype_to_np_dtype(elem_type)).max)


def _floor_div(ctx: OnnxBuilder, x: str, y: str, dtype: int, rank: int) -> str:
    """Python floor division: exact for integers, ``floor(x / y)`` for floats."""
    if is_float(dtype):
        return ctx.op("Floor", [ctx.op("Div", [x, y], dtype=dtype, rank=rank)])
    mod = ctx.op("Mod", [x, y], dtype=dtype, rank=rank, fmod=0)
    return ctx.op("Div", [ctx.op("Sub", [x, mod], dtype=dtype, rank=rank), y], dtype=dtype, rank=rank)


def _same_shape(ctx: OnnxBuilder, a: Any, b: Any) -> bool:
    sa, sb = ctx.meta_shape(a), ctx.meta_shape(b)
    if sa is None or sb is None or len(sa) != len(sb):
        return False
    return all(str(x) == str(y) for x, y in zip(sa, sb, strict=True))


def _updates_like_index(ctx: OnnxBuilder, index_arg: Any, src_arg: Any, src: str) -> str:
    """PyTorch scatter reads only the index-shaped corner of ``src``; ONNX wants equal shapes."""
    if _same_shape(ctx, index_arg, src_arg):
        return src
    rank = ctx.rank(src)
    ends = ctx.shape(ctx.t(index_arg))
    return ctx.op("Slice", [src, ctx.ints([0] * rank), ends, ctx.ints(list(range(rank)))])


def _scatter_count(ctx: OnnxBuilder, data: str, index: str, axis: int, dtype: int) -> str:
    """How many scattered elements land on each position of ``data`` (same shape as ``data``)."""
    zeros = ctx.fill(ctx.shape(data), 0, dtype, ctx.rank(data))
    ones = ctx.fill(ctx.shape(index), 1, dtype, ctx.rank(index))
    return ctx.op("ScatterElements", [zeros, index, ones], axis=axis, reduction="add")


def _scatter_reduce(
    ctx: OnnxBuilder, data: str, index: str, updates: str, axis: int, reduce: str, include_self: bool
) -> str:
    """``torch.Tensor.scatter_reduce`` semantics with ONNX ScatterElements."""
    dtype = ctx.dtype(data)
    updates = ctx.cast(updates, dtype)
    onnx_reduce = {"sum": "add", "prod": "mul", "amax": "max", "amin": "min", "mean": "add"}[reduce]
    if include_self and reduce != "mean":
        return ctx.op("ScatterElements", [data, index, updates], axis=axis, reduction=onnx_reduce)
    count = _scatter_count(ctx, data, index, axis, dtype)
    touched = ctx.op("Greater", [count, ctx.scalar(0, dtype)], dtype=BOOL)
    if reduce == "mean":
        base = data if include_self else ctx.op("Where", [touched, ctx.scalar(0, dtype), data])
        total = ctx.op("ScatterElements", [base, index, updates], axis=axis, reduction="add")
        if include_self:
            denom = ctx.op("Add", [count, ctx.scalar(1, dtype)])
        else:
            denom = ctx.op("Max", [count, ctx.scalar(1, dtype)])
        if is_float(dtype):
            return ctx.op("Div", [total, denom])
        return _floor_div(ctx, total, denom, dtype, ctx.rank(data))
    identity = {"sum": 0, "prod": 1, "amax": _lowest(dtype), "amin": _highest(dtype)}[reduce]
    base = ctx.op("Where", [touched, ctx.scalar(identity, dtype), data])
    return ctx.op("ScatterElements", [base, index, updates], axis=axis, reduction=onnx_reduce)


def _index_along(ctx: OnnxBuilder, index: str, like: str, dim: int) -> str:
    """A 1-D index along ``dim`` broadcast to the shape of ``like`` (for index_add / IR scatter)."""
    rank = ctx.rank(like)
    index = ctx.cast(index, INT64)
    if rank <= 1:
        return index
    shape = [1] * rank
    shape[_norm(dim, rank)] = -1
    reshaped = ctx.op("Reshape", [index, ctx.ints(shape)], rank=rank)
    return ctx.op("Expand", [reshaped, ctx.shape(like)], rank=rank)


# ---------------------------------------------------------------------------------------------- identity, casts
@register(
    "clone",
    "detach",
    "alias",
    "lift_fresh_copy",
    "contiguous",
    "alias_copy",
    "detach_copy",
)
def _identity(ctx: OnnxBuilder, node: fx.Node) -> str:
    return ctx.t(node.args[0])


@register("dropout", "feature_dropout", "alpha_dropout", "feature_alpha_dropout")
def _dropout(ctx: OnnxBuilder, node: fx.Node) -> str:
    a = Args(node)
    if a.train and a.p:
        raise unsupported(node, "dropout in training mode", "export the model in eval mode (model.eval())")
    return ctx.t(a.input)


@register("native_dropout")
def _native_dropout(ctx: OnnxBuilder, node: fx.Node) -> tuple[str, str]:
    a = Args(node)
    if a.train is not False and a.p:
        raise unsupported(node, "dropout in training mode", "export the model in eval mode (model.eval())")
    x = ctx.t(a.input)
    return x, ctx.fill(ctx.shape(x), True, BOOL, ctx.rank(x))


@register("_to_copy", "to.dtype", "to.dtype_layout", "to.device", "to.other", "_to_dim_order_copy")
def _to(ctx: OnnxBuilder, node: fx.Node) -> str:
    a = Args(node)
    x = ctx.t(a.self)
    dtype = a.dtype
    if isinstance(a.other, fx.Node):
        return ctx.cast(x, ctx.dtype(ctx.t(a.other)))
    return x if dtype is None else ctx.cast(x, onnx_type(dtype))


@register("type_as")
def _type_as(ctx: OnnxBuilder, node: fx.Node) -> str:
    return ctx.cast(ctx.t(node.args[0]), ctx.dtype(ctx.t(node.args[1])))


# ---------------------------------------------------------------------------------------------- unary
def _unary(op_type: str, *, to_float: bool = False, int_identity: bool = False, out_dtype: int | None = None):
    def lower(ctx: OnnxBuilder, node: fx.Node) -> str:
        x = ctx.t(node.args[0])
        if not is_float(ctx.dtype(x)):
            if int_identity:
                return x
            if to_float:
                x = ctx.cast(x, FLOAT)
        return ctx.op(op_type, [x], dtype=out_dtype)

    return lower


for _name, _op in {"neg": "Neg", "abs": "Abs", "relu": "Relu", "sign": "Sign"}.items():
    register(_name)(_unary(_op))
for _name, _op in {"floor": "Floor", "ceil": "Ceil", "round": "Round"}.items():
    register(_name)(_unary(_op, int_identity=True))
for _name, _op in {
    "sqrt": "Sqrt",
    "exp": "Exp",
    "log": "Log",
    "sigmoid": "Sigmoid",
    "tanh": "Tanh",
    "reciprocal": "Reciprocal",
    "sin": "Sin",
    "cos": "Cos",
    "erf": "Erf",
    "mish": "Mish",
    "selu": "Selu",
}.items():
    register(_name)(_unary(_op, to_float=True))
register("isnan")(_unary("IsNaN", to_float=True, out_dtype=BOOL))
register("isinf")(_unary("IsInf", to_float=True, out_dtype=BOOL))


@register("logical_not", "bitwise_not")
def _not(ctx: OnnxBuilder, node: fx.Node) -> str:
    x = ctx.t(node.args[0])
    if node.target == aten.bitwise_not.default and ctx.dtype(x) != BOOL:
        return ctx.op("BitwiseNot", [x])
    return ctx.op("Not", [ctx.cast(x, BOOL)])


def _float_input(ctx: OnnxBuilder, arg: Any) -> str:
    x = ctx.t(arg)
    return x if is_float(ctx.dtype(x)) else ctx.cast(x, FLOAT)


@register("rsqrt")
def _rsqrt(ctx: OnnxBuilder, node: fx.Node) -> str:
    return ctx.op("Reciprocal", [ctx.op("Sqrt", [_float_input(ctx, node.args[0])])])


@register("log1p")
def _log1p(ctx: OnnxBuilder, node: fx.Node) -> str:
    x = _float_input(ctx, node.args[0])
    return ctx.op("Log", [ctx.op("Add", [x, ctx.scalar(1, ctx.dtype(x))])])


@register("expm1")
def _expm1(ctx: OnnxBuilder, node: fx.Node) -> str:
    x = _float_input(ctx, node.args[0])
    return ctx.op("Sub", [ctx.op("Exp", [x]), ctx.scalar(1, ctx.dtype(x))])


@register("square")
def _square(ctx: OnnxBuilder, node: fx.Node) -> str:
    x = ctx.t(node.args[0])
    return ctx.op("Mul", [x, x])


@register("silu")
def _silu(ctx: OnnxBuilder, node: fx.Node) -> str:
    x = _float_input(ctx, node.args[0])
    return ctx.op("Mul", [x, ctx.op("Sigmoid", [x])])


@register("softplus")
def _softplus(ctx: OnnxBuilder, node: fx.Node) -> str:
    a = Args(node)
    x = _float_input(ctx, a.self)
    dt = ctx.dtype(x)
    beta, threshold = float(a.beta if a.beta is not None else 1), float(a.threshold or 20)
    bx = x if beta == 1 else ctx.op("Mul", [x, ctx.scalar(beta, dt)])
    soft = ctx.op("Softplus", [bx])
    if beta != 1:
        soft = ctx.op("Div", [soft, ctx.scalar(beta, dt)])
    linear = ctx.op("Greater", [bx, ctx.scalar(threshold, dt)], dtype=BOOL)
    return ctx.op("Where", [linear, x, soft])


@register("leaky_relu")
def _leaky_relu(ctx: OnnxBuilder, node: fx.Node) -> str:
    a = Args(node)
    slope = 0.01 if a.negative_slope is None else float(a.negative_slope)
    return ctx.op("LeakyRelu", [_float_input(ctx, a.self)], alpha=slope)


@register("elu")
def _elu(ctx: OnnxBuilder, node: fx.Node) -> str:
    a = Args(node)
    x = _float_input(ctx, a.self)
    alpha = float(1 if a.alpha is None else a.alpha)
    scale = float(1 if a.scale is None else a.scale)
    input_scale = float(1 if a.input_scale is None else a.input_scale)
    if scale == 1 and input_scale == 1:
        return ctx.op("Elu", [x], alpha=alpha)
    dt = ctx.dtype(x)
    neg = ctx.op("Sub", [ctx.op("Exp", [ctx.op("Mul", [x, ctx.scalar(input_scale, dt)])]), ctx.scalar(1, dt)])
    neg = ctx.op("Mul", [neg, ctx.scalar(alpha, dt)])
    out = ctx.op("Where", [ctx.op("Greater", [x, ctx.scalar(0, dt)], dtype=BOOL), x, neg])
    return ctx.op("Mul", [out, ctx.scalar(scale, dt)])


@register("celu")
def _celu(ctx: OnnxBuilder, node: fx.Node) -> str:
    a = Args(node)
    return ctx.op("Celu", [ctx.cast(_float_input(ctx, a.self), FLOAT)], alpha=float(a.alpha or 1.0))


@register("gelu")
def _gelu(ctx: OnnxBuilder, node: fx.Node) -> str:
    a = Args(node)
    return ctx.op("Gelu", [_float_input(ctx, a.self)], approximate=a.approximate or "none")


@register("hardsigmoid")
def _hardsigmoid(ctx: OnnxBuilder, node: fx.Node) -> str:
    return ctx.op("HardSigmoid", [_float_input(ctx, node.args[0])], alpha=1.0 / 6.0, beta=0.5)


@register("hardswish")
def _hardswish(ctx: OnnxBuilder, node: fx.Node) -> str:
    return ctx.op("HardSwish", [_float_input(ctx, node.args[0])])


@register("hardtanh", "relu6")
def _hardtanh(ctx: OnnxBuilder, node: fx.Node) -> str:
    a = Args(node)
    x = ctx.t(a.self)
    dt = ctx.dtype(x)
    lo, hi = (0.0, 6.0) if node.target == _resolve("relu6") else (a.min_val, a.max_val)
    lo = -1.0 if lo is None else lo
    hi = 1.0 if hi is None else hi
    return ctx.op("Clip", [x, ctx.scalar(lo, dt), ctx.scalar(hi, dt)])


# ---------------------------------------------------------------------------------------------- binary
def _binary_operands(ctx: OnnxBuilder, a: Any, b: Any, dtype: int | None = None) -> tuple[str, str, int, int]:
    dtype = ctx.result_type(a, b) if dtype is None else dtype
    rank = max(_rank_of(ctx, a), _rank_of(ctx, b))
    return ctx.operand(a, dtype), ctx.operand(b, dtype), dtype, rank


def _scale_by(ctx: OnnxBuilder, x: str, alpha: Any, dtype: int) -> str:
    if alpha is None or (not isinstance(alpha, fx.Node) and alpha == 1):
        return x
    return ctx.op("Mul", [x, ctx.operand(alpha, dtype)])


_BOOL_ARITH = {"Add": "Or", "Mul": "And"}


def _arith(op_type: str, *, true_div: bool = False):
    def lower(ctx: OnnxBuilder, node: fx.Node) -> str:
        a = Args(node)
        lhs, rhs = (a.self, a.other) if a.exponent is None else (a.self, a.exponent)
        dtype = ctx.result_type(lhs, rhs)
        if true_div and not is_float(dtype):
            dtype = FLOAT
        x, y, dtype, rank = _binary_operands(ctx, lhs, rhs, dtype)
        y = _scale_by(ctx, y, a.alpha, dtype)
        op = _BOOL_ARITH.get(op_type, op_type) if dtype == BOOL else op_type
        return ctx.op(op, [x, y], dtype=dtype, rank=rank)

    return lower


register("add.Tensor", "add.Scalar")(_arith("Add"))
register("sub.Tensor", "sub.Scalar")(_arith("Sub"))
register("mul.Tensor", "mul.Scalar")(_arith("Mul"))
register("div.Tensor", "div.Scalar")(_arith("Div", true_div=True))
register("pow.Tensor_Tensor")(_arith("Pow"))
_POW_GENERAL = _arith("Pow")


@register("pow.Tensor_Scalar")
def _pow_tensor_scalar(ctx: OnnxBuilder, node: fx.Node) -> str:
    """PyTorch's CPU kernel special-cases these exponents; the same ops give bit-identical floats
    (GCN's ``deg ** -0.5`` must match exactly for its quantized edge weights to match)."""
    a = Args(node)
    exponent = a.exponent
    x = ctx.t(a.self)
    if not is_float(ctx.dtype(x)) or exponent not in (0.5, -0.5, 2, -2, -1):
        return _POW_GENERAL(ctx, node)
    one = ctx.scalar(1, ctx.dtype(x))
    if exponent in (0.5, -0.5):
        root = ctx.op("Sqrt", [x])
        return root if exponent == 0.5 else ctx.op("Div", [one, root])
    if exponent == -1:
        return ctx.op("Div", [one, x])
    square = ctx.op("Mul", [x, x])
    return square if exponent == 2 else ctx.op("Div", [one, square])


register("maximum", "fmax")(_arith("Max"))
register("minimum", "fmin")(_arith("Min"))


@register("pow.Scalar")
def _pow_scalar(ctx: OnnxBuilder, node: fx.Node) -> str:
    a = Args(node)
    x, y, dtype, rank = _binary_operands(ctx, a.self, a.exponent)
    return ctx.op("Pow", [x, y], dtype=dtype, rank=rank)


@register("rsub.Tensor", "rsub.Scalar")
def _rsub(ctx: OnnxBuilder, node: fx.Node) -> str:
    a = Args(node)
    x, y, dtype, rank = _binary_operands(ctx, a.self, a.other)
    return ctx.op("Sub", [y, _scale_by(ctx, x, a.alpha, dtype)], dtype=dtype, rank=rank)


@register("div.Tensor_mode", "div.Scalar_mode", "floor_divide", "floor_divide.Scalar")
def _div_mode(ctx: OnnxBuilder, node: fx.Node) -> str:
    a = Args(node)
    mode = (
        "floor"
        if node.target in (_resolve("floor_divide"), _resolve("floor_divide.Scalar"))
        else a.rounding_mode
    )
    x, y, dtype, rank = _binary_operands(ctx, a.self, a.other)
    if mode is None:
        if not is_float(dtype):
            x, y, dtype = ctx.cast(x, FLOAT), ctx.cast(y, FLOAT), FLOAT
        return ctx.op("Div", [x, y], dtype=dtype, rank=rank)
    if mode == "floor":
        return _floor_div(ctx, x, y, dtype, rank)
    quotient = ctx.op("Div", [x, y], dtype=dtype, rank=rank)  # integer Div truncates toward zero
    if not is_float(dtype):
        return quotient
    negative = ctx.op("Less", [quotient, ctx.scalar(0, dtype)], dtype=BOOL)
    return ctx.op("Where", [negative, ctx.op("Ceil", [quotient]), ctx.op("Floor", [quotient])])


@register("remainder.Tensor", "remainder.Scalar")
def _remainder(ctx: OnnxBuilder, node: fx.Node) -> str:
    a = Args(node)
    x, y, dtype, rank = _binary_operands(ctx, a.self, a.other)
    if not is_float(dtype):
        return ctx.op("Mod", [x, y], dtype=dtype, rank=rank, fmod=0)
    floored = _floor_div(ctx, x, y, dtype, rank)
    return ctx.op("Sub", [x, ctx.op("Mul", [floored, y], dtype=dtype, rank=rank)], dtype=dtype, rank=rank)


@register("fmod.Tensor", "fmod.Scalar")
def _fmod(ctx: OnnxBuilder, node: fx.Node) -> str:
    a = Args(node)
    x, y, dtype, rank = _binary_operands(ctx, a.self, a.other)
    return ctx.op("Mod", [x, y], dtype=dtype, rank=rank, fmod=1)


def _compare(op_type: str, *, negate: bool = False):
    def lower(ctx: OnnxBuilder, node: fx.Node) -> str:
        a = Args(node)
        x, y, _, rank = _binary_operands(ctx, a.self, a.other)
        out = ctx.op(op_type, [x, y], dtype=BOOL, rank=rank)
        return ctx.op("Not", [out]) if negate else out

    return lower


register("eq.Tensor", "eq.Scalar")(_compare("Equal"))
register("ne.Tensor", "ne.Scalar")(_compare("Equal", negate=True))
register("lt.Tensor", "lt.Scalar")(_compare("Less"))
register("le.Tensor", "le.Scalar")(_compare("LessOrEqual"))
register("gt.Tensor", "gt.Scalar")(_compare("Greater"))
register("ge.Tensor", "ge.Scalar")(_compare("GreaterOrEqual"))


def _logical(op_type: str, bitwise: str | None = None):
    def lower(ctx: OnnxBuilder, node: fx.Node) -> str:
        a = Args(node)
        dtype = ctx.result_type(a.self, a.other)
        if bitwise is not None and dtype != BOOL:
            x, y, dtype, rank = _binary_operands(ctx, a.self, a.other, dtype)
            return ctx.op(bitwise, [x, y], dtype=dtype, rank=rank)
        x, y, _, rank = _binary_operands(ctx, a.self, a.other, BOOL)
        return ctx.op(op_type, [x, y], dtype=BOOL, rank=rank)

    return lower


register("logical_and")(_logical("And"))
register("logical_or")(_logical("Or"))
register("logical_xor")(_logical("Xor"))
register("bitwise_and.Tensor", "bitwise_and.Scalar", "__and__.Tensor", "__and__.Scalar")(
    _logical("And", "BitwiseAnd")
)
register("bitwise_or.Tensor", "bitwise_or.Scalar", "__or__.Tensor", "__or__.Scalar")(
    _logical("Or", "BitwiseOr")
)
register("bitwise_xor.Tensor", "bitwise_xor.Scalar", "__xor__.Tensor", "__xor__.Scalar")(
    _logical("Xor", "BitwiseXor")
)


@register("where.self", "where.ScalarSelf", "where.ScalarOther", "where.Scalar")
def _where(ctx: OnnxBuilder, node: fx.Node) -> str:
    a = Args(node)
    x, y, dtype, rank = _binary_operands(ctx, a.self, a.other)
    cond = ctx.cast(ctx.t(a.condition), BOOL)
    return ctx.op("Where", [cond, x, y], dtype=dtype, rank=max(rank, ctx.rank(cond)))


@register("masked_fill.Scalar", "masked_fill.Tensor")
def _masked_fill(ctx: OnnxBuilder, node: fx.Node) -> str:
    a = Args(node)
    x = ctx.t(a.self)
    mask = ctx.cast(ctx.t(a.mask), BOOL)
    value = ctx.operand(a.value, ctx.dtype(x))
    return ctx.op("Where", [mask, value, x], rank=max(ctx.rank(x), ctx.rank(mask)))


@register(
    "clamp.default",
    "clamp_min.default",
    "clamp_max.default",
    "clamp.Tensor",
    "clamp_min.Tensor",
    "clamp_max.Tensor",
)
def _clamp(ctx: OnnxBuilder, node: fx.Node) -> str:
    a = Args(node)
    name = str(node.target)
    lo = a.min if "clamp_max" not in name else None
    hi = a.max if "clamp_min" not in name else None
    dtype = ctx.result_type(a.self, lo, hi)
    x = ctx.operand(a.self, dtype)
    if name.endswith(".Tensor"):  # tensor bounds broadcast: Max/Min
        rank = max(_rank_of(ctx, a.self), _rank_of(ctx, lo), _rank_of(ctx, hi))
        if lo is not None:
            x = ctx.op("Max", [x, ctx.operand(lo, dtype)], dtype=dtype, rank=rank)
        if hi is not None:
            x = ctx.op("Min", [x, ctx.operand(hi, dtype)], dtype=dtype, rank=rank)
        return x
    inputs = [
        x,
        ctx.operand(lo, dtype) if lo is not None else "",
        ctx.operand(hi, dtype) if hi is not None else "",
    ]
    while inputs[-1] == "":
        inputs.pop()
    return ctx.op("Clip", inputs) if len(inputs) > 1 else x


# ---------------------------------------------------------------------------------------------- reductions
def _sum_input(ctx: OnnxBuilder, arg: Any, dtype: torch.dtype | None) -> str:
    x = ctx.t(arg)
    if dtype is not None:
        return ctx.cast(x, onnx_type(dtype))
    if not is_float(ctx.dtype(x)):
        return ctx.cast(x, INT64)  # torch sums bools and integers in int64
    return x


@register("sum.dim_IntList", "sum.default")
def _sum(ctx: OnnxBuilder, node: fx.Node) -> str:
    a = Args(node)
    return _reduce(ctx, "ReduceSum", _sum_input(ctx, a.self, a.dtype), _dim_list(a.dim), bool(a.keepdim))


@register("mean.dim", "mean.default")
def _mean(ctx: OnnxBuilder, node: fx.Node) -> str:
    a = Args(node)
    x = ctx.t(a.self) if a.dtype is None else ctx.cast(ctx.t(a.self), onnx_type(a.dtype))
    return _reduce(ctx, "ReduceMean", x, _dim_list(a.dim), bool(a.keepdim))


@register("amax", "amin", "max.default", "min.default")
def _amax(ctx: OnnxBuilder, node: fx.Node) -> str:
    a = Args(node)
    op_type = "ReduceMax" if node.target in (aten.amax.default, aten.max.default) else "ReduceMin"
    return _reduce(ctx, op_type, ctx.t(a.self), _dim_list(a.dim), bool(a.keepdim))


@register("max.dim", "min.dim")
def _max_dim(ctx: OnnxBuilder, node: fx.Node) -> tuple[str, str]:
    a = Args(node)
    x = ctx.t(a.self)
    is_max = node.target == aten.max.dim
    keep = bool(a.keepdim)
    values = _reduce(ctx, "ReduceMax" if is_max else "ReduceMin", x, [a.dim], keep)
    rank = ctx.rank(values)
    indices = ctx.op(
        "ArgMax" if is_max else "ArgMin", [x], dtype=INT64, rank=rank, axis=a.dim, keepdims=int(keep)
    )
    return values, indices


@register("argmax", "argmin")
def _argmax(ctx: OnnxBuilder, node: fx.Node) -> str:
    a = Args(node)
    x = ctx.t(a.self)
    op_type = "ArgMax" if node.target == aten.argmax.default else "ArgMin"
    keep = bool(a.keepdim)
    if a.dim is None:
        flat = ctx.op("Reshape", [x, ctx.ints([-1])], rank=1)
        out = ctx.op(op_type, [flat], dtype=INT64, rank=1 if keep else 0, axis=0, keepdims=int(keep))
        if keep and ctx.rank(x) != 1:
            out = ctx.op("Reshape", [out, ctx.ints([1] * ctx.rank(x))], rank=ctx.rank(x))
        return out
    rank = ctx.rank(x) if keep else ctx.rank(x) - 1
    return ctx.op(op_type, [x], dtype=INT64, rank=rank, axis=a.dim, keepdims=int(keep))


@register("any.dim", "any.dims", "any.default", "all.dim", "all.dims", "all.default")
def _any_all(ctx: OnnxBuilder, node: fx.Node) -> str:
    a = Args(node)
    as_int = ctx.cast(ctx.cast(ctx.t(a.self), BOOL), TensorProto.INT32)
    op_type = "ReduceMax" if str(node.target).startswith("aten.any") else "ReduceMin"
    return ctx.cast(_reduce(ctx, op_type, as_int, _dim_list(a.dim), bool(a.keepdim)), BOOL)


@register("linalg_vector_norm")
def _vector_norm(ctx: OnnxBuilder, node: fx.Node) -> str:
    a = Args(node)
    x = _float_input(ctx, a.self) if a.dtype is None else ctx.cast(ctx.t(a.self), onnx_type(a.dtype))
    dims, keep, order = _dim_list(a.dim), bool(a.keepdim), float(2 if a.ord is None else a.ord)
    if order == 2:
        return _reduce(ctx, "ReduceL2", x, dims, keep)
    if order == 1:
        return _reduce(ctx, "ReduceL1", x, dims, keep)
    if math.isinf(order):
        return _reduce(ctx, "ReduceMax" if order > 0 else "ReduceMin", ctx.op("Abs", [x]), dims, keep)
    if order == 0:
        raise unsupported(node, "ord=0 norms are not lowered")
    dt = ctx.dtype(x)
    powered = ctx.op("Pow", [ctx.op("Abs", [x]), ctx.scalar(order, dt)])
    return ctx.op("Pow", [_reduce(ctx, "ReduceSum", powered, dims, keep), ctx.scalar(1.0 / order, dt)])


@register("cumsum")
def _cumsum(ctx: OnnxBuilder, node: fx.Node) -> str:
    a = Args(node)
    x = _sum_input(ctx, a.self, a.dtype)
    return ctx.op("CumSum", [x, ctx.scalar(a.dim, INT64)])


@register("softmax.int", "_softmax", "log_softmax.int", "_log_softmax", "_safe_softmax")
def _softmax(ctx: OnnxBuilder, node: fx.Node) -> str:
    a = Args(node)
    x = ctx.t(a.self)
    x = ctx.cast(x, onnx_type(a.dtype)) if isinstance(a.dtype, torch.dtype) else _float_input(ctx, a.self)
    op_type = "LogSoftmax" if "log_softmax" in str(node.target) else "Softmax"
    return ctx.op(op_type, [x], axis=a.dim)


# ---------------------------------------------------------------------------------------------- matrix products
@register("linear")
def _linear(ctx: OnnxBuilder, node: fx.Node) -> str:
    a = Args(node)
    x, w = ctx.t(a.input), ctx.t(a.weight)
    b = ctx.t(a.bias) if a.bias is not None else None
    if ctx.rank(x) == 2 and ctx.rank(w) == 2:
        return ctx.op("Gemm", [x, w] + ([b] if b else []), rank=2, transB=1)
    wt = ctx.op("Transpose", [w], perm=list(range(ctx.rank(w)))[::-1])
    out = ctx.op("MatMul", [x, wt], rank=max(ctx.rank(x), 1) if ctx.rank(w) == 2 else ctx.rank(x) - 1)
    return ctx.op("Add", [out, b]) if b else out


def _matmul_rank(ra: int, rb: int) -> int:
    if ra == 1 and rb == 1:
        return 0
    if ra == 1:
        return rb - 1
    if rb == 1:
        return ra - 1
    return max(ra, rb)


@register("mm", "bmm", "matmul")
def _matmul(ctx: OnnxBuilder, node: fx.Node) -> str:
    x, y = ctx.t(node.args[0]), ctx.t(node.args[1])
    return ctx.op("MatMul", [x, y], rank=_matmul_rank(ctx.rank(x), ctx.rank(y)))


@register("addmm")
def _addmm(ctx: OnnxBuilder, node: fx.Node) -> str:
    a = Args(node)
    m1, m2 = ctx.t(a.mat1), ctx.t(a.mat2)
    c = ctx.cast(ctx.t(a.self), ctx.dtype(m1))
    return ctx.op(
        "Gemm", [m1, m2, c], rank=2, alpha=float(a.alpha or 1), beta=float(1 if a.beta is None else a.beta)
    )


# ---------------------------------------------------------------------------------------------- normalisation
class _FirstOnly(Lazy):
    """Multi-output op of which only output 0 (the normalised tensor) is lowered."""

    def __init__(self, value: str, node: fx.Node) -> None:
        self.value, self.node = value, node

    def getitem(self, ctx: OnnxBuilder, index: int) -> str:
        if index != 0:
            raise unsupported(self.node, f"output {index} (batch statistics) is not exported")
        return self.value


def _param_or(ctx: OnnxBuilder, arg: Any, like: str, value: float) -> str:
    return (
        ctx.t(arg) if arg is not None else ctx.fill(ctx.shape(like), value, ctx.dtype(like), ctx.rank(like))
    )


@register(
    "_native_batch_norm_legit_no_training", "batch_norm", "_native_batch_norm_legit", "native_batch_norm"
)
def _batch_norm(ctx: OnnxBuilder, node: fx.Node) -> Any:
    a = Args(node)
    if a.training or a.running_mean is None:
        raise unsupported(
            node, "batch norm with batch statistics", "export the model in eval mode (model.eval())"
        )
    x, mean, var = ctx.t(a.input), ctx.t(a.running_mean), ctx.t(a.running_var)
    scale, bias = _param_or(ctx, a.weight, mean, 1.0), _param_or(ctx, a.bias, mean, 0.0)
    eps = 1e-5 if a.eps is None else float(a.eps)
    out = ctx.op("BatchNormalization", [x, scale, bias, mean, var], epsilon=eps)
    return out if node.target == _resolve("batch_norm") else _FirstOnly(out, node)


@register("native_layer_norm", "layer_norm")
def _layer_norm(ctx: OnnxBuilder, node: fx.Node) -> Any:
    a = Args(node)
    x = ctx.t(a.input)
    shape = list(a.normalized_shape)
    scale = (
        ctx.t(a.weight) if a.weight is not None else ctx.fill(ctx.ints(shape), 1.0, ctx.dtype(x), len(shape))
    )
    inputs = [x, scale] + ([ctx.t(a.bias)] if a.bias is not None else [])
    eps = 1e-5 if a.eps is None else float(a.eps)
    out = ctx.op("LayerNormalization", inputs, axis=-len(shape), epsilon=eps)
    return out if node.target == _resolve("layer_norm") else _FirstOnly(out, node)


@register("prelu", "_prelu_kernel")
def _prelu(ctx: OnnxBuilder, node: fx.Node) -> str:
    x, w = ctx.t(node.args[0]), ctx.t(node.args[1])
    rank = ctx.rank(x)
    if ctx.rank(w) == 1 and rank > 2:  # one slope per channel (dim 1)
        w = ctx.op("Reshape", [w, ctx.ints([-1] + [1] * (rank - 2))], rank=rank - 1)
    negative = ctx.op("Mul", [x, ctx.cast(w, ctx.dtype(x))])
    return ctx.op(
        "Where", [ctx.op("Less", [x, ctx.scalar(0, ctx.dtype(x))], dtype=BOOL), negative, x], rank=rank
    )


# ---------------------------------------------------------------------------------------------- shapes
@register("view", "reshape", "_unsafe_view", "view_copy", "_reshape_alias")
def _view(ctx: OnnxBuilder, node: fx.Node) -> str:
    a = Args(node)
    x = ctx.t(a.self)
    size = list(a.size if a.size is not None else a.shape)
    allowzero = 1 if (0 in size and -1 not in size) else None
    return ctx.op("Reshape", [x, ctx.size_list(size)], rank=len(size), allowzero=allowzero)


@register("unsqueeze", "unsqueeze_copy")
def _unsqueeze(ctx: OnnxBuilder, node: fx.Node) -> str:
    x = ctx.t(node.args[0])
    return ctx.op("Unsqueeze", [x, ctx.ints([node.args[1]])], rank=ctx.rank(x) + 1)


@register("squeeze.dim", "squeeze.dims", "squeeze.default", "squeeze_copy.dim", "squeeze_copy.dims")
def _squeeze(ctx: OnnxBuilder, node: fx.Node) -> str:
    a = Args(node)
    x = ctx.t(a.self)
    rank = ctx.rank(x)
    shape = ctx.meta_shape(a.self)
    dims = None if a.dim is None else [_norm(d, rank) for d in _dim_list(a.dim) or []]
    if shape is not None:  # PyTorch squeezes only the dims of size 1
        candidates = range(rank) if dims is None else dims
        dims = [d for d in candidates if isinstance(shape[d], int) and shape[d] == 1]
    elif dims is None:
        raise unsupported(
            node, "squeeze() without dims needs static shapes", "call squeeze(dim) with explicit dims"
        )
    if not dims:
        return x
    return ctx.op("Squeeze", [x, ctx.ints(dims)], rank=rank - len(set(dims)))


@register("expand", "expand_copy")
def _expand(ctx: OnnxBuilder, node: fx.Node) -> str:
    a = Args(node)
    size = list(a.size)
    return ctx.op("Expand", [ctx.t(a.self), ctx.size_list(size, replace={-1: 1})], rank=len(size))


@register("expand_as")
def _expand_as(ctx: OnnxBuilder, node: fx.Node) -> str:
    other = ctx.t(node.args[1])
    return ctx.op("Expand", [ctx.t(node.args[0]), ctx.shape(other)], rank=ctx.rank(other))


@register("repeat")
def _repeat(ctx: OnnxBuilder, node: fx.Node) -> str:
    a = Args(node)
    x = ctx.t(a.self)
    repeats = list(a.repeats)
    extra = len(repeats) - ctx.rank(x)
    if extra > 0:
        x = ctx.op("Unsqueeze", [x, ctx.ints(list(range(extra)))], rank=len(repeats))
    return ctx.op("Tile", [x, ctx.size_list(repeats)], rank=len(repeats))


@register("cat")
def _cat(ctx: OnnxBuilder, node: fx.Node) -> str:
    a = Args(node)
    tensors = list(a.tensors)
    dtype = ctx.result_type(*tensors)
    values = [ctx.operand(t, dtype) for t in tensors]
    if len(values) == 1:
        return values[0]
    return ctx.op("Concat", values, dtype=dtype, axis=a.dim or 0)


@register("stack")
def _stack(ctx: OnnxBuilder, node: fx.Node) -> str:
    a = Args(node)
    tensors = list(a.tensors)
    dtype = ctx.result_type(*tensors)
    dim = a.dim or 0
    axes = ctx.ints([dim])
    values = [ctx.operand(t, dtype) for t in tensors]
    values = [ctx.op("Unsqueeze", [v, axes], rank=ctx.rank(v) + 1) for v in values]
    if len(values) == 1:
        return values[0]
    return ctx.op("Concat", values, dtype=dtype, axis=dim)


@register("t", "t_copy")
def _t(ctx: OnnxBuilder, node: fx.Node) -> str:
    x = ctx.t(node.args[0])
    return x if ctx.rank(x) < 2 else ctx.op("Transpose", [x], perm=[1, 0])


@register("transpose.int", "transpose_copy.int")
def _transpose(ctx: OnnxBuilder, node: fx.Node) -> str:
    x = ctx.t(node.args[0])
    rank = ctx.rank(x)
    if rank < 2:
        return x
    d0, d1 = _norm(node.args[1], rank), _norm(node.args[2], rank)
    perm = list(range(rank))
    perm[d0], perm[d1] = perm[d1], perm[d0]
    return x if d0 == d1 else ctx.op("Transpose", [x], perm=perm)


@register("permute", "permute_copy")
def _permute(ctx: OnnxBuilder, node: fx.Node) -> str:
    x = ctx.t(node.args[0])
    rank = ctx.rank(x)
    perm = [_norm(d, rank) for d in node.args[1]]
    return x if perm == list(range(rank)) else ctx.op("Transpose", [x], perm=perm)


@register("flatten.using_ints")
def _flatten(ctx: OnnxBuilder, node: fx.Node) -> str:
    a = Args(node)
    x = ctx.t(a.self)
    rank = ctx.rank(x)
    if rank == 0:
        return ctx.op("Reshape", [x, ctx.ints([1])], rank=1)
    start, end = _norm(a.start_dim or 0, rank), _norm(-1 if a.end_dim is None else a.end_dim, rank)
    if start == end:
        return x
    pieces = []
    if start > 0:
        pieces.append(ctx.shape(x, 0, start))
    pieces.append(ctx.ints([-1]))
    if end < rank - 1:
        pieces.append(ctx.shape(x, end + 1))
    shape = pieces[0] if len(pieces) == 1 else ctx.op("Concat", pieces, dtype=INT64, rank=1, axis=0)
    return ctx.op("Reshape", [x, shape], rank=rank - (end - start))


@register("select.int", "select_copy.int")
def _select(ctx: OnnxBuilder, node: fx.Node) -> str:
    a = Args(node)
    x = ctx.t(a.self)
    return ctx.op("Gather", [x, ctx.int_scalar(a.index)], rank=ctx.rank(x) - 1, axis=a.dim)


@register("slice.Tensor", "slice_copy.Tensor")
def _slice(ctx: OnnxBuilder, node: fx.Node) -> str:
    a = Args(node)
    x = ctx.t(a.self)
    start = 0 if a.start is None else a.start
    end = INT64_MAX if a.end is None else a.end
    step = 1 if a.step is None else a.step
    if isinstance(end, int) and end >= INT64_MAX:
        end = INT64_MAX
    if start == 0 and end == INT64_MAX and step == 1:
        return x
    inputs = [x, ctx.size_list([start]), ctx.size_list([end]), ctx.ints([a.dim or 0]), ctx.size_list([step])]
    return ctx.op("Slice", inputs)


class _Unbind(Lazy):
    def __init__(self, x: str, dim: int) -> None:
        self.x, self.dim = x, dim

    def getitem(self, ctx: OnnxBuilder, index: int) -> str:
        return ctx.op("Gather", [self.x, ctx.scalar(index, INT64)], rank=ctx.rank(self.x) - 1, axis=self.dim)


class _Split(Lazy):
    def __init__(self, x: str, dim: int, bounds: list[tuple[int, int]] | None, size: int | None) -> None:
        self.x, self.dim, self.bounds, self.size = x, dim, bounds, size

    def getitem(self, ctx: OnnxBuilder, index: int) -> str:
        start, end = (
            self.bounds[index] if self.bounds is not None else (index * self.size, (index + 1) * self.size)
        )
        return ctx.op("Slice", [self.x, ctx.ints([start]), ctx.ints([end]), ctx.ints([self.dim])])


@register("unbind.int", "unbind_copy.int")
def _unbind(ctx: OnnxBuilder, node: fx.Node) -> Lazy:
    a = Args(node)
    return _Unbind(ctx.t(a.self), a.dim or 0)


@register("split.Tensor", "split_with_sizes", "split_copy.Tensor", "split_with_sizes_copy")
def _split(ctx: OnnxBuilder, node: fx.Node) -> Lazy:
    a = Args(node)
    sizes = a.split_size if a.split_size is not None else a.split_sizes
    if isinstance(sizes, int):
        return _Split(ctx.t(a.self), a.dim or 0, None, sizes)
    if not all(isinstance(s, int) for s in sizes):
        raise unsupported(node, "split sizes must be python ints")
    offsets = np.cumsum([0, *sizes]).tolist()
    return _Split(ctx.t(a.self), a.dim or 0, list(zip(offsets[:-1], offsets[1:], strict=True)), None)


@register("index_select")
def _index_select(ctx: OnnxBuilder, node: fx.Node) -> str:
    a = Args(node)
    x, index = ctx.t(a.self), ctx.t(a.index)
    if ctx.rank(index) == 0:
        index = ctx.op("Reshape", [index, ctx.ints([1])], rank=1)
    return ctx.op("Gather", [x, index], rank=ctx.rank(x), axis=a.dim)


@register("embedding")
def _embedding(ctx: OnnxBuilder, node: fx.Node) -> str:
    a = Args(node)
    w, index = ctx.t(a.weight), ctx.t(a.indices)
    return ctx.op("Gather", [w, index], rank=ctx.rank(index) + ctx.rank(w) - 1, axis=0)


@register("gather")
def _gather(ctx: OnnxBuilder, node: fx.Node) -> str:
    a = Args(node)
    return ctx.op("GatherElements", [ctx.t(a.self), ctx.t(a.index)], axis=a.dim)


def _stacked_indices(ctx: OnnxBuilder, indices: list[str]) -> tuple[str, int]:
    """Broadcast integer index tensors against each other and stack them on a new last axis."""
    rank = max(ctx.rank(i) for i in indices)
    zero = None
    for i in indices:
        term = ctx.op("Mul", [ctx.cast(i, INT64), ctx.scalar(0, INT64)], rank=ctx.rank(i))
        zero = term if zero is None else ctx.op("Add", [zero, term], rank=max(ctx.rank(zero), ctx.rank(term)))
    shape = ctx.shape(zero)
    axis = ctx.ints([-1])
    pieces = [
        ctx.op("Unsqueeze", [ctx.op("Expand", [ctx.cast(i, INT64), shape], rank=rank), axis], rank=rank + 1)
        for i in indices
    ]
    stacked = pieces[0] if len(pieces) == 1 else ctx.op("Concat", pieces, axis=-1)
    return stacked, rank


@register("index.Tensor", "_unsafe_index.Tensor")
def _index(ctx: OnnxBuilder, node: fx.Node) -> str:
    a = Args(node)
    x = ctx.t(a.self)
    rank = ctx.rank(x)
    given = [(k, idx) for k, idx in enumerate(a.indices) if idx is not None]
    if len(given) == 1:
        k, idx = given[0]
        index = ctx.t(idx)
        if ctx.dtype(index) == BOOL:
            if ctx.rank(index) == 1:  # boolean mask along one axis: data-dependent size
                return ctx.op("Compress", [x, index], axis=k)
            if k == 0:
                nonzero = ctx.op("NonZero", [index], dtype=INT64, rank=2)
                coords = ctx.op("Transpose", [nonzero], perm=[1, 0])
                return ctx.op("GatherND", [x, coords], rank=rank - ctx.rank(index) + 1)
            raise unsupported(node, "a multi-dimensional boolean mask after a leading ':'")
        return ctx.op("Gather", [x, index], rank=rank - 1 + ctx.rank(index), axis=k)
    positions = [k for k, _ in given]
    if positions != list(range(len(given))):
        raise unsupported(node, "advanced indexing with several index tensors not starting at dim 0")
    values = [ctx.t(idx) for _, idx in given]
    if any(ctx.dtype(v) == BOOL for v in values):
        raise unsupported(node, "boolean masks mixed with other index tensors")
    stacked, index_rank = _stacked_indices(ctx, values)
    return ctx.op("GatherND", [x, stacked], rank=index_rank + rank - len(values))


@register("index_put", "_unsafe_index_put")
def _index_put(ctx: OnnxBuilder, node: fx.Node) -> str:
    a = Args(node)
    x = ctx.t(a.self)
    given = [(k, idx) for k, idx in enumerate(a.indices) if idx is not None]
    if len(given) != 1 or given[0][0] != 0:
        raise unsupported(node, "index_put supports one index tensor on the first dim")
    index = ctx.t(given[0][1])
    if ctx.dtype(index) == BOOL:
        coords = ctx.op("Transpose", [ctx.op("NonZero", [index], dtype=INT64, rank=2)], perm=[1, 0])
        lead = ctx.shape(coords, 0, 1)
        covered = ctx.rank(index)
    else:
        coords = ctx.op("Unsqueeze", [ctx.cast(index, INT64), ctx.ints([-1])], rank=ctx.rank(index) + 1)
        lead = ctx.shape(index)
        covered = 1
    rest_rank = ctx.rank(x) - covered
    shape = (
        ctx.op("Concat", [lead, ctx.shape(x, covered)], dtype=INT64, rank=1, axis=0) if rest_rank else lead
    )
    out_rank = ctx.rank(coords) - 1 + rest_rank
    values = ctx.op("Expand", [ctx.cast(ctx.t(a.values), ctx.dtype(x)), shape], rank=out_rank)
    reduction = "add" if a.accumulate else None
    return ctx.op("ScatterND", [x, coords, values], reduction=reduction)


# ---------------------------------------------------------------------------------------------- scatter family
_SAME_VALUES_1D = (
    "expand.default",
    "view.default",
    "reshape.default",
    "_unsafe_view.default",
    "clone.default",
)


def _unexpanded(ctx: OnnxBuilder, arg: Any) -> Any:
    """The 1-D index under expands/views that change nothing (same traced shape), so layers share its sort."""
    targets = {_resolve(t) for t in _SAME_VALUES_1D}
    while isinstance(arg, fx.Node) and arg.target in targets and isinstance(arg.args[0], fx.Node):
        inner = arg.args[0]
        shape, inner_shape = ctx.meta_shape(arg), ctx.meta_shape(inner)
        if shape is None or inner_shape is None or len(shape) != 1 or str(shape) != str(inner_shape):
            break
        arg = inner
    return arg


def _static_trailing(ctx: OnnxBuilder, arg: Any) -> list[int] | None:
    """The traced dims of ``arg`` after the first when they are all plain integers (e.g. ``[F]``).

    Q/DQ nodes inserted by passes carry no traced value: their input's shape is theirs.
    """
    while (
        isinstance(arg, fx.Node)
        and ctx.meta_shape(arg) is None
        and arg.target in (qg_ops.QUANTIZE, qg_ops.DEQUANTIZE)
    ):
        arg = arg.args[0]
    shape = ctx.meta_shape(arg)
    if shape is None or len(shape) < 2 or not all(isinstance(d, int) for d in shape[1:]):
        return None
    return [int(d) for d in shape[1:]]


def _segment_add(ctx: OnnxBuilder, x: str, index: str, src: str, trailing: list[int] | None = None) -> str:
    """``x + segment_sum(src by index)`` along dim 0 (``index`` 1-D); the Add is skipped on a zero ``x``."""
    total = onnx_segment.segment_reduce(ctx, src, index, ctx.shape(x, 0, 1), "sum", trailing)
    producer = ctx.producer(x)
    if (
        producer is not None
        and producer.op_type == "ConstantOfShape"
        and onnx_segment.constant_fill(ctx, x) == 0
    ):
        return total
    return ctx.op("Add", [x, total])


@register("scatter_add")
def _scatter_add(ctx: OnnxBuilder, node: fx.Node) -> str:
    a = Args(node)
    x = ctx.t(a.self)
    if (
        onnx_segment.enabled(ctx)
        and a.dim in (0, -1)
        and ctx.rank(x) == 1
        and _same_shape(ctx, a.index, a.src)
    ):
        index = ctx.t(_unexpanded(ctx, a.index))
        return _segment_add(ctx, x, index, ctx.cast(ctx.t(a.src), ctx.dtype(x)))
    src = _updates_like_index(ctx, a.index, a.src, ctx.cast(ctx.t(a.src), ctx.dtype(x)))
    return ctx.op("ScatterElements", [x, ctx.t(a.index), src], axis=a.dim, reduction="add")


@register("scatter.src", "scatter.value", "scatter.reduce", "scatter.value_reduce")
def _scatter(ctx: OnnxBuilder, node: fx.Node) -> str:
    a = Args(node)
    x = ctx.t(a.self)
    index = ctx.t(a.index)
    if a.src is not None:
        src = _updates_like_index(ctx, a.index, a.src, ctx.cast(ctx.t(a.src), ctx.dtype(x)))
    else:
        src = ctx.fill(ctx.shape(index), a.value, ctx.dtype(x), ctx.rank(index))
    reduction = {None: None, "add": "add", "multiply": "mul"}.get(a.reduce, "unknown")
    if reduction == "unknown":
        raise unsupported(node, f"scatter reduce={a.reduce!r}")
    return ctx.op("ScatterElements", [x, index, src], axis=a.dim, reduction=reduction)


@register("scatter_reduce.two")
def _scatter_reduce_two(ctx: OnnxBuilder, node: fx.Node) -> str:
    a = Args(node)
    if a.reduce not in ("sum", "prod", "mean", "amax", "amin"):
        raise unsupported(node, f"scatter_reduce reduce={a.reduce!r}")
    x = ctx.t(a.self)
    src = _updates_like_index(ctx, a.index, a.src, ctx.cast(ctx.t(a.src), ctx.dtype(x)))
    include_self = True if a.include_self is None else bool(a.include_self)
    return _scatter_reduce(ctx, x, ctx.t(a.index), src, a.dim, a.reduce, include_self)


@register("index_add")
def _index_add(ctx: OnnxBuilder, node: fx.Node) -> str:
    a = Args(node)
    x = ctx.t(a.self)
    source = ctx.cast(ctx.t(a.source), ctx.dtype(x))
    source = _scale_by(ctx, source, a.alpha, ctx.dtype(x))
    if onnx_segment.enabled(ctx) and _norm(a.dim, ctx.rank(x)) == 0:
        return _segment_add(ctx, x, ctx.t(_unexpanded(ctx, a.index)), source, _static_trailing(ctx, a.source))
    index = _index_along(ctx, ctx.t(a.index), source, a.dim)
    return ctx.op("ScatterElements", [x, index, source], axis=a.dim, reduction="add")


# ---------------------------------------------------------------------------------------------- creation
def _dtype_or(dtype: Any, default: int) -> int:
    return onnx_type(dtype) if isinstance(dtype, torch.dtype) else default


def _fill_dtype(value: Any) -> int:
    if isinstance(value, bool):
        return BOOL
    if isinstance(value, int) or isinstance(value, fx.Node):
        return INT64
    return FLOAT


@register("arange.default", "arange.start", "arange.start_step")
def _arange(ctx: OnnxBuilder, node: fx.Node) -> str:
    a = Args(node)
    start = 0 if a.start is None else a.start
    step = 1 if a.step is None else a.step
    bounds = (start, a.end, step)
    is_float_arg = any(
        isinstance(b, float) or (ctx.is_scalar_value(b) and ctx.py_scalars[ctx.t(b)] is float) for b in bounds
    )
    dtype = _dtype_or(a.dtype, FLOAT if is_float_arg else INT64)
    start, end, step = (ctx.operand(b, dtype) for b in bounds)
    return ctx.op("Range", [start, end, step], dtype=dtype, rank=1)


@register("zeros", "ones", "empty.memory_format", "full", "new_zeros", "new_ones", "new_empty", "new_full")
def _full(ctx: OnnxBuilder, node: fx.Node) -> str:
    a = Args(node)
    packet = node.target.overloadpacket.__name__
    value = {"zeros": 0, "ones": 1, "empty": 0, "new_zeros": 0, "new_ones": 1, "new_empty": 0}.get(
        packet, a.fill_value
    )
    default = (
        ctx.dtype(ctx.t(a.self))
        if packet.startswith("new_")
        else (_fill_dtype(value) if packet == "full" else FLOAT)
    )
    dtype = _dtype_or(a.dtype, default)
    size = list(a.size)
    return ctx.fill(ctx.size_list(size), value, dtype, len(size))


@register("zeros_like", "ones_like", "empty_like", "full_like")
def _full_like(ctx: OnnxBuilder, node: fx.Node) -> str:
    a = Args(node)
    x = ctx.t(a.self)
    packet = node.target.overloadpacket.__name__
    value = {"zeros_like": 0, "ones_like": 1, "empty_like": 0}.get(packet, a.fill_value)
    dtype = _dtype_or(a.dtype, ctx.dtype(x))
    return ctx.fill(ctx.shape(x), value, dtype, ctx.rank(x))


@register("scalar_tensor")
def _scalar_tensor(ctx: OnnxBuilder, node: fx.Node) -> str:
    a = Args(node)
    return ctx.operand(a.s, _dtype_or(a.dtype, FLOAT))


# ---------------------------------------------------------------------------------------------- sizes, SymInts
def _scalar_result(ctx: OnnxBuilder, name: str, kind: type) -> str:
    ctx.py_scalars[name] = kind
    return name


@register("sym_size.int")
def _sym_size(ctx: OnnxBuilder, node: fx.Node) -> str:
    x = ctx.t(node.args[0])
    out = ctx.op("Gather", [ctx.shape(x), ctx.scalar(node.args[1], INT64)], dtype=INT64, rank=0, axis=0)
    return _scalar_result(ctx, out, int)


@register("sym_numel")
def _sym_numel(ctx: OnnxBuilder, node: fx.Node) -> str:
    return _scalar_result(ctx, ctx.op("Size", [ctx.t(node.args[0])], dtype=INT64, rank=0), int)


@register("_local_scalar_dense", "item")
def _item(ctx: OnnxBuilder, node: fx.Node) -> str:
    x = ctx.t(node.args[0])
    dtype = ctx.dtype(x)
    kind = float if is_float(dtype) else bool if dtype == BOOL else int
    scalar = ctx.op("Reshape", [x, ctx.ints([])], rank=0)
    if kind is int:
        scalar = ctx.cast(scalar, INT64)
    elif kind is float:
        scalar = ctx.cast(scalar, TensorProto.DOUBLE)
    return _scalar_result(ctx, scalar, kind)


def _kind(ctx: OnnxBuilder, arg: Any) -> type:
    if isinstance(arg, bool | int | float):
        return type(arg)
    if ctx.is_scalar_value(arg):
        return ctx.py_scalars[ctx.t(arg)]
    return float if is_float(ctx.dtype(ctx.t(arg))) else int


def _sym_operands(ctx: OnnxBuilder, args: Sequence[Any]) -> tuple[list[str], int, type]:
    kinds = [_kind(ctx, a) for a in args]
    kind = float if float in kinds else int
    dtype = TensorProto.DOUBLE if kind is float else INT64
    return [ctx.operand(a, dtype) for a in args], dtype, kind


def _sym_binary(op_type: str):
    def lower(ctx: OnnxBuilder, node: fx.Node) -> str:
        (x, y), dtype, kind = _sym_operands(ctx, node.args)
        return _scalar_result(ctx, ctx.op(op_type, [x, y], dtype=dtype, rank=0), kind)

    return lower


def _sym_floordiv(ctx: OnnxBuilder, node: fx.Node) -> str:
    (x, y), dtype, kind = _sym_operands(ctx, node.args)
    return _scalar_result(ctx, _floor_div(ctx, x, y, dtype, 0), kind)


def _sym_mod(ctx: OnnxBuilder, node: fx.Node) -> str:
    (x, y), dtype, kind = _sym_operands(ctx, node.args)
    if kind is int:
        return _scalar_result(ctx, ctx.op("Mod", [x, y], dtype=dtype, rank=0, fmod=0), kind)
    floored = _floor_div(ctx, x, y, dtype, 0)
    return _scalar_result(ctx, ctx.op("Sub", [x, ctx.op("Mul", [floored, y])]), kind)


def _sym_truediv(ctx: OnnxBuilder, node: fx.Node) -> str:
    x, y = (ctx.operand(a, TensorProto.DOUBLE) for a in node.args)
    return _scalar_result(ctx, ctx.op("Div", [x, y], dtype=TensorProto.DOUBLE, rank=0), float)


def _sym_compare(op_type: str, negate: bool = False):
    def lower(ctx: OnnxBuilder, node: fx.Node) -> str:
        (x, y), _, _ = _sym_operands(ctx, node.args)
        out = ctx.op(op_type, [x, y], dtype=BOOL, rank=0)
        return _scalar_result(ctx, ctx.op("Not", [out]) if negate else out, bool)

    return lower


def _sym_neg(ctx: OnnxBuilder, node: fx.Node) -> str:
    (x,), dtype, kind = _sym_operands(ctx, node.args)
    return _scalar_result(ctx, ctx.op("Neg", [x]), kind)


def _sym_not(ctx: OnnxBuilder, node: fx.Node) -> str:
    return _scalar_result(ctx, ctx.op("Not", [ctx.operand(node.args[0], BOOL)]), bool)


def _sym_float(ctx: OnnxBuilder, node: fx.Node) -> str:
    return _scalar_result(ctx, ctx.operand(node.args[0], TensorProto.DOUBLE), float)


def _sym_int(ctx: OnnxBuilder, node: fx.Node) -> str:
    return _scalar_result(ctx, ctx.operand(node.args[0], INT64), int)


LOWERINGS.update(
    {
        operator.add: _sym_binary("Add"),
        operator.sub: _sym_binary("Sub"),
        operator.mul: _sym_binary("Mul"),
        operator.floordiv: _sym_floordiv,
        operator.mod: _sym_mod,
        operator.truediv: _sym_truediv,
        operator.neg: _sym_neg,
        operator.eq: _sym_compare("Equal"),
        operator.ne: _sym_compare("Equal", negate=True),
        operator.lt: _sym_compare("Less"),
        operator.le: _sym_compare("LessOrEqual"),
        operator.gt: _sym_compare("Greater"),
        operator.ge: _sym_compare("GreaterOrEqual"),
        torch.sym_max: _sym_binary("Max"),
        torch.sym_min: _sym_binary("Min"),
        torch.sym_not: _sym_not,
        torch.sym_float: _sym_float,
        torch.sym_int: _sym_int,
        SMP_MULTIPLIER: _identity,  # SMP's multiplier marker (an unfrozen FP32 graph computes λ in ONNX)
    }
)


@register(operator.getitem)
def _getitem(ctx: OnnxBuilder, node: fx.Node) -> Any:
    container, index = node.args
    value = ctx.env[container] if isinstance(container, fx.Node) else None
    if isinstance(value, Lazy):
        return value.getitem(ctx, index)
    if isinstance(value, tuple | list):
        return value[index]
    raise unsupported(node, "getitem on a value that is not a tuple of tensors")


# ---------------------------------------------------------------------------------------------- quantgraph IR ops
@register(qg_ops.GATHER)
def _qg_gather(ctx: OnnxBuilder, node: fx.Node) -> str | QValue:
    stored = ctx.env.get(node.args[0])
    if isinstance(stored, QValue):  # gather quantized rows in their 8-bit type; cast only where needed
        index = ctx.t(node.args[1])
        rank = stored.rank - 1 + ctx.rank(index)
        gathered = ctx.op("Gather", [stored.name, index], dtype=stored.dtype, rank=rank, axis=0)
        return QValue(gathered, stored.dtype, rank, stored.offset)
    src, index = ctx.t(node.args[0]), ctx.t(node.args[1])
    rank = ctx.rank(src) - 1 + ctx.rank(index)
    dq = ctx.producer(src)
    if (
        dq is not None
        and dq.op_type == "DequantizeLinear"
        and ctx.dtype(dq.input[0]) in (TensorProto.INT8, TensorProto.UINT8)  # ONNX Gather has no int4
        and _per_tensor(ctx, dq)
        and _feeds_linear(node.args[0])
    ):
        # gather the integers, then dequantize (equal values): the DequantizeLinear then feeds only the
        # linear layer, which onnxruntime fuses into QGemm (SAGE's root weight reads the same rows).
        # Not otherwise: a QuantizeLinear read by a Gather stops onnxruntime fusing the layer before it.
        rows = ctx.op("Gather", [dq.input[0], index], rank=rank, axis=0)
        return ctx.op("DequantizeLinear", [rows, *dq.input[1:]], dtype=ctx.dtype(src), rank=rank)
    return ctx.op("Gather", [src, index], rank=rank, axis=0)


_LINEAR_TARGETS = ("linear.default", "addmm.default", "mm.default", "matmul.default")


def _feeds_linear(arg: Any) -> bool:
    """Whether the FX value ``arg`` is also an input of a linear layer."""
    targets = {_resolve(t) for t in _LINEAR_TARGETS}
    return isinstance(arg, fx.Node) and any(user.target in targets for user in arg.users)


def _per_tensor(ctx: OnnxBuilder, node: Any) -> bool:
    """A Q/DQ node with 0-d scale and zero point (its parameters do not depend on the row)."""
    params = [i for i in node.input[1:] if i]
    return all(name in ctx.initializers and not ctx.initializers[name].dims for name in params)


@register(qg_ops.SCATTER)
def _qg_scatter(ctx: OnnxBuilder, node: fx.Node) -> str:
    src_arg, index_arg, num_nodes, reduce = (list(node.args) + [None] * 4)[:4]
    num_nodes = node.kwargs.get("num_nodes", num_nodes)
    reduce = node.kwargs.get("reduce", reduce)
    if reduce not in qg_ops.REDUCTIONS:
        raise unsupported(node, f"scatter reduce={reduce!r}")
    src, index = ctx.t(src_arg), ctx.cast(ctx.t(index_arg), INT64)
    dtype, rank = ctx.dtype(src), ctx.rank(src)
    rows = ctx.size_list([num_nodes])
    if onnx_segment.enabled(ctx):
        index = ctx.t(_unexpanded(ctx, index_arg))
        return onnx_segment.segment_reduce(ctx, src, index, rows, reduce, _static_trailing(ctx, src_arg))
    out_shape = (
        rows if rank == 1 else ctx.op("Concat", [rows, ctx.shape(src, 1)], dtype=INT64, rank=1, axis=0)
    )
    wide_index = _index_along(ctx, index, src, 0)
    if reduce in ("mean", "max"):
        count = ctx.op(
            "ScatterElements",
            [ctx.fill(rows, 0, dtype, 1), index, ctx.fill(ctx.shape(index), 1, dtype, 1)],
            axis=0,
            reduction="add",
        )
        if rank > 1:
            count = ctx.op("Reshape", [count, ctx.ints([-1] + [1] * (rank - 1))], rank=rank)
    if reduce in ("sum", "mean"):
        total = ctx.op(
            "ScatterElements", [ctx.fill(out_shape, 0, dtype, rank), wide_index, src], axis=0, reduction="add"
        )
        if reduce == "sum":
            return total
        return ctx.op("Div", [total, ctx.op("Max", [count, ctx.scalar(1, dtype)])], rank=rank)
    base = ctx.fill(out_shape, _lowest(dtype), dtype, rank)
    best = ctx.op("ScatterElements", [base, wide_index, src], axis=0, reduction="max")
    touched = ctx.op("Greater", [count, ctx.scalar(0, dtype)], dtype=BOOL)
    return ctx.op("Where", [touched, best, ctx.scalar(0, dtype)], rank=rank)
