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

from quantgraph.ir.meta import EXACT_SCALE_KEY, LAYER_KEY, ROLE_KEY, SOURCE_KEY
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


def value_passed_on(node: fx.Node, gm: fx.GraphModule) -> fx.Node | None:
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
        node = value_passed_on(node, gm)
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
            node = value_passed_on(node, gm)
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


# --------------------------------------------------------------------------------------------------------
# Conventions of the papers, beside ours (docs/results.md, "Bit accounting"). Plain functions over a
# quantized graph module (Q/DQ form or fake-quant modules) and the shapes of one run.

#: FP32 op counts per element as MixQ-GNN's ``torch_operation_counter`` counts them
_MIXQ_ACTIVATIONS = {
    aten.relu.default: 2,
    aten.relu_.default: 2,
    aten.elu.default: 4,
    aten.leaky_relu.default: 4,
}


def output_point(node: fx.Node, gm: fx.GraphModule) -> fx.Node | None:
    """The quantizer that reads ``node``'s value (through transparent ops), if any."""
    frontier, seen = [node], set()
    while frontier:
        current = frontier.pop(0)
        for user in current.users:
            if user in seen:
                continue
            seen.add(user)
            if (
                user.target == QUANTIZE
                or user.op == "call_module"
                and is_quantizer(gm.get_submodule(user.target))
            ):
                return user
            if value_passed_on(user, gm) is current:
                frontier.append(user)
    return None


def _mean_bits(bits: Sequence[float]) -> float:
    return sum(bits) / len(bits) if bits else float(FP32_BITS)


def mixq_terms(gm: fx.GraphModule, shapes: dict[str, torch.Size]) -> list[dict[str, Any]]:
    """MixQ-GNN's modules with their FP32 op counts and the bitwidths they average.

    * linear ``rows x in x out``: the bits of its input, weight and output quantizers;
    * aggregation (``sum``/``mean`` scatter of node features): ``2·E·F`` ops (``mean``: ``4·E·F``), plus ``E``
      for an edge-weight multiply (the counter counts the ``[E, 1]`` operand's elements); the bits of the
      gathered features' and the output's quantizers (MixQ's message passing owns those two; its edge-weight
      quantizer belongs to no counted module). Gathers (``index_select``) are not counted;
    * ReLU ``2·numel`` (ELU, leaky ReLU ``4·numel``): the bits of its input's quantizer.

    A module point without a quantizer counts 32 bits. MixQ's code drops it from the mean instead (and a
    module with no quantizer at all adds 0): on a fully quantized model the two agree.
    """
    out: list[dict[str, Any]] = []
    for term in mac_terms(gm, shapes):
        node = next(n for n in gm.graph.nodes if n.name == term.node)
        result = output_point(node, gm)
        if term.kind == "linear":
            points, ops = [*term.operands, result], term.macs
        else:
            src = node.args[0]
            (a, b), weighted = _message_operands(src, gm)
            feature, extra = term.operands[0], 0
            if weighted:
                sa, sb = shapes.get(a.name), shapes.get(b.name)
                if sa is not None and sb is not None:  # the narrower factor is the edge weight
                    narrow, wide = (a, b) if math.prod(sa) <= math.prod(sb) else (b, a)
                    feature, extra = quant_point(wide, gm), math.prod(shapes[narrow.name])
            ops = (4 if node.args[3] == "mean" else 2) * term.macs + extra
            points = [feature, result]
        out.append({"node": term.node, "kind": term.kind, "layer": term.layer, "ops": ops, "points": points})
    for node in gm.graph.nodes:
        per_element = _MIXQ_ACTIVATIONS.get(node.target) if node.op == "call_function" else None
        if per_element is None or node.name not in shapes or node.meta.get(ROLE_KEY) == Role.STRUCTURE:
            continue
        ops = per_element * math.prod(shapes[node.name])
        points = [quant_point(node.args[0], gm)]
        out.append({"node": node.name, "kind": "activation", "layer": node.meta.get(LAYER_KEY), "ops": ops,
                    "points": points})  # fmt: skip
    return out


def bitops_mixq(gm: fx.GraphModule, input_names: Sequence[str], inputs: dict[str, Tensor]) -> dict[str, Any]:
    """BitOPs in MixQ-GNN's convention: per module, FP32 op count x mean of its chosen bitwidths, against
    op count x 32 (see :func:`mixq_terms` for the modules and op counts)."""
    shapes = node_shapes(gm, [inputs[n] for n in input_names])
    rows, total, ops = [], 0.0, 0
    for term in mixq_terms(gm, shapes):
        bits = [float(point_bits(gm, p)) for p in term.pop("points")]
        mean = _mean_bits(bits)
        total, ops = total + term["ops"] * mean, ops + term["ops"]
        rows.append({**term, "bits": bits, "mean_bits": mean, "bitops": term["ops"] * mean})
    fp32 = float(ops * FP32_BITS)
    return {
        "bitops": total,
        "fp32_bitops": fp32,
        "reduction": fp32 / total if total else math.nan,
        "ops": ops,
        "per_module": rows,
    }


def _mean_value(bits: Bits) -> float:
    return float(bits.float().mean()) if isinstance(bits, Tensor) else float(bits)


def _is_relu_output(node: Any) -> bool:
    return isinstance(node, fx.Node) and (
        node.target in (aten.relu.default, aten.relu_.default)
        or node.target == aten.clamp_min.default
        and node.args[1:2] == (0,)
    )


def _point_spec(gm: fx.GraphModule, point: fx.Node) -> tuple[bool, bool]:
    """(signed, symmetric) of a quantizer: a fake-quant module's spec, or a quantize node's constants."""
    if point.op == "call_module":
        spec = getattr(gm.get_submodule(point.target), "spec", None)
        return bool(getattr(spec, "signed", True)), bool(getattr(spec, "symmetric", False))
    qmin, zp = _constant(gm, point.args[3]), _constant(gm, point.args[2])
    return bool((qmin < 0).any()), bool((zp == 0).all())


def a2q_feature_bits(gm: fx.GraphModule, shapes: dict[str, torch.Size]) -> list[dict[str, Any]]:
    """Per linear layer, the bits of the node features it multiplies by its weights (A²Q's "feature bits").

    ``bits`` is the mean over the layer's nodes (a per-node quantizer's ``bit_count()`` may be a tensor);
    ``effective`` removes the sign bit where a symmetric signed grid quantizes a ReLU output, whose negative
    half is unused (an affine grid with a zero-point spends all its levels on ``[0, max]``).
    """
    rows = []
    for term in mac_terms(gm, shapes):
        if term.kind != "linear":
            continue
        point = term.operands[0]
        bits = _mean_value(point_bits(gm, point))
        effective = bits
        if point is not None and _is_relu_output(point.args[0]):
            signed, symmetric = _point_spec(gm, point)
            effective = bits - 1 if signed and symmetric else bits
        rows.append({"node": term.node, "layer": term.layer, "bits": bits, "effective": effective})
    return rows


def average_bits_a2q(
    layer_bits: Sequence[float | Tensor], sign_bit_unused: Sequence[bool] | None = None
) -> float:
    """A²Q's average bits: the mean over layers of the mean node-feature bits, one sign bit less where the
    layer's features are post-ReLU values on a signed grid. ``layer_bits[l]``: a number or per-node bits."""
    if not layer_bits:
        return float(FP32_BITS)
    unused = sign_bit_unused or [False] * len(layer_bits)
    return sum(_mean_value(b) - bool(u) for b, u in zip(layer_bits, unused, strict=True)) / len(layer_bits)


def _points_with_elements(gm: fx.GraphModule, shapes: dict[str, torch.Size]) -> list[tuple[float, int]]:
    """(bits, elements) of every quantization point on ``shapes``."""
    out = []
    for point in quant_points(gm):
        src = point.args[0]
        if isinstance(src, fx.Node) and src.name in shapes:
            out.append((_mean_value(point_bits(gm, point)), math.prod(shapes[src.name])))
    return out


def average_bits_elements(gm: fx.GraphModule, input_names: Sequence[str], inputs: dict[str, Tensor]) -> float:
    """Ours: bits averaged over quantized elements, weights and activations:
    ``sum_p bits_p * numel_p / sum_p numel_p`` over quantization points ``p`` (elements on ``inputs``)."""
    pairs = _points_with_elements(gm, node_shapes(gm, [inputs[n] for n in input_names]))
    elements = sum(n for _, n in pairs)
    return sum(b * n for b, n in pairs) / elements if elements else float(FP32_BITS)


#: roles of tensors that are transient copies or products of stored ones (not counted as memory)
_TRANSIENT_ROLES = {Role.GATHER, Role.MESSAGE}


def memory_bits_sgquant(
    gm: fx.GraphModule, input_names: Sequence[str], inputs: dict[str, Tensor]
) -> dict[str, Any]:
    """SGQuant's memory: bits of every stored float tensor (weights, biases, features, node-level and
    per-edge activations; gathered rows and messages are transient), quantized ones at their bits and the
    rest at 32, against all of them at 32. ``average_bits`` is memory over elements."""
    shapes = node_shapes(gm, [inputs[n] for n in input_names])
    quantized = {}
    for point in quant_points(gm):
        if isinstance(point.args[0], fx.Node):
            quantized[point.args[0].name] = _mean_value(point_bits(gm, point))
    bits = elements = 0.0
    for node in gm.graph.nodes:
        role = node.meta.get(ROLE_KEY)
        if node.target == DEQUANTIZE and EXACT_SCALE_KEY in node.meta and node.name in shapes:
            n = math.prod(shapes[node.name])  # a bias stored as int32 by quantize-bias: 32 bits, as in FP32
            bits += n * float(FP32_BITS)
            elements += n
            continue
        if (
            role is None
            or role in _TRANSIENT_ROLES
            or role in (Role.STRUCTURE, Role.PREPROCESS, Role.OTHER)
            or node.target in (QUANTIZE, DEQUANTIZE)
            or node.op == "call_module"
            or node.name not in shapes
        ):
            continue
        n = math.prod(shapes[node.name])
        bits += n * quantized.get(node.name, float(FP32_BITS))
        elements += n
    fp32 = elements * FP32_BITS
    return {
        "bits": bits,
        "fp32_bits": fp32,
        "reduction": fp32 / bits if bits else math.nan,
        "average_bits": bits / elements if elements else float(FP32_BITS),
        "elements": int(elements),
    }


def bit_conventions(
    gm: fx.GraphModule, input_names: Sequence[str], inputs: dict[str, Tensor]
) -> dict[str, Any]:
    """The papers' conventions beside ours, for the compile report: MixQ-GNN's BitOPs, the average bits
    (ours over elements, A²Q's over layers' node features, SGQuant's memory, the plain mean over points)
    and SGQuant's memory."""
    shapes = node_shapes(gm, [inputs[n] for n in input_names])
    features = a2q_feature_bits(gm, shapes)
    memory = memory_bits_sgquant(gm, input_names, inputs)
    points = [_mean_value(point_bits(gm, p)) for p in quant_points(gm)]
    return {
        "mixq": bitops_mixq(gm, input_names, inputs),
        "average_bits": {
            "elements": average_bits_elements(gm, input_names, inputs),
            "a2q": average_bits_a2q(
                [r["bits"] for r in features], [r["effective"] < r["bits"] for r in features]
            ),
            "sgquant": memory["average_bits"],
            "points": _mean_bits(points),
        },
        "sgquant_memory": memory,
    }
