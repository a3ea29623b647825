"""User code the CLI tests load by name: a custom pass and a model that is not in the zoo."""

from __future__ import annotations

import torch
from torch_geometric.nn import GraphConv, MessagePassing

from quantgraph.passes import PassBase, PassResult


class MarkerPass(PassBase):
    """A third-party pass: records that it ran and how many nodes carry a quantization spec."""

    name = "marker"
    description = "test pass that counts annotated nodes"

    def call(self, gm, ctx):
        ctx.report["marker_saw_annotations"] = sum(1 for n in gm.graph.nodes if "qg_qspec" in n.meta)
        return PassResult(gm, False)


class GatedConv(MessagePassing):
    """A user-written MessagePassing layer: gated messages, max aggregation."""

    def __init__(self, fin: int, fout: int) -> None:
        super().__init__(aggr="max")
        self.lin = torch.nn.Linear(fin, fout)
        self.gate = torch.nn.Linear(2 * fin, 1)

    def forward(self, x, edge_index):
        return self.propagate(edge_index, x=x)

    def message(self, x_i, x_j):
        g = torch.sigmoid(self.gate(torch.cat([x_i, x_j], dim=-1)))
        return g * self.lin(x_j)


class UserGNN(torch.nn.Module):
    """Not a zoo model: GraphConv (sum) then a custom gated max-aggregation layer."""

    def __init__(self, fin: int, hidden: int, classes: int) -> None:
        super().__init__()
        self.conv1 = GraphConv(fin, hidden)
        self.conv2 = GatedConv(hidden, classes)

    def forward(self, x, edge_index):
        return self.conv2(torch.relu(self.conv1(x, edge_index)), edge_index)


class Unsupported(torch.nn.Module):
    """Uses an op the ONNX backend has no lowering for."""

    def __init__(self, fin: int) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(fin, 4)

    def forward(self, x, edge_index):
        h = self.lin(x)
        return h * torch.linalg.det(h[:4, :4])
