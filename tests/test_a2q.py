"""A²Q: the quantizer's forward and gradients (against the issue's formulas, a straight-through reference
and finite differences), Local Gradient, NNS group choice, the memory penalty, and the policy's exports."""

from __future__ import annotations

import math

import pytest
import torch

from quantgraph.backends.verify import integer_outputs, ort_session, run_onnx
from quantgraph.compiler import compile as qg_compile
from quantgraph.data import make_csbm
from quantgraph.ir.a2q_quantizer import (
    A2QNNSQuantizer,
    A2QQuantizer,
    a2q_quantize,
    nns_groups,
    qmax_of,
)
from quantgraph.ir.meta import QPARAMS_KEY
from quantgraph.ir.ops import DEQUANTIZE, QUANTIZE
from quantgraph.ir.qspec import Granularity, QParams, QuantSpec
from quantgraph.ir.quantizer import QuantizerSettings, get_quantizer
from quantgraph.passes.a2q_train import A2QPoint, FeatureMemory

from .conftest import TwoLayer, data_root

LN2 = math.log(2.0)


def _data(rows: int = 6, cols: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=g) * 2
    scale = (torch.rand(rows, 1, generator=g) * 0.5 + 0.2).requires_grad_()
    bits = torch.tensor([[1.2], [2.4], [2.6], [3.1], [-3.9], [5.2]][:rows]).requires_grad_()
    return x.requires_grad_(), scale, bits


def _reference(x, scale, bits):
    """A²Q's quantizer written with straight-through estimators, whose autograd gives the issue's formulas."""
    s = scale.abs()
    b_int = bits.abs().round().clamp(1, 8)
    b = bits.abs() + (b_int - bits.abs()).detach()
    qmax = 2 ** (b - 1) - 1
    v = x / s
    c = torch.where(v > qmax, qmax, torch.where(v < -qmax, -qmax, v))  # min/max would split ties at qmax 0
    r = c + (torch.floor(c.abs() + 0.5) * torch.sign(x) - c).detach()
    return r * s


def test_forward_is_sign_floor_half_up_with_per_row_qmax():
    x, scale, bits = _data()
    out = a2q_quantize(x, scale, bits)
    s, b = scale.detach(), bits.detach().abs().round().clamp(1, 8)
    qmax = 2 ** (b - 1) - 1
    q = torch.sign(x.detach()) * torch.floor((x.detach() / s).clamp(-qmax, qmax).abs() + 0.5)
    assert torch.equal(out.detach(), q * s)
    assert torch.equal(out.detach()[0], torch.zeros(5))  # 1 bit: qmax 0, every value is 0
    ints = (out.detach() / s).round()
    assert bool((ints.abs() <= qmax).all())


def test_gradients_equal_the_issue_formulas_and_the_ste_reference():
    x, scale, bits = _data()
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    (a2q_quantize(x, scale, bits) * g).sum().backward()
    got = (x.grad.clone(), scale.grad.clone(), bits.grad.clone())
    x.grad = scale.grad = bits.grad = None
    (_reference(x, scale, bits) * g).sum().backward()
    assert torch.allclose(got[0], x.grad) and torch.allclose(got[1], scale.grad, atol=1e-6)
    assert torch.allclose(got[2], bits.grad, atol=1e-5)
    # the formulas written out
    xd, s, b = x.detach(), scale.detach(), bits.detach().abs().round()
    qmax = 2 ** (b - 1) - 1
    v = xd / s
    inside = (v.abs() <= qmax).float()
    q = torch.sign(xd) * torch.floor(v.clamp(-qmax, qmax).abs() + 0.5)
    ds = (g * ((q - v) * inside + torch.sign(xd) * qmax * (1 - inside))).sum(1, keepdim=True)
    db = (g * (1 - inside) * torch.sign(xd) * (qmax + 1) * LN2 * s).sum(1, keepdim=True)
    assert torch.equal(got[0], g * inside)
    assert torch.allclose(got[1], ds, atol=1e-6)
    assert torch.allclose(got[2], db * torch.sign(bits.detach()), atol=1e-5)
    assert bool((got[2][0] != 0).any() or (inside[0] == 1).all())


def test_clipped_gradients_match_finite_differences():
    """Where values clip, x̂ = ±qmax·s: its derivatives in s and (continuous) b are finite differences."""
    x = torch.tensor([[5.0, -7.0, 9.0]])
    scale = torch.tensor([[0.5]], requires_grad=True)
    bits = torch.tensor([[3.0]], requires_grad=True)
    a2q_quantize(x, scale, bits).sum().backward()
    eps = 1e-3

    def clipped(s: float, b: float) -> float:
        return float((torch.sign(x) * (2 ** (b - 1) - 1) * s).sum())

    fd_s = (clipped(0.5 + eps, 3.0) - clipped(0.5 - eps, 3.0)) / (2 * eps)
    fd_b = (clipped(0.5, 3.0 + eps) - clipped(0.5, 3.0 - eps)) / (2 * eps)
    assert scale.grad.item() == pytest.approx(fd_s, rel=1e-4)
    assert bits.grad.item() == pytest.approx(fd_b, rel=1e-3)


def test_local_gradient_is_the_l1_error_gradient_not_the_task_gradient():
    x, scale, bits = _data(seed=2)
    upstream = torch.randn(x.shape, generator=torch.Generator().manual_seed(9)) * 100
    (a2q_quantize(x, scale, bits, True) * upstream).sum().backward()
    got_s, got_b, got_x = scale.grad.clone(), bits.grad.clone(), x.grad.clone()
    x.grad = scale.grad = bits.grad = None
    ref = _reference(x, scale, bits)
    error = (ref - x.detach()).abs().mean(dim=1).sum()  # Σ_i E_i, E_i = (1/d)‖x̂_i - x_i‖₁
    error.backward()
    assert torch.allclose(got_s, scale.grad, atol=1e-6) and torch.allclose(got_b, bits.grad, atol=1e-5)
    inside = ((x.detach() / scale.detach()).abs() <= qmax_of(bits)).float()
    assert torch.equal(got_x, upstream * inside)  # x keeps the task gradient


def test_quantizer_modules_per_node_per_column_and_qparams():
    spec = QuantSpec(bits=4, symmetric=True, granularity=Granularity.PER_NODE, axis=0, quantizer="a2q")
    init = QParams.from_range(-torch.arange(1.0, 4.0), torch.arange(1.0, 4.0), spec)
    q = get_quantizer("a2q").from_spec(spec, init, QuantizerSettings())
    assert isinstance(q, A2QQuantizer) and q.learned_bits() and q.scale.shape == (3,)
    with torch.no_grad():
        q.bits.copy_(torch.tensor([1.0, 2.2, 7.6]))
    qp = q.qparams()
    assert qp.qmax.tolist() == [0, 1, 127] and qp.qmin.tolist() == [0, -1, -127]
    assert q.storage_bits() == 8 and q.bit_count() == pytest.approx((1 + 2 + 8) / 3)
    xw = QuantSpec(bits=4, symmetric=True, granularity=Granularity.PER_CHANNEL, axis=1, quantizer="a2q")
    col = get_quantizer("a2q").from_spec(xw, QParams.from_range(-torch.ones(5), torch.ones(5), xw), None)
    assert not col.learned_bits() and col.qparams().axis == 1
    x = torch.randn(7, 5)
    assert torch.equal(col(x), a2q_quantize(x, col.scale.view(1, -1), col.bits.view(1, -1)))


def test_nns_group_is_the_nearest_threshold_and_gradients_scatter_into_it():
    spec = QuantSpec(bits=4, symmetric=True, num_groups=6, quantizer="a2q-nns")
    q = A2QNNSQuantizer.from_spec(spec, QParams.from_range(torch.tensor(-3.0), torch.tensor(3.0), spec), None)
    x = torch.randn(20, 4, generator=torch.Generator().manual_seed(1)) * torch.logspace(-3, -1.5, 20)[:, None]
    groups = q.groups(x)
    t = (qmax_of(q.bits) * q.scale.detach().abs()).tolist()
    for i in range(20):
        m = float(x[i].abs().max())
        want = min(range(6), key=lambda k: ((m - t[k]) ** 2, k))
        assert int(groups[i]) == want
    assert torch.equal(groups, nns_groups(x, q.thresholds()))
    q(x).sum().backward()
    unused = sorted(set(range(6)) - set(groups.tolist()))
    assert unused and bool((q.scale.grad[unused] == 0).all()) and bool((q.bits.grad[unused] == 0).all())
    used = sorted(set(groups.tolist()))
    assert bool((q.scale.grad[used] != 0).any())


def test_memory_penalty_is_relu_squared_over_the_budget():
    spec = QuantSpec(bits=4, symmetric=True, granularity=Granularity.PER_NODE, axis=0, quantizer="a2q")
    q = A2QQuantizer(spec, torch.ones(10))
    memory = FeatureMemory([A2QPoint("fq", "x", "features", q)])
    q(torch.randn(10, 16))
    with torch.no_grad():
        q.bits.copy_(torch.linspace(2.0, 5.0, 10))
    mean_bits = q.bits.detach().mean()
    assert float(memory.penalty(3.0).detach()) == pytest.approx(float(10 * (mean_bits - 3.0) ** 2), rel=1e-6)
    assert float(memory.penalty(6.0).detach()) == 0.0
    memory.penalty(3.0).backward()  # d/db_i of N·(mean b - t)²: 2·(mean b - t), whatever N and d
    assert torch.allclose(q.bits.grad, torch.full((10,), float(2 * (mean_bits - 3.0))), rtol=1e-5)
    assert memory.overshoot(3.0) == pytest.approx(float(torch.linspace(2, 5, 10).round().mean()) - 3.0)


def dequantized_points_equal(onnx_model, compiled, inputs) -> int:
    """onnxruntime's dequantized values at every activation point equal the IR's bit for bit (so do the
    integers: the per-row scales are the same constants or the same gathered table entries). ``compare_integers``
    cannot read ONNX int4 outputs, which A²Q's low-bit rows use. Returns the number of points compared."""
    gm = compiled.graph_module
    points = [
        u.name
        for n in gm.graph.nodes
        if n.target == QUANTIZE and not (isinstance(n.args[0], torch.fx.Node) and n.args[0].op == "get_attr")
        for u in n.users
        if u.target == DEQUANTIZE
    ]
    env: dict[str, torch.Tensor] = {}

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if n.name in points:
                env[n.name] = out
            return out

    with torch.no_grad():
        Recorder(gm).run(*[inputs[name] for name in compiled.input_names])
    session = ort_session(integer_outputs(onnx_model, points))
    feeds = {i.name: inputs[i.name].numpy() for i in session.get_inputs()}
    got = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds), strict=True))
    compared = [p for p in points if p in got]
    for p in compared:
        assert torch.equal(torch.from_numpy(got[p]), env[p]), p
    return len(compared)


@pytest.fixture(scope="module")
def gcn_and_graph():
    torch.manual_seed(0)
    data = make_csbm(num_nodes=300, num_features=8, num_classes=4, power=2.0, seed=3)
    return TwoLayer("gcn", fin=8, fout=4).eval(), data


@pytest.mark.slow
def test_a2q_policy_learns_per_node_bits_within_budget_and_onnx_equals_ir(gcn_and_graph, tmp_path):
    model, data = gcn_and_graph
    options = {"epochs": 30, "target_bits": 3.0, "trace_training": False}
    compiled = qg_compile(model, data, policy="a2q", options=options)
    rep = compiled.report
    kinds = sorted(rep["a2q_points"].values())
    assert kinds.count("features") == 2 and kinds.count("weight") == 2 and kinds.count("xw") == 2
    assert rep["a2q_train"]["budget_met"]
    per_node = [q for q in rep["quantization"].values() if q["granularity"] == "per_node"]
    assert len(per_node) == 2 and all(len(q["scale"]) == data.num_nodes for q in per_node)
    checks = compiled.export_onnx(tmp_path / "a2q.onnx", data)
    assert checks["argmax_agreement"] == 1.0
    a2q = rep["a2q"]
    degree = torch.bincount(data.edge_index[1], minlength=data.num_nodes)
    nodes = {n.name: n for n in compiled.graph_module.graph.nodes}
    for layer in a2q["layers"]:  # the report's bits are the exported ones
        qmax = nodes[layer["point"]].meta[QPARAMS_KEY].qmax.double()
        bits = (qmax + 1).log2().add(1).round().long()
        assert layer["bits_histogram"] == {str(b): int((bits == b).sum()) for b in bits.unique().tolist()}
        assert layer["mean_bits"] <= 3.0 and layer["mean_bits"] == pytest.approx(
            float(bits.double().mean()), abs=1e-4
        )
        assert sum(r["nodes"] for r in layer["bits_by_in_degree"]) == data.num_nodes
        assert layer["bits_by_in_degree"][0]["in_degree"].startswith(str(int(degree.min())))
    relu = next(la for la in a2q["layers"] if la["non_negative"])
    assert relu["a2q_convention_bits"] == pytest.approx(relu["mean_bits"] - 1)
    mem = a2q["memory_bytes"]
    assert mem["fp32"] == 4 * mem["int8"] and mem["vs_fp32"] == pytest.approx(4 * mem["vs_int8"], rel=1e-3)
    assert mem["vs_int8"] >= 8 / 3.0 - 1e-6  # every layer at most 3 bits on average
    assert dequantized_points_equal(compiled.to_onnx(), compiled, data.inputs()) == 4


@pytest.mark.slow
def test_a2q_nns_serves_unseen_graph_sizes_in_onnx(gcn_and_graph):
    model, data = gcn_and_graph
    options = {"epochs": 10, "a2q_groups": 16, "trace_training": False}
    compiled = qg_compile(model, data, policy="a2q-nns", options=options)
    assert compiled.report["a2q_nns"]["frozen"]
    onnx_model = compiled.to_onnx()
    session = ort_session(onnx_model)
    for n in (37, 511):
        graph = make_csbm(num_nodes=n, num_features=8, num_classes=4, power=2.0, seed=n)
        inputs = graph.inputs()
        assert dequantized_points_equal(onnx_model, compiled, inputs) == 4
        assert torch.allclose(run_onnx(session, inputs), compiled.run(inputs), atol=1e-5)


@pytest.mark.slow
def test_a2q_native_integers_equal_the_ir_on_unseen_graph_sizes(gcn_and_graph, tmp_path):
    """Native backend of a GCN (its per-node features feed the linear layer, which runs as reference steps;
    aggregate-first models use the mixed-bit kernels, below): integers equal the IR's on the compile graph
    and, with NNS, on other sizes."""
    from quantgraph.native.verify import compare_native_integers

    model, data = gcn_and_graph
    options = {"epochs": 3, "a2q_groups": 16, "trace_training": False}
    compiled = qg_compile(model, data, policy="a2q-nns", options=options, backend="native")
    checks = compiled.export(tmp_path / "a2q.qgn", data)
    assert checks["integer_tensors"]["equal"] and checks["argmax_agreement"] == 1.0
    native = compiled.to_native(data)
    for n in (37, 511):
        graph = make_csbm(num_nodes=n, num_features=8, num_classes=4, power=2.0, seed=n)
        ints = compare_native_integers(native, compiled, graph.inputs())
        assert ints["equal"] and ints["compared"] >= 6, (n, ints)
        assert torch.allclose(native.run(graph.inputs()), compiled.run(graph.inputs()), atol=1e-5)


@pytest.mark.slow
def test_readme_cora_command_compiles_a2q(planetoid_root, tmp_path):
    """`quantgraph compile gcn_cora.pt --data cora --policy a2q -o m.onnx` (few epochs here)."""
    import json

    from quantgraph.cli import main

    ckpt, out, report = tmp_path / "gcn_cora.pt", tmp_path / "m.onnx", tmp_path / "a2q.json"
    root = str(planetoid_root)
    assert main(["train", "--arch", "gcn", "--data", "cora", "--data-root", root, "-o", str(ckpt), "--epochs", "20", "--quiet"]) == 0  # fmt: skip
    args = ["compile", str(ckpt), "--data", "cora", "--data-root", root, "--policy", "a2q", "--epochs", "3"]
    assert main([*args, "-o", str(out), "--report", str(report), "--quiet"]) == 0
    rep = json.loads(report.read_text())
    assert out.exists() and rep["onnx"]["argmax_agreement"] == 1.0
    layers = rep["a2q"]["layers"]
    # GCN row-normalises inside the model: layer 0's point is the normalised features (the division)
    assert [la["point"] for la in layers] == ["div", "relu"] and all(la["rows"] == 2708 for la in layers)
    assert layers[0]["width"] == 1433 and layers[0]["non_negative"] and layers[1]["non_negative"]
    assert set(rep["a2q"]["average_bits"]) == {"a2q_convention", "stored", "stored_all_features"}


@pytest.mark.slow
def test_graph_level_a2q_nns_trains_with_the_task_gradient_and_exports(tmp_path):
    """Graph classification: NNS only (per-node parameters are refused), no Local Gradient, ONNX equals the IR
    on the test graphs batched together (sizes the model never saw)."""
    from quantgraph.data import collate
    from quantgraph.data.task import load_task
    from quantgraph.errors import InputError
    from quantgraph.models import build_model

    root = data_root()
    path = root / "graph_classification" / "hard_small.npz" if root else None
    if path is None or not path.exists():
        pytest.skip("hard_small.npz not found")
    task = load_task(str(path))
    train, val, test = task.graphs["train"][:16], task.graphs["val"][:8], task.graphs["test"][:8]
    torch.manual_seed(0)
    classes = max(int(g.y.max()) for g in task.graphs["train"]) + 1
    model = build_model("gin_graph", task.data.num_features, classes).eval()
    common = {"calibration": [collate(train)], "task_data": {"graphs": {"train": train, "val": val}}}
    with pytest.raises(InputError, match="a2q-nns"):
        qg_compile(model, collate(test), policy="a2q", options={"epochs": 1}, **common)
    options = {"epochs": 2, "a2q_groups": 16, "batch_size": 8}
    compiled = qg_compile(model, collate(test), policy="a2q-nns", options=options, **common)
    assert compiled.report["a2q_train"]["local_gradient"] is False  # graph tasks: the task gradient
    assert len(compiled.report["a2q_train"]["history"]) == 2
    checks = compiled.export_onnx(tmp_path / "g.onnx", collate(test))
    assert checks["argmax_agreement"] == 1.0
    assert dequantized_points_equal(compiled.to_onnx(), compiled, collate(test).inputs()) >= 3


@pytest.mark.slow
def test_target_kb_is_a_memory_budget_the_kept_model_meets(gcn_and_graph):
    """``target_kb``: the total feature memory (KB, rounded bits) of the kept epoch is within the budget,
    here well below what the per-layer default (3 bits) gives."""
    model, data = gcn_and_graph
    values = data.num_nodes * (8 + 16)  # the two layers' node features: 8 inputs, 16 hidden
    budget_kb = values * 2.2 / 8 / 1024
    options = {"epochs": 40, "target_kb": budget_kb, "trace_training": False}
    compiled = qg_compile(model, data, policy="a2q", options=options)
    rep = compiled.report
    assert rep["a2q_train"]["budget_met"] and rep["a2q_train"]["target_kb"] == budget_kb
    assert rep["a2q"]["memory_bytes"]["features"] <= budget_kb * 1024 + 1e-6
    kept = rep["a2q_train"]["history"][rep["a2q_train"]["best_epoch"] - 1]
    assert kept["feature_kb"] <= budget_kb
    assert rep["a2q"]["average_bits"]["stored"] <= 2.2 + 1e-6


def test_memory_kb_penalty_is_relu_squared_on_the_total():
    spec = QuantSpec(bits=4, symmetric=True, granularity=Granularity.PER_NODE, axis=0, quantizer="a2q")
    q = A2QQuantizer(spec, torch.ones(10))
    memory = FeatureMemory([A2QPoint("fq", "x", "features", q)])
    q(torch.randn(10, 6))  # 10 rows x 6 columns at 4 bits: 240 bits
    total_kb = 240 / 8 / 1024
    assert float(memory.kb_penalty(total_kb).detach()) == 0.0
    # budget of 3 bits per value: R · (4 - 3)² with R = 10 rows
    assert float(memory.kb_penalty(total_kb * 3 / 4).detach()) == pytest.approx(10.0, rel=1e-5)
    assert memory.memory_kb() == pytest.approx(total_kb)


@pytest.mark.slow
def test_gat_attention_vectors_and_logits_are_quantized_per_head_and_exports_equal_ir(tmp_path):
    """GAT: the attention vectors and the logits get one scale per head at fixed bits (the official
    qGATConv); ONNX and native integers equal the IR's."""
    from quantgraph.models import build_model

    torch.manual_seed(0)
    data = make_csbm(num_nodes=200, num_features=8, num_classes=4, power=2.0, seed=5)
    model = build_model("gat", 8, 4, hidden=4, heads=3).eval()
    options = {"epochs": 5, "trace_training": False}
    compiled = qg_compile(model, data, policy="a2q", options=options, backend="native")
    points = compiled.report["a2q_points"]
    attention = [n for n, kind in points.items() if kind == "attention"]
    assert len(attention) == 6  # att_src, att_dst and the logits of both layers
    nodes = {n.name: n for n in compiled.graph_module.graph.nodes}
    heads = sorted(nodes[n].meta[QPARAMS_KEY].scale.numel() for n in attention)
    assert heads == [1, 1, 1, 3, 3, 3] and all(nodes[n].meta[QPARAMS_KEY].axis == 1 for n in attention)
    assert all(int(nodes[n].meta[QPARAMS_KEY].qmax.max()) == 7 for n in attention)  # 4 bits
    checks = compiled.export(tmp_path / "gat.qgn", data)
    assert checks["integer_tensors"]["equal"] and checks["argmax_agreement"] == 1.0
    # the per-edge attention points are inside the segment loop when messages are fused: probe them unfused
    unfused = compiled.to_onnx(options={"message_fusion": "off"})
    assert dequantized_points_equal(unfused, compiled, data.inputs()) >= 6


def _mixed_rows(n: int = 400, f: int = 19, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    bits = rng.integers(1, 9, n)
    qmax = (1 << (bits - 1)) - 1
    q = np.stack([rng.integers(-m, m + 1, f) for m in qmax]).astype(np.int32)
    return q, bits, (rng.random(n) + 0.1).astype(np.float32)


def test_bit_grouped_rows_store_each_node_at_its_width_and_unpack_exactly():
    import numpy as np

    from quantgraph.errors import InputError
    from quantgraph.native.mixed_bits import BitGroupedRows, bits_of_qmax

    q, bits, scale = _mixed_rows()
    rows = BitGroupedRows.pack(q, bits, scale)
    assert np.array_equal(rows.unpack(), q)
    widths = np.select([bits == 1, bits == 2, bits <= 4], [0, 2, 4], 8)
    assert rows.rows_per_width() == {w: int((widths == w).sum()) for w in (8, 4, 2, 0)}
    assert rows.payload_bytes == int(sum((19 * w + 7) // 8 for w in widths))  # 1-bit rows: no bytes
    assert np.array_equal(bits_of_qmax((1 << (bits - 1)) - 1), bits)
    too_wide = q.copy()
    too_wide[int(np.flatnonzero(bits == 2)[0]), 0] = 2  # 2 bits hold [-1, 1]
    with pytest.raises(InputError, match="outside their row's bit range"):
        BitGroupedRows.pack(too_wide, bits, scale)
    with pytest.raises(InputError, match="qmax"):
        bits_of_qmax(np.array([2]))


def test_mixed_bit_aggregation_equals_the_dequantized_scatter_add():
    """``spmm_mixed`` over the grouped storage adds ``q · (s · w)`` in edge order: without edge weights equal
    to the IR's float scatter-add of the dequantized rows bit for bit, for any thread count; with them equal up
    to float rounding (the IR rounds ``(q · s) · w``)."""
    import numpy as np

    from quantgraph.ir.ops import scatter
    from quantgraph.native import CSR
    from quantgraph.native.mixed_bits import BitGroupedRows, csr_edge_weights, spmm_mixed

    q, bits, scale = _mixed_rows()
    n, e = q.shape[0], 5000
    rows = BitGroupedRows.pack(q, bits, scale)
    rng = np.random.default_rng(1)
    ei = rng.integers(0, n, (2, e))
    w = rng.standard_normal(e).astype(np.float32)
    deq = torch.from_numpy(q).float() * torch.from_numpy(scale)[:, None]
    src, dst = torch.from_numpy(ei[0]), torch.from_numpy(ei[1])
    csr = CSR.from_edge_index(ei, n)
    for threads in (1, 2):
        weighted = spmm_mixed(csr, rows, csr_edge_weights(ei, w), threads=threads)
        expected = scatter(deq[src] * torch.from_numpy(w)[:, None], dst, n, "sum")
        assert torch.allclose(torch.from_numpy(weighted), expected, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(torch.from_numpy(weighted), expected * 1.001, rtol=1e-5, atol=1e-5)
        plain = spmm_mixed(csr, rows, None, threads=threads)
        assert torch.equal(torch.from_numpy(plain), scatter(deq[src], dst, n, "sum"))


@pytest.mark.slow
def test_a2q_gin_native_aggregates_mixed_bit_storage_equal_to_the_ir():
    """GIN aggregates its per-node-bit features directly: the native program runs the mixed-bit kernels
    (both layers), integers equal the IR's and the logits too, per node and with NNS on unseen sizes."""
    from quantgraph.native.verify import compare_native_integers

    torch.manual_seed(0)
    data = make_csbm(num_nodes=300, num_features=8, num_classes=4, power=2.0, seed=3)
    model = TwoLayer("gin", fin=8, fout=4).eval()
    for policy in ("a2q", "a2q-nns"):
        options = {"epochs": 3, "a2q_groups": 16, "trace_training": False}
        compiled = qg_compile(model, data, policy=policy, options=options, backend="native")
        native = compiled.to_native(data)
        ops = [s.op for s in native.program.steps]
        assert ops.count("native.mixed_aggregate") == 2 and ops.count("native.mixed_pack") == 2
        graphs = [data] + ([make_csbm(num_nodes=n, num_features=8, num_classes=4, seed=n) for n in (37, 511)]
                           if policy == "a2q-nns" else [])  # fmt: skip
        for graph in graphs:
            ints = compare_native_integers(native, compiled, graph.inputs())
            assert ints["equal"] and ints["compared"] >= 6, (policy, ints)
            assert torch.equal(native.run(graph.inputs()), compiled.run(graph.inputs()))


def test_sparse_rows_local_gradient_equals_the_dense_one():
    """Mostly-zero inputs take the non-zeros-only path: same values and (up to summation order) gradients."""
    from quantgraph.ir.a2q_quantizer import A2QRound

    g = torch.Generator().manual_seed(0)
    x = (torch.rand(50, 300, generator=g) < 0.03).float() * torch.randn(50, 300, generator=g)
    scale = (torch.rand(50, 1, generator=g) * 0.3 + 0.05).requires_grad_()
    bits = (torch.rand(50, 1, generator=g) * 6 + 1).requires_grad_()
    s2, b2 = scale.detach().clone().requires_grad_(), bits.detach().clone().requires_grad_()
    sparse = a2q_quantize(x, scale, bits, True)
    dense = A2QRound.apply(x, s2, b2, True)
    (sparse * torch.randn_like(sparse)).sum().backward()  # Local Gradient: the upstream gradient is ignored
    dense.sum().backward()
    assert torch.equal(sparse, dense)
    assert torch.allclose(scale.grad, s2.grad, atol=1e-7) and torch.allclose(bits.grad, b2.grad, atol=1e-7)
    assert bits.grad.abs().sum() > 0  # some values were clipped


def test_layer_summary_ranks_bits_against_in_degree():
    from quantgraph.a2q_report import layer_summary

    degree = torch.tensor([0, 1, 1, 3, 5, 9, 20, 40])
    rising = layer_summary("h", torch.tensor([2, 2, 3, 3, 4, 4, 8, 8]), 16, True, degree)
    assert rising["spearman_bits_in_degree"] == pytest.approx(0.9572, abs=1e-4)  # Pearson of average ranks
    falling = layer_summary("h", torch.tensor([8, 8, 4, 4, 3, 3, 2, 2]), 16, True, degree)
    assert falling["spearman_bits_in_degree"] < -0.9
    constant = layer_summary("h", torch.full((8,), 3), 16, True, degree)
    assert constant["spearman_bits_in_degree"] is None and constant["bits_histogram"] == {"3": 8}
