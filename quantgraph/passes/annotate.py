"""Annotate quantization points (the PT2E-style "quantizer"): it only marks nodes, it inserts nothing.

The policy puts a role -> ``QuantSpec`` map in ``ctx.qconfig``; this pass stores the spec of each
float node whose role is in the map as ``node.meta[QSPEC_KEY]``. A later generic pass inserts Q/DQ.
"""

from __future__ import annotations

from torch import fx

from quantgraph.errors import InputError
from quantgraph.ir.meta import QSPEC_KEY, ROLE_KEY
from quantgraph.ir.qspec import Granularity
from quantgraph.passes.infra import CompileContext, PassBase, PassResult, node_value_is_float
from quantgraph.passes.registry import register_pass


@register_pass
class AnnotatePass(PassBase):
    """Mark quantization points: every float node whose role the policy's qconfig names."""

    name = "annotate"
    description = "mark quantization points by role from the policy's qconfig (no graph change)"

    def requires(self, gm: fx.GraphModule, ctx: CompileContext) -> None:
        if not any(ROLE_KEY in n.meta for n in gm.graph.nodes):
            raise InputError("nodes have no roles", "run the 'tag-roles' pass before 'annotate'")
        if not ctx.qconfig:
            raise InputError(
                "the policy gave no qconfig (role -> spec)", "use a quantizing policy such as minmax"
            )

    def call(self, gm: fx.GraphModule, ctx: CompileContext) -> PassResult:
        count = 0
        for node in gm.graph.nodes:
            spec = ctx.qconfig.get(node.meta.get(ROLE_KEY))
            if spec is None or not node_value_is_float(node, gm):
                continue
            if spec.granularity == Granularity.PER_GROUP and spec.group_index is None:
                raise InputError(f"per-group spec for {node.name} names no group index", "set group_index")
            node.meta[QSPEC_KEY] = spec
            count += 1
        ctx.report["quantization_points"] = count
        return PassResult(gm, count > 0)
