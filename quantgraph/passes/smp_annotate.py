"""``smp-annotate``: SMP's quantization points (Wang et al., CIKM 2023), each a QLR quantizer.

Points: each linear layer's input, weight and output; each propagation step's messages and aggregates
(of ``ÃX`` and of the constraint's ``ÃΔ``) and its update (the step's output ``X``, and ``Δ``, which the
second aggregation gathers, so every aggregation reads integers); the normalised edge weights ``Ã_ij`` at
8 bits (``smp_points=official``: only the official code's points, linear in/weight/out and each step's
messages and aggregates; X, Δ and the edge weights stay float). The second linear layer's input is quantized before its dropout (the range of the value the
exported model sees, not the dropout-scaled one); the input point sits on the normalised features.
"""

from __future__ import annotations

import torch
from torch import fx, nn

from quantgraph.errors import InputError
from quantgraph.ir.meta import QSPEC_KEY, ROLE_KEY
from quantgraph.ir.ops import GATHER
from quantgraph.ir.qspec import QuantSpec
from quantgraph.ir.roles import Role
from quantgraph.options import Option
from quantgraph.passes.infra import CompileContext, PassBase, PassResult, node_value_is_float
from quantgraph.passes.registry import register_pass

aten = torch.ops.aten
#: ``smp_bt`` -> the registered quantizer kind
QUANTIZER_KINDS = {"none": "qlr", "bt": "qlr-bt", "bt*": "qlr-sbt"}
SMP_BT = Option(
    "smp_bt",
    str,
    "none",
    "INT2 variant: none, bt (8-bit then round(q/85)·85) or bt* (BT after +round(skew))",
    choices=tuple(QUANTIZER_KINDS),
)
SMP_POINTS = Option(
    "smp_points", str, "integer",
    "integer: also quantize each step's X and Δ and the edge weights (every aggregation runs on integers); "
    "official: the official code's points only (linear in/weight/out, each step's messages and aggregates)",
    choices=("integer", "official"),
)  # fmt: skip
EDGE_WEIGHT_BITS = 8
_ROLES = (Role.INPUT, Role.WEIGHT, Role.LINEAR_OUT, Role.MESSAGE, Role.AGGREGATION)


def _through_dropout(gm: fx.GraphModule, node: object) -> object:
    """The value a dropout (module or op) reads, or ``node`` itself."""
    while isinstance(node, fx.Node):
        if node.op == "call_module" and isinstance(gm.get_submodule(node.target), nn.Dropout):
            node = node.args[0]
        elif node.op == "call_function" and node.target == aten.dropout.default:
            node = node.args[0]
        else:
            break
    return node


def smp_points(gm: fx.GraphModule, official: bool = False) -> dict[fx.Node, str]:
    """Node -> why it is a point (its role, or ``update``/``linear_input``), in graph order; ``official``:
    without the updates and edge weights."""
    points: dict[fx.Node, str] = {}
    roles = _ROLES if official else (*_ROLES, Role.EDGE_WEIGHT)
    for node in gm.graph.nodes:
        role = node.meta.get(ROLE_KEY)
        if role in roles and node_value_is_float(node, gm):
            points[node] = str(role)
    for node in gm.graph.nodes:
        extra: list[tuple[object, str]] = []
        if node.target == aten.linear.default:
            extra.append((_through_dropout(gm, node.args[0]), "linear_input"))
        elif official:
            continue
        elif node.target == GATHER:
            extra.append((node.args[0], "update"))
        elif node.target in (aten.log_softmax.int, aten._log_softmax.default):
            extra.append((node.args[0], "update"))
        for value, why in extra:
            if isinstance(value, fx.Node) and value not in points and node_value_is_float(value, gm):
                points[value] = why
    return points


@register_pass
class SMPAnnotatePass(PassBase):
    """Mark SMP's points with QLR specs (``--bits``; edge weights 8 bits; ``smp_bt`` at 2 bits)."""

    name = "smp-annotate"
    description = (
        "mark SMP's quantization points (linear in/weight/out, messages, aggregates, updates) with QLR"
    )
    options = (SMP_BT, SMP_POINTS)

    def requires(self, gm: fx.GraphModule, ctx: CompileContext) -> None:
        if not any(ROLE_KEY in n.meta for n in gm.graph.nodes):
            raise InputError("nodes have no roles", "run 'tag-roles' before 'smp-annotate'")

    def call(self, gm: fx.GraphModule, ctx: CompileContext) -> PassResult:
        variant = self.option(ctx, "smp_bt")
        if variant != "none" and ctx.bits != 2:
            raise InputError(f"smp_bt={variant} is an INT2 option, not for {ctx.bits} bits", "add --bits 2")
        spec = QuantSpec(bits=ctx.bits, signed=True, symmetric=False, quantizer=QUANTIZER_KINDS[variant])
        edge = QuantSpec(bits=EDGE_WEIGHT_BITS, signed=True, symmetric=False, quantizer="qlr")
        points = smp_points(gm, official=self.option(ctx, "smp_points") == "official")
        for node, why in points.items():
            node.meta[QSPEC_KEY] = edge if why == Role.EDGE_WEIGHT.value else spec
        kinds: dict[str, int] = {}
        for why in points.values():
            kinds[why] = kinds.get(why, 0) + 1
        ctx.report["quantization_points"] = len(points)
        ctx.report["smp"] = {
            "points": kinds, "bits": ctx.bits, "variant": variant, "point_set": self.option(ctx, "smp_points")
        }  # fmt: skip
        return PassResult(gm, bool(points))
