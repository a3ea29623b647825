"""Per-group quantization end to end: a GCN whose node-row values pick scale/zero point by in-degree
bucket (computed in the graph), exported to ONNX and the native backend and checked against the IR on
graphs of several sizes."""

from __future__ import annotations

import pytest
import torch

from quantgraph.backends.verify import compare_integers, ort_session, run_onnx
from quantgraph.compiler import compile as qg_compile
from quantgraph.data import make_csbm
from quantgraph.errors import InputError
from quantgraph.native.verify import compare_native_integers
from quantgraph.passes.degree_buckets import degree_buckets

from .conftest import HOST_EXACT, TwoLayer

PIPELINE = ["canonicalize", "tag-roles", "annotate", "degree-buckets", "calibrate", "insert-qdq"]
OPTIONS = {"degree_boundaries": "2,4,8", "group_roles": "aggregation,update"}
SIZES = (37, 300, 1200)


@pytest.fixture(scope="module")
def gcn_and_graph():
    torch.manual_seed(0)
    data = make_csbm(num_nodes=400, num_features=8, num_classes=4, power=2.0, seed=3)
    return TwoLayer("gcn", fin=8, fout=4).eval(), data


def _graphs():
    return [make_csbm(num_nodes=n, num_features=8, num_classes=4, power=2.0, seed=10 + n) for n in SIZES]


def test_bucket_index_and_per_group_parameters(gcn_and_graph):
    model, data = gcn_and_graph
    compiled = qg_compile(model, data, policy="minmax", bits=8, pipeline=PIPELINE, options=OPTIONS)
    rep = compiled.report
    assert rep["degree_buckets"]["groups"] == 4 and rep["degree_buckets"]["nodes"]
    grouped = [q for q in rep["quantization"].values() if q["granularity"] == "per_group"]
    assert grouped and all(q["role"] in ("aggregation", "update") for q in grouped)
    assert all(len(q["scale"]) == 4 for q in grouped)
    assert any(len(set(q["scale"])) > 1 for q in grouped)  # the buckets really have their own ranges
    degree = torch.bincount(data.edge_index[1], minlength=data.num_nodes)
    assert degree_buckets(degree, (2, 4, 8)).tolist() == [
        sum(int(d) >= b for b in (2, 4, 8)) for d in degree.tolist()
    ]


def test_per_group_onnx_equals_ir_on_several_sizes(gcn_and_graph, tmp_path):
    model, data = gcn_and_graph
    options = {**OPTIONS, **HOST_EXACT}
    compiled = qg_compile(model, data, policy="minmax", bits=8, pipeline=PIPELINE, options=options)
    checks = compiled.export_onnx(tmp_path / "pg.onnx", data)
    assert checks["argmax_agreement"] == 1.0
    onnx_model = compiled.to_onnx()
    session = ort_session(onnx_model)
    for graph in _graphs():
        inputs = graph.inputs()
        ints = compare_integers(onnx_model, compiled, inputs)
        assert ints["equal"] and ints["compared"] >= 4, (graph.num_nodes, ints)
        assert torch.allclose(run_onnx(session, inputs), compiled.run(inputs), atol=1e-5)


def test_per_group_native_integers_equal_ir(gcn_and_graph, tmp_path):
    model, data = gcn_and_graph
    compiled = qg_compile(
        model, data, policy="minmax", bits=8, pipeline=PIPELINE, options=OPTIONS, backend="native"
    )
    checks = compiled.export(tmp_path / "pg.qgn", data)
    assert checks["integer_tensors"]["equal"]
    native = compiled.to_native(data)
    for graph in _graphs():
        inputs = graph.inputs()
        ints = compare_native_integers(native, compiled, inputs)
        assert ints["equal"] and ints["compared"] >= 4, (graph.num_nodes, ints)
        assert torch.allclose(native.run(inputs), compiled.run(inputs), atol=1e-5)


def test_bad_boundaries_are_rejected(gcn_and_graph):
    model, data = gcn_and_graph
    with pytest.raises(InputError, match="ascending"):
        qg_compile(model, data, policy="minmax", pipeline=PIPELINE, options={"degree_boundaries": "4,2"})
