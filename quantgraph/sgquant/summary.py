"""Printing the SGQuant section of a compile report: chosen bits, memory reduction, the ABS Pareto front."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def bits_table(info: dict[str, Any]) -> list[tuple[str, str]]:
    """(layer · component, bits) rows: per-tensor bits, and per bucket where points are bucketed."""
    groups: dict[tuple[int, str], dict[str, set]] = {}
    fp32 = set(info.get("fp32_points", ()))
    for name, point in info.get("bits", {}).items():
        if name in fp32:
            continue
        row = groups.setdefault((point["layer"], point["component"]), {"tensor": set(), "buckets": set()})
        bits = point["bits"]
        (row["buckets"] if isinstance(bits, list) else row["tensor"]).add(
            tuple(bits) if isinstance(bits, list) else bits
        )
    rows = []
    for (layer, comp), row in sorted(groups.items()):
        parts = []
        if row["tensor"]:
            parts.append("/".join(str(b) for b in sorted(row["tensor"])) + " (per tensor)")
        for buckets in sorted(row["buckets"]):
            parts.append("buckets " + " ".join(f"b{i}={b}" for i, b in enumerate(buckets)))
        rows.append((f"layer {layer} · {comp}", "; ".join(parts)))
    return rows


def render_sgquant(report: dict[str, Any], console: Console) -> None:
    info = report.get("sgquant")
    if not info:
        return
    table = Table(title=f"SGQuant bits · config {info.get('config')}")
    table.add_column("layer · component")
    table.add_column("bits")
    for key, bits in bits_table(info):
        table.add_row(key, bits)
    buckets = info.get("buckets")
    if buckets:
        table.add_row("degree buckets", f"in-degree boundaries {buckets['boundaries']} ({buckets['map']})")
    if info.get("fp32_points"):
        table.add_row("kept FP32", "softmax denominators: " + ", ".join(info["fp32_points"]))
    console.print(table)
    memory = info.get("memory")
    if memory:
        mem = Table(title="memory (every stored tensor of inference, SGQuant's count)")
        for col in ("tensors", "FP32 Mbit", "quantized Mbit", "reduction"):
            mem.add_column(col, justify="right" if col != "tensors" else "left")
        mem.add_row(
            "all",
            f"{memory['fp32_mbit']:.3f}",
            f"{memory['quantized_mbit']:.3f}",
            f"{memory['reduction']:.2f}×",
        )
        parts = dict(memory["by_component"])
        if (memory.get("input_features") or {}).get("fp32_bits"):
            parts["of which input features"] = memory["input_features"]
        for name, part in parts.items():
            mem.add_row(
                name, f"{part['fp32_mbit']:.3f}", f"{part['quantized_mbit']:.3f}", f"{part['reduction']:.2f}×"
            )
        console.print(mem)
    search = info.get("abs")
    if search:
        budget = search["budget"]
        parts = []
        if budget["memory_target"] is not None:
            parts.append(f"memory target {budget['memory_target']:g}×")
        if budget["accuracy_tolerance"] is not None:
            parts.append(f"accuracy tolerance {budget['accuracy_tolerance']:g}")
        epochs = search.get("finetune_epochs_per_candidate", 0)
        if search.get("refined"):
            parts.append(f"{search['refined']} Pareto points fine-tuned {epochs} epochs")
        elif epochs:
            parts.append(f"{epochs} fine-tuning epochs per candidate")
        what = ", ".join(parts)
        front = Table(
            title=f"ABS Pareto front ({search['evaluated']} validation evaluations, {what}; "
            f"FP32 val {100 * search['fp32']['val_acc']:.2f}%)"
        )
        for col in ("", "Mbit", "reduction", "val acc", "config"):
            front.add_column(col)
        refined = bool(search.get("refined"))
        chosen = search["chosen"]["config"]
        for point in search["pareto_front"]:
            front.add_row(
                "chosen" if point["config"] == chosen else "",
                f"{point['memory_bits'] / 1e6:.3f}",
                f"{point['reduction']:.2f}×",
                f"{100 * point['val_acc']:.2f}%"
                + (" (fine-tuned)" if refined and point.get("refined") else ""),
                point["config"],
            )
        console.print(front)
        if search["chosen"]["config"] not in {p["config"] for p in search["pareto_front"]}:
            console.print(f"chosen (within budget): {search['chosen']['config']}")
        drop = 100 * search.get("val_drop", 0.0)
        side = "below" if drop >= 0 else "above"
        console.print(
            f"chosen: validation {100 * search['chosen']['val_acc']:.2f}% ({abs(drop):.2f} points {side} FP32)"
        )
        if not search["met"]:
            console.print(
                f"accuracy tolerance {budget['accuracy_tolerance']:g} NOT met: no evaluated configuration"
                + (" within the memory budget" if budget["memory_target"] is not None else "")
                + " is that close to FP32 on validation; the most accurate one was kept"
            )
    final = info.get("final")
    if final:
        console.print(
            f"after QAT: validation {100 * final['val_acc']:.2f}% (FP32 {100 * final['fp32_val_acc']:.2f}%, "
            f"drop {100 * final['val_drop']:.2f} points)"
            + ("" if final.get("tolerance_met") is None else f"; tolerance met: {final['tolerance_met']}")
        )
