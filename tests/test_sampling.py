"""Calibration on a sampled subgraph: the sampler, the compile report's range comparison, the CLI flag."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from quantgraph.cli import main
from quantgraph.compiler import compile as qg_compile
from quantgraph.data import load_dataset
from quantgraph.errors import InputError
from quantgraph.models import build_model
from quantgraph.sampling import induced_edges, sample_nodes, sample_subgraph

SYN = "synthetic:nodes=300,seed=1"


@pytest.fixture(scope="module")
def graph():
    return load_dataset(SYN)


@pytest.fixture(scope="module")
def model(graph):
    torch.manual_seed(0)
    return build_model("gcn", graph.num_features, graph.num_classes).eval()


def test_sample_is_deterministic_per_seed(graph):
    a = sample_subgraph(graph, 20, 2, seed=3)
    b = sample_subgraph(graph, 20, 2, seed=3)
    c = sample_subgraph(graph, 20, 2, seed=4)
    assert np.array_equal(a.nodes, b.nodes) and np.array_equal(a.seeds, b.seeds)
    assert torch.equal(a.data.edge_index, b.data.edge_index) and torch.equal(a.data.x, b.data.x)
    assert not np.array_equal(a.seeds, c.seeds)
    assert a.summary["seeds"] == 20 and a.summary["nodes"] == len(a.nodes) >= 20


def test_sample_edges_lie_inside_and_hops_are_complete(graph):
    s = sample_subgraph(graph, 15, 2, seed=0)
    kept = set(s.nodes.tolist())
    e = s.data.edge_index
    assert int(e.min()) >= 0 and int(e.max()) < len(s.nodes)
    src, dst = graph.edge_index
    pairs = list(zip(src.tolist(), dst.tolist(), strict=True))
    inside = [(u, v) for u, v in pairs if u in kept and v in kept]
    global_edges = sorted(zip(s.nodes[e[0].numpy()].tolist(), s.nodes[e[1].numpy()].tolist(), strict=True))
    assert global_edges == sorted(inside)  # exactly the induced edges, renumbered
    # every in-neighbour of a seed, and of a seed's in-neighbour, is kept (2 hops)
    seeds = set(s.seeds.tolist())
    hop1 = {u for u, v in pairs if v in seeds}
    hop2 = {u for u, v in pairs if v in hop1}
    assert seeds | hop1 | hop2 == kept
    # rows and masks follow the kept nodes
    assert torch.equal(s.data.x, graph.x[torch.from_numpy(s.nodes)])
    assert torch.equal(s.data.train_mask, graph.train_mask[torch.from_numpy(s.nodes)])


def test_zero_hops_keeps_only_seeds():
    edges = np.array([[0, 1, 2, 3], [1, 2, 3, 0]])
    nodes, seeds = sample_nodes(edges, 4, 2, 0, seed=0)
    assert np.array_equal(nodes, seeds) and len(nodes) == 2
    sub = induced_edges(edges, np.array([1, 2]), 4)
    assert sub.tolist() == [[0], [1]]  # the edge 1 -> 2 only


@pytest.mark.parametrize("bad", [0, -5, True, 2.5])
def test_bad_sample_size_is_one_input_error(graph, bad):
    with pytest.raises(InputError, match="--calibration-sample must be a positive number"):
        sample_subgraph(graph, bad, 2)


def test_whole_graph_sample_gives_zero_difference(graph, model):
    compiled = qg_compile(model, graph, policy="minmax", bits=8, calibration_sample=10 * graph.num_nodes)
    sample = compiled.report["calibration_sample"]
    assert sample["clamped"] and "whole graph" in sample["note"]
    assert sample["nodes"] == graph.num_nodes and sample["edges"] == graph.num_edges
    comparison = sample["range_comparison"]
    assert comparison["available"] and comparison["summary"]["compared_points"] > 0
    assert comparison["summary"]["max_relative_scale_difference"] == 0.0
    assert all(p["sample_scale"] == p["full_scale"] for p in comparison["points"])
    # the same model as calibrating on the graph itself
    full = qg_compile(model, graph, policy="minmax", bits=8)
    assert torch.equal(compiled.run(graph), full.run(graph))


def test_small_sample_ranges_differ_and_are_recorded(graph, model):
    compiled = qg_compile(model, graph, policy="minmax", bits=8, calibration_sample=5, sample_hops=1)
    sample = compiled.report["calibration_sample"]
    assert sample["seeds"] == 5 and sample["hops"] == 1 and sample["seed"] == 0 and not sample["clamped"]
    assert 5 <= sample["nodes"] < graph.num_nodes and sample["edges"] < graph.num_edges
    summary = sample["range_comparison"]["summary"]
    assert summary["max_relative_scale_difference"] > 0 and summary["worst_point"]
    point = next(p for p in sample["range_comparison"]["points"] if p["point"] == summary["worst_point"])
    # a sample's min/max range lies inside the full graph's (min/max observers, same weights)
    (slo, shi), (flo, fhi) = point["sample_range"], point["full_range"]
    assert flo <= slo + 1e-6 and shi <= fhi + 1e-6
    assert compiled.report["accuracy"]["quantized"] > 0  # evaluated on the whole graph


def test_default_hops_is_the_number_of_layers(graph, model):
    compiled = qg_compile(model, graph, policy="minmax", calibration_sample=3)
    assert compiled.report["calibration_sample"]["hops"] == 2  # the zoo GCN has two conv layers


def test_sample_with_other_calibration_graphs_is_refused(graph, model):
    with pytest.raises(InputError, match="cannot be combined"):
        qg_compile(model, graph, calibration=[graph], calibration_sample=10)


def test_qat_trains_on_the_sample(graph, model):
    compiled = qg_compile(model, graph, policy="qat", bits=8, calibration_sample=40, options={"epochs": 2})
    assert compiled.report["calibration_sample"]["train_nodes"] > 0
    assert "train-qat" in compiled.report["passes"]


def test_native_backend_proves_overflow_on_the_whole_graph(graph, model, tmp_path):
    compiled = qg_compile(
        model, graph, policy="minmax", backend="native", calibration_sample=3, sample_hops=0
    )
    compiled.export_native(tmp_path / "m.qgn", graph)  # checked on the whole graph: its degrees are proven
    proven = [
        a["max_in_degree"]
        for a in compiled.report["integer"]["accumulators"]
        if a.get("kind") == "aggregation"
    ]
    full_max = int(torch.bincount(graph.edge_index[1]).max())
    assert proven and min(proven) >= full_max


def test_cli_calibration_sample_end_to_end(tmp_path: Path, capsys):
    ckpt, out, report = tmp_path / "gcn.pt", tmp_path / "gcn.onnx", tmp_path / "r.json"
    assert main(["train", "--arch", "gcn", "--data", SYN, "--epochs", "20", "--quiet", "-o", str(ckpt)]) == 0
    args = ["compile", str(ckpt), "--data", SYN, "-o", str(out), "--report", str(report)]
    assert main([*args, "--calibration-sample", "50", "--sample-seed", "7"]) == 0
    printed = capsys.readouterr().out
    assert "calibration sample: 50 seeds, 2 hops, seed 7" in printed
    rep = json.loads(report.read_text())
    assert rep["calibration_sample"]["requested"] == 50 and rep["calibration_sample"]["seed"] == 7
    assert rep["calibration_sample"]["range_comparison"]["summary"]["compared_points"] > 0
    assert out.is_file()
    assert main([*args, "--calibration-sample", "0"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--calibration-sample must be a positive number" in err[0]
