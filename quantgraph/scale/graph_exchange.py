"""Which graph-stage values a partition must receive from their owners, so that it needs only its owned nodes'
in-edges (the *exchange* layout; see ``partition``).

A partition's local graph holds every edge into an owned node. A node-level graph-stage value computed by a
scatter over edge targets (a degree), and anything computed from such values row by row, is then exact on
owned rows and wrong on halo rows. Before the first step that gathers it by edge (GCN's ``deg^-1/2`` at an
edge's source), the partition receives its halo rows from their owners; from then on it is exact everywhere.

``exchange_points`` proves this for the graph stage it is given, or returns None: then the partition also
needs its halo nodes' in-edges (the *stub* layout, always exact but ``O(E)`` per partition on graphs without
locality). The proof is a forward pass over the steps with these rules:

* a scatter is allowed only into edge targets (``select(edges, 0, 1)`` of the input edges, possibly with edges
  removed by a mask and self loops ``arange(N)`` appended) over ``N`` = the node count; its output is node-level;
* node-level values may be combined only with each other and constants, by the element-wise ops below;
* a node-level value may be read only by those ops, by a gather (the exchange point), or row-wise by the
  feature stage (by an aggregation only as its per-output-row requantize multiplier, as SAGE's mean);
* a CSR must have edge targets as rows.
"""

from __future__ import annotations

from dataclasses import dataclass

from quantgraph.native.artifact import Step, references
from quantgraph.native.runtime import NativeModel

#: element-wise ops whose output is node-level when their inputs are (plus constants)
ELEMENTWISE = {
    "aten.pow.Tensor_Scalar", "aten.eq.Scalar", "aten.ne.Scalar", "aten.masked_fill.Scalar",
    "aten.clamp_min.default", "aten.clamp.default", "aten.div.Tensor", "aten.mul.Tensor", "aten.add.Tensor",
    "aten.sub.Tensor", "aten.sqrt.default", "aten.rsqrt.default", "aten.reciprocal.default",
    "aten.to.dtype", "aten._to_copy.default",
}  # fmt: skip
GATHER = "quantgraph.gather.default"
SCATTER = "quantgraph.scatter.default"


@dataclass(frozen=True)
class ExchangePoint:
    """Before graph step ``index`` (in ``model._steps("graph")`` order), receive halo rows of ``value``."""

    index: int
    value: str


def _value(arg: object) -> str | None:
    return arg["value"] if isinstance(arg, dict) and "value" in arg else None


class _Kinds:
    """What the forward pass knows about each graph-stage value."""

    def __init__(self) -> None:
        self.edges = {"edge_index"}  # [2, E] edge lists whose targets are complete for owned nodes
        self.targets: set[str] = set()  # edge targets of such a list
        self.node_ids: set[str] = set()  # arange(N), and views of it
        self.self_loops: set[str] = set()  # arange(N) repeated as [2, N]
        self.sizes: set[str] = set()  # the node count N
        self.node: set[str] = set()  # node-level, exact on owned rows
        self.full: set[str] = set()  # node-level, exact on every row (received from the owners)


def _step(s: Step, k: _Kinds, index: int, points: list[ExchangePoint]) -> bool:
    """Classify one step's output; False when the rules above do not cover it."""
    reads = set(references({"args": s.args, "kwargs": s.kwargs}))
    first = _value(s.args[0]) if s.args else None
    if "x" in reads:
        return False
    if s.op == "input.size":
        if s.args[0] == "x" and s.args[1] == 0:
            k.sizes.add(s.out)
        return True
    node_reads = [n for n in reads if n in k.node or n in k.full]
    if s.op == GATHER:
        if first not in k.node and first not in k.full:
            return False
        if any(n in k.node or n in k.full for n in references({"args": s.args[1:], "kwargs": s.kwargs})):
            return False
        if first in k.node:  # exact on owned rows only: receive the halo rows first
            points.append(ExchangePoint(index, first))
            k.node.discard(first)
            k.full.add(first)
        return True
    if s.op == SCATTER:
        if node_reads or _value(s.args[1]) not in k.targets or _value(s.args[2]) not in k.sizes:
            return False
        if s.args[3] not in ("sum", "mean", "max", "min"):
            return False
        k.node.add(s.out)
        return True
    if node_reads:
        if s.op not in ELEMENTWISE or any(n not in k.node and n not in k.full for n in reads):
            return False
        (k.full if all(n in k.full for n in node_reads) else k.node).add(s.out)
        return True
    if s.op == "native.csr":
        return _value(s.args[1]) in k.targets and _value(s.args[2]) in k.sizes
    if s.op.startswith("native."):
        return False
    if s.op == "aten.select.int" and first in k.edges and s.args[1] == 0 and s.args[2] == 1:
        k.targets.add(s.out)
    elif s.op in ("aten.view.default", "aten.expand.default") and first in k.targets:
        k.targets.add(s.out)
    elif s.op == "aten.arange.start" and s.args[0] == 0 and _value(s.args[1]) in k.sizes:
        k.node_ids.add(s.out)
    elif s.op == "aten.view.default" and first in k.node_ids:
        k.node_ids.add(s.out)
    elif s.op == "aten.repeat.default" and first in k.node_ids and s.args[1] == [2, 1]:
        k.self_loops.add(s.out)
    elif s.op == "aten.index.Tensor" and first in k.edges and isinstance(s.args[1], list):
        if len(s.args[1]) == 2 and s.args[1][0] is None:  # edges kept by a per-edge mask
            k.edges.add(s.out)
    elif s.op == "aten.cat.default" and s.args[1] == 1 and isinstance(s.args[0], list):
        parts = [_value(a) for a in s.args[0]]
        if parts and all(p in k.edges or p in k.self_loops for p in parts) and parts[0] in k.edges:
            k.edges.add(s.out)
    return True


def exchange_points(model: NativeModel) -> list[ExchangePoint] | None:
    """The graph stage's exchange points (possibly none), or None when it needs the stub layout."""
    k = _Kinds()
    points: list[ExchangePoint] = []
    for i, s in enumerate(model._steps("graph")):
        if not _step(s, k, i, points):
            return None
    for s in model._steps("feature"):
        if s.op == "native.aggregate":
            # the requantize step applies per output row (owned rows are exact); anything else is refused
            kwargs = {k: v for k, v in s.kwargs.items() if k != "requant"}
            reads = set(references({"args": [s.args[0], *s.args[2:]], "kwargs": kwargs}))
            if any(n in k.node for n in reads):
                return None
    return points
