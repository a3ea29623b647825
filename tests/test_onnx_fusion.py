"""onnxruntime's optimizer turns every linear layer of the QDQ export into an integer kernel (QGemm & co.)."""

from __future__ import annotations

import warnings

import onnx
import onnxruntime as ort
import pytest
import torch

import quantgraph as qg
from quantgraph.backends.verify import verify_onnx
from quantgraph.data import GraphData

from .conftest import HOST_EXACT, TwoLayer, random_graph

warnings.filterwarnings("ignore", category=UserWarning)
#: ops onnxruntime fuses a Q/DQ'd linear layer into
INTEGER_LINEAR_OPS = {"QGemm", "QLinearMatMul", "MatMulIntegerToFloat", "DynamicQuantizeMatMul"}


def _optimized(model: onnx.ModelProto, path) -> onnx.ModelProto:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(path)
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return onnx.load(str(path))


@pytest.mark.parametrize(
    ("kind", "options"),
    [
        ("gcn", {}),
        ("sage", {}),  # the input feeds the root linear and the neighbour Gather: stored as uint8 (+128)
        ("gin", {}),
        ("gcn", {"graph_input": "csr"}),
        ("sage", {"onnx_aggregation": "scatter"}),
    ],
)
def test_every_linear_layer_becomes_an_integer_kernel(kind, options, tmp_path):
    torch.manual_seed(0)
    x, edge_index = random_graph(60, 300, features=8, seed=1)
    compiled = qg.compile(
        TwoLayer(kind).eval(),
        GraphData(x=x, edge_index=edge_index),
        policy="minmax",
        bits=8,
        options={**options, **HOST_EXACT},
    )
    model = compiled.to_onnx()
    assert verify_onnx(model, compiled, compiled.data)["argmax_agreement"] == 1.0
    produced = {o: n for n in model.graph.node for o in n.output}
    # no shape is read from a dequantized value (it would keep the DequantizeLinear alive and block the fusion)
    for node in model.graph.node:
        if node.op_type == "Shape" and node.input[0] in produced:
            assert produced[node.input[0]].op_type != "DequantizeLinear", node.name
    linear = sum(n.op_type in ("Gemm", "MatMul") for n in model.graph.node)
    assert linear >= 2
    optimized = _optimized(model, tmp_path / "opt.onnx")
    ops = [n.op_type for n in optimized.graph.node]
    assert (
        "Gemm" not in ops and "MatMul" not in ops and "FusedGemm" not in ops and "FusedMatMul" not in ops
    ), ops
    assert sum(op in INTEGER_LINEAR_OPS for op in ops) == linear, ops
