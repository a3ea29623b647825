"""Error of every quantization point against FP32: SQNR, max error, and error by node in-degree.

The numbers are measured on the Q/DQ form of the IR (for the integer backends: the graph before
``fold-scales``, whose integers the integer IR equals exactly), so every point the policy quantized
has a row, named by its layer and role rather than by an internal node name.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import torch
from torch import Tensor, fx

from quantgraph.ir.meta import LAYER_KEY, QPARAMS_KEY, QSPEC_KEY, ROLE_KEY, SOURCE_KEY
from quantgraph.ir.ops import DEQUANTIZE
from quantgraph.metrics import sqnr_db

#: Roles whose last point in a layer stands for that layer's output in ``per_layer_sqnr``.
_NOT_LAYER_OUTPUT = {"weight", "bias", "edge_weight", "structure", "input", "attention"}
#: In-degree buckets: [lo, hi) pairs; the last is open.
DEGREE_EDGES = (0, 1, 2, 4, 8, 16, 32, 64)


def role_text(role: str) -> str:
    return {"linear_out": "linear output", "edge_weight": "edge weight"}.get(role, role)


def point_labels(nodes: list[fx.Node]) -> dict[str, str]:
    """``node name -> "layer L · role"`` (``#2``, ``#3`` when a layer has several points of one role)."""
    seen: Counter[tuple[Any, str]] = Counter()
    labels = {}
    for node in nodes:
        role = node.meta[ROLE_KEY].value
        layer = node.meta.get(LAYER_KEY)
        seen[(layer, role)] += 1
        base = role_text(role) if layer is None else f"layer {layer} · {role_text(role)}"
        labels[node.name] = base
        count = seen[(layer, role)]
        if count > 1:
            labels[node.name] = f"{base} #{count}"
    return labels


def capture(
    gm: fx.GraphModule, names: list[str], inputs: dict[str, Tensor], wanted: set[str]
) -> dict[str, Tensor]:
    """Values of the nodes named in ``wanted`` (for Q/DQ'd nodes: the dequantized value)."""
    captured: dict[str, Tensor] = {}

    class _Capture(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            value = super().run_node(n)
            key = n.meta.get(SOURCE_KEY) if n.target == DEQUANTIZE else n.name
            if key in wanted and isinstance(value, Tensor):
                captured[key] = value.detach()
            return value

    with torch.no_grad():
        _Capture(gm).run(*[inputs[n] for n in names])
    return captured


def _finite(value: float) -> float | None:
    """Rounded to 0.01 dB (``-0.0`` shown as ``0.0``), or None when infinite."""
    return round(value, 2) + 0.0 if math.isfinite(value) else None


def _range(qp: Any) -> list[float] | None:
    """The real interval a quantizer covers: ``[(qmin - z) * s, (qmax - z) * s]`` (widest over channels)."""
    if qp is None:
        return None
    lo = ((qp.qmin - qp.zero_point) * qp.scale).min().item()
    hi = ((qp.qmax - qp.zero_point) * qp.scale).max().item()
    return [round(lo, 6), round(hi, 6)]


def in_degree(inputs: dict[str, Tensor], num_nodes: int) -> Tensor | None:
    edge_index = inputs.get("edge_index")
    if edge_index is None or edge_index.dim() != 2:
        return None
    return torch.bincount(edge_index[1].long(), minlength=num_nodes)[:num_nodes]


def degree_buckets(degree: Tensor, per_node: Tensor) -> list[dict[str, Any]]:
    """Mean of ``per_node`` over the nodes of each in-degree bucket (empty buckets are left out)."""
    rows = []
    edges = [*DEGREE_EDGES, None]
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        mask = degree >= lo if hi is None else (degree >= lo) & (degree < hi)
        n = int(mask.sum())
        if n == 0:
            continue
        label = f"{lo}+" if hi is None else (str(lo) if hi == lo + 1 else f"{lo}–{hi - 1}")
        rows.append({"degree": label, "nodes": n, "mean": round(float(per_node[mask].mean()), 6)})
    return rows


def point_errors(
    quantized: fx.GraphModule, fp32: fx.GraphModule, input_names: list[str], inputs: dict[str, Tensor]
) -> dict[str, Any]:
    """Per point: label, bits, range, SQNR and max |error|; per layer: SQNR; per degree: error of aggregations."""
    annotated = [n for n in quantized.graph.nodes if QSPEC_KEY in n.meta and ROLE_KEY in n.meta]
    labels = point_labels(annotated)
    wanted = {n.name for n in annotated}
    q = capture(quantized, input_names, inputs, wanted)
    f = capture(fp32, input_names, inputs, wanted)
    points = []
    for node in annotated:
        spec, qp = node.meta[QSPEC_KEY], node.meta.get(QPARAMS_KEY)
        row: dict[str, Any] = {
            "node": node.name,
            "label": labels[node.name],
            "layer": node.meta.get(LAYER_KEY),
            "role": node.meta[ROLE_KEY].value,
            "bits": spec.bits,
            "granularity": spec.granularity.value,
            "range": _range(qp),
            "scale": None if qp is None else float(qp.scale.max()),
            "sqnr_db": None,
            "max_abs_error": None,
        }
        if node.name in q and node.name in f and q[node.name].shape == f[node.name].shape:
            ref, approx = f[node.name].double(), q[node.name].double()
            row["sqnr_db"] = _finite(sqnr_db(ref, approx))
            row["max_abs_error"] = float((ref - approx).abs().max()) if ref.numel() else 0.0
        points.append(row)
    last: dict[int, dict[str, Any]] = {}
    for row in points:
        if row["layer"] is not None and row["role"] not in _NOT_LAYER_OUTPUT and row["sqnr_db"] is not None:
            last[row["layer"]] = row
    per_layer = [
        {"layer": layer, "node": r["node"], "label": r["label"], "role": r["role"], "sqnr_db": r["sqnr_db"]}
        for layer, r in sorted(last.items())
    ]
    return {
        "points": points,
        "per_layer_sqnr": per_layer,
        "error_by_degree": _by_degree(annotated, labels, q, f, inputs),
    }


def _by_degree(
    annotated: list[fx.Node],
    labels: dict[str, str],
    q: dict[str, Tensor],
    f: dict[str, Tensor],
    inputs: dict[str, Tensor],
) -> list[dict[str, Any]]:
    """Relative error ``‖q − f‖ / ‖f‖`` of each node's aggregation row, averaged per in-degree bucket."""
    x = inputs.get("x")
    degree = in_degree(inputs, int(x.shape[0])) if isinstance(x, Tensor) else None
    if degree is None:
        return []
    rows = []
    for node in annotated:
        if node.meta[ROLE_KEY].value != "aggregation" or node.name not in q or node.name not in f:
            continue
        ref, approx = f[node.name].double(), q[node.name].double()
        if ref.dim() < 1 or ref.shape[0] != degree.numel() or ref.shape != approx.shape:
            continue
        ref, approx = ref.reshape(ref.shape[0], -1), approx.reshape(approx.shape[0], -1)
        rel = (ref - approx).norm(dim=1) / ref.norm(dim=1).clamp_min(1e-12)
        rows.append({"point": labels[node.name], "node": node.name, "buckets": degree_buckets(degree, rel)})
    return rows


def kept_float_points(quantized: fx.GraphModule, integer: dict[str, Any]) -> list[dict[str, Any]]:
    """The quantize points ``fold-scales`` left in floating point, each with its label and the reason."""
    annotated = [n for n in quantized.graph.nodes if QSPEC_KEY in n.meta and ROLE_KEY in n.meta]
    labels = point_labels(annotated)
    by_name = {n.name: n for n in quantized.graph.nodes}
    overflowed = set(integer.get("overflow_kept_float", []))
    rows = []
    for name in integer.get("kept_float", []):
        q = by_name.get(name)
        source_name = q.meta.get(SOURCE_KEY, name) if q is not None else name
        source = by_name.get(source_name)
        role = source.meta[ROLE_KEY].value if source is not None and ROLE_KEY in source.meta else None
        if name in overflowed:
            reason = "its int32 accumulator could overflow (kept float by --int-overflow float)"
        elif role == "input":
            reason = "the model input arrives in float: it is quantized once, at the start"
        elif role == "edge_weight" and _from_structure(source):
            reason = "computed in float from the graph structure (e.g. GCN's normalisation), quantized once per graph"
        else:
            op = _op_name(source)
            reason = (
                f"its input ({op}) is not one integer tensor times a scale (e.g. an add of differently "
                "scaled tensors, a softmax), so it stays a float quantize"
            )
        rows.append({"node": source_name, "label": labels.get(source_name, source_name), "reason": reason})
    return rows


def _from_structure(node: fx.Node | None) -> bool:
    """Whether ``node`` depends on no feature input: only on the graph structure and constants."""
    if node is None:
        return False
    seen, stack = set(), [node]
    while stack:
        n = stack.pop()
        if n.name in seen:
            continue
        seen.add(n.name)
        if (
            n.op == "placeholder"
            and n.name != "edge_index"
            and n.meta.get(ROLE_KEY) is not None
            and n.meta[ROLE_KEY].value in ("input", "preprocess")
        ):
            return False
        stack.extend(n.all_input_nodes)
    return True


def _op_name(node: fx.Node | None) -> str:
    if node is None:
        return "unknown op"
    target = node.target
    name = getattr(target, "__name__", str(target))
    overload = getattr(target, "_schema", None)
    if overload is not None:
        name = overload.name.split("::")[-1]
    return name
