"""Verify an exported ONNX model: checker + shape inference, then onnxruntime vs the IR reference."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import torch

from quantgraph.errors import QuantGraphError
from quantgraph.ir.meta import SOURCE_KEY
from quantgraph.metrics import accuracy, argmax_agreement

if TYPE_CHECKING:
    from quantgraph.compiler import CompiledModel
    from quantgraph.data import GraphData


def ort_session(model: onnx.ModelProto | bytes | str):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def run_onnx(session, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    names = [i.name for i in session.get_inputs()]
    feeds = {n: inputs[n].detach().cpu().numpy() for n in names}
    return torch.from_numpy(np.asarray(session.run(None, feeds)[0]))


def integer_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` that also outputs the named intermediate values (for bit-exact checks)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    existing = {o.name for o in probe.graph.output}
    for name in names:
        if name in types and name not in existing:
            probe.graph.output.append(onnx.helper.make_tensor_value_info(name, types[name], None))
    return probe


def compare_integers(
    model: onnx.ModelProto, compiled: CompiledModel, inputs: dict[str, torch.Tensor]
) -> dict:
    """onnxruntime's integers at every quantize/requantize against the integer IR's, value for value."""
    from quantgraph.ir.int_ops import REQUANTIZE
    from quantgraph.ir.ops import QUANTIZE

    points = {
        n.name: n.meta.get(SOURCE_KEY, n.name)
        for n in compiled.graph_module.graph.nodes
        if n.target in (QUANTIZE, REQUANTIZE)
        and not (isinstance(n.args[0], torch.fx.Node) and n.args[0].op == "get_attr")
    }
    probe = integer_outputs(model, list(points))
    session = ort_session(probe)
    feeds = {i.name: inputs[i.name].detach().cpu().numpy() for i in session.get_inputs()}
    names = [o.name for o in session.get_outputs()]
    got = dict(zip(names, session.run(None, feeds), strict=True))
    expected = compiled.integer_values(inputs)
    mismatched = {}
    compared = 0
    for onnx_name, key in points.items():
        if onnx_name in got and key in expected:
            compared += 1
            diff = int(
                (torch.from_numpy(np.asarray(got[onnx_name]).astype(np.int64)) != expected[key].long()).sum()
            )
            if diff:
                mismatched[key] = diff
    return {"compared": compared, "equal": not mismatched and compared > 0, "mismatched_values": mismatched}


def verify_onnx(model: onnx.ModelProto, compiled: CompiledModel, data: GraphData) -> dict[str, Any]:
    """Check the model and compare onnxruntime's logits with the IR's on ``data``."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as err:
        raise QuantGraphError(
            f"the exported ONNX model failed the checker: {str(err).splitlines()[0]}",
            "report this as a backend bug with the model",
        ) from err
    inputs = data.inputs()
    ort_logits = run_onnx(ort_session(model), inputs)
    ir_logits = compiled.run(inputs)
    return {
        "max_abs_error": float((ort_logits - ir_logits).abs().max()) if ir_logits.numel() else 0.0,
        "argmax_agreement": argmax_agreement(ort_logits, ir_logits),
        "accuracy": accuracy(ort_logits, data.y, data.test_mask),
        "opset": next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None),
        "ir_version": model.ir_version,
    }
