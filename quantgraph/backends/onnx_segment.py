"""Race-free segment aggregation for the ONNX backends (the default; ``onnx_aggregation=scatter`` keeps the old one).

A scatter-reduce by a destination index (``quantgraph.scatter``, 1-D ``scatter_add``/``index_add``) becomes:

* **graph preparation**, once per distinct index *expression* (every layer and the degree computation
  share it, even when the model recomputes the index per layer): ``perm = TopK(index, E, smallest)``
  (stable: ties keep edge order), then from the sorted index the in-degrees ``deg``, the segment starts
  ``ptr = CumSum(deg, exclusive)`` and each node's *level* ``ceil(log2(deg))``. With
  ``graph_input="csr"`` the permutation is a model input instead (:func:`prepare_graph_inputs` computes
  it once per graph), so no sort runs per call.
* **bucketed segment reduction**: a ``Loop`` over the levels; level ``b`` takes the nodes with
  ``2^(b-1) < deg <= 2^b``, gathers their messages into ``[n_b, 2^b, F]`` (slots past a node's degree
  read a padding row: 0 for sums, the segment's own first message for max), reduces axis 1 with
  ``ReduceSum``/``ReduceMax`` and writes the rows with ``ScatterND`` (distinct rows, no reduction).
  Sums are exact for integers (every partial sum is a sub-sum of one node's messages, so the int32
  bound ``deg * max|m|`` of the overflow proof covers it); float sums differ from a sequential sum only
  by rounding. Nothing adds into shared memory, so the result is the same at any thread count.
* **messages computed per block** (``message_fusion=on``, the default of every ONNX backend: measured
  faster in onnxruntime for FP32, QDQ and integer exports, see docs/onnx_benchmarks.md): when the message is an element-wise
  expression of edge-aligned gathers and constants (GCN's ``w_ij * h_j`` with its Q/DQ, GAT's attention
  times ``h_j``, SAGE's and GIN's ``h_j``), the loop body computes it on each block from the node rows
  (``onnx_message_fusion``), so no ``[E, F]`` message tensor exists; bit-for-bit the unfused result.
* mean = sum / max(deg, 1); max leaves nodes without edges at 0 (the IR's semantics).

Only standard ONNX ops (opset 21) are used.
"""

from __future__ import annotations

import base64
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from quantgraph.backends import onnx_message_fusion
from quantgraph.backends.onnx_builder import OnnxBuilder

INT64, BOOL, DOUBLE = TensorProto.INT64, TensorProto.BOOL, TensorProto.DOUBLE
#: ``onnx_aggregation`` values
AGGREGATIONS = ("segment", "scatter")
#: ``message_fusion`` values, the default first (``on``: messages computed inside the segment loop,
#: ``onnx_message_fusion``; measured faster for the FP32, QDQ and integer exports, docs/onnx_benchmarks.md)
MESSAGE_FUSION = ("on", "off")
#: ``graph_input`` values: ``edges`` (x, edge_index; the sort runs inside the model) or ``csr``
GRAPH_INPUTS = ("edges", "csr")
#: model metadata key holding the base64 ONNX model that computes the prepared-graph inputs
PREP_MODEL_KEY = "quantgraph.prepare_graph"
PERM_PREFIX = "graph_perm_"


@dataclass(frozen=True)
class SortPrep:
    """An edge index sorted by destination: ``perm`` [E] (sorted slot -> edge), ``perm_pad`` [E+1]."""

    perm: str
    perm_pad: str
    sorted_index: str
    num_edges: str  # 0-d int64


@dataclass(frozen=True)
class NodePrep:
    """Per-node segment data: ``deg``/``ptr`` [N] int64, ``levels`` (bits of the largest degree), ``nodes``."""

    sort: SortPrep
    deg: str
    ptr: str
    levels: str
    nodes: str


def enabled(ctx: OnnxBuilder) -> bool:
    return ctx.options.get("onnx_aggregation", "segment") == "segment"


# ---------------------------------------------------------------------------------------------- preparation
def _sort(ctx: OnnxBuilder, index: str) -> SortPrep:
    key = ("sort", ctx.value_key(index))
    cached = ctx.segment_preps.get(key)
    if cached is not None:
        return cached
    num_edges_1d = ctx.shape(index)
    num_edges = ctx.op("Squeeze", [num_edges_1d, ctx.ints([0])], rank=0)
    _, perm = ctx.op(
        "TopK", [index, num_edges_1d], outputs=[(INT64, 1), (INT64, 1)], axis=0, largest=0, sorted=1
    )
    if ctx.options.get("graph_input", "edges") == "csr":  # the model reads it; the prep model computes it
        name = ctx.reserve(f"{PERM_PREFIX}{len(ctx.perm_inputs)}")
        ctx.set_info(name, INT64, 1)
        ctx.perm_inputs.append((name, perm))
        perm = name
    sorted_index = ctx.op("Gather", [index, perm], axis=0)
    perm_pad = ctx.op("Concat", [perm, num_edges_1d], axis=0)
    prep = SortPrep(perm, perm_pad, sorted_index, num_edges)
    ctx.segment_preps[key] = prep
    return prep


def _nodes(ctx: OnnxBuilder, index: str, rows: str) -> NodePrep:
    """``rows``: a 1-element int64 tensor (the number of destination rows N)."""
    key = ("nodes", ctx.value_key(index), ctx.value_key(rows))
    cached = ctx.segment_preps.get(key)
    if cached is not None:
        return cached
    sort = _sort(ctx, index)
    s, e1 = sort.sorted_index, ctx.shape(index)
    minus_one = ctx.ints([-1])
    previous = ctx.op("Slice", [ctx.op("Concat", [minus_one, s], axis=0), ctx.ints([0]), e1, ctx.ints([0])])
    following = ctx.op("Slice", [ctx.op("Concat", [s, minus_one], axis=0), ctx.ints([1]), ctx.ints([2**62])])
    is_start = ctx.op("Not", [ctx.op("Equal", [s, previous], dtype=BOOL)])
    is_end = ctx.op("Not", [ctx.op("Equal", [s, following], dtype=BOOL)])
    one, zero = ctx.scalar(1, INT64), ctx.scalar(0, INT64)
    slots = ctx.op("Range", [zero, sort.num_edges, one], dtype=INT64, rank=1)
    starts = ctx.op("Compress", [slots, is_start], axis=0)
    ends = ctx.op("Compress", [ctx.op("Add", [slots, one]), is_end], axis=0)
    present = ctx.op("Compress", [s, is_start], axis=0)  # distinct destinations, ascending
    zeros = ctx.fill(rows, 0, INT64, 1)
    # distinct rows and no reduction: a plain copy, race-free; at most N elements
    deg = ctx.op("ScatterElements", [zeros, present, ctx.op("Sub", [ends, starts])], axis=0)
    ptr = ctx.op("CumSum", [deg, zero], exclusive=1)
    top = ctx.op("ReduceMax", [ctx.op("Concat", [deg, ctx.ints([0])], axis=0)], rank=0, keepdims=0)
    # bits of the largest degree: floor(log2(d + 1/2)) + 1 (0 without edges), exact in float64
    log2 = ctx.op(
        "Div",
        [
            ctx.op("Log", [ctx.op("Add", [ctx.cast(top, DOUBLE), ctx.scalar(0.5, DOUBLE)])]),
            ctx.scalar(math.log(2), DOUBLE),
        ],
    )
    levels = ctx.op("Max", [ctx.op("Add", [ctx.cast(ctx.op("Floor", [log2]), INT64), one]), zero])
    nodes = ctx.op(
        "Range", [zero, ctx.op("Squeeze", [rows, ctx.ints([0])], rank=0), one], dtype=INT64, rank=1
    )
    prep = NodePrep(sort, deg, ptr, levels, nodes)
    ctx.segment_preps[key] = prep
    return prep


# ---------------------------------------------------------------------------------------------- reduction
def constant_fill(ctx: OnnxBuilder, name: str) -> float | None:
    """The value of a ``ConstantOfShape`` output (a tensor of one repeated number), else None."""
    producer = ctx.producer(name)
    if producer is None or producer.op_type != "ConstantOfShape":
        return None
    for attr in producer.attribute:
        if attr.name == "value":
            return float(onnx.numpy_helper.to_array(attr.t).reshape(-1)[0])
    return 0.0


def segment_reduce(
    ctx: OnnxBuilder, src: str, index: str, rows: str, reduce: str, trailing: Sequence[int] | None = None
) -> str:
    """``reduce`` (sum, mean, max) of the rows of ``src`` [E, ...] into ``rows`` rows by ``index`` [E].

    ``trailing``: ``src``'s dims after the first when they are static (the traced ``[F]``); a fused message
    then needs no ``Shape`` at all (a ``Shape`` of a linear layer's quantized output stops onnxruntime
    fusing the layer into QGemm).
    """
    prep = _nodes(ctx, ctx.cast(index, INT64), rows)
    dtype, rank = ctx.dtype(src), ctx.rank(src)
    fill = constant_fill(ctx, src) if rank == 1 else None
    if fill is not None and reduce in ("sum", "mean"):  # e.g. the degree: sum of ones
        total = ctx.op("Mul", [ctx.cast(prep.deg, dtype), ctx.scalar(fill, dtype)])
        if reduce == "sum":
            return total
        return ctx.op("Div", [total, ctx.cast(ctx.op("Max", [prep.deg, ctx.scalar(1, INT64)]), dtype)])
    message = onnx_message_fusion.plan(ctx, src, index)
    if rank == 1:
        out_shape = rows
    else:
        if message is None:
            dims = ctx.shape(src, 1)
        elif trailing is not None and len(trailing) == rank - 1:
            dims = ctx.ints(list(trailing))
        else:
            dims = onnx_message_fusion.trailing_shape(ctx, message)
        out_shape = ctx.op("Concat", [rows, dims], dtype=INT64, rank=1, axis=0)
    if reduce == "max":
        init = ctx.fill(out_shape, _lowest(dtype), dtype, rank)
        best = _bit_loop(ctx, prep, src, init, "ReduceMax", "max", message)
        touched = _per_row(ctx, ctx.op("Greater", [prep.deg, ctx.scalar(0, INT64)], dtype=BOOL), rank)
        return ctx.op("Where", [touched, best, ctx.scalar(0, dtype)], rank=rank)
    total = _bit_loop(ctx, prep, src, ctx.fill(out_shape, 0, dtype, rank), "ReduceSum", "add", message)
    if reduce != "mean":
        return total
    count = _per_row(ctx, ctx.cast(ctx.op("Max", [prep.deg, ctx.scalar(1, INT64)]), dtype), rank)
    return ctx.op("Div", [total, count], rank=rank)


def _per_row(ctx: OnnxBuilder, value: str, rank: int) -> str:
    """A per-row [N] value as [N, 1, ...] (rank ``rank``)."""
    if rank == 1:
        return value
    return ctx.op("Reshape", [value, ctx.ints([-1] + [1] * (rank - 1))], rank=rank)


def _lowest(dtype: int) -> float | int:
    np_type = helper.tensor_dtype_to_np_dtype(dtype)
    return -math.inf if np.issubdtype(np_type, np.floating) else int(np.iinfo(np_type).min)


def _sorted_by(ctx: OnnxBuilder, sort: SortPrep, index: str) -> str:
    """``index[perm]`` (an edge-aligned [E] index in destination-sorted order), once per index and sort."""
    key = ("sorted_by", sort.perm, ctx.value_key(index))
    cached = ctx.segment_preps.get(key)
    if cached is None:
        cached = ctx.segment_preps[key] = ctx.op("Gather", [index, sort.perm], axis=0)
    return cached


def _bit_loop(
    ctx: OnnxBuilder,
    prep: NodePrep,
    src: str,
    init: str,
    reducer: str,
    combine: str,
    message: onnx_message_fusion.MessagePlan | None = None,
) -> str:
    """A ``Loop`` over the bits of the in-degrees: iteration ``b`` takes, for every node whose degree has
    bit ``b`` set, the next ``2^b`` of its destination-sorted messages (after the higher bits' pieces),
    gathers them as ``[n_b, 2^b, F]``, reduces axis 1 and combines the rows into the accumulator
    (``ScatterND`` with ``reduction=combine``). Every message is read exactly once; rows within an
    iteration are distinct, so the result is the same at any thread count. With a ``message`` plan the
    block's messages are computed in the body from their operands (``onnx_message_fusion``) instead of
    gathered, their edge-aligned indices read from destination-sorted copies made once outside the loop.
    """
    dtype, rank = ctx.dtype(init), ctx.rank(init)
    body: list[onnx.NodeProto] = []

    def op(op_type: str, inputs: list[str], **attrs: Any) -> str:
        out = ctx.fresh("loop")
        body.append(helper.make_node(op_type, inputs, [out], name=f"{out}/{op_type}", **attrs))
        return out

    bit, cond_in, acc_in = ctx.fresh("bit"), ctx.fresh("cond"), ctx.fresh("acc")
    axis1, one = ctx.ints([1]), ctx.scalar(1, INT64)
    width = op("Cast", [op("Pow", [ctx.scalar(2.0, DOUBLE), op("Cast", [bit], to=DOUBLE)])], to=INT64)
    high = op("Mul", [op("Div", [prep.deg, op("Add", [width, width])]), op("Add", [width, width])])
    has_bit = op("Not", [op("Less", [op("Sub", [prep.deg, high]), width])])  # deg mod 2^(b+1) >= 2^b
    members = op("Compress", [prep.nodes, has_bit], axis=0)
    start = op("Gather", [op("Add", [prep.ptr, high]), members], axis=0)
    slots = op("Add", [op("Unsqueeze", [start, axis1]), op("Range", [ctx.scalar(0, INT64), width, one])])
    if message is None:
        edges = op("Gather", [prep.sort.perm, slots], axis=0)  # [n_b, 2^b] edge ids
        gathered = op("Gather", [src, edges], axis=0)
    else:  # edge-aligned indices read in sorted order: contiguous slots instead of random edge ids
        gathered = onnx_message_fusion.emit(ctx, message, op, slots, lambda i: _sorted_by(ctx, prep.sort, i))
    reduced = op(reducer, [gathered, axis1], keepdims=0)
    rows = op("Unsqueeze", [members, axis1])
    # the rows of one level are distinct, so the reducing ScatterND is race-free (no GatherND + combine)
    acc_out = op("ScatterND", [acc_in, rows, reduced], reduction=combine)
    cond_out = op("Identity", [cond_in])
    graph = helper.make_graph(
        body,
        ctx.fresh("bits"),
        [
            helper.make_tensor_value_info(bit, INT64, []),
            helper.make_tensor_value_info(cond_in, BOOL, []),
            helper.make_tensor_value_info(acc_in, dtype, [None] * rank),
        ],
        [
            helper.make_tensor_value_info(cond_out, BOOL, []),
            helper.make_tensor_value_info(acc_out, dtype, [None] * rank),
        ],
    )
    return ctx.op("Loop", [prep.levels, "", init], dtype=dtype, rank=rank, body=graph)


# ---------------------------------------------------------------------------------------------- csr contract
def attach_prep_model(
    model: onnx.ModelProto,
    prep_nodes: list[onnx.NodeProto],
    initializers: list[onnx.TensorProto],
    perms: list[str],
    csr_names: list[str],
) -> None:
    """Store the model computing the permutations (``perms``, the TopK outputs) in ``model``'s metadata."""
    outputs = [helper.make_tensor_value_info(name, INT64, [None]) for name in csr_names]
    renamed = [
        helper.make_node("Identity", [p], [c], name=f"prepare/{c}")
        for p, c in zip(perms, csr_names, strict=True)
    ]
    graph = helper.make_graph(
        [*prep_nodes, *renamed],
        "quantgraph_prepare_graph",
        [i for i in model.graph.input if not i.name.startswith(PERM_PREFIX)],
        outputs,
        initializer=initializers,
    )
    prep = helper.make_model(graph, opset_imports=list(model.opset_import), producer_name="quantgraph")
    prep.ir_version = model.ir_version
    data = base64.b64encode(prep.SerializeToString(deterministic=True)).decode("ascii")
    model.metadata_props.append(onnx.StringStringEntryProto(key=PREP_MODEL_KEY, value=data))


def prep_model(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """The prepared-graph model stored in a ``graph_input="csr"`` model (None for an ``x, edge_index`` model).

    It must be standard ONNX (default domain, no functions, no subgraphs) and pass the checker; it runs
    with the same trust as the model that carries it.
    """
    from quantgraph.errors import InputError

    for entry in model.metadata_props:
        if entry.key != PREP_MODEL_KEY:
            continue
        fix = "re-export the model with `quantgraph compile --graph-input csr`"
        try:
            prep = onnx.load_from_string(base64.b64decode(entry.value, validate=True))
            onnx.checker.check_model(prep)
        except Exception as err:  # binascii, protobuf and checker errors
            raise InputError(
                f"the model's prepared-graph program is damaged ({type(err).__name__})", fix
            ) from err
        odd = [
            n.op_type
            for n in prep.graph.node
            if n.domain not in ("", "ai.onnx")
            or len(n.attribute)
            and any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in n.attribute)
        ]
        if odd or prep.functions:
            raise InputError(
                f"the model's prepared-graph program uses ops outside standard ONNX ({odd})", fix
            )
        return prep
    return None


def prepare_graph_inputs(model: onnx.ModelProto, inputs: dict[str, Any]) -> dict[str, np.ndarray]:
    """The extra inputs of a ``graph_input="csr"`` model for one graph (``graph_perm_<i>``: each aggregation
    index's destination-sorted edge order), computed once per graph; ``{}`` for other models.

    ``inputs``: the model's ordinary inputs (``x``, ``edge_index``, ...) as tensors or arrays.
    """
    from quantgraph.backends.verify import ort_session

    prep = prep_model(model)
    if prep is None:
        return {}
    session = ort_session(prep, 1)
    feeds = {i.name: np.asarray(_numpy(inputs[i.name])) for i in session.get_inputs()}
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds), strict=True))


def _numpy(value: Any) -> Any:
    return value.detach().cpu().numpy() if hasattr(value, "detach") else value


def key_digest(parts: Any) -> str:
    return hashlib.sha1(repr(parts).encode()).hexdigest()
