"""Issue 18: the exchange layout (a partition holds only its owned nodes' in-edges and receives node-level graph
values such as GCN's degree normalisation from their owners) equals the single-process run, as the stub layout
(every halo node's in-edges too) does; graph stages outside ``graph_exchange``'s rules get the stub layout."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import quantgraph as qg
from quantgraph.native.runtime import NativeModel
from quantgraph.scale import layerwise
from quantgraph.scale.graph_exchange import exchange_points
from quantgraph.scale.partition import partition_graph
from quantgraph.scale.result import ScaleResult, assemble
from quantgraph.scale.store import load_manifest

from .conftest import TwoLayer
from .test_native_backend import _power_law


def _model(kind: str, tmp_path) -> str:
    torch.manual_seed(0)
    compiled = qg.compile(
        TwoLayer(kind).eval(), _power_law(300, 0), policy="minmax", bits=8, backend="native"
    )
    path = tmp_path / f"{kind}.qgn"
    compiled.export_native(path)
    return str(path)


def _run_in_process(path: str, parts) -> tuple[ScaleResult, list[layerwise.PartState]]:
    """The engines' schedule (prepare, then every segment with its halo pieces) in this process; also the
    states once the graph stage is complete."""
    manifest = load_manifest(parts)
    folders = [str(manifest.folder(p)) for p in range(manifest.parts)]
    states = [layerwise.prepare_part(path, f, p, 1) for p, f in enumerate(folders)]
    segs = layerwise.segments(layerwise.model_for(path, 1))
    prepared = states
    for k, seg in enumerate(segs):
        if seg.stage != "graph" and (k == 0 or segs[k - 1].stage == "graph"):
            prepared = states  # the graph stage is complete
        pieces = [
            [layerwise.halo_piece(states[q], seg, folders[p]) for q in manifest.halo_from(p)]
            if seg.exchange
            else []
            for p in range(manifest.parts)
        ]
        states = [layerwise.run_segment(path, states[p], k, pieces[p], 1) for p in range(manifest.parts)]
    outs = [layerwise.outputs(path, s, 1) for s in states]
    return assemble(manifest.num_nodes, folders, outs, states, segs, [], 0.0, 1, {}), prepared


def _csr_edges(state: layerwise.PartState) -> int:
    return max(v.csr.num_edges for v in state.values.values() if hasattr(v, "csr"))


@pytest.mark.parametrize("kind", ["gcn", "sage", "gin"])
def test_exchange_and_stub_layouts_equal_single_process(kind, tmp_path, monkeypatch):
    path = _model(kind, tmp_path)
    g = _power_law(200, 4)
    expected = NativeModel.load(path, threads=1).run(g.inputs()).numpy()
    summary = partition_graph(g.x.numpy(), g.edge_index.numpy(), 3, tmp_path / "parts", method="hash")
    points = exchange_points(layerwise.model_for(path, 1))
    assert points is not None and len(points) == (2 if kind == "gcn" else 0)  # GCN: deg^-1/2 of each layer

    exchange, prepared = _run_in_process(path, tmp_path / "parts")
    assert np.array_equal(exchange.logits, expected)
    assert exchange.graph_segments == len(points)
    # GCN receives one float32 per halo node per layer; SAGE's mean and GIN need no graph values
    assert exchange.graph_bytes == (2 * 4 * sum(summary.halo) if kind == "gcn" else 0)
    exchange_edges = [_csr_edges(s) for s in prepared]

    monkeypatch.setattr(layerwise, "exchange_points", lambda model: None)
    stub, prepared = _run_in_process(path, tmp_path / "parts")
    assert np.array_equal(stub.logits, expected)
    assert stub.graph_segments == 0 and stub.graph_bytes == 0
    assert stub.bytes_per_layer == exchange.bytes_per_layer
    stub_edges = [_csr_edges(s) for s in prepared]
    for p in range(3):  # exchange: the owned in-edges (plus GCN's self loops); stub: the halo's in-edges too
        assert exchange_edges[p] <= summary.owned_edges[p] + summary.owned[p] + summary.halo[p] + 1
        assert stub_edges[p] > exchange_edges[p]
        assert summary.owned_edges[p] < summary.edges[p]


class _Program:
    """A native model's graph and feature steps, for editing one step."""

    def __init__(self, model: NativeModel) -> None:
        self.graph = list(model._steps("graph"))
        self.feature = list(model._steps("feature"))

    def _steps(self, stage: str):
        return self.graph if stage == "graph" else self.feature

    def edit(self, out: str, **change):
        at = next(i for i, s in enumerate(self.graph) if s.out == out)
        self.graph[at] = dataclasses.replace(self.graph[at], **change)
        return self


def test_graph_stages_outside_the_rules_get_the_stub_layout(tmp_path):
    model = layerwise.model_for(_model("gcn", tmp_path), 1)
    assert exchange_points(_Program(model)) is not None
    steps = {s.out: s for s in model._steps("graph")}
    scatter = next(s for s in steps.values() if s.op == "quantgraph.scatter.default")
    target = steps[scatter.args[1]["value"]]
    while target.op != "aten.select.int":  # expand <- view <- select(edges, 0, 1)
        target = steps[target.args[0]["value"]]
    assert target.op == "aten.select.int" and target.args[1:] == [0, 1]
    # a degree over edge sources (out-degree): owned nodes' out-edges are not all in the partition
    assert exchange_points(_Program(model).edit(target.out, args=[target.args[0], 0, 0])) is None
    # a node-level value read by an op the rules do not cover
    gather = next(s for s in steps.values() if s.op == "quantgraph.gather.default")
    assert exchange_points(_Program(model).edit(gather.out, op="aten.index_select.default")) is None
    # a CSR whose rows are not edge targets (aggregation by source)
    csr = next(s for s in steps.values() if s.op == "native.csr")
    swapped = _Program(model).edit(csr.out, args=[csr.args[1], csr.args[0], *csr.args[2:]])
    assert exchange_points(swapped) is None
    # the graph stage reading node features
    assert exchange_points(_Program(model).edit(gather.out, args=[{"value": "x"}, gather.args[1]])) is None
