"""Lower A²Q's aggregations of per-node-bitwidth features to the mixed-bit kernels.

The pattern, in the fake-quantized (Q/DQ) IR of an ``a2q``/``a2q-nns`` model:
``scatter(sum)([mul(w, ·)] gather(dequantize(q, s), src))`` where ``q = quantize(x, s, 0, -qmax, qmax, 0)``
has one scale and one ``qmax`` per row (constants, or tables gathered by the NNS group in the graph) and
``w`` is a per-edge float weight of the graph stage (e.g. GCN's normalisation) or absent. It becomes

* ``native.mixed_csr`` (graph stage): the CSR of the aggregation with ``w`` in CSR order;
* ``native.mixed_pack``: ``q``'s rows stored at their own width (:class:`~quantgraph.native.mixed_bits.
  BitGroupedRows`: grouped by 8/4/2/0 bits, each group packed), their bits read off ``qmax``;
* ``native.mixed_aggregate``: :func:`~quantgraph.native.mixed_bits.spmm_mixed` over that storage.

The ``quantize`` itself stays a step (its integers are the IR's and are compared); the float ``gather`` and
``mul`` disappear.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import fx

from quantgraph.ir.ops import GATHER, QUANTIZE
from quantgraph.native.artifact import Step

if TYPE_CHECKING:
    from quantgraph.native.lower import _Lowering

DEQUANTIZE = torch.ops.quantgraph.dequantize.default
MUL = torch.ops.aten.mul.Tensor
MIXED_STEPS = ("native.mixed_csr", "native.mixed_pack", "native.mixed_aggregate")


def _per_row(low: _Lowering, arg: object, rows: int) -> bool:
    v = low.values.get(arg) if isinstance(arg, fx.Node) else None
    return v is not None and v.shape == (rows,)


def _zero(low: _Lowering, arg: object) -> bool:
    """A zero-point of zeros: a constant, or a constant table gathered by the NNS group."""
    if isinstance(arg, fx.Node) and arg.target == GATHER:
        arg = arg.args[0]
    value = low.const(arg) if isinstance(arg, fx.Node) else None
    return value is not None and not value.is_floating_point() and bool((value == 0).all())


def _symmetric_rows(low: _Lowering, q: fx.Node) -> bool:
    """``q = quantize(x, s[N], 0, -qmax[N], qmax[N], axis 0)`` of a 2-D float value."""
    if q.target != QUANTIZE or len(q.args) < 6 or q.args[5] != 0:
        return False
    x, scale, zp, qmin, qmax = q.args[:5]
    shape = low.values.get(x).shape if isinstance(x, fx.Node) and x in low.values else None
    if shape is None or len(shape) != 2:
        return False
    rows = shape[0]
    if not (_per_row(low, scale, rows) and _per_row(low, qmax, rows) and _zero(low, zp)):
        return False
    lo, hi = _table(low, qmin), _table(low, qmax)
    if lo is None or hi is None or lo.is_floating_point() or not bool((lo == -hi).all()):
        return False
    grid = {(1 << (b - 1)) - 1 for b in range(1, 9)}  # A²Q's qmax = 2^(b-1) - 1
    return all(int(v) in grid for v in hi.reshape(-1).unique().tolist())


def _table(low: _Lowering, arg: object) -> torch.Tensor | None:
    """A constant per-row parameter, or the constant table an NNS group gathers it from."""
    if isinstance(arg, fx.Node) and arg.target == GATHER:
        arg = arg.args[0]
    return low.const(arg) if isinstance(arg, fx.Node) else None


def match_mixed_aggregate(low: _Lowering, scatter: fx.Node) -> tuple[Step, Step, Step] | None:
    """The three steps of an A²Q aggregation (see the module docs), or None when ``scatter`` is not one."""
    src, index, num_nodes, reduce = scatter.args
    if reduce != "sum" or low.is_feature(index) or low.is_feature(num_nodes):
        return None
    node, weight, chain = src, None, []
    if node.target == MUL and low.single_use(node):
        a, b = node.args
        if not (isinstance(a, fx.Node) and isinstance(b, fx.Node)):
            return None
        edge, feat = (a, b) if not low.is_feature(a) else (b, a)
        ev, fv = low.values.get(edge), low.values.get(feat)
        if low.is_feature(edge) or ev is None or ev.dtype != torch.float32 or fv is None or fv.shape is None:
            return None
        if ev.shape not in ((fv.shape[0],), (fv.shape[0], 1)):
            return None
        weight, node = edge, feat
        chain.append(src)
    if node.target != GATHER or not low.single_use(node):
        return None
    dq, src_index = node.args
    if not isinstance(dq, fx.Node) or dq.target != DEQUANTIZE or low.is_feature(src_index):
        return None
    q = dq.args[0]
    if not isinstance(q, fx.Node) or q.target != QUANTIZE or dq.args[1] is not q.args[1] or dq.args[3] != 0:
        return None
    if not _symmetric_rows(low, q):
        return None
    chain.append(node)
    csr_name = f"mixed_csr_{low.csr_count}"
    low.csr_count += 1
    csr = Step(
        "native.mixed_csr",
        [low.encode(src_index), low.encode(index), low.encode(num_nodes), low.encode(weight)],
        csr_name,
        "graph",
    )
    pack_name = f"{q.name}_mixed"
    pack_args = [low.encode(q), low.encode(q.args[1]), low.encode(q.args[4])]
    pack = Step("native.mixed_pack", pack_args, pack_name, "feature")
    aggregate = Step(
        "native.mixed_aggregate", [{"value": csr_name}, {"value": pack_name}], scatter.name, "feature"
    )
    low.fused.update(chain)
    return csr, pack, aggregate
