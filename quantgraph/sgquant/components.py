"""SGQuant's component-wise granularity: each quantization point is an *aggregation* or a *combination* tensor.

* aggregation: what message passing computes on edges and for the softmax over neighbours — gathered rows
  (x_i / x_j), attention logits and coefficients, edge weights, messages, the scatter results — and the
  node-level attention terms (``x W · a`` per node, computed before they are gathered);
* combination: the layer's input, its weights (attention vectors included), its linear output ``X W``
  and the layer's node output after the feature aggregation (bias, activation: the next layer's input).

The rule follows the data flow of each layer (``LAYER_KEY``): the layer's *feature aggregation* is its
last scatter; a node-level value is combination if it feeds the gathered features of that scatter or
comes after it, and aggregation if it only feeds the attention.
"""

from __future__ import annotations

from enum import StrEnum

from torch import fx

from quantgraph.ir.meta import LAYER_KEY, QSPEC_KEY, ROLE_KEY, ROWS_KEY
from quantgraph.ir.ops import GATHER, SCATTER
from quantgraph.ir.roles import Role


class Component(StrEnum):
    AGGREGATION = "aggregation"
    COMBINATION = "combination"


FP32_KEY = "qg_sgquant_fp32"  # node.meta: True for softmax denominators, kept FP32 (see denominators())
COMPONENT_KEY = "qg_sgquant_component"  # node.meta: the point's Component (written by sgquant-annotate)
SGQ_LAYER_KEY = "qg_sgquant_layer"  # node.meta: the point's layer (inputs: layer 0)

_COMBINATION_ROLES = {Role.INPUT, Role.WEIGHT, Role.BIAS, Role.LINEAR_OUT}
_AGGREGATION_ROLES = {Role.GATHER, Role.EDGE_WEIGHT, Role.ATTENTION, Role.MESSAGE, Role.AGGREGATION}


def _ancestors(node: fx.Node) -> set[fx.Node]:
    seen: set[fx.Node] = set()
    stack = [node]
    while stack:
        n = stack.pop()
        for i in n.all_input_nodes:
            if i not in seen:
                seen.add(i)
                stack.append(i)
    return seen


def _width(node: fx.Node) -> int:
    shape = getattr(node.meta.get("val"), "shape", ())
    size = 1
    for d in list(shape)[1:]:
        size *= int(d) if isinstance(d, int) else 1
    return size


def _feature_sources(scatter: fx.Node) -> set[fx.Node]:
    """Node-level values whose gathered rows are the features the scatter sums (and their inputs).

    The feature gather is the widest gather nearest to the scatter's message (GAT and AGNN also gather
    attention terms, further up).
    """
    level = [scatter.args[0]] if isinstance(scatter.args[0], fx.Node) else []
    seen: set[fx.Node] = set()
    for _ in range(4):
        gathers = [n for n in level if n.target == GATHER]
        if gathers:
            source = max(gathers, key=_width).args[0]
            return {source, *_ancestors(source)} if isinstance(source, fx.Node) else set()
        seen.update(level)
        level = [i for n in level for i in n.all_input_nodes if i not in seen and i.target != SCATTER]
    return set()


def point_layer(node: fx.Node) -> int:
    """The node's layer (``LAYER_KEY``; inputs: 0). A parameter takes the layer of the op that uses it."""
    if node.op == "get_attr":
        layers = [u.meta.get(LAYER_KEY) for u in node.users if u.meta.get(LAYER_KEY) is not None]
        if layers:
            return int(min(layers))
    layer = node.meta.get(LAYER_KEY)
    return 0 if layer is None else int(layer)


def classify(gm: fx.GraphModule) -> dict[str, tuple[int, Component]]:
    """(layer, component) of every annotated node (``QSPEC_KEY``), by node name."""
    nodes = list(gm.graph.nodes)
    last_scatter: dict[int, fx.Node] = {}
    for n in nodes:
        if n.target == SCATTER:
            last_scatter[point_layer(n)] = n
    features = {layer: _feature_sources(s) for layer, s in last_scatter.items()}
    after = {layer: set() for layer in last_scatter}
    for layer, s in last_scatter.items():  # descendants of the feature aggregation
        frontier = [s]
        while frontier:
            n = frontier.pop()
            for u in n.users:
                if u not in after[layer]:
                    after[layer].add(u)
                    frontier.append(u)
    out: dict[str, tuple[int, Component]] = {}
    for n in nodes:
        if QSPEC_KEY not in n.meta:
            continue
        layer, role = point_layer(n), n.meta.get(ROLE_KEY)
        if role in _COMBINATION_ROLES or role == Role.OUTPUT:
            comp = Component.COMBINATION
        elif role in _AGGREGATION_ROLES or n.meta.get(ROWS_KEY) == "edge":
            comp = Component.AGGREGATION
        elif n in features.get(layer, ()) or n in after.get(layer, ()):
            comp = Component.COMBINATION
        else:  # node-level terms that only feed the attention (GAT's x W · a before the gather)
            comp = Component.AGGREGATION
        out[n.name] = (layer, comp)
    return out


_DIV = {"aten.div.Tensor"}


def denominators(gm: fx.GraphModule) -> set[str]:
    """Divisors kept FP32: each division's divisor, back along values used only on the way to it.

    SGQuant quantizes attention logits and coefficients, not the normaliser: a low-bit softmax sum (or
    AGNN's feature norm) rounds small values to 0 and the division to infinity. From the divisor the walk
    follows gathers to their source and an op to its one feature input while that input feeds nothing
    else, and stops after a scatter (the softmax sum). These points stay FP32 (and count at 32 bits).
    """
    out: set[str] = set()
    for n in gm.graph.nodes:
        if str(n.target) not in _DIV or len(n.args) < 2 or not isinstance(n.args[1], fx.Node):
            continue
        d: fx.Node | None = n.args[1]
        while d is not None and d.op == "call_function" and d.name not in out:
            out.add(d.name)
            if d.target == SCATTER:
                break
            inputs = [
                i for i in d.all_input_nodes if i.meta.get(ROLE_KEY) != Role.STRUCTURE and i.op != "get_attr"
            ]
            if d.target == GATHER:
                inputs = [d.args[0]]
            nxt = inputs[0] if len(inputs) == 1 else None
            d = nxt if nxt is not None and (d.target == GATHER or len(nxt.users) == 1) else None
    return out
