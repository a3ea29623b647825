"""Tests for quantgraph.data: validation, Planetoid, synthetic CSBM, user files, graph classification."""

from __future__ import annotations

import json
import os
import pathlib
import pickle
import shutil
import time
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
import torch

from quantgraph.data import (
    GraphData,
    collate,
    load_dataset,
    load_graph_classification,
    make_csbm,
    validate_graph,
)
from quantgraph.data.files import load_graph_file
from quantgraph.data.planetoid import RAW_SUFFIXES, find_planetoid_folder, load_planetoid
from quantgraph.errors import InputError

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("QUANTGRAPH_DATA_ROOT") or REPO.parent / "shared" / "data")


def planetoid_folder(name: str = "cora") -> Path:
    """The shared folder holding ind.<name>.*; skip the test if the shared data is absent."""
    try:
        return find_planetoid_folder(DATA_ROOT, name)
    except InputError:
        pytest.skip(f"Planetoid files for {name} not found under {DATA_ROOT}")


def gc_file(stem: str) -> Path:
    """A shared graph-classification archive; skip the test if it is absent."""
    for folder in (DATA_ROOT / "graph_classification", DATA_ROOT, DATA_ROOT.parent / "graph_classification"):
        if (folder / f"{stem}.npz").is_file():
            return folder / f"{stem}.npz"
    pytest.skip(f"{stem}.npz not found under {DATA_ROOT}")


def raises_input_error(func, *args, **kwargs) -> str:
    """Run ``func`` expecting an InputError; return its one-line message."""
    with pytest.raises(InputError) as info:
        func(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message and message.endswith(".")
    return message


def tiny_edges() -> torch.Tensor:
    return torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]])


# --- GraphData --------------------------------------------------------------------------------------------


def test_graphdata_properties_and_inputs():
    g = GraphData(x=torch.zeros(3, 4), edge_index=tiny_edges(), y=torch.tensor([0, 2, 1]))
    assert (g.num_nodes, g.num_edges, g.num_features, g.num_classes) == (3, 4, 4, 3)
    assert g.has_labels and not g.has_splits
    assert set(g.inputs()) == {"x", "edge_index"}
    bare = GraphData(x=torch.zeros(3, 4), edge_index=tiny_edges())
    assert bare.num_classes is None and not bare.has_labels
    batched = GraphData(x=torch.zeros(3, 4), edge_index=tiny_edges(), batch=torch.tensor([0, 0, 1]))
    assert set(batched.inputs()) == {"x", "edge_index", "batch"} and batched.num_graphs == 2


# --- validate_graph: one test per bad input ------------------------------------------------------------------


def test_validate_rejects_1d_features():
    msg = raises_input_error(validate_graph, torch.zeros(5), tiny_edges())
    assert "2-D float" in msg and "[5]" in msg


def test_validate_rejects_integer_features():
    msg = raises_input_error(validate_graph, torch.zeros(3, 2, dtype=torch.int64), tiny_edges())
    assert "float" in msg and "int64" in msg


def test_validate_rejects_non_tensor_features():
    msg = raises_input_error(validate_graph, np.zeros((3, 2), dtype=np.float32), tiny_edges())
    assert "numpy" in msg and "tensor" in msg


def test_validate_rejects_nan_features():
    x = torch.ones(3, 2)
    x[0, 0] = x[2, 1] = float("nan")
    msg = raises_input_error(validate_graph, x, tiny_edges())
    assert "2 NaN" in msg and "impute" in msg


def test_validate_rejects_inf_features():
    x = torch.ones(3, 2)
    x[1, 1] = float("inf")
    msg = raises_input_error(validate_graph, x, tiny_edges())
    assert "1 Inf" in msg and "clean" in msg


def test_validate_rejects_empty_graph():
    msg = raises_input_error(validate_graph, torch.zeros(0, 4), torch.zeros(2, 0, dtype=torch.long))
    assert "empty" in msg and "0 nodes" in msg


def test_validate_rejects_float_edge_index():
    msg = raises_input_error(validate_graph, torch.zeros(3, 2), tiny_edges().float())
    assert "float32" in msg and "int64" in msg and ".long()" in msg


def test_validate_rejects_bad_edge_shape():
    msg = raises_input_error(validate_graph, torch.zeros(3, 2), torch.zeros(3, 4, dtype=torch.long))
    assert "[3, 4]" in msg and "[2, E]" in msg
    msg = raises_input_error(validate_graph, torch.zeros(3, 2), tiny_edges().t())
    assert "transposed" in msg


def test_validate_rejects_negative_indices():
    msg = raises_input_error(validate_graph, torch.zeros(3, 2), torch.tensor([[0, -1], [1, 2]]))
    assert "negative" in msg and "-1" in msg


def test_validate_rejects_out_of_range_indices():
    msg = raises_input_error(validate_graph, torch.zeros(5, 2), torch.tensor([[0, 1], [7, 2]]))
    assert "node 7" in msg and "N=5" in msg


def test_validate_rejects_feature_width_mismatch():
    msg = raises_input_error(validate_graph, torch.zeros(3, 10), tiny_edges(), expected_features=16)
    assert "10" in msg and "trained on 16 features" in msg


def test_validate_names_the_graph():
    msg = raises_input_error(validate_graph, torch.zeros(0, 4), tiny_edges(), name="mygraph")
    assert msg.startswith("mygraph:")


def test_validate_accepts_isolated_nodes_self_loops_and_no_edges():
    x = torch.zeros(6, 3)
    assert validate_graph(x, torch.tensor([[0, 1], [1, 0]])) is None  # nodes 2..5 isolated
    assert validate_graph(x, torch.tensor([[0, 3, 3], [0, 3, 4]])) is None  # self-loops
    assert validate_graph(x, torch.zeros(2, 0, dtype=torch.long)) is None  # no edges at all
    assert validate_graph(x, tiny_edges().int(), expected_features=3) is None  # int32 is fine too


# --- Planetoid -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "nodes", "edges", "features", "classes", "split"),
    [
        ("cora", 2708, 10556, 1433, 7, (140, 500, 1000)),
        ("citeseer", 3327, 9104, 3703, 6, (120, 500, 1000)),
    ],
)
def test_planetoid_shapes_classes_and_public_split(name, nodes, edges, features, classes, split):
    planetoid_folder(name)
    g = load_dataset(name.upper(), root=DATA_ROOT)
    assert (g.num_nodes, g.num_edges, g.num_features, g.num_classes) == (nodes, edges, features, classes)
    assert g.x.dtype == torch.float32 and g.edge_index.dtype == torch.int64 and g.y.dtype == torch.int64
    assert tuple(int(m.sum()) for m in (g.train_mask, g.val_mask, g.test_mask)) == split
    assert not bool((g.train_mask & g.test_mask).any()) and not bool((g.val_mask & g.test_mask).any())
    assert g.has_splits


def test_planetoid_root_may_be_the_folder_or_its_parent(monkeypatch):
    folder = planetoid_folder()
    assert load_planetoid("cora", folder).num_nodes == 2708  # flat layout
    if folder.name == "planetoid":
        assert load_planetoid("cora", folder.parent).num_nodes == 2708  # .../data with planetoid/ below
    monkeypatch.setenv("QUANTGRAPH_DATA_ROOT", str(folder))
    assert load_dataset("Cora").num_nodes == 2708  # root from the environment


@pytest.mark.parametrize("layout", ["Cora/raw", "cora/raw", "planetoid/Cora/raw", "planetoid"])
def test_planetoid_pyg_and_nested_layouts(tmp_path, layout):
    source = planetoid_folder()
    raw = tmp_path / layout
    raw.mkdir(parents=True)
    for suffix in RAW_SUFFIXES:
        (raw / f"ind.cora.{suffix}").symlink_to(source / f"ind.cora.{suffix}")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    g = load_planetoid("cora", tmp_path)
    assert (g.num_nodes, g.num_edges, int(g.train_mask.sum())) == (2708, 10556, 140)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written


def test_planetoid_missing_files_message(tmp_path):
    msg = raises_input_error(load_planetoid, "cora", tmp_path)
    assert str(tmp_path) in msg and "ind.cora." in msg and "Cora/raw" in msg
    assert "--data-root" in msg and "QUANTGRAPH_DATA_ROOT" in msg


def test_planetoid_partial_files_named(tmp_path):
    source = planetoid_folder()
    for suffix in ("x", "y", "graph"):
        shutil.copy(source / f"ind.cora.{suffix}", tmp_path)
    msg = raises_input_error(load_planetoid, "cora", tmp_path)
    assert "ind.cora.tx" in msg and "ind.cora.test.index" in msg and "ind.cora.x," not in msg


def test_planetoid_without_root(monkeypatch):
    monkeypatch.delenv("QUANTGRAPH_DATA_ROOT", raising=False)
    msg = raises_input_error(load_dataset, "cora")
    assert "QUANTGRAPH_DATA_ROOT" in msg and "--data-root" in msg
    msg = raises_input_error(load_planetoid, "cora", "/nonexistent/quantgraph-data")
    assert "/nonexistent/quantgraph-data" in msg


# --- synthetic CSBM ------------------------------------------------------------------------------------------


def test_synthetic_is_deterministic_per_seed():
    a, b, c = make_csbm(seed=1), make_csbm(seed=1), make_csbm(seed=2)
    for field in ("x", "edge_index", "y", "train_mask", "val_mask", "test_mask"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    assert not torch.equal(a.x, c.x)
    assert a.edge_index.shape != c.edge_index.shape or not torch.equal(a.edge_index, c.edge_index)


def test_synthetic_does_not_touch_global_rng():
    np.random.seed(123)
    torch.manual_seed(123)
    expected_np, expected_torch = np.random.random(), torch.rand(1)
    np.random.seed(123)
    torch.manual_seed(123)
    make_csbm(num_nodes=300)
    assert np.random.random() == expected_np and torch.equal(torch.rand(1), expected_torch)


def test_synthetic_structure():
    start = time.perf_counter()
    g = make_csbm()
    assert time.perf_counter() - start < 1.0
    assert (g.num_nodes, g.num_features, g.num_classes) == (2000, 32, 4)
    assert g.x.dtype == torch.float32 and g.edge_index.dtype == torch.int64
    src, dst = g.edge_index
    assert not bool((src == dst).any())  # no self-loops
    keys = src * g.num_nodes + dst
    assert keys.unique().numel() == keys.numel()  # no duplicate edges
    assert torch.equal(keys.sort().values, (dst * g.num_nodes + src).sort().values)  # both directions
    assert abs(g.num_edges / g.num_nodes - 8) < 0.5


def test_synthetic_degrees_are_heavy_tailed_and_homophily_matches():
    for homophily in (0.8, 0.3):
        g = make_csbm(homophily=homophily, seed=5)
        degree = torch.bincount(g.edge_index[0], minlength=g.num_nodes).float()
        assert degree.max() > 6 * degree.mean()
        assert degree.std() > degree.mean()  # far more spread than a Poisson degree law
        same = (g.y[g.edge_index[0]] == g.y[g.edge_index[1]]).float().mean().item()
        assert abs(same - homophily) < 0.03


def test_synthetic_splits():
    g = make_csbm()
    assert (int(g.train_mask.sum()), int(g.val_mask.sum()), int(g.test_mask.sum())) == (80, 500, 1000)
    assert torch.equal(torch.bincount(g.y[g.train_mask]), torch.full((4,), 20))
    overlap = g.train_mask.int() + g.val_mask.int() + g.test_mask.int()
    assert int(overlap.max()) == 1
    small = make_csbm(num_nodes=60, num_classes=3)
    sizes = [int(m.sum()) for m in (small.train_mask, small.val_mask, small.test_mask)]
    assert all(s > 0 for s in sizes) and sum(sizes) <= 60


def test_synthetic_large_graph_is_fast():
    start = time.perf_counter()
    g = make_csbm(num_nodes=100_000, avg_degree=20, num_features=8)
    assert time.perf_counter() - start < 10.0
    assert abs(g.num_edges - 2_000_000) < 20_000


def test_synthetic_spec_and_bad_parameters():
    g = load_dataset("synthetic:nodes=500,seed=3,classes=5")
    assert (g.num_nodes, g.num_classes) == (500, 5)
    assert torch.equal(g.x, make_csbm(num_nodes=500, num_classes=5, seed=3).x)
    assert "nodes" in raises_input_error(load_dataset, "synthetic:bogus=1")
    assert "whole number" in raises_input_error(load_dataset, "synthetic:nodes=2.5")
    assert "homophily" in raises_input_error(make_csbm, homophily=1.5)
    assert "power" in raises_input_error(make_csbm, power=0.5)


def _train_gcn(g: GraphData, adj: torch.Tensor, epochs: int = 200) -> float:
    """Test accuracy (at the best validation epoch) of a 2-layer GCN with normalised adjacency ``adj``."""
    lin1, lin2 = torch.nn.Linear(g.num_features, 64), torch.nn.Linear(64, g.num_classes)
    opt = torch.optim.Adam([*lin1.parameters(), *lin2.parameters()], lr=0.01, weight_decay=5e-4)

    def forward(train: bool) -> torch.Tensor:
        h = torch.nn.functional.dropout(g.x, 0.5, train)
        h = torch.relu(torch.sparse.mm(adj, lin1(h)))
        h = torch.nn.functional.dropout(h, 0.5, train)
        return torch.sparse.mm(adj, lin2(h))

    best_val = test_acc = 0.0
    for _ in range(epochs):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(forward(True)[g.train_mask], g.y[g.train_mask]).backward()
        opt.step()
        with torch.no_grad():
            pred = forward(False).argmax(1)
        val = (pred[g.val_mask] == g.y[g.val_mask]).float().mean().item()
        if val > best_val:
            best_val, test_acc = val, (pred[g.test_mask] == g.y[g.test_mask]).float().mean().item()
    return test_acc


@pytest.mark.slow
def test_synthetic_gcn_accuracy_is_moderate():
    g = make_csbm()
    n = g.num_nodes
    loops = torch.arange(n)
    ei = torch.cat([g.edge_index, torch.stack([loops, loops])], dim=1)
    deg = torch.bincount(ei[0], minlength=n).float()
    norm = deg[ei[0]].rsqrt() * deg[ei[1]].rsqrt()
    adj = torch.sparse_coo_tensor(ei.flip(0), norm, (n, n), check_invariants=True).coalesce()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny kernels: extra threads only add contention on a busy machine
    try:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            test_acc = _train_gcn(g, adj)
    finally:
        torch.set_num_threads(threads)
    assert 0.65 < test_acc < 0.95


# --- user graph files ----------------------------------------------------------------------------------------


def reference_graph() -> GraphData:
    return GraphData(
        x=torch.arange(12, dtype=torch.float32).reshape(6, 2),
        edge_index=torch.tensor([[0, 1, 1, 2, 3, 3, 4], [1, 0, 2, 1, 3, 4, 3]]),
        y=torch.tensor([0, 1, 2, 0, 1, 2]),
        train_mask=torch.tensor([1, 1, 0, 0, 0, 0], dtype=torch.bool),
        val_mask=torch.tensor([0, 0, 1, 1, 0, 0], dtype=torch.bool),
        test_mask=torch.tensor([0, 0, 0, 0, 1, 1], dtype=torch.bool),
    )


def assert_same_graph(got: GraphData, want: GraphData, check_order: bool = True) -> None:
    assert torch.equal(got.x, want.x) and got.x.dtype == torch.float32
    assert got.edge_index.dtype == torch.int64
    if check_order:
        assert torch.equal(got.edge_index, want.edge_index)
    else:
        n = want.num_nodes
        key = lambda ei: (ei[0] * n + ei[1]).sort().values  # noqa: E731
        assert torch.equal(key(got.edge_index), key(want.edge_index))
    for field in ("y", "train_mask", "val_mask", "test_mask"):
        assert torch.equal(getattr(got, field), getattr(want, field)), field


def test_npz_round_trip(tmp_path):
    ref = reference_graph()
    arrays = {
        k: getattr(ref, k).numpy() for k in ("x", "edge_index", "y", "train_mask", "val_mask", "test_mask")
    }
    np.savez(tmp_path / "g.npz", **arrays)
    g = load_dataset(str(tmp_path / "g.npz"))
    assert_same_graph(g, ref)
    assert g.name == "g"
    np.savez(
        tmp_path / "bare.npz",
        x=arrays["x"].astype(np.float64),
        edge_index=arrays["edge_index"].astype(np.int32),
    )
    bare = load_graph_file(tmp_path / "bare.npz")
    assert bare.y is None and not bare.has_splits and bare.x.dtype == torch.float32
    assert bare.edge_index.dtype == torch.int64


def test_npz_problems(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"this is not a zip archive")
    assert "junk.npz" in raises_input_error(load_graph_file, tmp_path / "junk.npz")
    np.savez(tmp_path / "obj.npz", x=np.array([{"a": 1}], dtype=object), edge_index=np.zeros((2, 0)))
    assert "obj.npz" in raises_input_error(load_graph_file, tmp_path / "obj.npz")
    np.savez(tmp_path / "nox.npz", edge_index=np.zeros((2, 0), dtype=np.int64))
    assert "'x'" in raises_input_error(load_graph_file, tmp_path / "nox.npz")
    np.savez(tmp_path / "badidx.npz", x=np.zeros((2, 3), np.float32), edge_index=np.array([[0], [5]]))
    assert "N=2" in raises_input_error(load_graph_file, tmp_path / "badidx.npz")
    assert "not found" in raises_input_error(load_dataset, str(tmp_path / "missing.npz"))


def test_pt_round_trip_dict_and_pyg_data(tmp_path):
    from torch_geometric.data import Data

    ref = reference_graph()
    fields = {k: getattr(ref, k) for k in ("x", "edge_index", "y", "train_mask", "val_mask", "test_mask")}
    torch.save(fields, tmp_path / "dict.pt")
    assert_same_graph(load_dataset(str(tmp_path / "dict.pt")), ref)
    torch.save(Data(**fields), tmp_path / "data.pt")
    assert_same_graph(load_dataset(str(tmp_path / "data.pt")), ref)


class _TouchOnUnpickle:
    """Unpickling this would create a file: proof that a loader executed pickled code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_pt_rejects_corrupt_and_arbitrary_objects(tmp_path):
    (tmp_path / "corrupt.pt").write_bytes(b"\x00garbage" * 20)
    assert "corrupt.pt" in raises_input_error(load_graph_file, tmp_path / "corrupt.pt")
    marker = tmp_path / "executed"
    torch.save({"x": torch.zeros(2, 2), "payload": _TouchOnUnpickle(marker)}, tmp_path / "evil.pt")
    msg = raises_input_error(load_graph_file, tmp_path / "evil.pt")
    assert "evil.pt" in msg and "not allowed" in msg
    with open(tmp_path / "raw.pt", "wb") as fh:
        pickle.dump(_TouchOnUnpickle(marker), fh)
    assert "raw.pt" in raises_input_error(load_graph_file, tmp_path / "raw.pt")
    assert not marker.exists()
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    assert "list" in raises_input_error(load_graph_file, tmp_path / "list.pt")


def reference_nx(directed: bool = False) -> nx.Graph:
    ref = reference_graph()
    graph = nx.DiGraph() if directed else nx.Graph()
    for i in range(ref.num_nodes):
        graph.add_node(
            i,
            x=ref.x[i].tolist(),
            y=int(ref.y[i]),
            train_mask=bool(ref.train_mask[i]),
            val_mask=bool(ref.val_mask[i]),
            test_mask=bool(ref.test_mask[i]),
        )
    graph.add_edges_from([(0, 1), (1, 2), (3, 3), (3, 4)])  # node 5 isolated, one self-loop
    return graph


def test_json_round_trip(tmp_path):
    (tmp_path / "g.json").write_text(json.dumps(nx.node_link_data(reference_nx())))
    assert_same_graph(load_dataset(str(tmp_path / "g.json")), reference_graph(), check_order=False)
    directed = nx.node_link_data(reference_nx(directed=True), edges="links")  # older "links" key
    (tmp_path / "d.json").write_text(json.dumps(directed))
    assert load_graph_file(tmp_path / "d.json").num_edges == 4  # one direction per directed edge


def test_gml_and_graphml_round_trip(tmp_path):
    nx.write_gml(reference_nx(), tmp_path / "g.gml")
    assert_same_graph(load_dataset(str(tmp_path / "g.gml")), reference_graph(), check_order=False)
    graph = reference_nx()
    for node in graph.nodes:
        graph.nodes[node]["x"] = ",".join(str(v) for v in graph.nodes[node]["x"])
    nx.write_graphml(graph, tmp_path / "g.graphml")
    assert_same_graph(load_dataset(str(tmp_path / "g.graphml")), reference_graph(), check_order=False)


def test_networkx_nodes_relabelled_in_sorted_order(tmp_path):
    graph = nx.Graph()
    for node in (10, 2, 1):
        graph.add_node(node, x=[float(node)])
    graph.add_edge(10, 2)
    (tmp_path / "g.json").write_text(json.dumps(nx.node_link_data(graph)))
    g = load_graph_file(tmp_path / "g.json")
    assert g.x[:, 0].tolist() == [1.0, 2.0, 10.0]
    assert sorted(map(tuple, g.edge_index.t().tolist())) == [(1, 2), (2, 1)]


def test_networkx_file_problems(tmp_path):
    (tmp_path / "bad.json").write_text('{"nodes": [')
    msg = raises_input_error(load_graph_file, tmp_path / "bad.json")
    assert "bad.json" in msg and "JSON" in msg
    graph = nx.Graph()
    graph.add_node(0, x=[1.0])
    graph.add_node(1)
    (tmp_path / "nofeat.json").write_text(json.dumps(nx.node_link_data(graph)))
    assert "'x'" in raises_input_error(load_graph_file, tmp_path / "nofeat.json")
    (tmp_path / "bad.gml").write_text("graph [ node [ id")
    assert "bad.gml" in raises_input_error(load_graph_file, tmp_path / "bad.gml")
    (tmp_path / "bad.graphml").write_text("<graphml><graph")
    assert "bad.graphml" in raises_input_error(load_graph_file, tmp_path / "bad.graphml")


# --- load_dataset dispatch -----------------------------------------------------------------------------------


def test_load_dataset_unknown_spec_lists_accepted_forms(tmp_path):
    msg = raises_input_error(load_dataset, "imagenet")
    assert "imagenet" in msg and "cora" in msg and "synthetic" in msg and ".npz" in msg
    (tmp_path / "g.csv").write_text("1,2")
    assert "unsupported" in raises_input_error(load_dataset, str(tmp_path / "g.csv"))


# --- graph classification ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("stem", "sizes"), [("easy_small", (239, 30, 31)), ("hard_small", (245, 29, 26))])
def test_graph_classification_files(stem, sizes):
    path = gc_file(stem)
    splits = load_graph_classification(path)
    assert tuple(len(splits[s]) for s in ("train", "val", "test")) == sizes
    with np.load(path) as raw:
        for prefix, split in (("tr", "train"), ("val", "val"), ("te", "test")):
            graphs = splits[split]
            assert all(g.num_features == 5 and g.y.shape == (1,) and 30 <= g.num_nodes <= 100 for g in graphs)
            assert [int(g.y) for g in graphs] == raw[f"{prefix}_y"].tolist()
            batch = collate(graphs)
            assert torch.equal(batch.x, torch.from_numpy(raw[f"{prefix}_x"]))
            node_ptr, edge_ptr = raw[f"{prefix}_node_ptr"], raw[f"{prefix}_edge_ptr"]
            offsets = np.repeat(node_ptr[:-1], np.diff(edge_ptr))
            assert torch.equal(batch.edge_index, torch.from_numpy(raw[f"{prefix}_edge_index"] + offsets))
            assert torch.equal(batch.y, torch.from_numpy(raw[f"{prefix}_y"]))
            assert torch.equal(
                batch.batch, torch.from_numpy(np.repeat(np.arange(len(graphs)), np.diff(node_ptr)))
            )
            assert batch.num_graphs == len(graphs)


def test_collate_small_graphs():
    a = GraphData(x=torch.ones(2, 3), edge_index=torch.tensor([[0], [1]]), y=torch.tensor([1]))
    b = GraphData(x=torch.zeros(3, 3), edge_index=torch.tensor([[0, 2], [2, 1]]), y=torch.tensor([0]))
    batch = collate([a, b])
    assert batch.edge_index.tolist() == [[0, 2, 4], [1, 4, 3]]
    assert batch.batch.tolist() == [0, 0, 1, 1, 1] and batch.y.tolist() == [1, 0]
    assert set(batch.inputs()) == {"x", "edge_index", "batch"}
    nested = collate([batch, a])
    assert nested.batch.tolist() == [0, 0, 1, 1, 1, 2, 2] and nested.y.tolist() == [1, 0, 1]
    assert nested.edge_index[:, -1].tolist() == [5, 6]
    assert (
        collate([a, GraphData(x=torch.ones(1, 3), edge_index=torch.zeros(2, 0, dtype=torch.long))]).y is None
    )
    assert "empty" in raises_input_error(collate, [])
    wide = GraphData(x=torch.ones(2, 4), edge_index=torch.zeros(2, 0, dtype=torch.long))
    assert "4 features" in raises_input_error(collate, [a, wide])


def test_graph_classification_problems(tmp_path):
    assert "not found" in raises_input_error(load_graph_classification, tmp_path / "none.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    assert "junk.npz" in raises_input_error(load_graph_classification, tmp_path / "junk.npz")
    np.savez(tmp_path / "part.npz", tr_x=np.zeros((2, 5), np.float32))
    assert "tr_edge_index" in raises_input_error(load_graph_classification, tmp_path / "part.npz")
    np.savez(
        tmp_path / "nonlocal.npz",
        tr_x=np.zeros((4, 5), np.float32),
        tr_edge_index=np.array([[0, 0], [1, 3]]),  # graph 0 has 2 nodes, so node 3 is not local
        tr_node_ptr=np.array([0, 2, 4]),
        tr_edge_ptr=np.array([0, 2, 2]),
        tr_y=np.array([0, 1]),
    )
    assert "graph 0" in raises_input_error(load_graph_classification, tmp_path / "nonlocal.npz")
    np.savez(tmp_path / "gc.npz", tr_x=np.zeros((2, 5), np.float32))
    assert "load_graph_classification" in raises_input_error(load_graph_file, tmp_path / "gc.npz")
