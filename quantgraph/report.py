"""Render a compile report as a rich table."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.2f}%"


def _bits_label(report: dict[str, Any]) -> str:
    mixq = report.get("mixq")
    return f"mixed bits (mean {mixq['average_bits']:.2f})" if mixq else f"{report.get('bits')} bits"


def render_report(report: dict[str, Any], console: Console) -> None:
    """Print FP32 vs quantized accuracy, ONNX checks, sizes and per-layer SQNR."""
    acc = report.get("accuracy", {})
    size = report.get("size_bytes", {})
    onnx = report.get("onnx", {})
    title = f"quantgraph · policy {report.get('policy')} · {_bits_label(report)} · {report.get('dataset')}"
    table = Table(title=title, show_lines=False)
    table.add_column("metric")
    table.add_column("FP32", justify="right")
    table.add_column("quantized", justify="right")
    table.add_row(
        f"accuracy ({acc.get('split', 'test')}, IR)", _pct(acc.get("fp32")), _pct(acc.get("quantized"))
    )
    if "onnx" in acc:
        table.add_row("accuracy (onnxruntime)", "", _pct(acc.get("onnx")))
    if "native" in acc:
        table.add_row("accuracy (native kernels)", "", _pct(acc.get("native")))
    if size:
        ratio = size["fp32"] / size["quantized"] if size.get("quantized") else 0.0
        table.add_row(
            "model size (bytes)", f"{size['fp32']:,}", f"{size['quantized']:,} ({ratio:.2f}× smaller)"
        )
    if onnx:
        table.add_row("ONNX vs IR max |error|", "", f"{onnx['max_abs_error']:.3g}")
        table.add_row("ONNX vs IR argmax agreement", "", _pct(onnx["argmax_agreement"]))
    table.add_row("quantization points", "", str(report.get("quantization_points", 0)))
    mixq = report.get("mixq")
    if mixq:
        table.add_row("average bits (mixq, mean over points)", "32", f"{mixq['average_bits']:.2f}")
        for point in mixq["points"]:
            table.add_row(f"  bits {point['node']} ({point['role']})", "", str(point["bits"]))
    bitops = report.get("bitops")
    if bitops:
        table.add_row(
            "BitOPs (linear + aggregation)",
            f"{bitops['fp32_bitops']:.3g}",
            f"{bitops['bitops']:.3g} (÷{bitops['reduction']:.1f})",
        )
    integer = report.get("integer")
    if integer:
        folded = len(integer["folded"])
        table.add_row("integer requantize points", "", f"{folded} of {folded + len(integer['kept_float'])}")
        table.add_row(
            "max int32 accumulator bound", "", f"{integer['max_accumulator_bound']:,} (≤ 2,147,483,647)"
        )
        table.add_row("integers equal float64 reference", "", str(integer["reference_check"]["equal"]))
    if "integer_tensors" in onnx:
        check = onnx["integer_tensors"]
        table.add_row("onnxruntime integers equal IR", "", f"{check['equal']} ({check['compared']} tensors)")
    native = report.get("native")
    if native:
        check = native["integer_tensors"]
        table.add_row("native integers equal IR", "", f"{check['equal']} ({check['compared']} tensors)")
        table.add_row("native vs IR max |error|", "", f"{native['max_abs_error']:.3g}")
        steps = native["feature_steps"]
        table.add_row("native kernel steps / ATen steps", "", f"{steps['native']} / {steps['aten']}")
    for row in report.get("per_layer_sqnr", []):
        sqnr = "∞" if row["sqnr_db"] is None else f"{row['sqnr_db']:.1f} dB"
        table.add_row(f"SQNR layer {row['layer']} ({row['role']})", "", sqnr)
    console.print(table)
    console.print("passes: " + " → ".join(report.get("passes", [])))
