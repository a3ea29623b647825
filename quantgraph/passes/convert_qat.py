"""Freeze QAT: each ``FakeQuantize`` becomes quantize/dequantize with its learned range; masks and
dropout disappear, so the exported model carries no trace of training."""

from __future__ import annotations

from torch import fx

from quantgraph.passes.dropout import StripDropoutPass
from quantgraph.passes.infra import CompileContext, PassBase, PassResult
from quantgraph.passes.insert_qdq import insert_qdq_after
from quantgraph.passes.prepare_qat import fake_quant_nodes, require_fake_quant
from quantgraph.passes.registry import register_pass


@register_pass
class ConvertQATPass(PassBase):
    """Replace trained FakeQuantize modules by quantize/dequantize pairs and remove training-only nodes."""

    name = "convert-qat"
    description = "freeze fake-quant ranges into quantize/dequantize; drop masks and dropout"

    def requires(self, gm: fx.GraphModule, ctx: CompileContext) -> None:
        require_fake_quant(gm, self.name)

    def call(self, gm: fx.GraphModule, ctx: CompileContext) -> PassResult:
        for fq in fake_quant_nodes(gm):
            module = gm.get_submodule(fq.target)
            source = fq.args[0]
            qp = module.qparams()
            source.meta["qg_qparams"] = qp
            fq.replace_all_uses_with(source)
            gm.graph.erase_node(fq)
            gm.delete_submodule(fq.target)
            source.meta["qg_qdq"] = insert_qdq_after(gm, source, qp).name
        gm.graph.eliminate_dead_code()  # the protective mask and its gathers have no users left
        if "qg_degree_mask" in dict(gm.named_children()):
            gm.delete_submodule("qg_degree_mask")
        StripDropoutPass()(gm, ctx)
        gm.eval()
        return PassResult(gm, True)
