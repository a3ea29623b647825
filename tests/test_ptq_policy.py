"""The ``ptq`` policy: label-free PTQ with a range per in-degree bucket at every node-row activation, each
chosen by a relative-MSE clip search; exported to ONNX it computes the IR's integers on graphs of any size."""

from __future__ import annotations

import pytest
import torch

from quantgraph.backends.verify import compare_integers, ort_session, run_onnx
from quantgraph.compiler import compile as qg_compile
from quantgraph.data import make_csbm

from .conftest import TwoLayer

pytestmark = pytest.mark.slow  # each compile runs a 128-candidate search per bucket and point


@pytest.fixture(scope="module")
def gin_and_graph():
    torch.manual_seed(0)
    data = make_csbm(num_nodes=200, num_features=8, num_classes=4, power=2.0, seed=3)
    return TwoLayer("gin", fin=8, fout=4).eval(), data


@pytest.fixture(scope="module")
def ptq(gin_and_graph):
    model, data = gin_and_graph
    return {bits: qg_compile(model, data, policy="ptq", bits=bits) for bits in (8, 4)}


def test_ptq_groups_every_node_row_activation_by_degree(gin_and_graph, ptq):
    model, data = gin_and_graph
    rep = ptq[8].report
    assert rep["calibration"] == "relative-mse"
    assert rep["degree_buckets"]["groups"] == 5
    points = rep["quantization"].values()
    grouped = {q["role"] for q in points if q["granularity"] == "per_group"}
    assert grouped == {"linear_out", "aggregation", "update", "output"}
    assert all(q["observer"] == "relative-mse" for q in points if q["granularity"] == "per_group")
    weights = [q for q in points if q["role"] == "weight"]
    assert weights and all(q["observer"] == "minmax" for q in weights)


def test_ptq_beats_per_tensor_ranges_on_sum_aggregation(gin_and_graph, ptq):
    # GIN's sums over power-law degrees: hub rows set a per-tensor range; per-bucket ranges keep the rest
    model, data = gin_and_graph
    reference = model(data.x, data.edge_index)
    per_tensor = qg_compile(model, data, policy="minmax", bits=4, options={"calibration": "relative-mse"})
    assert all(q["granularity"] != "per_group" for q in per_tensor.report["quantization"].values())

    def error(compiled) -> float:
        return float((compiled.run(data.inputs()) - reference).square().mean())

    assert error(ptq[4]) < 0.5 * error(per_tensor)


@pytest.mark.parametrize("bits", [8, 4])
def test_ptq_onnx_equals_ir_on_graphs_of_other_sizes(gin_and_graph, ptq, bits, tmp_path):
    model, data = gin_and_graph
    compiled = ptq[bits]
    checks = compiled.export_onnx(tmp_path / "ptq.onnx", data)
    assert checks["argmax_agreement"] == 1.0 and checks["max_abs_error"] <= 1e-5
    onnx_model = compiled.to_onnx()
    session = ort_session(onnx_model)
    for n in (37, 500):
        inputs = make_csbm(num_nodes=n, num_features=8, num_classes=4, power=2.0, seed=n).inputs()
        assert torch.allclose(run_onnx(session, inputs), compiled.run(inputs), atol=1e-5), n
        if bits == 8:  # the integer probe reads its outputs through numpy, which has no int4 type
            ints = compare_integers(onnx_model, compiled, inputs)
            assert ints["equal"] and ints["compared"] >= 4, (n, ints)
