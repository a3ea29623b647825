"""Annotate quantization points (the PT2E-style "quantizer"): it only marks nodes, it inserts nothing.

The policy puts a role -> ``QuantSpec`` map in ``ctx.qconfig``; this pass stores the spec of each
float node whose role is in the map as ``node.meta[QSPEC_KEY]``. A later generic pass inserts Q/DQ.

With ``share_gather_quant`` a message that is only a gather of a quantized value gets no quantizer of
its own: gathering copies values already on the producer's integer grid (PT2E's
``SharedQuantizationSpec`` for data-movement ops), where a second quantizer would round them again onto
another grid of the same bits.
"""

from __future__ import annotations

from torch import fx

from quantgraph.bitops import value_passed_on
from quantgraph.errors import InputError
from quantgraph.ir.meta import QSPEC_KEY, ROLE_KEY
from quantgraph.ir.ops import GATHER
from quantgraph.ir.qspec import Granularity
from quantgraph.ir.roles import Role
from quantgraph.options import Option
from quantgraph.passes.infra import CompileContext, PassBase, PassResult, node_value_is_float
from quantgraph.passes.registry import register_pass


@register_pass
class AnnotatePass(PassBase):
    """Mark quantization points: every float node whose role the policy's qconfig names."""

    name = "annotate"
    description = "mark quantization points by role from the policy's qconfig (no graph change)"
    options = (
        Option(
            "share_gather_quant",
            bool,
            False,
            "a message that only gathers a quantized value keeps that value's quantization (no second quantizer)",
        ),
    )

    def requires(self, gm: fx.GraphModule, ctx: CompileContext) -> None:
        if not any(ROLE_KEY in n.meta for n in gm.graph.nodes):
            raise InputError("nodes have no roles", "run the 'tag-roles' pass before 'annotate'")
        if not ctx.qconfig:
            raise InputError(
                "the policy gave no qconfig (role -> spec)", "use a quantizing policy such as minmax"
            )

    def call(self, gm: fx.GraphModule, ctx: CompileContext) -> PassResult:
        count = shared = 0
        share_gathers = self.option(ctx, "share_gather_quant")
        for node in gm.graph.nodes:
            spec = ctx.qconfig.get(node.meta.get(ROLE_KEY))
            if spec is None or not node_value_is_float(node, gm):
                continue
            if share_gathers and is_gather_of_quantized(node, gm):
                shared += 1
                continue
            if spec.granularity == Granularity.PER_GROUP and spec.group_index is None:
                raise InputError(f"per-group spec for {node.name} names no group index", "set group_index")
            node.meta[QSPEC_KEY] = spec
            count += 1
        ctx.report["quantization_points"] = count
        if share_gathers:
            ctx.report["shared_gather_points"] = shared
        return PassResult(gm, count > 0)


def is_gather_of_quantized(node: fx.Node, gm: fx.GraphModule) -> bool:
    """A message node that only gathers rows of a value already annotated (nodes run in order), looking
    through dropout and views (dropout is gone from the exported model)."""
    if node.meta.get(ROLE_KEY) != Role.MESSAGE or node.target != GATHER or not node.args:
        return False
    source = node.args[0]
    while isinstance(source, fx.Node) and QSPEC_KEY not in source.meta:
        source = value_passed_on(source, gm)
    return isinstance(source, fx.Node)
