"""Verify an exported ONNX model: checker + shape inference, then onnxruntime vs the IR reference."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import torch

from quantgraph.errors import QuantGraphError
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
