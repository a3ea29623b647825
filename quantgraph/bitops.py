"""BitOPs: multiply-accumulates of a GNN's linear layers and aggregations, weighted by operand bitwidths.

Counted terms (on the concrete shapes of one run of the graph, e.g. the calibration graph):

* linear layers (``aten.linear/mm/addmm/matmul/bmm``): ``rows x in x out`` MACs, each costing
  ``bits(input) * bits(weight)``;
* aggregations (``quantgraph.scatter`` with ``sum``/``mean``, not on the STRUCTURE role): ``edges x width``
  MACs. When the message is a product (``gathered features * edge weight``), each MAC costs
  ``bits(a) * bits(b)`` of the product's operands; an unweighted message is a plain accumulate costing
  ``bits(message)`` (its second factor is 1 at every precision).

An operand's bits are those of the quantizer feeding it (through views, gathers, dropout and dequantize):
a ``quantgraph.quantize`` (its ``qmin``/``qmax``) or a quantizer module (its ``bit_count()``: the spec's
bits, or a differentiable expected/learned bitwidth); 32 when no quantizer feeds it.
Element-wise work (bias, activations, normalisation, max-aggregation) is not counted.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, fx, nn

from quantgraph.ir.meta import LAYER_KEY, ROLE_KEY, SOURCE_KEY
from quantgraph.ir.ops import DEQUANTIZE, GATHER, QUANTIZE, SCATTER
from quantgraph.ir.quantizer import Quantizer
from quantgraph.ir.roles import Role

aten = torch.ops.aten
FP32_BITS = 32
#: (activation argument index, weight argument index) of each counted linear op
_LINEAR_ARGS = {
    aten.linear.default: (0, 1),
    aten.mm.default: (0, 1),
    aten.matmul.default: (0, 1),
    aten.bmm.default: (0, 1),
    aten.addmm.default: (1, 2),
}
#: ops that move or copy values without changing them (an operand's quantizer is looked up through them)
_TRANSPARENT = {
    aten.view.default,
    aten.reshape.default,
    aten._unsafe_view.default,
    aten.t.default,
    aten.transpose.int,
    aten.permute.default,
    aten.expand.default,
    aten.unsqueeze.default,
    aten.squeeze.dim,
    aten.squeeze.default,
    aten.clone.default,
    aten.contiguous.default,
    aten.alias.default,
    aten.flatten.using_ints,
    aten.index_select.default,
    GATHER,
    DEQUANTIZE,
}
_AGGREGATIONS = ("sum", "mean")

Bits = float | Tensor


@dataclass(frozen=True)
class MacTerm:
    """One counted operation: ``macs`` multiply-accumulates between two operands' quantization points.

    ``operands[i]`` is the quantizer node feeding operand i (None: FP32). ``weighted`` is False for an
    aggregation of unweighted messages, whose second factor is the constant 1.
    """

    node: str
    kind: str  # "linear" or "aggregation"
    layer: int | None
    macs: int
    operands: tuple[fx.Node | None, fx.Node | None]
    weighted: bool = True


def is_quantizer(module: nn.Module) -> bool:
    return isinstance(module, Quantizer)


def node_shapes(gm: fx.GraphModule, args: Sequence[Tensor]) -> dict[str, torch.Size]:
    """Shape of every tensor-valued node on one evaluation-mode run (the module's mode is restored)."""
    shapes: dict[str, torch.Size] = {}

    class _Shapes(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            value = super().run_node(n)
            if isinstance(value, Tensor):
                shapes[n.name] = value.shape
            return value

    was_training = gm.training
    gm.eval()
    try:
        with torch.no_grad():
            _Shapes(gm).run(*args)
    finally:
        gm.train(was_training)
    return shapes


def _through(node: fx.Node, gm: fx.GraphModule) -> fx.Node | None:
    """The value a transparent op or dropout module passes on, else None."""
    if node.op == "call_function" and node.target in _TRANSPARENT and isinstance(node.args[0], fx.Node):
        return node.args[0]
    if node.op == "call_module" and isinstance(gm.get_submodule(node.target), nn.Dropout):
        return node.args[0]
    return None


def quant_point(node: Any, gm: fx.GraphModule) -> fx.Node | None:
    """The quantizer (``quantize`` node or fake-quant module node) whose value ``node`` carries, if any."""
    while isinstance(node, fx.Node):
        if node.target == QUANTIZE:
            return node
        if node.op == "call_module" and is_quantizer(gm.get_submodule(node.target)):
            return node
        node = _through(node, gm)
    return None


def _message_operands(src: fx.Node, gm: fx.GraphModule) -> tuple[tuple[Any, Any], bool]:
    """Operands of a scattered message: the factors of a product, or the message itself."""
    node: Any = src
    while isinstance(node, fx.Node):
        if node.target == aten.mul.Tensor:
            a, b = node.args[:2]
            if isinstance(a, fx.Node) and isinstance(b, fx.Node):
                return (a, b), True
            return (a if isinstance(a, fx.Node) else b, None), False
        if node.target == QUANTIZE:
            node = node.args[0]
        elif node.op == "call_module" and is_quantizer(gm.get_submodule(node.target)):
            node = node.args[0]
        else:
            node = _through(node, gm)
    return (src, None), False


def mac_terms(gm: fx.GraphModule, shapes: dict[str, torch.Size]) -> list[MacTerm]:
    """The linear and aggregation terms of ``gm``, MACs counted on ``shapes`` (:func:`node_shapes`)."""
    terms: list[MacTerm] = []
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.name not in shapes:
            continue
        out = shapes[node.name]
        layer = node.meta.get(LAYER_KEY)
        if node.target in _LINEAR_ARGS:
            ia, ib = _LINEAR_ARGS[node.target]
            a, b = node.args[ia], node.args[ib]
            if not (isinstance(a, fx.Node) and a.name in shapes):
                continue
            macs = math.prod(out) * int(shapes[a.name][-1])
            operands = (quant_point(a, gm), quant_point(b, gm))
            terms.append(MacTerm(node.name, "linear", layer, macs, operands))
        elif node.target == SCATTER and node.args[3] in _AGGREGATIONS:
            src = node.args[0]
            if node.meta.get(ROLE_KEY) == Role.STRUCTURE or src.name not in shapes:
                continue
            (a, b), weighted = _message_operands(src, gm)
            operands = (quant_point(a, gm), quant_point(b, gm) if weighted else None)
            terms.append(
                MacTerm(node.name, "aggregation", layer, math.prod(shapes[src.name]), operands, weighted)
            )
    return terms


def point_bits(gm: fx.GraphModule, point: fx.Node | None) -> Bits:
    """Bits of a quantization point: quantize (from qmin/qmax) or a quantizer module's ``bit_count()``."""
    if point is None:
        return float(FP32_BITS)
    if point.op == "call_module":
        return gm.get_submodule(point.target).bit_count()
    qmin, qmax = (_constant(gm, a) for a in point.args[3:5])
    levels = int((qmax.long() - qmin.long()).max()) + 1
    return float(math.ceil(math.log2(max(levels, 2))))


def _constant(gm: fx.GraphModule, arg: Any) -> Tensor:
    if isinstance(arg, fx.Node) and arg.target == GATHER:  # per-group parameters: the table they index
        arg = arg.args[0]
    if isinstance(arg, fx.Node) and arg.op == "get_attr":
        obj: Any = gm
        for part in arg.target.split("."):
            obj = getattr(obj, part)
        return torch.as_tensor(obj)
    return torch.as_tensor(arg)


def term_bitops(term: MacTerm, bits_of: Callable[[fx.Node | None], Bits]) -> tuple[Bits, float]:
    """(BitOPs at the operands' bits, BitOPs in FP32) of one term."""
    first = bits_of(term.operands[0])
    second = bits_of(term.operands[1]) if term.weighted else 1.0
    fp32 = term.macs * FP32_BITS * (FP32_BITS if term.weighted else 1)
    return term.macs * first * second, float(fp32)


def quant_points(gm: fx.GraphModule) -> list[fx.Node]:
    """Every quantize node and fake-quant module node of ``gm``."""
    return [
        n
        for n in gm.graph.nodes
        if n.target == QUANTIZE or n.op == "call_module" and is_quantizer(gm.get_submodule(n.target))
    ]


def count_bitops(gm: fx.GraphModule, input_names: Sequence[str], inputs: dict[str, Tensor]) -> dict[str, Any]:
    """BitOPs of ``gm`` on ``inputs``: totals, FP32 reference, reduction, mean bits and per-op rows.

    ``average_bits`` is the plain mean over quantization points (not weighted by element count).
    """
    terms = mac_terms(gm, node_shapes(gm, [inputs[n] for n in input_names]))

    def bits_of(point: fx.Node | None) -> float:
        return float(point_bits(gm, point))

    rows, total, fp32 = [], 0.0, 0.0
    for term in terms:
        bitops, ref = term_bitops(term, bits_of)
        total, fp32 = total + bitops, fp32 + ref
        rows.append(
            {
                "node": term.node,
                "kind": term.kind,
                "layer": term.layer,
                "macs": term.macs,
                "bits": [bits_of(term.operands[0]), bits_of(term.operands[1]) if term.weighted else 1.0],
                "operands": [
                    p.meta.get(SOURCE_KEY, p.name) if p is not None else None for p in term.operands
                ],
                "bitops": int(bitops),
            }
        )
    points = [bits_of(p) for p in quant_points(gm)]
    return {
        "bitops": int(total),
        "fp32_bitops": int(fp32),
        "reduction": fp32 / total if total else math.nan,
        "average_bits": sum(points) / len(points) if points else float(FP32_BITS),
        "macs": sum(t.macs for t in terms),
        "per_op": rows,
    }
