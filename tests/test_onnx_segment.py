"""The segment aggregation of the ONNX backends equals the IR at 1 and 2 onnxruntime threads (issue 16).

Every reduction (sum, mean, max), weighted or not, on graphs with isolated nodes, self-loops, duplicate
edges, a hub, and no edges at all; floats within rounding, integers bit for bit; with the sort inside
the model (``graph_input=edges``) and with the prepared-graph inputs (``graph_input=csr``).
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import quantgraph as qg
from quantgraph.backends.onnx_export import export_onnx
from quantgraph.backends.onnx_segment import PERM_PREFIX, prep_model, prepare_graph_inputs
from quantgraph.backends.verify import compare_integers, verify_onnx, with_prepared_graph
from quantgraph.data import GraphData
from quantgraph.frontend import trace

from .conftest import HOST_EXACT, TwoLayer

warnings.filterwarnings("ignore", category=UserWarning)
REDUCTIONS = ("sum", "mean", "max")


class Aggregations(torch.nn.Module):
    """Every IR reduction of a float message, weighted and not, and of an integer message (sum, max)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 3)

    def forward(self, x, edge_index):
        src, dst, n = edge_index[0], edge_index[1], x.size(0)
        h = self.lin(x)
        msg = torch.ops.quantgraph.gather(h, src)
        weight = torch.ops.quantgraph.gather(x[:, 0].sigmoid(), src) * torch.ops.quantgraph.gather(
            x[:, 1], dst
        )
        weighted = msg * weight.unsqueeze(-1)
        ints = torch.ops.quantgraph.gather(torch.round(h * 40).to(torch.int32), src)
        outs = [torch.ops.quantgraph.scatter(m, dst, n, r) for m in (msg, weighted) for r in REDUCTIONS]
        outs += [torch.ops.quantgraph.scatter(ints, dst, n, r) for r in ("sum", "max")]
        outs.append(torch.ops.quantgraph.scatter(weight, dst, n, "sum"))  # 1-D
        deg = torch.zeros(n).index_add(
            0, dst, torch.ones_like(dst, dtype=torch.float)
        )  # plain-PyTorch degree
        return (*outs, deg)


def _graphs() -> dict[str, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(3)
    random_edges = torch.randint(0, 20, (2, 60), generator=g)
    special = torch.tensor(
        [[0, 3, 3, 3, 7, 11, 19, 5, 5], [0, 3, 3, 3, 7, 11, 19, 2, 2]]
    )  # loops, duplicates
    hub = torch.stack([torch.arange(40) % 25, torch.zeros(40, dtype=torch.long)])  # degree 40 = 0b101000
    return {
        # nodes 20-24 have no edges
        "isolated_loops_duplicates": {
            "x": torch.randn(25, 4, generator=g),
            "edge_index": torch.cat([random_edges, special], 1),
        },
        "hub": {"x": torch.randn(25, 4, generator=g) - 3, "edge_index": torch.cat([hub, special], 1)},
        "no_edges": {"x": torch.randn(6, 4, generator=g), "edge_index": torch.zeros(2, 0, dtype=torch.long)},
        "one_edge": {"x": torch.randn(3, 4, generator=g), "edge_index": torch.tensor([[2], [1]])},
    }


@pytest.fixture(scope="module")
def traced():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    return trace(
        Aggregations().eval(),
        {"x": torch.randn(10, 4, generator=g), "edge_index": torch.randint(0, 10, (2, 30), generator=g)},
    )


def _run(model: onnx.ModelProto, inputs: dict[str, torch.Tensor], threads: int) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feeds = with_prepared_graph(model, inputs)
    return session.run(None, {i.name: feeds[i.name].numpy() for i in session.get_inputs()})


@pytest.mark.parametrize("graph_input", ["edges", "csr"])
@pytest.mark.parametrize("graph", list(_graphs()))
def test_every_aggregation_equals_the_ir(traced, graph, graph_input):
    model = export_onnx(
        traced.graph_module,
        input_names=traced.input_names,
        dim_names=traced.dim_names,
        options={"graph_input": graph_input},
    )
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("TopK") == (1 if graph_input == "edges" else 0)  # one sort shared by every aggregation
    scatters = [n for n in model.graph.node if n.op_type in ("ScatterElements", "ScatterND")]
    assert all(not any(a.name == "reduction" for a in n.attribute) for n in scatters)  # nothing adds in place
    inputs = _graphs()[graph]
    with torch.no_grad():
        ref = [r.numpy() for r in traced.graph_module(inputs["x"], inputs["edge_index"])]
    for threads in (1, 2):
        out = _run(model, inputs, threads)
        assert len(out) == len(ref)
        for k, (o, r) in enumerate(zip(out, ref, strict=True)):
            assert o.dtype == r.dtype and o.shape == r.shape, k
            if r.dtype == np.int32:
                np.testing.assert_array_equal(o, r)  # integer segment sums and maxima: bit-exact
            else:
                np.testing.assert_allclose(o, r, atol=1e-5, rtol=1e-5, err_msg=f"output {k}")
    if graph == "hub":
        assert (ref[2][:20] < 0).any()  # negative maxima: neither padding nor a zero may win


def test_scatter_option_keeps_the_old_formulation(traced):
    model = export_onnx(
        traced.graph_module,
        input_names=traced.input_names,
        dim_names=traced.dim_names,
        options={"onnx_aggregation": "scatter"},
    )
    ops = [n.op_type for n in model.graph.node]
    assert "TopK" not in ops and "Loop" not in ops
    assert any(
        n.op_type == "ScatterElements" and n.attribute[-1].s in (b"add", b"max") for n in model.graph.node
    )
    inputs = _graphs()["isolated_loops_duplicates"]
    with torch.no_grad():
        ref = [r.numpy() for r in traced.graph_module(inputs["x"], inputs["edge_index"])]
    for o, r in zip(_run(model, inputs, 1), ref, strict=True):
        np.testing.assert_allclose(o, r, atol=1e-5, rtol=1e-5)


def test_bad_export_option_is_refused(traced):
    with pytest.raises(qg.errors.InputError, match="onnx_aggregation"):
        export_onnx(
            traced.graph_module,
            input_names=traced.input_names,
            dim_names=traced.dim_names,
            options={"onnx_aggregation": "atomic"},
        )


def test_csr_inputs_are_the_destination_sorted_edge_order(traced):
    model = export_onnx(
        traced.graph_module,
        input_names=traced.input_names,
        dim_names=traced.dim_names,
        options={"graph_input": "csr"},
    )
    names = [i.name for i in model.graph.input]
    assert names == ["x", "edge_index", f"{PERM_PREFIX}0"]
    assert "TopK" in [n.op_type for n in prep_model(model).graph.node]
    inputs = _graphs()["isolated_loops_duplicates"]
    perm = prepare_graph_inputs(model, inputs)[f"{PERM_PREFIX}0"]
    dst = inputs["edge_index"][1].numpy()
    np.testing.assert_array_equal(perm, np.argsort(dst, kind="stable"))
    # any order that groups the edges by destination gives the same sums
    assert (
        prepare_graph_inputs(
            export_onnx(traced.graph_module, input_names=traced.input_names, dim_names=traced.dim_names),
            inputs,
        )
        == {}
    )


@pytest.mark.parametrize("kind", ["gcn", "sage", "gin"])
def test_onnx_int_segment_sums_equal_the_integer_ir(kind):
    """onnx-int: every quantize/requantize integer equals the integer IR's at 1 and 2 threads."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(40, 8, generator=g)
    edges = torch.cat(
        [torch.randint(0, 35, (2, 150), generator=g), torch.tensor([[1, 1, 4, 4], [1, 1, 4, 9]])], 1
    )  # nodes 35-39 isolated, self-loops, duplicates
    data = GraphData(x=x, edge_index=edges)
    torch.manual_seed(0)
    for graph_input in ("edges", "csr"):
        compiled = qg.compile(
            TwoLayer(kind).eval(),
            data,
            policy="minmax",
            bits=8,
            backend="onnx-int",
            options={"graph_input": graph_input},
        )
        model = compiled.to_onnx()
        assert not any(
            n.op_type == "ScatterElements" and n.attribute[-1].s == b"add" for n in model.graph.node
        )
        for inputs in (data.inputs(), {"x": x[:7], "edge_index": torch.zeros(2, 0, dtype=torch.long)}):
            result = compare_integers(model, compiled, inputs)
            assert result["equal"] and result["compared"] > 0, result
        checks = verify_onnx(model, compiled, data)
        assert checks["values_differing_across_threads"] == 0
        assert checks["max_abs_error"] == 0.0


def test_prepare_graph_cli_writes_the_sort_order(tmp_path):
    from quantgraph.cli import main

    g = torch.Generator().manual_seed(1)
    data = GraphData(x=torch.randn(30, 8, generator=g), edge_index=torch.randint(0, 30, (2, 90), generator=g))
    torch.manual_seed(0)
    compiled = qg.compile(
        TwoLayer("gcn").eval(), data, policy="minmax", bits=8, options={"graph_input": "csr", **HOST_EXACT}
    )
    path = tmp_path / "m.onnx"
    compiled.export_onnx(path, data)
    assert compiled.report["onnx"]["argmax_agreement"] == 1.0
    graph = tmp_path / "g.npz"
    torch.save({"x": data.x, "edge_index": data.edge_index}, tmp_path / "g.pt")
    assert (
        main(["prepare-graph", str(path), "--data", str(tmp_path / "g.pt"), "-o", str(graph), "--quiet"]) == 0
    )
    arrays = np.load(graph, allow_pickle=False)
    assert list(arrays) == [f"{PERM_PREFIX}0"]
    expected = prepare_graph_inputs(onnx.load(str(path)), data.inputs())
    np.testing.assert_array_equal(arrays[f"{PERM_PREFIX}0"], expected[f"{PERM_PREFIX}0"])
    plain = tmp_path / "plain.onnx"
    qg.compile(TwoLayer("gcn").eval(), data, policy="fp32").export_onnx(plain, data)
    before = graph.read_bytes()
    assert (
        main(["prepare-graph", str(plain), "--data", str(tmp_path / "g.pt"), "-o", str(graph), "--quiet"])
        != 0
    )
    assert graph.read_bytes() == before  # nothing half-written


def _loop_bodies(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [inner for n in model.graph.node if n.op_type == "Loop" for inner in n.attribute[0].g.node]


@pytest.mark.parametrize("graph", list(_graphs()))
def test_fused_messages_equal_the_materialised_ones_bit_for_bit(traced, graph):
    """message_fusion=on computes the messages inside the segment loop: the same outputs, no [E, F] gather."""
    fused, unfused = (
        export_onnx(
            traced.graph_module,
            input_names=traced.input_names,
            dim_names=traced.dim_names,
            options={"message_fusion": fusion},
        )
        for fusion in ("on", "off")
    )
    linear = next(n.output[0] for n in fused.graph.node if n.op_type in ("Gemm", "MatMul"))
    gathers_h = [n for n in fused.graph.node if n.op_type == "Gather" and n.input[0] == linear]
    assert gathers_h == []  # the rows of h are gathered only per block, inside the loops
    assert any(n.op_type == "Gather" and n.input[0] == linear for n in _loop_bodies(fused))
    assert any(n.op_type == "Gather" and n.input[0] == linear for n in unfused.graph.node)
    inputs = _graphs()[graph]
    for threads in (1, 2):
        for a, b in zip(_run(fused, inputs, threads), _run(unfused, inputs, threads), strict=True):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kind", ["gcn", "sage", "gin", "gat"])
def test_fused_quantized_messages_equal_the_materialised_ones(kind):
    """QDQ exports: the message Q/DQ runs per block in the loop; outputs equal message_fusion=off exactly."""
    data = random_graph_data(seed=7)
    torch.manual_seed(0)
    compiled = qg.compile(TwoLayer(kind).eval(), data, policy="minmax", bits=8)
    fused, unfused = compiled.to_onnx(), compiled.to_onnx(options={"message_fusion": "off"})
    if kind in ("gcn", "gat"):  # weighted messages: quantized per edge, now inside the loop
        assert "QuantizeLinear" in [n.op_type for n in _loop_bodies(fused)]
    wide = [_wide_gathers(m) for m in (fused, unfused)]  # [E, F] (and [E, H, F]) gathers outside the loops
    assert wide[0] < wide[1] and (wide[0] == 0 or kind == "gat")  # GAT's [E, heads] logits feed its softmax
    for inputs in (data.inputs(), {"x": data.x[:7], "edge_index": torch.zeros(2, 0, dtype=torch.long)}):
        for threads in (1, 2):
            for a, b in zip(_run(fused, inputs, threads), _run(unfused, inputs, threads), strict=True):
                np.testing.assert_array_equal(a, b)
    assert verify_onnx(fused, compiled, data)["values_differing_across_threads"] == 0


def _wide_gathers(model: onnx.ModelProto) -> int:
    """Top-level Gathers of rank >= 2 results from non-constant data (per-edge rows of node features)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in inferred.graph.value_info}
    constants = {t.name for t in model.graph.initializer}
    return sum(
        n.op_type == "Gather" and n.input[0] not in constants and ranks.get(n.output[0], 0) >= 2
        for n in model.graph.node
    )


def random_graph_data(seed: int) -> GraphData:
    g = torch.Generator().manual_seed(seed)
    edges = torch.cat(
        [torch.randint(0, 35, (2, 150), generator=g), torch.tensor([[1, 1, 4, 4], [1, 1, 4, 9]])], 1
    )  # nodes 35-39 isolated, self-loops, duplicates
    return GraphData(x=torch.randn(40, 8, generator=g), edge_index=edges)


def test_onnx_backends_fuse_messages_by_default():
    """onnx-int and onnx-qdq compile with message_fusion=on by default; off overrides it (same outputs)."""
    data = random_graph_data(seed=3)
    torch.manual_seed(0)
    model = TwoLayer("gcn").eval()
    integer = qg.compile(model, data, policy="minmax", bits=8, backend="onnx-int")
    qdq = qg.compile(model, data, policy="minmax", bits=8, backend="onnx-qdq")
    assert integer.backend_options["message_fusion"] == "on"
    assert qdq.backend_options["message_fusion"] == "on"
    assert _wide_gathers(qdq.to_onnx()) < _wide_gathers(qdq.to_onnx(options={"message_fusion": "off"}))
    forced = qg.compile(
        model, data, policy="minmax", bits=8, backend="onnx-int", options={"message_fusion": "off"}
    )
    assert forced.backend_options["message_fusion"] == "off"
    fused, unfused = integer.to_onnx(), forced.to_onnx()
    assert _wide_gathers(fused) < _wide_gathers(unfused)
    for a, b in zip(_run(fused, data.inputs(), 2), _run(unfused, data.inputs(), 2), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("graph_input", ["edges", "csr"])
def test_loop_bodies_read_sorted_indices_and_reduce_into_the_accumulator(graph_input):
    """Fused bodies gather no edge ids through the permutation (the indices are sorted once outside the
    loop); every body adds/maxes its distinct rows with a reducing ScatterND (no GatherND + combine)."""
    data = random_graph_data(seed=5)
    torch.manual_seed(0)
    compiled = qg.compile(
        TwoLayer("gcn").eval(), data, policy="minmax", bits=8, options={"graph_input": graph_input}
    )
    for fusion in ("on", "off"):
        model = compiled.to_onnx(options={"message_fusion": fusion})
        perms = {n.output[1] for n in model.graph.node if n.op_type == "TopK"}
        perms |= {i.name for i in model.graph.input if i.name.startswith(PERM_PREFIX)}
        body = _loop_bodies(model)
        through_perm = [n for n in body if n.op_type == "Gather" and n.input[0] in perms]
        assert len(through_perm) == (0 if fusion == "on" else 2), fusion  # two layers, unfused: one each
        scatters = [n for n in body if n.op_type == "ScatterND"]
        assert scatters and all(a.s in (b"add", b"max") for n in scatters for a in n.attribute)
        assert "GatherND" not in [n.op_type for n in body]
        unfused = compiled.to_onnx(options={"message_fusion": "off"})
        np.testing.assert_array_equal(_run(model, data.inputs(), 2)[0], _run(unfused, data.inputs(), 1)[0])
