"""Freeze QAT: each ``FakeQuantize`` becomes quantize/dequantize with its learned range; masks and
dropout disappear, so the exported model carries no trace of training."""

from __future__ import annotations

from torch import fx

from quantgraph.ir.meta import QDQ_KEY, QPARAMS_KEY
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
            group = fq.kwargs.get("groups") if getattr(module, "takes_groups", False) else None
            source.meta[QPARAMS_KEY] = qp
            fq.replace_all_uses_with(source)
            gm.graph.erase_node(fq)
            gm.delete_submodule(fq.target)
            source.meta[QDQ_KEY] = insert_qdq_after(gm, source, qp, group).name
        gm.graph.eliminate_dead_code()  # training-only inputs of the quantizers (masks) have no users left
        StripDropoutPass()(gm, ctx)
        gm.delete_all_unused_submodules()  # whatever module a training pass added and nothing reads now
        gm.eval()
        return PassResult(gm, True)
