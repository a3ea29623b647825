"""Freeze A²Q's Nearest-Neighbour Strategy quantizers: the group choice becomes part of the graph.

Each ``a2q-nns`` quantizer becomes ``quantize/dequantize`` whose parameters are its group tables gathered
by the row's group, computed from the value itself as in training
(:func:`~quantgraph.ir.a2q_quantizer.nns_groups`): ``argmin_k (max_j |x_ij| - t_k)²`` with the constant
thresholds ``t_k = qmax_k · s_k``. So one exported model serves graphs of any size. Run before
``convert-qat``, which freezes the other quantizers.
"""

from __future__ import annotations

import torch
from torch import fx

from quantgraph.ir.a2q_quantizer import A2QNNSQuantizer
from quantgraph.ir.meta import QDQ_KEY, QPARAMS_KEY, ROLE_KEY, ROWS_KEY
from quantgraph.ir.roles import Role
from quantgraph.passes.infra import CompileContext, PassBase, PassResult, add_constant
from quantgraph.passes.insert_qdq import insert_qdq_after
from quantgraph.passes.prepare_qat import fake_quant_nodes
from quantgraph.passes.registry import register_pass

aten = torch.ops.aten


def insert_nns_groups(gm: fx.GraphModule, source: fx.Node, thresholds: torch.Tensor) -> fx.Node:
    """Add ``argmin((amax(|source|, 1) - t)², 1)`` after ``source``; returns the int64 group node."""
    anchor = source.next
    table = add_constant(gm, f"qg_{source.name}_nns_thresholds", thresholds.reshape(1, -1).float(), anchor)
    g = gm.graph
    with g.inserting_before(anchor):
        magnitude = g.call_function(aten.abs.default, (source,))
        row_max = g.call_function(aten.amax.default, (magnitude, [1], True))
        diff = g.call_function(aten.sub.Tensor, (row_max, table))
        square = g.call_function(aten.mul.Tensor, (diff, diff))
        group = g.call_function(aten.argmin.default, (square, 1))
    for node in (magnitude, row_max, diff, square, group):
        node.meta.update({ROLE_KEY: Role.STRUCTURE, ROWS_KEY: "node"})
    return group


def insert_nns_qdq(gm: fx.GraphModule, source: fx.Node, module: A2QNNSQuantizer) -> fx.Node:
    """Quantize/dequantize ``source`` with the group tables gathered by its in-graph NNS group."""
    group = insert_nns_groups(gm, source, module.thresholds())
    chain = [group]
    while chain[-1].args[0] is not source:  # group <- square <- diff <- row_max <- magnitude
        chain.append(chain[-1].args[0])
    magnitude = chain[-1]
    table = chain[2].args[1]  # the thresholds constant ``diff`` reads
    qp = module.qparams()
    dq = insert_qdq_after(gm, source, qp, group)
    magnitude.replace_input_with(dq, source)  # the group is chosen from the float value, not its Q/DQ
    for node in [*chain, table]:  # each moved right after the source: table, magnitude, ..., group
        source.append(node)
    source.meta[QPARAMS_KEY] = qp
    source.meta[QDQ_KEY] = dq.name
    return dq


@register_pass
class A2QFreezeNNSPass(PassBase):
    """Replace NNS quantizers by group-gathered quantize/dequantize (the group computed in the graph)."""

    name = "a2q-freeze-nns"
    description = "freeze A²Q NNS quantizers: per-row group chosen in the graph, tables gathered"

    def call(self, gm: fx.GraphModule, ctx: CompileContext) -> PassResult:
        frozen = []
        for fq in fake_quant_nodes(gm):
            module = gm.get_submodule(str(fq.target))
            if not isinstance(module, A2QNNSQuantizer):
                continue
            source = fq.args[0]
            fq.replace_all_uses_with(source)
            gm.graph.erase_node(fq)
            insert_nns_qdq(gm, source, module)
            gm.delete_submodule(str(fq.target))
            frozen.append(source.name)
        if frozen:
            ctx.report.setdefault("a2q_nns", {})["frozen"] = frozen
        return PassResult(gm, bool(frozen))
