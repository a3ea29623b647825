"""Integer aggregation (issue 4): fold-scales equals the fake-quant reference exactly, onnxruntime's
integer model equals the integer IR bit for bit, and int32 overflow is detected."""

from __future__ import annotations

import onnx
import pytest
import torch

import quantgraph as qg
from quantgraph.backends.verify import compare_integers
from quantgraph.data import GraphData
from quantgraph.errors import InputError
from quantgraph.ir.int_ops import linear_int, requantize
from quantgraph.ir.qspec import Granularity, QuantSpec
from quantgraph.ir.reference import float64_reference, integer_values
from quantgraph.ir.roles import QUANTIZABLE_ROLES, Role
from quantgraph.passes.qdq_params import dequantize_params
from quantgraph.policies.base import Policy, register_policy

from .conftest import TwoLayer, random_graph


def _graph(num_nodes: int, num_edges: int, seed: int = 0, features: int = 8) -> GraphData:
    x, edge_index = random_graph(num_nodes, num_edges, features=features, seed=seed)
    return GraphData(x=x, edge_index=edge_index, name=f"random{num_nodes}")


def _power_law_graph(num_nodes: int, seed: int) -> GraphData:
    """Targets drawn from a Zipf-like law, so a few hubs have high in-degree."""
    g = torch.Generator().manual_seed(seed)
    weights = 1.0 / torch.arange(1, num_nodes + 1, dtype=torch.float64)
    dst = torch.multinomial(weights, num_nodes * 6, replacement=True, generator=g)
    src = torch.randint(0, num_nodes, (num_nodes * 6,), generator=g)
    x = torch.randn(num_nodes, 8, generator=g)
    return GraphData(x=x, edge_index=torch.stack([src, dst]), name="power-law")


def _no_message_qconfig(bits: int) -> dict[Role, QuantSpec]:
    """MixQ-style points: messages are not quantized on their own, so the aggregation sums q_e * q_x."""
    weight = QuantSpec(bits=bits, signed=True, symmetric=True, granularity=Granularity.PER_CHANNEL, axis=0)
    act = QuantSpec(bits=bits, signed=True, symmetric=False)
    return {r: (weight if r == Role.WEIGHT else act) for r in QUANTIZABLE_ROLES if r != Role.MESSAGE}


register_policy(
    Policy(
        name="test-int-aggregation",
        description="post-training min/max without message quantizers (test only)",
        pipeline=("canonicalize", "tag-roles", "annotate", "calibrate", "insert-qdq"),
        qconfig=_no_message_qconfig,
    )
)


def test_requantize_rounds_half_to_even_and_clamps():
    acc = torch.tensor([5, 7, -5, 1000, -1000], dtype=torch.int32)
    out = requantize(
        acc, torch.tensor(0.5, dtype=torch.float64), torch.tensor(1), torch.tensor(-8), torch.tensor(7), 0
    )
    # 2.5 -> 2, 3.5 -> 4, -2.5 -> -2, then + 1, then clamp to [-8, 7]
    assert out.tolist() == [3, 5, -1, 7, -8]
    assert out.dtype == torch.int32


def test_linear_int_is_exact_integer_matmul():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(-128, 128, (5, 300), generator=g, dtype=torch.int32)
    w_t = torch.randint(-127, 128, (300, 4), generator=g, dtype=torch.int32)
    bias = torch.randint(-1000, 1000, (4,), generator=g, dtype=torch.int32)
    out = linear_int(x, torch.tensor(3), w_t, torch.zeros(4, dtype=torch.int32), bias)
    expected = (x.long() - 3) @ w_t.long() + bias.long()
    assert torch.equal(out.long(), expected)


@pytest.mark.parametrize("kind", ["gcn", "sage", "gin", "gat"])
@pytest.mark.parametrize("bits", [8, 4])
def test_integer_ir_equals_float64_reference_exactly(kind, bits):
    torch.manual_seed(0)
    model = TwoLayer(kind).eval()
    data = _power_law_graph(120, seed=1)
    compiled = qg.compile(model, data, policy="minmax", bits=bits, backend="onnx-int")
    check = compiled.report["integer"]["reference_check"]
    assert check["equal"], check
    assert check["points"] >= 5
    assert compiled.report["integer"]["folded"], "no linear layer or aggregation was folded"
    # the rewrite left the Q/DQ reference untouched; run it ourselves on an unseen graph as well
    reference = float64_reference(compiled.qdq_module)
    other = _graph(77, 500, seed=5)
    inputs = [other.inputs()[n] for n in compiled.input_names]
    expected, actual = integer_values(reference, inputs), integer_values(compiled.graph_module, inputs)
    shared = set(expected) & set(actual)
    assert len(shared) == check["points"]
    for key in shared:
        assert torch.equal(expected[key], actual[key]), key


def test_gcn_aggregation_and_linear_run_on_integers():
    torch.manual_seed(0)
    data = _graph(60, 300)
    compiled = qg.compile(TwoLayer("gcn").eval(), data, policy="test-int-aggregation", backend="onnx-int")
    nodes = list(compiled.graph_module.graph.nodes)
    int_scatters = [
        n for n in nodes if n.target == torch.ops.quantgraph.scatter.default and n.meta.get("qg_integer")
    ]
    assert len(int_scatters) == 2
    assert sum(n.target == torch.ops.quantgraph.linear_int.default for n in nodes) == 2
    bounds = compiled.report["integer"]["accumulators"]
    agg = [b for b in bounds if b["kind"] == "aggregation"]
    degree = int(torch.bincount(data.edge_index[1], minlength=60).max()) + 1  # GCN adds self-loops
    assert all(b["max_in_degree"] == degree for b in agg)
    assert all(b["bound"] == b["max_in_degree"] * b["per_term_bound"] for b in agg)
    # per-term bound: max|q_e - z_e| * max|q_x - z_x|, both at most 255 at 8 bits
    assert all(b["per_term_bound"] <= 255 * 255 for b in agg)


@pytest.mark.parametrize("kind", ["gcn", "gin", "sage"])
def test_onnxruntime_integers_equal_ir_on_varied_graphs(kind, tmp_path):
    torch.manual_seed(0)
    compiled = qg.compile(TwoLayer(kind).eval(), _graph(80, 400), policy="minmax", backend="onnx-int")
    report = compiled.export_onnx(tmp_path / "m.onnx", _graph(80, 400))
    assert report["integer_tensors"]["equal"], report["integer_tensors"]
    model = onnx.load(tmp_path / "m.onnx")
    for graph in (_graph(5, 3, seed=2), _graph(300, 3000, seed=3), _power_law_graph(400, seed=4)):
        check = compare_integers(model, compiled, graph.inputs())
        assert check["equal"], (graph.name, check)
        logits_ir = compiled.run(graph.inputs())
        from quantgraph.backends.verify import ort_session, run_onnx

        logits_ort = run_onnx(ort_session(model), graph.inputs())
        assert torch.equal(logits_ir, logits_ort)


def _value_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    types.update({v.name: v.type.tensor_type.elem_type for v in inferred.graph.output})
    types.update({i.name: i.data_type for i in model.graph.initializer})
    return types


def _aggregation_data_inputs(node: onnx.NodeProto, types: dict[str, int]) -> list[str]:
    """The data read by an aggregation: ScatterElements' data and updates; a segment Loop's accumulator and
    the int32 values its body reads from the outer graph (the messages)."""
    if node.op_type == "ScatterElements":
        return [node.input[0], node.input[2]]
    body = next(a.g for a in node.attribute if a.name == "body")
    made = {o for n in body.node for o in n.output} | {i.name for i in body.input}
    outer = {i for n in body.node for i in n.input if i and i not in made}
    return [node.input[2], *sorted(i for i in outer if types.get(i) == onnx.TensorProto.INT32)]


@pytest.mark.parametrize("aggregation", ["segment", "scatter"])
def test_integer_onnx_has_no_float_ops_between_quantize_and_requantize(tmp_path, aggregation):
    torch.manual_seed(0)
    data = _graph(60, 300)
    compiled = qg.compile(
        TwoLayer("gcn").eval(),
        data,
        policy="test-int-aggregation",
        backend="onnx-int",
        options={"onnx_aggregation": aggregation},
    )
    compiled.export_onnx(tmp_path / "m.onnx", data)
    model = onnx.load(tmp_path / "m.onnx")
    types = _value_types(model)
    producer = {o: n for n in model.graph.node for o in n.output}
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16}
    aggregation_op = "ScatterElements" if aggregation == "scatter" else "Loop"
    int_scatters = [
        n
        for n in model.graph.node
        if n.op_type == aggregation_op and types.get(n.output[0]) == onnx.TensorProto.INT32
    ]
    assert len(int_scatters) >= 2
    assert sum(n.op_type == "MatMulInteger" for n in model.graph.node) == 2
    for scatter in int_scatters:
        # backwards along the data inputs, up to the quantized tensors
        stack, seen = _aggregation_data_inputs(scatter, types), set()
        while stack:
            name = stack.pop()
            node = producer.get(name)
            if node is None or name in seen:
                continue
            seen.add(name)
            if node.op_type in ("QuantizeLinear", "Cast") and types[name] in (
                onnx.TensorProto.INT8,
                onnx.TensorProto.UINT8,
            ):
                continue  # a quantize or requantize: the integer region starts here
            assert types[name] not in floats, (
                f"float op {node.op_type} inside the aggregation of {scatter.name}"
            )
            if node.op_type in ("Shape", "ConstantOfShape", "Size"):
                continue  # reads only a shape
            data_inputs = node.input[:1] if node.op_type in ("Gather", "Expand", "Reshape") else node.input
            stack.extend(i for i in data_inputs if i)
        # forwards up to the requantize's first float op (the Cast to double)
        frontier = [scatter.output[0]]
        while frontier:
            name = frontier.pop()
            for user in (n for n in model.graph.node if name in n.input):
                out = user.output[0]
                if types.get(out) in floats:
                    assert user.op_type == "Cast" and types[out] == onnx.TensorProto.DOUBLE, user.op_type
                    continue
                frontier.append(out)


def _star(num_leaves: int) -> GraphData:
    src = torch.arange(1, num_leaves + 1)
    edge_index = torch.stack([src, torch.zeros_like(src)])
    x = torch.randn(num_leaves + 1, 4, generator=torch.Generator().manual_seed(0))
    return GraphData(x=x, edge_index=edge_index, name="star")


def test_hub_degree_that_can_overflow_int32_is_detected():
    torch.manual_seed(0)
    model = TwoLayer("gcn", fin=4, hidden=4, fout=2).eval()
    hub = _star(100_000)  # in-degree 100,001 with the self-loop: ~255 * 128 * 100,001 > 2**31 - 1
    with pytest.raises(InputError) as err:
        qg.compile(model, hub, policy="test-int-aggregation", bits=8, backend="onnx-int")
    message = err.value.one_line()
    assert "int32 overflow" in message and "100001" in message and "max in-degree" in message
    # opting in keeps those aggregations in float and records why
    compiled = qg.compile(
        model,
        hub,
        policy="test-int-aggregation",
        bits=8,
        backend="onnx-int",
        options={"int_overflow": "float"},
    )
    integer = compiled.report["integer"]
    assert integer["overflow_kept_float"]
    assert any(not b["fits_int32"] for b in integer["accumulators"])
    # a smaller hub is proven safe, with the margin reported
    small = qg.compile(model, _star(2_000), policy="test-int-aggregation", bits=8, backend="onnx-int")
    agg = [b for b in small.report["integer"]["accumulators"] if b["kind"] == "aggregation"]
    assert agg and all(b["fits_int32"] and b["max_safe_in_degree"] >= 2_001 for b in agg)


def test_bias_is_quantized_at_the_accumulator_scale():
    torch.manual_seed(0)
    data = _graph(40, 200)
    compiled = qg.compile(TwoLayer("sage").eval(), data, policy="minmax", backend="onnx-int")
    qdq = compiled.qdq_module
    bias_dqs = [n for n in qdq.graph.nodes if n.name.startswith("dequantize") and "qg_exact_scale" in n.meta]
    assert bias_dqs
    for dq in bias_dqs:
        params = dequantize_params(qdq, dq)
        assert params.zero_point.abs().max() == 0


def test_cli_compiles_integer_backend(tmp_path, capsys):
    from quantgraph.cli import main

    ckpt = tmp_path / "gcn.pt"
    syn = "synthetic:nodes=200,seed=3"
    assert main(["train", "--arch", "gcn", "--data", syn, "--epochs", "5", "--quiet", "-o", str(ckpt)]) == 0
    out, report = tmp_path / "m.onnx", tmp_path / "r.json"
    rc = main(
        [
            "compile",
            str(ckpt),
            "--data",
            syn,
            "--backend",
            "onnx-int",
            "-o",
            str(out),
            "--report",
            str(report),
        ]
    )
    assert rc == 0
    import json

    data = json.loads(report.read_text())
    assert data["onnx"]["integer_tensors"]["equal"]
    assert data["integer"]["reference_check"]["equal"]
    assert "integers equal" in capsys.readouterr().out
