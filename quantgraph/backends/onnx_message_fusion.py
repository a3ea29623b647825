"""Per-edge messages computed inside the segment reduction (``message_fusion=on``, the default; ``off`` materialises them).

The unfused export materialises every message as an ``[E, F]`` tensor (gather the source rows, weight
them, quantize/dequantize) and the segment ``Loop`` then gathers those rows again in destination order.
When the message is an element-wise expression of

* **edge-aligned gathers** ``Gather(D, I, axis=0)`` whose 1-D index ``I`` is the aggregation's index or
  another row of the same ``[2, E]`` edge tensor (so its length is provably E), and
* **constants** (initializers whose leading dim is 1 or whose rank is below the message's; a
  ``ConstantOfShape`` is its repeated value),

the ``Loop`` body rebuilds the expression on each level's ``[n_b, 2^b]`` block of destination-sorted
edge slots: ``Gather(D, Gather(I[perm], slots))`` instead of ``Gather(messages, perm[slots])`` (``I[perm]``
made once outside the loop, so the body reads its indices contiguously). Every element is
computed by the same ops from the same operands, and the reduction adds the same elements in the same
order, so the result is bit-for-bit the unfused one; ``[E, F]`` is never materialised (the unused
outer chain is pruned at export). Anything outside these forms keeps the unfused path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import onnx
from onnx import TensorProto

from quantgraph.backends.onnx_builder import OnnxBuilder

INT64 = TensorProto.INT64

#: element-wise ops rebuilt on the blocks (numpy broadcasting; no axis except Q/DQ's channel axis)
ELEMENTWISE = frozenset(
    "Add Sub Mul Div Max Min Neg Abs Relu LeakyRelu Sigmoid Tanh Exp Log Sqrt Reciprocal Round Floor Ceil "
    "Clip Cast Identity QuantizeLinear DequantizeLinear Where Equal Less Greater Not And Or Pow".split()
)
AXIS_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})


@dataclass
class MessagePlan:
    """How to rebuild ``root`` (an ``[E, ...]`` message) on a block of sorted edge slots."""

    root: str
    rank: int  # rank of the message


def plan(ctx: OnnxBuilder, src: str, index: str) -> MessagePlan | None:
    """A plan when ``src`` is a fusable message of the aggregation by ``index`` (1-D int64), else None."""
    if ctx.options.get("message_fusion", "off") != "on":
        return None
    checker = _Checker(ctx, index)
    if not checker.edge_value(src):
        return None
    return MessagePlan(src, ctx.rank(src))


def trailing_shape(ctx: OnnxBuilder, message: MessagePlan) -> str:
    """The message's dims after the first (``[rank - 1]`` int64), without reading the message itself."""
    shapes: dict[str, str | None] = {}

    def dims(name: str) -> str | None:  # None: no dims (rank 1) or all broadcast
        if name in shapes:
            return shapes[name]
        node = ctx.producer(name)
        rank = ctx.rank(name)
        out: str | None = None
        if rank <= 1 or node is None:
            pass
        elif node.op_type == "Gather":
            out = _row_shape(ctx, node.input[0])
        elif node.op_type in ("Reshape", "Unsqueeze"):  # a trailing 1 appended
            inner = dims(node.input[0])
            out = ctx.ints([1]) if inner is None else ctx.op("Concat", [inner, ctx.ints([1])], axis=0)
        else:
            parts = []
            for i in node.input[:1] if node.op_type in AXIS_OPS else node.input:  # Q/DQ: the data only
                if not i:
                    continue
                tensor = ctx.initializers.get(i)
                if tensor is not None:
                    const = list(tensor.dims)[1:] if len(tensor.dims) == rank else list(tensor.dims)
                    if const:
                        parts.append(ctx.ints([1] * (rank - 1 - len(const)) + const))
                elif ctx.rank(i) == rank:
                    parts.append(dims(i))
            parts = [p for p in parts if p is not None]
            out = parts[0] if parts else None
            for part in parts[1:]:  # numpy broadcasting: each dim is the largest (the others are 1)
                out = ctx.op("Max", [out, part])
        shapes[name] = out
        return out

    out = dims(message.root)
    return out if out is not None else ctx.ints([1] * (message.rank - 1))


def _row_shape(ctx: OnnxBuilder, rows: str) -> str:
    """``Shape(rows)[1:]``, read from the quantized tensor under a DequantizeLinear but never from a linear
    layer's output: a second reader of a Gemm's output stops onnxruntime fusing it into QGemm."""
    node = ctx.producer(rows)
    while node is not None and node.op_type in ("DequantizeLinear", "Cast"):
        rows = node.input[0]
        node = ctx.producer(rows)
    return ctx.op("Shape", [rows], dtype=INT64, rank=1, start=1)


def emit(
    ctx: OnnxBuilder,
    message: MessagePlan,
    op: Callable[..., str],
    slots: str,
    sorted_index: Callable[[str], str],
) -> str:
    """The message on ``slots`` ([n_b, w] positions in destination-sorted edge order), built with ``op``.

    ``sorted_index(I)``: the edge-aligned index ``I`` permuted into that order (an outer-graph value), so
    each block reads its indices contiguously: ``Gather(D, Gather(I[perm], slots))`` equals
    ``Gather(D, Gather(I, perm[slots]))`` value for value.
    """
    built: dict[str, str] = {}
    indices: dict[str, str] = {}  # one gather per distinct index (GCN reads src for h and for the norm)

    def index_on_slots(name: str) -> str:
        if name not in indices:
            indices[name] = op("Gather", [sorted_index(name), slots], axis=0)
        return indices[name]

    def rebuild(name: str) -> str:
        if name in built:
            return built[name]
        if name in ctx.initializers:
            return name
        node = ctx.producer(name)
        assert node is not None  # the checker accepted it
        if node.op_type == "ConstantOfShape":
            out = ctx.scalar(_fill_value(node), ctx.dtype(name))
        elif node.op_type == "Gather":
            out = op("Gather", [node.input[0], index_on_slots(node.input[1])], axis=0)
        elif node.op_type in ("Reshape", "Unsqueeze"):  # [E] -> [E, 1]
            out = op("Unsqueeze", [rebuild(node.input[0]), ctx.ints([-1])])
        else:
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            if node.op_type in AXIS_OPS and ctx.initializers[node.input[1]].dims:  # per channel
                attrs["axis"] = attrs.get("axis", 1) + 1  # one more leading dim: [n_b, w, ...]
            out = op(node.op_type, [rebuild(i) if i else "" for i in node.input], **attrs)
        built[name] = out
        return out

    return rebuild(message.root)


def _fill_value(node: onnx.NodeProto) -> Any:
    for attr in node.attribute:
        if attr.name == "value":
            return onnx.numpy_helper.to_array(attr.t).reshape(-1)[0].item()
    return 0.0


class _Checker:
    """Decides which values are edge-aligned expressions (memoised)."""

    def __init__(self, ctx: OnnxBuilder, index: str) -> None:
        self.ctx = ctx
        self.index_key = ctx.value_key(_uncast(ctx, index))
        self.edge_rows = _edge_tensor_key(ctx, _uncast(ctx, index))
        self.memo: dict[str, bool] = {}

    def edge_index(self, name: str) -> bool:
        """A 1-D index of length E: the aggregation's index or a row of the same edge tensor."""
        ctx = self.ctx
        if ctx.rank(name) != 1 or ctx.dtype(name) not in (INT64, TensorProto.INT32):
            return False
        name = _uncast(ctx, name)
        if ctx.value_key(name) == self.index_key:
            return True
        rows = _edge_tensor_key(ctx, name)
        return rows is not None and rows == self.edge_rows

    def constant(self, name: str, rank: int) -> bool:
        tensor = self.ctx.initializers.get(name)
        if tensor is not None:
            dims = list(tensor.dims)
            return len(dims) < rank or (len(dims) == rank and dims[0] == 1)
        node = self.ctx.producer(name)  # a fill of [E] (or [1]) beside [E] values: its value broadcasts
        return (
            node is not None and node.op_type == "ConstantOfShape" and rank == 1 and self.ctx.rank(name) == 1
        )

    def edge_value(self, name: str) -> bool:
        """``name`` is an element-wise expression of edge-aligned gathers and constants, rank >= 1."""
        if name in self.memo:
            return self.memo[name]
        self.memo[name] = False  # no cycles in a DAG; guards re-entry
        ctx, node = self.ctx, self.ctx.producer(name)
        ok = False
        if node is not None and name in ctx.info and ctx.rank(name) >= 1:
            rank = ctx.rank(name)
            if node.op_type == "Gather" and _axis(node) in (None, 0) and self.edge_index(node.input[1]):
                ok = True
            elif node.op_type in ("Reshape", "Unsqueeze"):
                inner = node.input[0]
                ok = ctx.rank(inner) == rank - 1 and _appends_one(ctx, node, rank) and self.edge_value(inner)
            elif node.op_type in ELEMENTWISE:
                ok = self._elementwise(node, rank)
        self.memo[name] = ok
        return ok

    def _elementwise(self, node: onnx.NodeProto, rank: int) -> bool:
        ctx = self.ctx
        if node.op_type in AXIS_OPS:
            axis = _axis(node)
            if any(i and i not in ctx.initializers for i in node.input[1:]):
                return False
            per_channel = bool(ctx.initializers[node.input[1]].dims)
            blocked = any(a.name == "block_size" and a.i for a in node.attribute)
            if blocked or per_channel and (axis if axis is not None else 1) <= 0:
                return False
        edge = False
        for i in node.input:
            if not i:
                continue
            if i in ctx.info and ctx.rank(i) == rank and self.edge_value(i):  # an operand on the edges
                edge = True
            elif not self.constant(i, rank):
                return False
        return edge


def _axis(node: onnx.NodeProto) -> int | None:
    for attr in node.attribute:
        if attr.name == "axis":
            return int(attr.i)
    return None


def _appends_one(ctx: OnnxBuilder, node: onnx.NodeProto, rank: int) -> bool:
    """``Unsqueeze(v, [-1] | [rank - 1])`` (a trailing dim of 1), or ``Reshape(v, [-1, 1])`` of a 1-D ``v``."""
    second = node.input[1] if len(node.input) > 1 else ""
    tensor = ctx.initializers.get(second)
    if tensor is None:
        return False
    values = onnx.numpy_helper.to_array(tensor).reshape(-1).tolist()
    if node.op_type == "Reshape":
        return rank == 2 and values == [-1, 1]
    return values in ([-1], [rank - 1])


def _uncast(ctx: OnnxBuilder, name: str) -> str:
    node = ctx.producer(name)
    while node is not None and node.op_type == "Cast":
        name = node.input[0]
        node = ctx.producer(name)
    return name


def _edge_tensor_key(ctx: OnnxBuilder, name: str) -> str | None:
    """For ``Gather(T, c, axis=0)`` with a 0-d constant ``c`` (a row of an edge tensor), the key of ``T``."""
    node = ctx.producer(name)
    if node is None or node.op_type != "Gather" or _axis(node) not in (None, 0):
        return None
    row = ctx.initializers.get(node.input[1])
    if row is None or list(row.dims):
        return None
    if ctx.rank(node.input[0]) != 2:
        return None
    return ctx.value_key(node.input[0])
