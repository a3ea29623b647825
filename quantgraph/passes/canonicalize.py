"""Canonicalize message passing: rewrite ATen gathers/scatters into ``quantgraph.gather``/``scatter``.

Recognised forms (as torch.export lowers PyG and plain-PyTorch GNNs):

* gather: ``index_select(src, 0, idx)`` and ``src[idx]`` (``index.Tensor`` with one 1-D integer index);
* scatter-sum: ``scatter_add(zeros, 0, expand(idx), src)``, ``index_add(zeros, 0, idx, src)`` and
  ``scatter_reduce(zeros, 0, expand(idx), src, "sum"|"mean"|"amax", include_self=False)``;
* scatter-mean: ``scatter_sum(src, idx) / clamp(scatter_sum(ones, idx), min=1)`` (PyG's mean aggregation).

Identity ops (``clone``, ``alias``, ``detach``, eval-mode ``dropout``) are removed.
"""

from __future__ import annotations

import torch
from torch import fx

from quantgraph.ir.ops import GATHER, SCATTER
from quantgraph.passes.infra import CompileContext, PassBase, PassResult, same_value
from quantgraph.passes.registry import register_pass

aten = torch.ops.aten
_ZEROS = {aten.new_zeros.default, aten.zeros.default, aten.zeros_like.default}
_INDEX_WRAPPERS = {
    aten.expand.default,
    aten.expand_as.default,
    aten.view.default,
    aten.reshape.default,
    aten.unsqueeze.default,
    aten._unsafe_view.default,
}
_ONES = {aten.new_ones.default, aten.ones.default, aten.ones_like.default}
_REDUCE_NAMES = {"sum": "sum", "mean": "mean", "amax": "max"}
#: Ops that return their input unchanged in a functional graph (eval-mode dropout included).
_IDENTITIES = {aten.clone.default, aten.alias.default, aten.detach.default, aten.lift_fresh_copy.default}


def _is_identity(node: fx.Node) -> bool:
    if node.target in _IDENTITIES and not node.kwargs.get("memory_format"):
        return True
    return node.target == aten.dropout.default and not node.args[2]


def _rank(node: fx.Node) -> int | None:
    val = node.meta.get("val")
    return val.dim() if isinstance(val, torch.Tensor) else None


def _is_zeros(node: object) -> bool:
    if not isinstance(node, fx.Node) or node.op != "call_function":
        return False
    if node.target in _ZEROS:
        return True
    return node.target in (aten.full.default, aten.new_full.default) and node.args[-1] == 0


def _num_rows(base: fx.Node) -> object:
    """The first dimension of a zeros-like base tensor: an int or a SymInt-valued node."""
    if base.target == aten.zeros_like.default:
        template = base.args[0]
        with base.graph.inserting_after(base):
            rows = base.graph.call_function(aten.sym_size.int, (template, 0))
        val = template.meta.get("val")
        if isinstance(val, torch.Tensor):
            rows.meta["val"] = val.shape[0]
        return rows
    size = base.args[1] if base.target in (aten.new_zeros.default, aten.new_full.default) else base.args[0]
    return size[0] if isinstance(size, (list, tuple)) and size else None


def _source_index(node: object) -> fx.Node | None:
    """Walk back through expand/view wrappers to the 1-D index tensor."""
    while isinstance(node, fx.Node):
        if _rank(node) == 1:
            return node
        if node.op == "call_function" and node.target in _INDEX_WRAPPERS:
            node = node.args[0]
            continue
        return None
    return None


def _replace(gm: fx.GraphModule, old: fx.Node, target: object, args: tuple) -> fx.Node:
    with gm.graph.inserting_before(old):
        new = gm.graph.call_function(target, args)
    new.meta = dict(old.meta)
    old.replace_all_uses_with(new)
    gm.graph.erase_node(old)
    return new


def _match_gather(node: fx.Node) -> tuple | None:
    if node.target == aten.index_select.default:
        src, dim, idx = node.args
        if dim in (0, -(_rank(src) or 0)) and _rank(idx) == 1:
            return (src, idx)
    if node.target == aten.index.Tensor:
        src, indices = node.args
        if len(indices) == 1 and isinstance(indices[0], fx.Node) and _rank(indices[0]) == 1:
            val = indices[0].meta.get("val")
            if val is not None and not val.is_floating_point() and val.dtype != torch.bool:
                return (src, indices[0])
    return None


def _match_scatter(node: fx.Node) -> tuple | None:
    if node.target == aten.scatter_add.default:
        base, dim, index, src = node.args
        reduce = "sum"
    elif (
        node.target == aten.index_add.default and len(node.args) == 4 and not node.kwargs.get("alpha", 1) != 1
    ):
        base, dim, index, src = node.args
        reduce = "sum"
    elif node.target == aten.scatter_reduce.two:
        base, dim, index, src, how = node.args[:5]
        include_self = node.kwargs.get("include_self", node.args[5] if len(node.args) > 5 else True)
        if how not in _REDUCE_NAMES or (include_self and how != "sum"):
            return None
        reduce = _REDUCE_NAMES[how]
    else:
        return None
    idx = _source_index(index)
    if dim != 0 or not _is_zeros(base) or idx is None:
        return None
    rows = _num_rows(base)
    if rows is None:
        return None
    return (src, idx, rows, reduce)


def _match_mean(node: fx.Node) -> tuple | None:
    """div(scatter_sum(src, idx), clamp(scatter_sum(ones, idx), min=1)) -> scatter mean."""
    if node.target != aten.div.Tensor:
        return None
    num, den = node.args
    if not (isinstance(num, fx.Node) and num.target == SCATTER and num.args[3] == "sum"):
        return None
    while isinstance(den, fx.Node) and den.target in _INDEX_WRAPPERS:
        den = den.args[0]
    if not (isinstance(den, fx.Node) and den.target in (aten.clamp.default, aten.clamp_min.default)):
        return None
    if den.args[1] != 1 or (
        den.target == aten.clamp.default and len(den.args) > 2 and den.args[2] is not None
    ):
        return None
    count = den.args[0]
    if not (isinstance(count, fx.Node) and count.target == SCATTER and count.args[3] == "sum"):
        return None
    ones = count.args[0]
    if not (isinstance(ones, fx.Node) and ones.target in _ONES and same_value(count.args[1], num.args[1])):
        return None
    return (num.args[0], num.args[1], num.args[2], "mean")


@register_pass
class CanonicalizePass(PassBase):
    """Rewrite message passing into first-class ``quantgraph.gather``/``scatter`` IR ops."""

    name = "canonicalize"
    description = "recognise gather -> per-edge op -> scatter-reduce and rewrite it into IR ops"

    def call(self, gm: fx.GraphModule, ctx: CompileContext) -> PassResult:
        modified = False
        for node in list(gm.graph.nodes):
            if node.op != "call_function":
                continue
            if _is_identity(node):  # copies carry no computation and need no quantizer of their own
                node.replace_all_uses_with(node.args[0])
                gm.graph.erase_node(node)
                modified = True
            elif (m := _match_gather(node)) is not None:
                _replace(gm, node, GATHER, m)
                modified = True
            elif (m := _match_scatter(node)) is not None:
                _replace(gm, node, SCATTER, m)
                modified = True
        for node in list(gm.graph.nodes):
            if node.op == "call_function" and (m := _match_mean(node)) is not None:
                _replace(gm, node, SCATTER, m)
                modified = True
        if modified:
            gm.graph.eliminate_dead_code()
        ctx.report["message_passing"] = {
            "gathers": sum(1 for n in gm.graph.nodes if n.target == GATHER),
            "scatters": {
                r: sum(1 for n in gm.graph.nodes if n.target == SCATTER and n.args[3] == r)
                for r in ("sum", "mean", "max")
            },
        }
        return PassResult(gm, modified)

    def ensures(self, gm: fx.GraphModule, ctx: CompileContext) -> None:
        for node in gm.graph.nodes:
            if node.target == aten.scatter_add.default and _is_zeros(node.args[0]):
                raise AssertionError(f"scatter {node.name} was left in ATen form")
