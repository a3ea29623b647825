"""Shared fixtures: small PyG models, random graphs, and the shared dataset folder."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import torch
from torch_geometric.nn import GATConv, GCNConv, GINConv, SAGEConv

from quantgraph.cpu import int8_dot_saturates

warnings.filterwarnings("ignore", category=UserWarning, message="Failed to fetch module")

REPO = Path(__file__).resolve().parents[1]

#: compile options under which onnxruntime's and OpenVINO's int8 kernels are exact on this host: 7-bit weights
#: where the CPU has no VNNI (its u8 x s8 pair sums saturate int16; quantgraph.cpu). Tests that compare the
#: runtimes with the IR step for step at 8 bits use these; elsewhere the weights keep all 8 bits.
HOST_EXACT = {"reduce_range": True} if int8_dot_saturates() else {}
HOST_EXACT_ARGS = ["--option", "reduce_range=true"] if HOST_EXACT else []


def data_root() -> Path | None:
    """Folder with the shared datasets: $QUANTGRAPH_DATA_ROOT, else ../shared/data beside the repo."""
    env = os.environ.get("QUANTGRAPH_DATA_ROOT")
    candidates = [Path(env)] if env else []
    candidates.append(REPO.parent / "shared" / "data")
    for c in candidates:
        if c.exists():
            return c
    return None


@pytest.fixture(scope="session")
def planetoid_root() -> Path:
    root = data_root()
    if root is None:
        pytest.skip("shared Planetoid files not found (set QUANTGRAPH_DATA_ROOT)")
    flat = root / "planetoid"
    return flat if flat.exists() else root


def _conv_pair(kind: str, fin: int, hidden: int, fout: int):
    if kind == "gcn":
        return GCNConv(fin, hidden), GCNConv(hidden, fout)
    if kind == "sage":
        return SAGEConv(fin, hidden), SAGEConv(hidden, fout)
    if kind == "gat":
        return GATConv(fin, hidden // 2, heads=2), GATConv(hidden, fout, heads=1)
    if kind == "gin":
        mlp = torch.nn.Sequential(
            torch.nn.Linear(fin, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, hidden)
        )
        return GINConv(mlp), GINConv(torch.nn.Linear(hidden, fout))
    raise ValueError(kind)


class TwoLayer(torch.nn.Module):
    """conv -> relu -> conv, for any PyG layer kind."""

    def __init__(self, kind: str, fin: int = 8, hidden: int = 16, fout: int = 4) -> None:
        super().__init__()
        self.c1, self.c2 = _conv_pair(kind, fin, hidden, fout)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        return self.c2(self.c1(x, edge_index).relu(), edge_index)


class PlainIndexAdd(torch.nn.Module):
    """A plain-PyTorch GNN layer: linear, gather by source, weight, index_add by target."""

    def __init__(self, fin: int = 8, fout: int = 4) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(fin, fout)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        h = self.lin(x)
        msg = h[edge_index[0]] * 0.5
        return torch.zeros_like(h).index_add(0, edge_index[1], msg).relu()


def random_graph(num_nodes: int, num_edges: int, features: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(num_nodes, features, generator=g)
    edge_index = torch.randint(0, num_nodes, (2, num_edges), generator=g)
    return x, edge_index


@pytest.fixture(params=["gcn", "sage", "gat", "gin"])
def pyg_model(request) -> tuple[str, torch.nn.Module]:
    torch.manual_seed(0)
    return request.param, TwoLayer(request.param).eval()
