"""A second runtime: OpenVINO runs the FP32, QDQ and integer ONNX exports (optional extra ``openvino``).

OpenVINO's CPU plugin computes in bfloat16 by default where the CPU has AVX-512 BF16 (its
``INFERENCE_PRECISION_HINT`` is then ``bf16``), which changes the results; ``INFERENCE_PRECISION_HINT=f32``
restores them. Measured with openvino 2026.4.1 on this machine (AVX-512 BF16): default precision, FP32
GCN export 2.6e-3 max abs error against the IR, GIN QDQ 5.7e-2; with ``f32``: <= 5e-7 FP32, 0 for the
QDQ and integer exports on most graphs, one output step on <= 3% of the values on others (the QDQ
float sums run in another order; the integer export's float64 requantize runs in float32 in OpenVINO's
CPU plugin), so the quantized exports are compared in output steps.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch

import quantgraph as qg
from quantgraph.data import GraphData

from .conftest import HOST_EXACT, TwoLayer, random_graph

ov = pytest.importorskip("openvino", reason="OpenVINO is an optional extra: pip install -e '.[openvino]'")
warnings.filterwarnings("ignore", category=UserWarning)


def _run(core, model, inputs: dict[str, torch.Tensor], hint: str | None) -> np.ndarray:
    config = {"INFERENCE_PRECISION_HINT": hint} if hint else {}
    compiled = core.compile_model(core.read_model(model.SerializeToString(), b""), "CPU", config)
    return compiled({k: v.numpy() for k, v in inputs.items()})[0]


@pytest.fixture(scope="module")
def graph():
    x, edge_index = random_graph(50, 240, features=8, seed=4)
    loops = torch.tensor([[3, 3, 8], [3, 3, 8]])  # self-loops and a duplicate; nodes 45-49 may be isolated
    return GraphData(x=x, edge_index=torch.cat([edge_index % 45, loops], 1))


@pytest.mark.parametrize("kind", ["gcn", "sage", "gin"])
def test_openvino_runs_fp32_qdq_and_integer_exports(kind, graph):
    core = ov.Core()
    torch.manual_seed(0)
    for backend in ("onnx-qdq", "onnx-int"):
        # OpenVINO's AVX2 int8 kernels saturate as onnxruntime's do: 7-bit weights on such hosts (HOST_EXACT)
        compiled = qg.compile(
            TwoLayer(kind).eval(), graph, policy="minmax", bits=8, backend=backend, options=HOST_EXACT
        )
        exports = {"quantized": (compiled.to_onnx(), compiled.run(graph).numpy())}
        if backend == "onnx-qdq":
            exports["fp32"] = (compiled.to_onnx(quantized=False), compiled.run_fp32(graph).numpy())
        for name, (model, ref) in exports.items():
            out = _run(core, model, graph.inputs(), "f32")
            if name == "fp32":
                np.testing.assert_allclose(out, ref, atol=1e-5, err_msg=f"{backend} {name}")
            else:
                # QDQ: float sums in another order; onnx-int: OpenVINO's CPU plugin runs the float64
                # requantize in float32. Either way a value on a rounding tie may land one output step away.
                step = _output_step(model)
                assert np.abs(out - ref).max() <= step * 1.001, (kind, np.abs(out - ref).max(), step)
                # measured: at most 3% of the values on an AVX-512 VNNI host; 4.5% (9 of 200) for GCN onnx-int
                # on an AVX2 host, whose 7-bit weights (HOST_EXACT) give other accumulators, hence other ties
                assert (np.abs(out - ref) > step / 2).mean() <= 0.05
                assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.95


def _output_step(model) -> float:
    """The scale of the DequantizeLinear making the model's output."""
    producer = next(n for n in model.graph.node if model.graph.output[0].name in n.output)
    assert producer.op_type == "DequantizeLinear"
    scale = next(t for t in model.graph.initializer if t.name == producer.input[1])
    return float(onnx.numpy_helper.to_array(scale).max())


def test_openvino_default_bf16_changes_results_and_f32_restores_them(graph):
    core = ov.Core()
    if "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        pytest.skip("this CPU has no BF16: OpenVINO computes in f32 by default here")
    assert str(core.get_property("CPU", "INFERENCE_PRECISION_HINT")) in ("bf16", "<Type: 'bfloat16'>")
    torch.manual_seed(0)
    compiled = qg.compile(TwoLayer("gcn").eval(), graph, policy="fp32")
    model, ref = compiled.to_onnx(quantized=False), compiled.run_fp32(graph).numpy()
    default = _run(core, model, graph.inputs(), None)
    assert np.abs(default - ref).max() > 1e-4  # bfloat16 keeps 8 mantissa bits
    np.testing.assert_allclose(_run(core, model, graph.inputs(), "f32"), ref, atol=1e-5)
