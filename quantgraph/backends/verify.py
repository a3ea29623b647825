"""Verify an exported ONNX model: checker + shape inference, then onnxruntime vs the IR reference."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from quantgraph.cpu import REDUCED_WEIGHT_RANGE, int8_dot_saturates
from quantgraph.errors import QuantGraphError
from quantgraph.ir.meta import SOURCE_KEY
from quantgraph.metrics import accuracy, argmax_agreement

if TYPE_CHECKING:
    from quantgraph.compiler import CompiledModel
    from quantgraph.data import GraphData


#: intra-op thread counts every verification runs: a kernel that adds without atomics (ScatterND) differs at 2
VERIFY_THREADS = (1, 2)


def ort_session(model: onnx.ModelProto | bytes | str, threads: int | None = None):
    """A CPU onnxruntime session (``threads``: intra-op threads; None: onnxruntime's default)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads = threads
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def run_onnx(session, inputs: dict[str, torch.Tensor], time_limit: float | None = None) -> torch.Tensor:
    """The first output of ``session`` on ``inputs``; ``TimeoutError`` after ``time_limit`` seconds."""
    import onnxruntime as ort

    names = [i.name for i in session.get_inputs()]
    feeds = {n: inputs[n].detach().cpu().numpy() for n in names}
    options = ort.RunOptions()
    options.log_severity_level = 4  # failures come back as exceptions; keep stderr to one line
    timer = None
    if time_limit is not None:  # onnxruntime checks the terminate flag between kernels and Loop iterations
        timer = threading.Timer(time_limit, setattr, (options, "terminate", True))
        timer.daemon = True
        timer.start()
    try:
        out = session.run(None, feeds, options)
    except Exception:
        if timer is not None and options.terminate:
            raise TimeoutError(f"onnxruntime stopped after {time_limit} s") from None
        raise
    finally:
        if timer is not None:
            timer.cancel()
    return torch.from_numpy(np.asarray(out[0]))


def with_prepared_graph(model: onnx.ModelProto, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``inputs`` plus a ``graph_input="csr"`` model's prepared-graph inputs (computed once per graph)."""
    from quantgraph.backends.onnx_segment import prepare_graph_inputs

    prepared = prepare_graph_inputs(model, inputs)
    return {**inputs, **{k: torch.from_numpy(np.asarray(v)) for k, v in prepared.items()}}


def check_onnx_inputs(session, data: GraphData, where: object = "the model") -> None:
    """Refuse data the model cannot take: a missing input, or node features of another width."""
    from quantgraph.backends.onnx_segment import PERM_PREFIX
    from quantgraph.errors import InputError

    inputs = data.inputs()
    for arg in session.get_inputs():
        if arg.name.startswith(PERM_PREFIX):  # prepared from the graph by with_prepared_graph
            continue
        if arg.name not in inputs:
            raise InputError(
                f"{where} needs an input '{arg.name}' that {data.name} does not have",
                f"evaluate on data with {', '.join(i.name for i in session.get_inputs())}",
            )
        shape, value = arg.shape, inputs[arg.name]
        if len(shape) != value.dim():
            raise InputError(
                f"{where} expects '{arg.name}' with {len(shape)} dimensions, {data.name} has {value.dim()}",
                "evaluate on data of the kind the model was compiled for",
            )
        for axis, (want, got) in enumerate(zip(shape, value.shape, strict=True)):
            if isinstance(want, int) and want != got:
                what = "features per node" if arg.name == "x" and axis == 1 else f"entries on axis {axis}"
                raise InputError(
                    f"{where} expects {want} {what} of '{arg.name}' but {data.name} has {got}",
                    f"evaluate on data with {want} {what} (the data the model was compiled for)",
                )


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
    expected = compiled.integer_values(inputs)
    inputs = with_prepared_graph(model, inputs)
    mismatched: dict[str, int] = {}
    compared = 0
    for threads in VERIFY_THREADS:
        session = ort_session(probe, threads)
        feeds = {i.name: inputs[i.name].detach().cpu().numpy() for i in session.get_inputs()}
        names = [o.name for o in session.get_outputs()]
        got = dict(zip(names, session.run(None, feeds), strict=True))
        compared = 0
        for onnx_name, key in points.items():
            if onnx_name in got and key in expected:
                compared += 1
                value = torch.from_numpy(np.asarray(got[onnx_name]).astype(np.int64))
                diff = int((value != expected[key].long()).sum())
                if diff:
                    mismatched[key] = max(mismatched.get(key, 0), diff)
    return {"compared": compared, "equal": not mismatched and compared > 0, "mismatched_values": mismatched}


def _worst_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out - ref).abs().max()) if ref.numel() else 0.0


def full_range_int8_weights(model: onnx.ModelProto) -> list[str]:
    """Int8 weight matrices (dequantized or fed to MatMulInteger) with values outside [-64, 63]."""
    weight_inputs = {
        n.input[i]
        for n in model.graph.node
        for i in ((0,) if n.op_type == "DequantizeLinear" else (1,) if n.op_type == "MatMulInteger" else ())
        if len(n.input) > i
    }
    lo, hi = REDUCED_WEIGHT_RANGE
    found = []
    for init in model.graph.initializer:
        # matrices only: a bias small enough for int8 is added after the GEMM, not multiplied in it
        if init.data_type == onnx.TensorProto.INT8 and len(init.dims) >= 2 and init.name in weight_inputs:
            values = numpy_helper.to_array(init)
            if values.size and (values.min() < lo or values.max() > hi):
                found.append(init.name)
    return found


def saturation_check(model: onnx.ModelProto) -> dict[str, Any]:
    """Whether this host's int8 kernels can saturate on the model's weights, and the fix."""
    host = int8_dot_saturates()
    weights = full_range_int8_weights(model)
    check: dict[str, Any] = {"host_saturates_u8s8": host, "full_range_int8_weights": len(weights)}
    if host and weights:
        check["warning"] = (
            f"this CPU has no VNNI: onnxruntime adds u8 x s8 products in a saturating int16, so {len(weights)} "
            "int8 weight tensors with values beyond [-64, 63] can give wrong outputs here; compile with "
            "--option reduce_range=true (7-bit weights) to run exactly on such CPUs"
        )
    return check


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
    ir_logits = compiled.run(inputs)
    feeds = with_prepared_graph(model, inputs)
    per_thread = {t: run_onnx(ort_session(model, t), feeds) for t in VERIFY_THREADS}
    # the report's figures are the worst over the thread counts
    ort_logits = max(per_thread.values(), key=lambda out: float(_worst_error(out, ir_logits)))
    thread_mismatch = {t: int((out != per_thread[VERIFY_THREADS[0]]).sum()) for t, out in per_thread.items()}
    return {
        "max_abs_error": _worst_error(ort_logits, ir_logits),
        "argmax_agreement": min(argmax_agreement(out, ir_logits) for out in per_thread.values()),
        "threads": list(VERIFY_THREADS),
        "values_differing_across_threads": sum(thread_mismatch.values()),
        "accuracy": accuracy(ort_logits, data.y, data.test_mask),
        "opset": next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None),
        "ir_version": model.ir_version,
        "int8_saturation": saturation_check(model),
    }
