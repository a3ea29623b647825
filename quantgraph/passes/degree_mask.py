"""Degree-Quant's protective masking: high in-degree nodes skip quantization at random during training.

Each node's protection probability is ``p = p_min + (p_max - p_min) * CDF(in_degree)`` where CDF is the
fraction of nodes whose in-degree is at most its own. A fresh Bernoulli mask is drawn at every training
forward; per-edge values use the mask of their source node. In eval mode nothing is protected.
"""

from __future__ import annotations

import torch
from torch import Tensor, fx, nn

from quantgraph.errors import InputError
from quantgraph.ir.meta import ROWS_KEY
from quantgraph.ir.ops import GATHER, SCATTER
from quantgraph.options import Option
from quantgraph.passes.infra import CompileContext, PassBase, PassResult, same_value
from quantgraph.passes.prepare_qat import fake_quant_nodes, require_fake_quant
from quantgraph.passes.registry import register_pass

#: Name of the mask module; ``convert-qat`` drops it with every other module the graph no longer uses.
DEGREE_MASK_MODULE = "qg_degree_mask"
#: Degree-Quant's defaults: (p_min, p_max) by bitwidth.
DEFAULT_PROBABILITIES = {8: (0.0, 0.1), 4: (0.1, 0.2)}
_P = DEFAULT_PROBABILITIES


def protection_probability(edge_index: Tensor, num_nodes: int, p_min: float, p_max: float) -> Tensor:
    """``p_min + (p_max - p_min) * CDF(in-degree)`` for every node."""
    deg = torch.zeros(num_nodes, dtype=torch.float32).scatter_add_(
        0, edge_index[1], torch.ones(edge_index.shape[1], dtype=torch.float32)
    )
    ordered = torch.sort(deg).values
    cdf = torch.searchsorted(ordered, deg, right=True).float() / max(num_nodes, 1)
    return p_min + (p_max - p_min) * cdf


class ProtectiveMask(nn.Module):
    """Draws the per-node protection mask (all False in eval mode)."""

    def __init__(self, p_min: float, p_max: float) -> None:
        super().__init__()
        self.p_min, self.p_max = float(p_min), float(p_max)

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        n = x.shape[0]
        if not self.training:
            return torch.zeros(n, dtype=torch.bool)
        return torch.bernoulli(protection_probability(edge_index, n, self.p_min, self.p_max)).bool()

    def extra_repr(self) -> str:
        return f"p_min={self.p_min}, p_max={self.p_max}"


def _downstream_scatter_index(node: fx.Node) -> fx.Node | None:
    frontier, seen = [node], set()
    while frontier:
        n = frontier.pop(0)
        for user in n.users:
            if user.target == SCATTER:
                return user.args[1]
            if user not in seen and (user.meta.get(ROWS_KEY) == "edge" or user.op == "call_module"):
                seen.add(user)
                frontier.append(user)
    return None


def source_index(node: fx.Node) -> fx.Node | None:
    """The source-node index of an edge-level value: a gather index upstream that is not the scatter's target."""
    target = _downstream_scatter_index(node)
    frontier, seen, candidates = [node], set(), []
    while frontier:
        n = frontier.pop(0)
        if n.target == GATHER:
            candidates.append(n.args[1])
            continue
        for inp in n.all_input_nodes:
            edge_like = inp.meta.get(ROWS_KEY) == "edge" or inp.target == GATHER or inp.op == "call_module"
            if inp not in seen and edge_like:
                seen.add(inp)
                frontier.append(inp)
    for idx in candidates:
        if target is None or not same_value(idx, target):
            return idx
    return None


@register_pass
class DegreeMaskPass(PassBase):
    """Wire a ``ProtectiveMask`` into every FakeQuantize (node rows, or source rows for per-edge values)."""

    name = "degree-mask"
    description = "Degree-Quant protective masks: degree-CDF Bernoulli bypass of quantization in training"
    options = (
        Option(
            "p_min",
            float,
            None,
            f"lowest protection probability (unset: {_P[8][0]} at INT8, {_P[4][0]} below)",
        ),
        Option(
            "p_max",
            float,
            None,
            f"highest protection probability (unset: {_P[8][1]} at INT8, {_P[4][1]} below)",
        ),
    )

    def requires(self, gm: fx.GraphModule, ctx: CompileContext) -> None:
        require_fake_quant(gm, self.name)
        if "edge_index" not in ctx.input_names or "x" not in ctx.input_names:
            raise InputError(
                "protective masks need inputs named x and edge_index", "name the forward arguments so"
            )

    def call(self, gm: fx.GraphModule, ctx: CompileContext) -> PassResult:
        p_min, p_max = DEFAULT_PROBABILITIES[8 if ctx.bits >= 8 else 4]
        given_min, given_max = self.option(ctx, "p_min"), self.option(ctx, "p_max")
        p_min = p_min if given_min is None else given_min
        p_max = p_max if given_max is None else given_max
        if not 0 <= p_min <= p_max <= 1:
            raise InputError(
                f"protection probabilities [{p_min}, {p_max}] are invalid", "use 0 <= p_min <= p_max <= 1"
            )
        gm.add_submodule(DEGREE_MASK_MODULE, ProtectiveMask(p_min, p_max))
        placeholders = {n.name: n for n in gm.graph.nodes if n.op == "placeholder"}
        first = next(n for n in gm.graph.nodes if n.op != "placeholder")
        with gm.graph.inserting_before(first):
            mask = gm.graph.call_module(DEGREE_MASK_MODULE, (placeholders["x"], placeholders["edge_index"]))
        edge_masks: dict[fx.Node, fx.Node] = {}
        wired = 0
        for fq in fake_quant_nodes(gm):
            value, rows = fq.args[0], fq.meta.get(ROWS_KEY)
            if rows == "edge":
                idx = source_index(value)
                if idx is None:
                    continue
                if idx not in edge_masks:
                    with gm.graph.inserting_after(idx):
                        edge_masks[idx] = gm.graph.call_function(GATHER, (mask, idx))
                fq.args = (value, edge_masks[idx])
            elif rows == "node":
                fq.args = (value, mask)
            else:
                continue  # weights and pooled (per-graph) values have no node rows
            wired += 1
        ctx.report["degree_mask"] = {"p_min": p_min, "p_max": p_max, "masked_quantizers": wired}
        return PassResult(gm, True)
