"""ONNX export: traced PyG/plain GNNs and hand-inserted Q/DQ run in onnxruntime like the IR does."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto
from torch import fx

from quantgraph.backends.onnx_export import LOWERINGS, export_onnx, save_onnx
from quantgraph.errors import UnsupportedOpError
from quantgraph.frontend import trace
from quantgraph.ir import Granularity, QParams, QuantSpec
from quantgraph.ir import ops as qg_ops

pytest.importorskip("torch_geometric")
from torch_geometric.nn import (  # noqa: E402
    GATConv,
    GCNConv,
    GINConv,
    SAGEConv,
    global_add_pool,
    global_max_pool,
    global_mean_pool,
)

warnings.filterwarnings("ignore", category=UserWarning)
N_TRACE, E_TRACE = 10, 30


# ---------------------------------------------------------------------------------------------- models
class TwoLayer(torch.nn.Module):
    def __init__(self, c1: torch.nn.Module, c2: torch.nn.Module) -> None:
        super().__init__()
        self.c1, self.c2 = c1, c2

    def forward(self, x, edge_index):
        return self.c2(self.c1(x, edge_index).relu(), edge_index)


class IndexAddLayer(torch.nn.Module):
    """Plain-PyTorch sum aggregation with index_add and symmetric degree normalisation."""

    def __init__(self, fin: int, fout: int) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(fin, fout)
        self.root = torch.nn.Linear(fin, fout, bias=False)

    def forward(self, x, edge_index):
        src, dst = edge_index[0], edge_index[1]
        h = self.lin(x)
        deg = torch.zeros(x.size(0), dtype=torch.long).index_add(0, dst, torch.ones_like(dst))
        norm = (deg.float() + 1).rsqrt()
        msg = h[src] * norm[src].unsqueeze(-1)
        out = torch.zeros(x.size(0), h.size(1)).index_add(0, dst, msg)
        return out * norm.view(-1, 1) + self.root(x)


class AmaxLayer(torch.nn.Module):
    """Plain-PyTorch max aggregation with scatter_reduce(amax, include_self=False)."""

    def __init__(self, fin: int, fout: int) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(fin, fout)

    def forward(self, x, edge_index):
        h = self.lin(x)
        msg = h.index_select(0, edge_index[0])
        index = edge_index[1].unsqueeze(-1).expand_as(msg)
        agg = torch.zeros_like(h).scatter_reduce(0, index, msg, "amax", include_self=False)
        return agg + h


def _plain(layer_cls):
    return lambda: TwoLayer(layer_cls(8, 6), layer_cls(6, 3))


def _mlp(fin: int, fout: int) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(fin, fout), torch.nn.ReLU(), torch.nn.Linear(fout, fout))


MODELS = {
    "gcn": lambda: TwoLayer(GCNConv(8, 6), GCNConv(6, 3)),
    "gat": lambda: TwoLayer(GATConv(8, 4, heads=2), GATConv(8, 3, heads=1)),
    "gin": lambda: TwoLayer(GINConv(_mlp(8, 6)), GINConv(_mlp(6, 3))),
    "sage": lambda: TwoLayer(SAGEConv(8, 6), SAGEConv(6, 3)),
    "index_add": _plain(IndexAddLayer),
    "scatter_amax": _plain(AmaxLayer),
}


class ManyOps(torch.nn.Module):
    """Exercises the common ATen lowerings, several outputs of several dtypes."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(8, 4)

    def forward(self, x, edge_index):
        src, dst = edge_index
        h = self.lin(x)
        m = h[src]
        idx = dst.view(-1, 1).expand(-1, 4)
        aggs = [
            h.new_zeros(h.shape).scatter_reduce(0, idx, m, "mean", include_self=True),
            h.scatter_reduce(0, idx, m, "mean", include_self=False),
            h.scatter_reduce(0, idx, m, "amin", include_self=True),
            h.scatter_reduce(0, idx, m, "amin", include_self=False),
            h.scatter_reduce(0, idx, m, "sum", include_self=False),
            h.scatter_reduce(0, idx, m, "amax", include_self=True),
            torch.zeros_like(h).scatter_add(0, idx, m),
        ]
        y = torch.cat(aggs, dim=-1)
        y = torch.nn.functional.elu(y) + torch.nn.functional.gelu(y).sigmoid() * y.tanh()
        y = y.softmax(-1).log_softmax(-1).clamp(-5, 5).sum(-1, keepdim=True) + y.mean(dim=1, keepdim=True)
        y = y + y.amax(1, keepdim=True) - y.abs().pow(1.5).sqrt().exp().log()
        deg = torch.zeros(x.size(0), dtype=torch.long).index_add(0, dst, torch.ones_like(dst))
        y = torch.where(y > 0, y, y * 0.1).masked_fill(deg.view(-1, 1) == 0, 0.0)
        z = torch.stack([h, h * 2], dim=1).permute(0, 2, 1).reshape(x.size(0), -1)
        z = z.repeat(1, 2)[:, 1:7:2] + torch.arange(3).float() + (deg % 3).unsqueeze(-1) // 2
        z = torch.nn.functional.leaky_relu(z, 0.3).neg().clamp_min(-1.0) + z.clamp(max=0.5)
        z = z + torch.full_like(z, 2) * torch.ones(1) - z.t().transpose(0, 1) / (deg.unsqueeze(-1) + 1)
        w = (
            torch.matmul(z, torch.ones(3, 2))
            + torch.mm(z, torch.ones(3, 2))
            + torch.addmm(torch.ones(2), z, torch.ones(3, 2))
        )
        sel = z.index_select(0, dst)[:, 0] + z.select(1, 1).gather(0, dst) - (src == dst).float()
        keep = src != dst
        return y.max(dim=1).values, z, w, sel, deg, (z > 0).sum(1), edge_index[:, keep], torch.cumsum(deg, 0)


class GraphLevel(torch.nn.Module):
    """Norm layers, dropout, embedding, PReLU, normalize and global pooling over a ``batch`` input."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = GCNConv(8, 8)
        self.bn, self.ln = torch.nn.BatchNorm1d(8), torch.nn.LayerNorm(8)
        self.drop, self.prelu = torch.nn.Dropout(0.5), torch.nn.PReLU()
        self.emb, self.lin = torch.nn.Embedding(5, 8), torch.nn.Linear(8, 3)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-1, 1)
            self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x, edge_index, batch):
        h = self.drop(self.bn(self.conv(x, edge_index)).relu())
        h = self.ln(h) + self.emb(batch % 5)
        h = self.prelu(torch.nn.functional.normalize(h, dim=-1))
        g = global_mean_pool(h, batch, 3) + global_max_pool(h, batch, 3) + global_add_pool(h, batch, 3)
        return (
            self.lin(g),
            torch.nn.functional.hardtanh(h).flatten(),
            torch.nn.functional.silu(h).chunk(2, dim=1)[1],
        )


class MiscOps(torch.nn.Module):
    """Rounding divisions, logic, reductions, index_put, multi-index gathers, activations."""

    def forward(self, x, edge_index):
        F = torch.nn.functional
        src, dst = edge_index
        d = torch.div(src, 3, rounding_mode="floor") - torch.div(src - 7, 3, rounding_mode="trunc")
        d = d + (src - 5) % 4 + torch.fmod(src - 5, 4)
        f = torch.div(x, 0.7, rounding_mode="floor") + torch.div(x, 0.7, rounding_mode="trunc")
        f = f + x % 0.6 + torch.fmod(x, 0.6)
        b = (x > 0) & (x < 1) | ~(x > -0.5) ^ (x > 2)
        a = b.any(dim=1).long() + b.all(dim=1).long() + x.argmax(1) + x.argmin(dim=1, keepdim=True).squeeze(1)
        n = (
            x.norm(dim=1)
            + torch.linalg.vector_norm(x, 1, dim=1)
            + torch.linalg.vector_norm(x, float("inf"), dim=1)
        )
        n = n + torch.linalg.vector_norm(x, 3, dim=1)
        h = x.clone()
        h[dst] = x[src] * 2
        h2 = x.index_put((dst,), x[src], accumulate=True)
        g = x[src, torch.remainder(dst, 8)]
        s = F.softplus(x) + F.softplus(x, beta=2, threshold=1) + F.silu(x) + F.mish(x) + F.hardswish(x)
        s = (
            s
            + F.hardsigmoid(x)
            + F.selu(x)
            + F.celu(x, 0.5)
            + F.elu(x, 0.7)
            + F.relu6(x)
            + F.gelu(x, approximate="tanh")
        )
        s = (
            s
            + torch.log1p(x.abs())
            + torch.expm1(x)
            + x.square()
            + x.floor()
            + x.ceil()
            + x.round()
            + x.sign()
        )
        s = s + x.reciprocal() + torch.erf(x)
        m = x[x[:, 0] > 0]
        fl = x.view(-1, 2, 4).flatten(1) + x.unflatten(1, (2, 4)).sum(1).repeat(1, 2)
        w = torch.minimum(x, x.t()[:, 0]) + torch.maximum(x, torch.zeros(8)) + torch.where(x > 0, 1.0, x)
        w = w + torch.full((x.size(0), 8), 0.5) + x.new_full((1, 8), 2.0)
        reductions = (x.sum(), x.mean(), (src * 2 + 1).max(), x.max(), x.min(), torch.amin(x, (0, 1)))
        return d, f, a, n, h, h2, g, s, m, fl, w, *reductions, torch.stack([src, dst], -1)


class IRNet(torch.nn.Module):
    """The quantgraph gather/scatter IR ops with every reduction."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(8, 4)

    def forward(self, x, edge_index):
        msg = torch.ops.quantgraph.gather(self.lin(x), edge_index[0])
        n = x.size(0)
        outs = [torch.ops.quantgraph.scatter(msg, edge_index[1], n, r) for r in ("sum", "mean", "max")]
        return (*outs, torch.ops.quantgraph.scatter(msg[:, 0], edge_index[1], n, "max"))


class QNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin1 = torch.nn.Linear(8, 16)
        self.lin2 = torch.nn.Linear(16, 4)

    def forward(self, x, edge_index):
        h = self.lin1(x)
        a = h.relu()
        agg = torch.zeros_like(a).index_add(0, edge_index[1], a[edge_index[0]])
        return self.lin2(agg + a)


class Clamped(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(8, 6)

    def forward(self, x, edge_index):
        return torch.clamp(self.lin(x), -0.5, 0.7)


class Det(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(8, 8))

    def forward(self, x, edge_index):
        return x * torch.linalg.det(self.w @ x.t() @ x)


# ---------------------------------------------------------------------------------------------- helpers
def _trace_inputs(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "x": torch.randn(N_TRACE, 8, generator=g),
        "edge_index": torch.randint(0, N_TRACE, (2, E_TRACE), generator=g),
    }


def _eval_inputs(seed: int = 1, scale: float = 1.0) -> dict[str, torch.Tensor]:
    """23 nodes (20-22 isolated), 57 edges with self-loops and duplicates: sizes unlike the trace's."""
    g = torch.Generator().manual_seed(seed)
    ei = torch.randint(0, 20, (2, 50), generator=g)
    loops = torch.tensor([[0, 3, 3, 7, 11, 19, 5], [0, 3, 3, 7, 11, 19, 2]])
    return {"x": torch.randn(23, 8, generator=g) * scale, "edge_index": torch.cat([ei, loops], 1)}


def _traced(model: torch.nn.Module):
    torch.manual_seed(0)
    return trace(model.eval(), _trace_inputs())


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _run_both(gm: fx.GraphModule, model: onnx.ModelProto, inputs: dict[str, torch.Tensor], names: list[str]):
    with torch.no_grad():
        ref = gm(*[inputs[n] for n in names])
    ref = ref if isinstance(ref, tuple | list) else (ref,)
    out = _session(model).run(None, {n: inputs[n].numpy() for n in names})
    return [r.numpy() for r in ref], out


def _export(tg, **kw) -> onnx.ModelProto:
    return export_onnx(tg.graph_module, input_names=tg.input_names, dim_names=tg.dim_names, **kw)


def _insert_qdq(gm: fx.GraphModule, target: fx.Node, qp: QParams, tag: str) -> fx.Node:
    """Insert quantize -> dequantize after ``target`` (parameters as registered buffers); return the dequantize."""
    graph = gm.graph
    users = list(target.users)
    attrs, prev = [], target
    for key in ("scale", "zero_point", "qmin", "qmax"):
        gm.register_buffer(f"{tag}_{key}", getattr(qp, key).clone())
        with graph.inserting_after(prev):
            prev = graph.get_attr(f"{tag}_{key}")
        attrs.append(prev)
    with graph.inserting_after(prev):
        q = graph.call_function(qg_ops.QUANTIZE, (target, *attrs, qp.axis))
    with graph.inserting_after(q):
        dq = graph.call_function(qg_ops.DEQUANTIZE, (q, attrs[0], attrs[1], qp.axis))
    for user in users:
        user.replace_input_with(target, dq)
    return dq


# ---------------------------------------------------------------------------------------------- tests
@pytest.fixture(scope="module")
def traced_models():
    return {name: _traced(make()) for name, make in MODELS.items()}


@pytest.mark.parametrize("name", list(MODELS))
def test_gnn_matches_ir_on_other_graph_sizes(traced_models, name):
    tg = traced_models[name]
    model = _export(tg)
    assert model.ir_version == 10
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 21)]
    x_in, ei_in = model.graph.input
    assert [d.dim_param or d.dim_value for d in x_in.type.tensor_type.shape.dim] == ["num_nodes", 8]
    assert [d.dim_param or d.dim_value for d in ei_in.type.tensor_type.shape.dim] == [2, "num_edges"]
    assert [o.name for o in model.graph.output] == ["logits"]
    onnx.shape_inference.infer_shapes(model, strict_mode=True)
    for seed in (1, 2):
        ref, out = _run_both(tg.graph_module, model, _eval_inputs(seed), tg.input_names)
        assert out[0].shape == ref[0].shape == (23, 3)
        np.testing.assert_allclose(out[0], ref[0], atol=1e-5, rtol=1e-5)


def test_many_ops_and_multiple_outputs():
    tg = _traced(ManyOps())
    model = _export(tg)
    assert [o.name for o in model.graph.output] == ["logits"] + [f"output_{i}" for i in range(1, 8)]
    ref, out = _run_both(tg.graph_module, model, _eval_inputs(3), tg.input_names)
    for r, o in zip(ref, out, strict=True):
        assert r.dtype == o.dtype and r.shape == o.shape
        np.testing.assert_allclose(o, r, atol=1e-5, rtol=1e-5)


def test_graph_level_model_with_batch_input():
    torch.manual_seed(0)
    trace_in = {**_trace_inputs(), "batch": torch.tensor([0] * 4 + [1] * 3 + [2] * 3)}
    tg = trace(GraphLevel().eval(), trace_in)
    model = _export(tg)
    batch_dims = [d.dim_param for d in model.graph.input[2].type.tensor_type.shape.dim]
    assert batch_dims == ["num_nodes"]
    inputs = {**_eval_inputs(7), "batch": torch.tensor([0] * 9 + [1] * 9 + [2] * 5)}
    ref, out = _run_both(tg.graph_module, model, inputs, tg.input_names)
    for r, o in zip(ref, out, strict=True):
        np.testing.assert_allclose(o, r, atol=1e-5, rtol=1e-5)


def test_misc_ops():
    tg = _traced(MiscOps())
    model = _export(tg)
    g = torch.Generator().manual_seed(3)
    edge_index = torch.stack([torch.randperm(17, generator=g)[:15], torch.randperm(17, generator=g)[:15]])
    inputs = {"x": torch.randn(17, 8, generator=g) * 2, "edge_index": edge_index}  # index_put: unique targets
    ref, out = _run_both(tg.graph_module, model, inputs, tg.input_names)
    for r, o in zip(ref, out, strict=True):
        assert r.dtype == o.dtype and r.shape == o.shape
        np.testing.assert_allclose(o, r, atol=1e-5, rtol=1e-5)


def test_ir_gather_scatter_reductions():
    tg = _traced(IRNet())
    model = _export(tg)
    inputs = _eval_inputs(4)
    inputs["x"] = inputs["x"] - 4.0  # many rows receive only negative messages: max must keep them
    ref, out = _run_both(tg.graph_module, model, inputs, tg.input_names)
    assert (ref[2] < 0).any() and (ref[0][20:] == 0).all()
    for r, o in zip(ref, out, strict=True):
        np.testing.assert_allclose(o, r, atol=1e-5, rtol=1e-5)


def test_export_needs_no_meta_on_inserted_nodes(traced_models):
    tg = traced_models["gat"]
    gm = copy.deepcopy(tg.graph_module)
    for node in gm.graph.nodes:
        node.meta.pop("val", None)
    example = [_trace_inputs()[n] for n in tg.input_names]
    model = export_onnx(gm, input_names=tg.input_names, dim_names=tg.dim_names, example_inputs=example)
    ref, out = _run_both(tg.graph_module, model, _eval_inputs(5), tg.input_names)
    np.testing.assert_allclose(out[0], ref[0], atol=1e-5, rtol=1e-5)


def test_deterministic_bytes_and_atomic_save(traced_models, tmp_path):
    tg = traced_models["gcn"]
    first = _export(tg).SerializeToString()
    again = export_onnx(
        copy.deepcopy(tg.graph_module), input_names=tg.input_names, dim_names=tg.dim_names
    ).SerializeToString()
    assert first == again
    model = _export(tg)
    path = save_onnx(model, tmp_path / "sub" / "model.onnx")
    data = path.read_bytes()
    save_onnx(model, path)
    assert path.read_bytes() == data
    assert onnx.load(str(path)).SerializeToString() == model.SerializeToString()
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.onnx"]


def _quantized_qnet(wbits: int, abits: int, signed: bool):
    tg = _traced(QNet())
    gm = tg.graph_module
    nodes = {n.name: n for n in gm.graph.nodes}
    weight = gm.lin1.weight.detach()
    wspec = QuantSpec(bits=wbits, symmetric=True, granularity=Granularity.PER_CHANNEL, axis=0)
    _insert_qdq(gm, nodes["lin1_weight"], QParams.from_range(weight.amin(1), weight.amax(1), wspec), "w1q")
    with torch.no_grad():
        h = torch.nn.functional.linear(_trace_inputs()["x"], weight, gm.lin1.bias)
    aq = QParams.from_range(h.min(), h.max(), QuantSpec(bits=abits, signed=signed))
    dq = _insert_qdq(gm, nodes["linear"], aq, "h1q")
    output = next(n for n in gm.graph.nodes if n.op == "output")
    output.args = ((output.args[0][0], dq),)
    gm.graph.lint()
    gm.recompile()
    return tg, aq


@pytest.mark.parametrize(
    ("wbits", "abits", "signed"),
    [
        (8, 8, True),
        (8, 8, False),
        (4, 4, True),
        (4, 4, False),
        (8, 3, True),
        (4, 3, False),
        (8, 5, True),
        (4, 2, True),
    ],
)
def test_qdq_matches_ir(wbits, abits, signed):
    tg, aq = _quantized_qnet(wbits, abits, signed)
    model = _export(tg)
    inits = {t.name: t for t in model.graph.initializer}
    folded = inits["lin1.weight.quantized"]
    assert folded.data_type == (TensorProto.INT8 if wbits == 8 else TensorProto.INT4)
    assert "lin1.weight" not in inits  # only the integers are stored
    if wbits == 4:
        assert len(folded.raw_data) == 16 * 8 // 2  # two weights per byte
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") == 1 and ops.count("DequantizeLinear") == 2
    qnode = next(n for n in model.graph.node if n.op_type == "QuantizeLinear")
    expected = {4: (TensorProto.INT4, TensorProto.UINT4), 3: (TensorProto.INT4, TensorProto.INT4)}
    expected.update({2: (TensorProto.INT4, TensorProto.INT4), 8: (TensorProto.INT8, TensorProto.UINT8)})
    expected[5] = (TensorProto.INT8, TensorProto.INT8)
    assert inits[qnode.input[2]].data_type == expected[abits][0 if signed else 1]

    inputs = _eval_inputs(6, scale=3.0)  # larger than the calibration range: the clamp is exercised
    ref, out = _run_both(tg.graph_module, model, inputs, tg.input_names)
    np.testing.assert_allclose(out[0], ref[0], atol=1e-4, rtol=1e-5)
    scale, zp = aq.scale.item(), aq.zero_point.item()
    q_ref = np.round(ref[1] / scale).astype(np.int64) + zp
    q_out = np.round(out[1] / scale).astype(np.int64) + zp
    np.testing.assert_array_equal(q_out, q_ref)
    assert q_ref.min() == aq.qmin.item() and q_ref.max() == aq.qmax.item()
    np.testing.assert_allclose(out[1], ref[1], atol=1e-6)


def test_int4_quantize_after_clamp():
    # onnxruntime 1.31 cannot create a session for Clip -> QuantizeLinear(INT4); the export avoids that pattern
    tg = _traced(Clamped())
    gm = tg.graph_module
    clamp = next(n for n in gm.graph.nodes if n.target == torch.ops.aten.clamp.default)
    qp = QParams.from_range(torch.tensor(-0.5), torch.tensor(0.7), QuantSpec(bits=4))
    _insert_qdq(gm, clamp, qp, "cq")
    gm.recompile()
    model = _export(tg)
    assert "Clip" not in [n.op_type for n in model.graph.node]
    ref, out = _run_both(gm, model, _eval_inputs(8, scale=3.0), tg.input_names)
    np.testing.assert_allclose(out[0], ref[0], atol=1e-6)


def test_per_axis_mixed_bitwidths_and_stored_integer_weights():
    tg = _traced(Clamped())
    gm, graph = tg.graph_module, tg.graph_module.graph
    linear = next(n for n in graph.nodes if n.target == torch.ops.aten.linear.default)
    weight = gm.lin.weight.detach()
    w_scale = weight.abs().amax(1) / 7
    gm.register_buffer("wq", torch.round(weight / w_scale[:, None]).clamp(-7, 7).to(torch.int32))
    gm.register_buffer("ws", w_scale)
    gm.register_buffer("wz", torch.zeros(6, dtype=torch.int32))
    bits = torch.tensor([2, 3, 4, 5, 7, 8])
    qp = QParams(
        scale=torch.tensor([0.3, 0.2, 0.1, 0.05, 0.02, 0.01]),
        zero_point=torch.tensor([1, 0, -2, 3, 5, -7], dtype=torch.int32),
        qmin=(-(2 ** (bits - 1))).int(),
        qmax=(2 ** (bits - 1) - 1).int(),
        axis=1,
    )
    with graph.inserting_before(linear):
        attrs = [graph.get_attr(name) for name in ("wq", "ws", "wz")]
        dq_weight = graph.call_function(qg_ops.DEQUANTIZE, (*attrs, 0))
    linear.replace_input_with(linear.args[1], dq_weight)
    dq = _insert_qdq(gm, linear, qp, "aq")
    output = next(n for n in graph.nodes if n.op == "output")
    output.args = ((output.args[0][0], dq, dq.args[0]),)
    graph.eliminate_dead_code()
    gm.recompile()
    model = _export(tg)
    inits = {t.name: t for t in model.graph.initializer}
    assert inits["wq.quantized"].data_type == TensorProto.INT4  # int32 buffer stored in 4 bits
    ref, out = _run_both(gm, model, _eval_inputs(9, scale=3.0), tg.input_names)
    np.testing.assert_array_equal(out[2], ref[2])  # the integers (int32 as in the IR)
    assert (ref[2].min(0) == qp.qmin.numpy()).all() and (ref[2].max(0) == qp.qmax.numpy()).all()
    np.testing.assert_allclose(out[1], ref[1], atol=1e-6)
    np.testing.assert_allclose(out[0], ref[0], atol=1e-6)


def test_quantized_file_is_smaller():
    tg_float = _traced(QNet())
    tg4, _ = _quantized_qnet(4, 8, True)
    float_init = {t.name: t for t in _export(tg_float).graph.initializer}["lin1.weight"]
    int4_init = {t.name: t for t in _export(tg4).graph.initializer}["lin1.weight.quantized"]
    assert len(int4_init.raw_data) * 8 == len(float_init.raw_data)


def test_computed_qparams_are_rejected():
    tg, _ = _quantized_qnet(8, 8, True)
    gm = tg.graph_module
    q = next(n for n in gm.graph.nodes if n.target == qg_ops.QUANTIZE and n.args[0].op != "get_attr")
    with gm.graph.inserting_before(q):
        doubled = gm.graph.call_function(torch.ops.aten.mul.Tensor, (q.args[1], 2.0))
    q.update_arg(1, doubled)
    gm.recompile()
    with pytest.raises(UnsupportedOpError, match="per-group"):
        _export(tg)


def test_unsupported_op_names_op_and_source_line():
    tg = _traced(Det())
    with pytest.raises(UnsupportedOpError) as info:
        _export(tg)
    message = str(info.value)
    assert "aten.linalg_det.default" in message
    assert "torch.linalg.det(self.w @ x.t() @ x)" in message
    assert "test_onnx_export.py" in message
    assert "LOWERINGS" in message


def test_lowering_table_is_extensible():
    assert torch.ops.aten.linear.default in LOWERINGS
    assert qg_ops.SCATTER in LOWERINGS and qg_ops.QUANTIZE in LOWERINGS
