"""Insert quantize/dequantize after every calibrated node: the one generic insertion pass (PT2E-style)."""

from __future__ import annotations

import torch
from torch import fx

from quantgraph.errors import InputError
from quantgraph.ir.meta import LAYER_KEY, QDQ_KEY, QPARAMS_KEY, QSPEC_KEY, ROLE_KEY, ROWS_KEY, SOURCE_KEY
from quantgraph.ir.ops import DEQUANTIZE, GATHER, QUANTIZE
from quantgraph.ir.qspec import QParams
from quantgraph.ir.roles import Role
from quantgraph.passes.infra import CompileContext, PassBase, PassResult, add_constant, later
from quantgraph.passes.registry import register_pass

SYM_SIZE = torch.ops.aten.sym_size.int  # a shape read (the bucket index's node count) needs no quantizer


def insert_qdq_after(gm: fx.GraphModule, node: fx.Node, qp: QParams, group: fx.Node | None = None) -> fx.Node:
    """Insert ``dequantize(quantize(node))`` and reroute the node's users to it; returns the dequantize.

    ``group`` (per-group quantization): the int64 node holding each row's group; the parameters are
    then tables (one entry per group) and each row's parameters are ``gather(table, group)``.
    """
    qp.check(node.name)  # also parameters set by QAT or a plug-in pass, not only by calibrate
    anchor = node.next
    if group is not None:  # the parameters are gathered by the group index: insert after both
        anchor = later(gm, node, group).next
    consts = {
        k: add_constant(gm, f"qg_{node.name}_{k}", getattr(qp, k), anchor)
        for k in ("scale", "zero_point", "qmin", "qmax")
    }
    if group is not None:
        with gm.graph.inserting_before(anchor):
            consts = {k: gm.graph.call_function(GATHER, (table, group)) for k, table in consts.items()}
        for row_params in consts.values():
            row_params.meta.update({ROLE_KEY: Role.STRUCTURE, ROWS_KEY: "node"})
    users = list(node.users)
    with gm.graph.inserting_before(anchor):
        q = gm.graph.call_function(
            QUANTIZE, (node, consts["scale"], consts["zero_point"], consts["qmin"], consts["qmax"], qp.axis)
        )
        dq = gm.graph.call_function(DEQUANTIZE, (q, consts["scale"], consts["zero_point"], qp.axis))
    for meta_key in (ROLE_KEY, LAYER_KEY):
        q.meta[meta_key] = dq.meta[meta_key] = node.meta.get(meta_key)
    q.meta[SOURCE_KEY] = dq.meta[SOURCE_KEY] = node.name
    earlier = set()
    if group is not None:  # users before the inserted pair (the bucket index reading x's size) keep x
        for n in gm.graph.nodes:
            if n is q:
                break
            earlier.add(n)
    for user in users:
        if user not in earlier:
            user.replace_input_with(node, dq)
    return dq


@register_pass
class InsertQDQPass(PassBase):
    """Insert quantize -> dequantize pairs (the fake-quant reference semantics) at calibrated nodes."""

    name = "insert-qdq"
    description = "insert quantize/dequantize pairs after every node with calibrated parameters"

    def requires(self, gm: fx.GraphModule, ctx: CompileContext) -> None:
        if any(QSPEC_KEY in n.meta and QPARAMS_KEY not in n.meta for n in gm.graph.nodes):
            raise InputError(
                "annotated nodes have no quantization parameters", "run 'calibrate' before 'insert-qdq'"
            )
        if not any("qg_qparams" in n.meta for n in gm.graph.nodes):
            raise InputError(
                "insert-qdq found no calibrated node, so it would insert nothing",
                "run 'tag-roles', 'annotate' and 'calibrate' before it (see `quantgraph passes`)",
            )

    def call(self, gm: fx.GraphModule, ctx: CompileContext) -> PassResult:
        targets = [n for n in gm.graph.nodes if QPARAMS_KEY in n.meta and QDQ_KEY not in n.meta]
        by_name = {n.name: n for n in gm.graph.nodes}
        for node in targets:
            group = node.meta[QSPEC_KEY].group_index if QSPEC_KEY in node.meta else None
            dq = insert_qdq_after(gm, node, node.meta[QPARAMS_KEY], by_name[group] if group else None)
            node.meta[QDQ_KEY] = dq.name
        return PassResult(gm, bool(targets))

    def ensures(self, gm: fx.GraphModule, ctx: CompileContext) -> None:
        for node in gm.graph.nodes:
            if QDQ_KEY in node.meta and any(u.target not in (QUANTIZE, SYM_SIZE) for u in node.users):
                raise AssertionError(f"{node.name} still feeds an unquantized user")
