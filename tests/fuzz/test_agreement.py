"""Random-graph agreement: the IR against every backend (onnx-qdq, onnx-int, native) on many small graphs.

Graph shapes that break aggregation code: isolated nodes, self-loops, duplicate edges, stars, cliques, an
empty edge set and in-degrees far above the calibration graph's. Fast subset by default; the long run
(``QUANTGRAPH_FUZZ_LONG=1``, or ``--fuzz-long`` where the fuzz suite's conftest registers it) draws hundreds.
"""

from __future__ import annotations

import os
import warnings

import pytest
import torch

import quantgraph as qg
from quantgraph.backends.verify import VERIFY_THREADS, compare_integers, ort_session, run_onnx
from quantgraph.data import GraphData

from ..conftest import HOST_EXACT

pytest.importorskip("torch_geometric")
from torch_geometric.nn import GCNConv, GINConv, SAGEConv  # noqa: E402

warnings.filterwarnings("ignore", category=UserWarning)
FEATURES, CLASSES = 6, 3
KINDS = ("random", "isolated", "self_loops", "duplicates", "star", "clique", "empty", "hub")


def _long(config: pytest.Config) -> bool:
    try:
        flag = bool(config.getoption("--fuzz-long"))
    except ValueError:
        flag = False
    return flag or os.environ.get("QUANTGRAPH_FUZZ_LONG") == "1"


class Net(torch.nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        if kind == "gcn":
            self.c1, self.c2 = GCNConv(FEATURES, 8), GCNConv(8, CLASSES)
        elif kind == "sage":
            self.c1, self.c2 = SAGEConv(FEATURES, 8), SAGEConv(8, CLASSES)
        else:
            self.c1 = GINConv(torch.nn.Linear(FEATURES, 8))
            self.c2 = GINConv(torch.nn.Linear(8, CLASSES))

    def forward(self, x, edge_index):
        return self.c2(self.c1(x, edge_index).relu(), edge_index)


def make_graph(kind: str, seed: int) -> GraphData:
    """A small graph of the named shape (seeded)."""
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(4, 24, (1,), generator=g))
    if kind == "random":
        ei = torch.randint(0, n, (2, 3 * n), generator=g)
    elif kind == "isolated":  # the upper half of the nodes has no edge at all
        ei = torch.randint(0, max(n // 2, 1), (2, 2 * n), generator=g)
    elif kind == "self_loops":
        loops = torch.arange(n).repeat(2, 1)
        ei = torch.cat([loops, torch.randint(0, n, (2, n), generator=g)], 1)
    elif kind == "duplicates":
        base = torch.randint(0, n, (2, n), generator=g)
        ei = base.repeat(1, 3)
    elif kind == "star":
        leaves = torch.arange(1, n)
        ei = torch.cat(
            [
                torch.stack([leaves, torch.zeros_like(leaves)]),
                torch.stack([torch.zeros_like(leaves), leaves]),
            ],
            1,
        )
    elif kind == "clique":
        idx = torch.arange(n)
        ei = torch.stack([idx.repeat_interleave(n), idx.repeat(n)])
    elif kind == "empty":
        ei = torch.zeros(2, 0, dtype=torch.long)
    else:  # hub: in-degree far above the calibration graph's
        ei = torch.stack([torch.randint(0, n, (40 * n,), generator=g), torch.zeros(40 * n, dtype=torch.long)])
    x = torch.randn(n, FEATURES, generator=g)
    return GraphData(x=x, edge_index=ei.long(), name=f"{kind}{seed}")


def _calibration() -> GraphData:
    g = torch.Generator().manual_seed(123)
    return GraphData(
        x=torch.randn(40, FEATURES, generator=g), edge_index=torch.randint(0, 40, (2, 160), generator=g)
    )


def _step(values: torch.Tensor) -> float:
    """The output quantizer's step, read off the IR's logits (distinct values differ by its multiples)."""
    distinct = torch.unique(values.flatten())
    gaps = distinct[1:] - distinct[:-1]
    return float(gaps.min()) if gaps.numel() else 0.0


def _cases(config: pytest.Config) -> list[tuple[str, int]]:
    per_kind = 40 if _long(config) else 2
    return [(kind, seed) for kind in KINDS for seed in range(per_kind)]


@pytest.mark.parametrize("arch", ["gcn", "sage", "gin"])
def test_ir_agrees_with_every_backend_on_random_graphs(arch, request, tmp_path):
    torch.manual_seed(0)
    model = Net(arch).eval()
    calib = _calibration()
    qdq = qg.compile(model, calib, policy="minmax", bits=8, options=HOST_EXACT)
    qdq_session = {t: ort_session(qdq.to_onnx(), t) for t in VERIFY_THREADS}
    integer = qg.compile(model, calib, policy="minmax", bits=8, backend="onnx-int", options=HOST_EXACT)
    int_model = integer.to_onnx()
    native = qg.compile(model, calib, policy="minmax", bits=8, backend="native", options=HOST_EXACT)
    off_by_step = 0
    for kind, seed in _cases(request.config):
        graph = make_graph(kind, seed)
        inputs = graph.inputs()
        ref = qdq.run(inputs)
        step = _step(ref)
        for threads, session in qdq_session.items():
            got = run_onnx(session, inputs)
            err = float((got - ref).abs().max()) if ref.numel() else 0.0
            # float32 GEMMs may round a value that sits on a rounding boundary the other way: one output
            # step, never more (biases are int32 in the IR and the model alike, so nothing else differs)
            assert err <= step * 1.001 + 1e-6, (arch, kind, seed, threads, err, step)
            off_by_step += int((got != ref).any(1).sum())
        ints = compare_integers(int_model, integer, inputs)
        assert ints["equal"], (arch, kind, seed, ints)
        report = native.export_native(tmp_path / f"{kind}{seed}.qgn", graph)
        assert report["integer_tensors"]["equal"] and report["max_abs_error"] == 0.0, (
            arch,
            kind,
            seed,
            report,
        )
    # nearly every node agrees exactly: 0 of 9232 node rows for each arch in the long run. Before the QDQ
    # backend quantized biases as onnxruntime's WeightBiasQuantization does, GIN differed on 54 (0.6%)
    nodes = sum(make_graph(k, s).x.shape[0] for k, s in _cases(request.config)) * len(qdq_session)
    assert off_by_step <= max(1, nodes // 1000), (off_by_step, nodes)
