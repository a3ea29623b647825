"""Dropout handling for graphs traced in training mode.

``dropout-to-module`` turns ``native_dropout(x, p, True)`` into an ``nn.Dropout`` submodule, so the
graph drops out in ``train()`` and is the identity in ``eval()`` (QAT needs both). ``strip-dropout``
removes dropout entirely (before export and for the FP32 reference).
"""

from __future__ import annotations

import operator

import torch
from torch import fx, nn

from quantgraph.passes.infra import CompileContext, PassBase, PassResult
from quantgraph.passes.registry import register_pass

aten = torch.ops.aten


def _dropout_sites(gm: fx.GraphModule) -> list[tuple[fx.Node, fx.Node, float]]:
    """(dropout node, node whose uses carry the dropped value, p) for train-mode dropouts."""
    sites = []
    for node in gm.graph.nodes:
        if node.target == aten.native_dropout.default and node.args[2]:
            out = next((u for u in node.users if u.target == operator.getitem and u.args[1] == 0), None)
            sites.append((node, out, float(node.args[1])))
        elif node.target == aten.dropout.default and node.args[2]:
            sites.append((node, node, float(node.args[1])))
    return sites


def _erase_site(gm: fx.GraphModule, drop: fx.Node, out: fx.Node | None, replacement: fx.Node) -> None:
    if out is not None:
        out.replace_all_uses_with(replacement)
        if out is not drop:
            gm.graph.erase_node(out)
    for user in list(drop.users):  # the unused mask output
        gm.graph.erase_node(user)
    gm.graph.erase_node(drop)


@register_pass
class DropoutToModulePass(PassBase):
    """Make train-mode dropout follow the module's train/eval mode."""

    name = "dropout-to-module"
    description = "turn traced train-mode dropout into nn.Dropout submodules (identity in eval)"

    def call(self, gm: fx.GraphModule, ctx: CompileContext) -> PassResult:
        sites = _dropout_sites(gm)
        for i, (drop, out, p) in enumerate(sites):
            name = f"qg_dropout_{i}"
            gm.add_submodule(name, nn.Dropout(p))
            with gm.graph.inserting_before(drop):
                mod = gm.graph.call_module(name, (drop.args[0],))
            mod.meta = {k: v for k, v in drop.meta.items() if k != "val"}
            _erase_site(gm, drop, out, mod)
        return PassResult(gm, bool(sites))


@register_pass
class StripDropoutPass(PassBase):
    """Remove dropout (ops and modules): the graph is then the eval-mode model."""

    name = "strip-dropout"
    description = "remove dropout ops and nn.Dropout submodules (eval-mode graph)"

    def call(self, gm: fx.GraphModule, ctx: CompileContext) -> PassResult:
        sites = _dropout_sites(gm)
        for drop, out, _p in sites:
            _erase_site(gm, drop, out, drop.args[0])
        modules = [
            n
            for n in gm.graph.nodes
            if n.op == "call_module" and isinstance(gm.get_submodule(n.target), nn.Dropout)
        ]
        for node in modules:
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
            gm.delete_submodule(node.target)
        return PassResult(gm, bool(sites or modules))
