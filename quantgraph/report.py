"""Render a compile report as a rich table."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def _db(value: float) -> str:
    """One decimal; a value that rounds to zero prints as 0.0, not -0.0."""
    text = f"{value:.1f}"
    return "0.0" if text == "-0.0" else text


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.2f}%"


def _bits_label(report: dict[str, Any]) -> str:
    mixq, sgquant = report.get("mixq"), report.get("sgquant")
    if sgquant and sgquant.get("memory"):
        return f"SGQuant bits (memory ÷{sgquant['memory']['reduction']:.2f})"
    return f"mixed bits (mean {mixq['average_bits']:.2f})" if mixq else f"{report.get('bits')} bits"


def _labels(report: dict[str, Any]) -> dict[str, str]:
    """Node name -> ``layer L · role`` label of every quantization point."""
    return {p["node"]: p["label"] for p in report.get("points", [])}


def accuracy_note(report: dict[str, Any]) -> str | None:
    """Why the IR's and the runtime's accuracy differ, when they do (one output step per differing row)."""
    acc, onnx = report.get("accuracy", {}), report.get("onnx", {})
    ir, ort = acc.get("quantized"), acc.get("onnx")
    if ir is None or ort is None or abs(ir - ort) < 1e-9:
        return None
    saturation = onnx.get("int8_saturation", {}).get("warning")
    if saturation:
        return f"IR {_pct(ir)} vs onnxruntime {_pct(ort)}: {saturation}."
    agreement = onnx.get("argmax_agreement")
    step = onnx.get("max_abs_error")
    return (
        f"IR {_pct(ir)} vs onnxruntime {_pct(ort)}: the two disagree on "
        f"{_pct(1 - agreement) if agreement is not None else 'some'} of the predictions. onnxruntime can "
        f"round a tie differently from PyTorch, which moves a value by one step of a quantizer "
        f"(largest output difference {step:.3g}); where the top two logits are that close, the argmax flips. "
        "On small test sets a few flips move the accuracy by points."
    )


def training_summary(report: dict[str, Any]) -> list[str]:
    """One line per training stage: search (mixq) and QAT (best epoch, validation accuracy, time)."""
    lines = []
    mixq = report.get("mixq")
    if mixq and "search_val_acc" in mixq:
        lines.append(
            f"bit search: {mixq['search_epochs']} epochs, λ = {mixq['lambda']}, validation accuracy "
            f"{_pct(mixq['search_val_acc'])} at the last epoch, {mixq.get('search_seconds', 0):.1f} s"
        )
    qat = report.get("qat")
    if qat:
        lines.append(
            f"QAT: kept epoch {qat['best_epoch']} of {qat['epochs_run']} (best validation accuracy "
            f"{_pct(qat['val_acc'])}), {qat['seconds']:.1f} s"
        )
    a2q = report.get("a2q")
    if a2q:
        avg, mem = a2q["average_bits"], a2q["memory_bytes"]
        lines.append(
            f"A²Q: average bits {avg['a2q_convention']:.2f} (A²Q convention), {avg['stored']:.2f} stored; "
            f"features {mem['features'] / 1024:.1f} KB (÷{mem['vs_int8']:.2f} vs INT8, ÷{mem['vs_fp32']:.2f} vs FP32)"
        )
        for layer in a2q["layers"]:
            by_degree = ", ".join(
                f"{r['in_degree']}: {r['mean_bits']:.2f}" for r in layer["bits_by_in_degree"]
            )
            lines.append(f"A²Q bits of {layer['point']} by in-degree: {by_degree}")
    return lines


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
    labels = _labels(report)
    mixq = report.get("mixq")
    if mixq:
        table.add_row("average bits (mixq, mean over points)", "32", f"{mixq['average_bits']:.2f}")
        for point in mixq["points"]:
            label = labels.get(point["node"], f"{point['node']} ({point['role']})")
            table.add_row(f"  bits {label}", "", str(point["bits"]))
    bitops = report.get("bitops")
    if bitops:
        table.add_row(
            "BitOPs (linear + aggregation)",
            f"{bitops['fp32_bitops']:.3g}",
            f"{bitops['bitops']:.3g} (÷{bitops['reduction']:.1f})",
        )
        mixq_bitops = bitops.get("mixq_convention")
        if mixq_bitops:
            table.add_row(
                "BitOPs (MixQ-GNN: ops × mean module bits)",
                f"{mixq_bitops['fp32_bitops']:.3g}",
                f"{mixq_bitops['bitops']:.3g} (÷{mixq_bitops['reduction']:.1f})",
            )
    average = report.get("average_bits")
    if average:
        table.add_row("average bits (ours: over quantized elements)", "32", f"{average['elements']:.2f}")
        table.add_row("average bits (A²Q: layers' node features)", "32", f"{average['a2q']:.2f}")
        table.add_row("average bits (SGQuant: memory of all tensors)", "32", f"{average['sgquant']:.2f}")
    integer = report.get("integer")
    if integer:
        folded = len(integer["folded"])
        table.add_row(
            "integer requantize points (activations)",
            "",
            f"{folded} of {folded + len(integer['kept_float'])}",
        )
        for kept in integer.get("kept_float_points", []):
            table.add_row(f"  stays float: {kept['label']}", "", "float")
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
        if row.get("sqnr_db") is None:
            continue  # no measurable error (never the integer backends' real points; see points)
        label = row.get("label") or f"layer {row['layer']} · {row['role']}"
        table.add_row(f"SQNR {label}", "", f"{_db(row['sqnr_db'])} dB")
    console.print(table)
    note = accuracy_note(report) or report.get("onnx", {}).get("int8_saturation", {}).get("warning")
    if note:
        console.print(note, highlight=False)
    for line in training_summary(report):
        console.print(line, highlight=False)
    seconds = report.get("pass_seconds", {})
    console.print(
        "passes: "
        + " → ".join(
            f"{name} ({seconds[name]:.2f} s)" if name in seconds else name
            for name in report.get("passes", [])
        ),
        highlight=False,
    )
