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


def _feature_sources(scatter: fx.Node) -> set[fx.Node]:
    """Node-level values whose gathered rows are the features the scatter sums (and their inputs)."""
    gathers = [a for a in _ancestors(scatter) | {scatter} if a.target == GATHER]
    if not gathers:
        return set()

    def width(g: fx.Node) -> int:
        val = g.meta.get("val")
        shape = getattr(val, "shape", ())
        size = 1
        for d in list(shape)[1:]:
            size *= int(d) if isinstance(d, int) else 1
        return size

    feature = max(gathers, key=width)  # the feature rows, not a per-edge scalar
    source = feature.args[0]
    return {source, *_ancestors(source)} if isinstance(source, fx.Node) else set()


def point_layer(node: fx.Node) -> int:
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
    """Softmax denominators: each division's divisor back to the scatter that sums it (gathers included).

    SGQuant quantizes attention logits and coefficients, not the normaliser: a low-bit denominator rounds
    small sums to 0 and the division to infinity. These points stay FP32 (and count at 32 bits).
    """
    out: set[str] = set()
    for n in gm.graph.nodes:
        if str(n.target) not in _DIV or len(n.args) < 2 or not isinstance(n.args[1], fx.Node):
            continue
        stack = [n.args[1]]
        while stack:
            d = stack.pop()
            if d.name in out or d.op != "call_function":
                continue
            out.add(d.name)
            if d.target == SCATTER:
                continue
            if d.target == GATHER:
                stack.append(d.args[0])
                continue
            stack.extend(i for i in d.all_input_nodes if i.op == "call_function")
    return out
