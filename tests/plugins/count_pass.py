"""A pass with declared options, as a plug-in: counts the IR's quantization points into the report."""

from __future__ import annotations

from torch import fx

from quantgraph.errors import InputError
from quantgraph.ir.ops import QUANTIZE
from quantgraph.options import Option
from quantgraph.passes import CompileContext, PassBase, PassResult, register_pass


@register_pass
class CountQuantizePass(PassBase):
    name = "count-quantize"
    description = "count quantize nodes (a plug-in pass)"
    options = (
        Option("count_label", str, "quantize_nodes", "report key the count is written under"),
        Option("count_minimum", int, 1, "fail when fewer quantize nodes exist", minimum=0),
    )

    def call(self, gm: fx.GraphModule, ctx: CompileContext) -> PassResult:
        count = sum(1 for n in gm.graph.nodes if n.target == QUANTIZE)
        if count < self.option(ctx, "count_minimum"):
            raise InputError(f"only {count} quantize nodes", "lower count_minimum")
        ctx.report.setdefault("plugin_counts", {})[self.option(ctx, "count_label")] = count
        return PassResult(gm, False)
