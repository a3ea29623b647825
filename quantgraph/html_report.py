"""The HTML report: one self-contained file (inline SVG plots from matplotlib, inline CSS, no scripts).

``write_html(report, path)`` renders a compile report (the JSON of ``quantgraph compile --report``);
``write_compare_html(reports, names, path)`` puts several side by side. Sections carry stable ids
(``summary``, ``pipeline``, ``points``, ``kept-float``, ``degree``, ``bits-degree``, ``training``,
``compare``, ``pareto``) so tests and readers can find them.
"""

from __future__ import annotations

import html
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from quantgraph.errors import InputError
from quantgraph.fileio import atomic_write_bytes

INSTALL_HINT = "install it with `pip install matplotlib` (or `pip install -e '.[report]'`)"

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.2rem; margin-top: 2rem; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: .5rem 0; font-size: .9rem; }
th, td { border: 1px solid #ddd; padding: .25rem .6rem; text-align: right; }
th { background: #f4f4f4; } td:first-child, th:first-child { text-align: left; }
.note { color: #555; font-size: .9rem; max-width: 60rem; } figure { margin: .5rem 0; }
svg { max-width: 100%; height: auto; }
"""


#: labels of the bit conventions a report may carry (``bitops.<key>``, ``average_bits.<key>``)
_CONVENTIONS = {
    "mixq_convention": "MixQ-GNN: ops × mean module bits",
    "elements": "ours: over quantized elements",
    "a2q": "A²Q: layers' node features",
    "sgquant": "SGQuant: memory of all tensors",
    "points": "plain mean over points",
}


def read_report(path: str | Path) -> dict[str, Any]:
    """A compile report JSON, or one clear error."""
    path = Path(path)
    if not path.is_file():
        raise InputError(
            f"report {path} does not exist", "write one with `quantgraph compile ... --report FILE`"
        )
    try:
        report = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(
            f"{path} is not JSON ({err})", "pass the report JSON of `quantgraph compile`"
        ) from err
    if not isinstance(report, dict) or "policy" not in report or "accuracy" not in report:
        raise InputError(f"{path} is not a quantgraph compile report", "pass the JSON of `compile --report`")
    return report


def require_matplotlib() -> None:
    """Raise the one-line install hint when matplotlib is missing."""
    _matplotlib()


def _matplotlib():
    try:
        import matplotlib
    except ImportError as err:
        raise InputError("the HTML report needs matplotlib, which is not installed", INSTALL_HINT) from err
    matplotlib.rcParams.update({"svg.hashsalt": "quantgraph", "svg.fonttype": "none", "font.size": 9})
    from matplotlib.figure import Figure

    return Figure


def _svg(fig: Any) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None, "Creator": None})
    text = buf.getvalue()
    return text[text.index("<svg") :]


def _e(value: Any) -> str:
    return html.escape(str(value))


def _db(value: float) -> str:
    """One decimal; a value that rounds to zero prints as 0.0, not -0.0."""
    text = f"{value:.1f}"
    return "0.0" if text == "-0.0" else text


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.2f}%"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _section(sid: str, title: str, body: str) -> str:
    return f'<section id="{sid}"><h2>{_e(title)}</h2>{body}</section>'


def _page(title: str, sections: Sequence[str]) -> str:
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{_e(title)}</h1>" + "".join(sections) + "</body></html>\n"
    )


def _bits_label(report: dict[str, Any]) -> str:
    mixq = report.get("mixq")
    return f"mixed bits (mean {mixq['average_bits']:.2f})" if mixq else f"{report.get('bits')} bits"


def _runtime_name(report: dict[str, Any]) -> tuple[str, float | None]:
    acc = report.get("accuracy", {})
    if "native" in acc:
        return "native kernels", acc["native"]
    return "onnxruntime", acc.get("onnx")


def _summary(report: dict[str, Any]) -> str:
    from quantgraph.report import accuracy_note, training_summary

    acc, size = report.get("accuracy", {}), report.get("size_bytes", {})
    runtime, runtime_acc = _runtime_name(report)
    split = acc.get("split", "test")
    rows = [
        [f"accuracy ({split})", _pct(acc.get("fp32")), _pct(acc.get("quantized")), _pct(runtime_acc)],
    ]
    if size:
        ratio = size["fp32"] / size["quantized"] if size.get("quantized") else 0
        rows.append(
            ["model size (bytes)", f"{size['fp32']:,}", "", f"{size['quantized']:,} ({ratio:.2f}× smaller)"]
        )
    bitops = report.get("bitops") or {}
    if bitops:
        rows.append(
            [
                "BitOPs (quantgraph: linear + aggregation MACs × operand bits)",
                f"{bitops['fp32_bitops']:.3g}",
                f"{bitops['bitops']:.3g} (÷{bitops['fp32_bitops'] / max(bitops['bitops'], 1):.1f})",
                "",
            ]
        )
    for key, other in bitops.items():  # other conventions (e.g. MixQ-GNN's), whatever key they use
        if isinstance(other, dict) and isinstance(other.get("bitops"), (int, float)):
            fp32 = other.get("fp32_bitops")
            reduction = other.get("reduction")
            rows.append(
                [
                    f"BitOPs ({_CONVENTIONS.get(key, key.replace('_', ' '))})",
                    "" if not isinstance(fp32, (int, float)) else f"{fp32:.3g}",
                    f"{other['bitops']:.3g}"
                    + (f" (÷{reduction:.1f})" if isinstance(reduction, (int, float)) else ""),
                    "",
                ]
            )
    average = report.get("average_bits")
    if isinstance(average, dict):  # average bits in each convention (ours, the papers')
        order = {k: i for i, k in enumerate(_CONVENTIONS)}  # fixed order: a JSON round trip may sort keys
        for key, value in sorted(average.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])):
            if isinstance(value, (int, float)):
                rows.append([f"average bits ({_CONVENTIONS.get(key, key)})", "32", f"{value:.2f}", ""])
    rows.append(["quantization points", "", str(report.get("quantization_points", 0)), ""])
    parts = [
        _table(["", "FP32 (IR)", f"quantized ({_bits_label(report)}, IR)", runtime], rows),
        f'<p class="note">policy <b>{_e(report.get("policy"))}</b> on {_e(report.get("dataset"))}; '
        f"artifact {_e(report.get('output', '—'))}. IR accuracy is the fake-quant reference in PyTorch; the "
        f"last column is the exported model run by {runtime}.</p>",
    ]
    note = accuracy_note(report)
    if note:
        parts.append(f'<p class="note">{_e(note)}</p>')
    for line in training_summary(report):
        parts.append(f'<p class="note">{_e(line)}</p>')
    return _section("summary", "Summary", "".join(parts))


def _pipeline(report: dict[str, Any], Figure: Any) -> str:
    names = report.get("passes", [])
    seconds = report.get("pass_seconds", {})
    rows = [[i + 1, n, f"{seconds.get(n, 0):.3f}"] for i, n in enumerate(names)]
    body = _table(["#", "pass", "seconds"], rows)
    if names:
        fig = Figure(figsize=(7, 0.3 * len(names) + 0.8))
        ax = fig.subplots()
        ax.barh(range(len(names)), [seconds.get(n, 0) for n in names], color="#4c72b0")
        ax.set_yticks(range(len(names)), names)
        ax.invert_yaxis()
        ax.set_xlabel("seconds")
        ax.set_title("time per pass")
        body += f"<figure>{_svg(fig)}</figure>"
    return _section("pipeline", "Pipeline (per-pass time)", body)


def _points(report: dict[str, Any], Figure: Any) -> str:
    points = report.get("points", [])
    if not points:
        return _section("points", "Quantization points", '<p class="note">The policy quantizes nothing.</p>')
    rows = []
    for p in points:
        rng = p.get("range")
        rows.append(
            [
                p["label"],
                p["bits"],
                p.get("granularity", ""),
                "—" if p.get("scale") is None else f"{p['scale']:.4g}",
                "—" if not rng else f"[{rng[0]:.4g}, {rng[1]:.4g}]",
                "exact"
                if p.get("sqnr_db") is None and p.get("max_abs_error") == 0
                else ("—" if p.get("sqnr_db") is None else _db(p["sqnr_db"])),
                "—" if p.get("max_abs_error") is None else f"{p['max_abs_error']:.3g}",
            ]
        )
    body = _table(
        [
            "point (layer · role)",
            "bits",
            "granularity",
            "scale (max)",
            "range",
            "SQNR dB",
            "max |error| vs FP32",
        ],
        rows,
    )
    measured = [p for p in points if p.get("sqnr_db") is not None]
    if measured:
        fig = Figure(figsize=(7, 0.28 * len(measured) + 0.9))
        ax = fig.subplots()
        ax.barh(range(len(measured)), [p["sqnr_db"] for p in measured], color="#55a868")
        ax.set_yticks(range(len(measured)), [f"{p['label']} ({p['bits']}b)" for p in measured])
        ax.invert_yaxis()
        ax.set_xlabel("SQNR against FP32 (dB, higher is better)")
        ax.set_title("error of each quantization point")
        body += f"<figure>{_svg(fig)}</figure>"
    body += (
        '<p class="note">Each point is measured on the Q/DQ form of the IR against the FP32 model on the '
        "compile graph. For QAT policies the error includes the fine-tuning's change of the weights.</p>"
    )
    return _section("points", "Quantization points", body)


def _kept_float(report: dict[str, Any]) -> str:
    integer = report.get("integer")
    if not integer:
        body = (
            '<p class="note">Backend onnx-qdq: every point is a Q/DQ pair around a float op; nothing runs on '
            "integers, so no point is singled out. Compile with <code>--backend onnx-int</code> or "
            "<code>native</code> for integer linear layers and aggregations.</p>"
        )
        return _section("kept-float", "Points that stay float in the integer backends", body)
    kept = integer.get("kept_float_points", [])
    folded = len(integer.get("folded", []))
    body = f'<p class="note">{folded} of {folded + len(integer.get("kept_float", []))} quantize points became integer requantizes.</p>'
    body += _table(["point", "why it stays float"], [[k["label"], k["reason"]] for k in kept]) if kept else ""
    body += f'<p class="note">max int32 accumulator bound {integer.get("max_accumulator_bound", 0):,} (≤ 2,147,483,647).</p>'
    return _section("kept-float", "Points that stay float in the integer backends", body)


def _degree(report: dict[str, Any], Figure: Any) -> str:
    rows = report.get("error_by_degree", [])
    if not rows:
        return _section(
            "degree", "Error by node in-degree", '<p class="note">No aggregation point was quantized.</p>'
        )
    fig = Figure(figsize=(7, 3.2))
    ax = fig.subplots()
    labels = [b["degree"] for b in rows[0]["buckets"]]
    for row in rows:
        ax.plot(
            [b["degree"] for b in row["buckets"]],
            [b["mean"] for b in row["buckets"]],
            marker="o",
            label=row["point"],
        )
    ax.set_xlabel("in-degree")
    ax.set_ylabel("mean relative error ‖q − f‖ / ‖f‖")
    ax.set_title("aggregation error by in-degree")
    ax.legend()
    table = _table(
        ["in-degree", "nodes", *[r["point"] for r in rows]],
        [
            [label, rows[0]["buckets"][i]["nodes"], *[f"{r['buckets'][i]['mean']:.4f}" for r in rows]]
            for i, label in enumerate(labels)
        ],
    )
    note = (
        '<p class="note">High in-degree nodes sum many messages, so their aggregations span wider ranges '
        "and lose more to one shared scale: the effect Degree-Quant, A²Q and SGQuant address.</p>"
    )
    return _section("degree", "Error by node in-degree", f"<figure>{_svg(fig)}</figure>{table}{note}")


def _bits_degree(report: dict[str, Any], Figure: Any) -> str:
    buckets = report.get("degree_buckets")
    if buckets and buckets.get("nodes"):
        return _group_scales(report, buckets, Figure)
    a2q_layers = (report.get("a2q") or {}).get("layers")
    if a2q_layers and any(layer.get("bits_by_in_degree") for layer in a2q_layers):
        return _a2q_bits_degree(a2q_layers, _labels(report), Figure)
    rows = report.get("bits_by_degree")
    if not rows:
        body = (
            f'<p class="note">Policy {_e(report.get("policy"))} gives one bitwidth per quantization point '
            "(not per node or per group), so there is no bits-by-degree curve.</p>"
        )
        return _section("bits-degree", "Bits by in-degree", body)
    fig = Figure(figsize=(7, 3))
    ax = fig.subplots()
    ax.plot([r["degree"] for r in rows], [r["mean_bits"] for r in rows], marker="o")
    ax.set_xlabel("in-degree")
    ax.set_ylabel("mean bits")
    return _section("bits-degree", "Bits by in-degree", f"<figure>{_svg(fig)}</figure>")


def _labels(report: dict[str, Any]) -> dict[str, str]:
    """Node name -> ``layer L · role`` label of every quantization point."""
    return {p["node"]: p["label"] for p in report.get("points", [])}


def _a2q_bits_degree(layers: list[dict[str, Any]], labels: dict[str, str], Figure: Any) -> str:
    """A²Q's learned per-node bits: mean bits per in-degree bucket of each node-feature point."""
    order: list[str] = []
    for layer in layers:
        order += [r["in_degree"] for r in layer.get("bits_by_in_degree", []) if r["in_degree"] not in order]
    fig = Figure(figsize=(7, 3.2))
    ax = fig.subplots()
    cells: dict[str, dict[str, str]] = {d: {} for d in order}
    for layer in layers:
        rows = layer.get("bits_by_in_degree", [])
        ax.plot(
            [order.index(r["in_degree"]) for r in rows],
            [r["mean_bits"] for r in rows],
            marker="o",
            label=labels.get(layer["point"], layer["point"]),
        )
        for r in rows:
            cells[r["in_degree"]][layer["point"]] = f"{r['mean_bits']:.2f} ({r['nodes']})"
    ax.set_xticks(range(len(order)), order)
    ax.set_xlabel("in-degree")
    ax.set_ylabel("mean learned bits")
    ax.set_title("A²Q: learned bits per node against in-degree")
    ax.legend(fontsize=7)
    names = [layer["point"] for layer in layers]
    table = _table(
        ["in-degree", *[f"{labels.get(n, n)}: mean bits (nodes)" for n in names]],
        [[d, *[cells[d].get(n, "—") for n in names]] for d in order],
    )
    return _section(
        "bits-degree", "Bits by in-degree (per node, A²Q)", f"<figure>{_svg(fig)}</figure>{table}"
    )


def _bucket_labels(boundaries: Sequence[int]) -> list[str]:
    edges = [0, *boundaries]
    labels = [
        f"{lo}–{hi - 1}" if hi - 1 > lo else str(lo) for lo, hi in zip(edges[:-1], edges[1:], strict=True)
    ]
    return [*labels, f"{edges[-1]}+"]


def _group_scales(report: dict[str, Any], buckets: dict[str, Any], Figure: Any) -> str:
    """Per-group (``degree-buckets``) points: bits and scale of each in-degree bucket."""
    labels = {p["node"]: p["label"] for p in report.get("points", [])}
    quant = report.get("quantization", {})
    names = _bucket_labels(buckets["boundaries"])
    fig = Figure(figsize=(7, 3.2))
    ax = fig.subplots()
    rows = []
    for node in buckets["nodes"]:
        q = quant.get(node, {})
        scales = q.get("scale")
        if not isinstance(scales, list) or len(scales) != len(names):
            continue
        ax.plot(names, scales, marker="o", label=labels.get(node, node))
        rows.append([labels.get(node, node), q.get("bits"), *[f"{v:.4g}" for v in scales]])
    ax.set_xlabel("in-degree bucket")
    ax.set_ylabel("scale")
    ax.set_yscale("log")
    ax.set_title("per-group scale by in-degree (same bits in every group)")
    if rows:
        ax.legend(fontsize=7)
    table = _table(["point", "bits (every group)", *[f"scale, degree {n}" for n in names]], rows)
    note = (
        '<p class="note">degree-buckets gives each in-degree bucket its own scale and zero point at the '
        "same bitwidth; bits do not vary with in-degree in this policy.</p>"
    )
    return _section(
        "bits-degree", "Bits and scale by in-degree (per-group)", f"<figure>{_svg(fig)}</figure>{table}{note}"
    )


def _curves(ax: Any, history: list[dict[str, float]], best: int | None, title: str) -> None:
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["loss"] for h in history], color="#c44e52", label="train loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("train loss")
    ax2 = ax.twinx()
    ax2.plot(epochs, [h["val_acc"] for h in history], color="#4c72b0", label="validation accuracy")
    ax2.set_ylabel("validation accuracy")
    if best:
        ax.axvline(best, color="#555", linestyle="--", label=f"chosen epoch {best}")
    ax.set_title(title)
    lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(lines, [line.get_label() for line in lines], loc="center right")


def _bit_choices(report: dict[str, Any], Figure: Any) -> str:
    """The search's bit choices per point and epoch: most likely bits (a map) and expected bits (lines)."""
    import matplotlib
    from matplotlib.colors import BoundaryNorm, ListedColormap

    labels = {p["node"]: p["label"] for p in report.get("points", [])}
    mixq = report["mixq"]
    pts = [p for p in mixq["points"] if p.get("bits_by_epoch")]
    names = [labels.get(p["node"], p["node"]) for p in pts]
    epochs = len(pts[0]["bits_by_epoch"])
    cands = sorted({*mixq.get("candidates", []), *(b for p in pts for b in p["bits_by_epoch"])})
    viridis = matplotlib.colormaps["viridis"]
    cmap = ListedColormap([viridis(0.15 + 0.75 * i / max(len(cands) - 1, 1)) for i in range(len(cands))])
    edges = [
        cands[0] - 0.5,
        *[(a + b) / 2 for a, b in zip(cands[:-1], cands[1:], strict=True)],
        cands[-1] + 0.5,
    ]
    fig = Figure(figsize=(7, 0.28 * len(pts) + 1.2))
    ax = fig.subplots()
    grid = [p["bits_by_epoch"] for p in pts]
    mesh = ax.pcolormesh(
        [e + 0.5 for e in range(epochs + 1)],
        range(len(pts) + 1),
        grid,
        cmap=cmap,
        norm=BoundaryNorm(edges, cmap.N),
        edgecolors="face",
        linewidth=0.2,
    )
    ax.set_yticks([i + 0.5 for i in range(len(pts))], names)
    ax.invert_yaxis()
    ax.set_xlabel("search epoch")
    ax.set_title("bit choices over the search (most likely bitwidth of each point)")
    bar = fig.colorbar(mesh, ax=ax, ticks=cands, spacing="uniform")
    bar.set_label("bits")
    body = f'<figure id="bit-choices">{_svg(fig)}</figure>'
    if all(p.get("expected_bits_by_epoch") for p in pts):
        fig = Figure(figsize=(7, 3.2))
        ax = fig.subplots()
        for name, p in zip(names, pts, strict=True):
            ax.plot(range(1, epochs + 1), p["expected_bits_by_epoch"], label=name)
        ax.set_xlabel("search epoch")
        ax.set_ylabel("expected bits")
        ax.set_title("expected bitwidth of each point over the search")
        ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5))
        body += f"<figure>{_svg(fig)}</figure>"
    rows = [
        [name, " ".join(str(b) for b in p["bits_by_epoch"]), p["bits"]]
        for name, p in zip(names, pts, strict=True)
    ]
    body += _table(["point", "most likely bits, epoch 1 → last", "kept"], rows)
    return body


def _training(report: dict[str, Any], Figure: Any) -> str:
    from quantgraph.report import training_summary

    qat, mixq = report.get("qat"), report.get("mixq")
    if not qat and not mixq:
        body = f'<p class="note">Policy {_e(report.get("policy"))} trains nothing (post-training quantization).</p>'
        return _section("training", "Training", body)
    body = "".join(f'<p class="note">{_e(line)}</p>' for line in training_summary(report))
    if mixq and mixq.get("search_history"):
        fig = Figure(figsize=(7, 3))
        _curves(fig.subplots(), mixq["search_history"], None, "bit search (the last epoch is kept)")
        body += f"<figure>{_svg(fig)}</figure>"
    if mixq and mixq.get("points"):
        labels = {p["node"]: p["label"] for p in report.get("points", [])}
        pts = mixq["points"]
        cands = mixq.get("candidates", [])
        fig = Figure(figsize=(7, 0.28 * len(pts) + 1))
        ax = fig.subplots()
        left = [0.0] * len(pts)
        for j, bits in enumerate(cands):
            widths = [p["probabilities"][j] if j < len(p["probabilities"]) else 0 for p in pts]
            ax.barh(range(len(pts)), widths, left=left, label=f"{bits} bits")
            left = [a + b for a, b in zip(left, widths, strict=True)]
        ax.set_yticks(range(len(pts)), [f"{labels.get(p['node'], p['node'])} → {p['bits']}b" for p in pts])
        ax.invert_yaxis()
        ax.set_xlabel("probability of each candidate at the end of the search")
        ax.set_title("bit choices of the search")
        ax.legend(loc="lower right")
        body += f"<figure>{_svg(fig)}</figure>"
    if mixq and any(p.get("bits_by_epoch") for p in mixq.get("points", [])):
        body += _bit_choices(report, Figure)
    a2q_history = (report.get("a2q_train") or {}).get("history") or []
    if a2q_history and all(isinstance(h.get("bits"), list) and h["bits"] for h in a2q_history):
        layers = (report.get("a2q") or {}).get("layers") or []
        width = len(a2q_history[0]["bits"])
        labels = _labels(report)
        names = (
            [labels.get(layer["point"], layer["point"]) for layer in layers]
            if len(layers) == width
            else [f"feature point {i}" for i in range(width)]
        )
        fig = Figure(figsize=(7, 3))
        ax = fig.subplots()
        epochs = [h["epoch"] for h in a2q_history]
        for i, name in enumerate(names):
            ax.plot(epochs, [h["bits"][i] if i < len(h["bits"]) else None for h in a2q_history], label=name)
        ax.set_xlabel("epoch")
        ax.set_ylabel("mean bits")
        ax.set_title("bit choices over A²Q training (mean learned bits per point)")
        ax.legend(fontsize=7)
        body += f"<figure>{_svg(fig)}</figure>"
    if qat and qat.get("history"):
        fig = Figure(figsize=(7, 3))
        _curves(fig.subplots(), qat["history"], qat.get("best_epoch"), "quantization-aware training")
        body += f"<figure>{_svg(fig)}</figure>"
    return _section("training", "Training", body)


def _sgquant_pareto(report: dict[str, Any], Figure: Any) -> str:
    """SGQuant's ABS: validation accuracy vs memory of every evaluated configuration, the Pareto front,
    the chosen point and the memory budget (empty when the compile ran no ABS)."""
    search = (report.get("sgquant") or {}).get("abs")
    if not search or not search.get("history"):
        return ""
    fp32 = search["fp32"]
    fig = Figure(figsize=(7, 3.6))
    ax = fig.subplots()
    history, front = search["history"], search["pareto_front"]
    ax.scatter(
        [h["memory_bits"] / 1e6 for h in history],
        [100 * h["val_acc"] for h in history],
        s=14,
        color="0.6",
        label="evaluated",
    )
    ax.plot(
        [p["memory_bits"] / 1e6 for p in front],
        [100 * p["val_acc"] for p in front],
        marker="o",
        drawstyle="steps-post",
        label="Pareto front",
    )
    chosen = search["chosen"]
    ax.scatter(
        [chosen["memory_bits"] / 1e6],
        [100 * chosen["val_acc"]],
        marker="*",
        s=160,
        color="C3",
        zorder=3,
        label="chosen",
    )
    ax.axhline(100 * fp32["val_acc"], color="k", lw=0.8, ls=":", label="FP32 validation")
    limit = search["budget"].get("memory_limit_bits")
    if limit:
        ax.axvline(limit / 1e6, color="C2", lw=0.8, ls="--", label="memory budget")
    refined = [h for h in history if h.get("refined")]
    if refined:
        ax.scatter(
            [h["memory_bits"] / 1e6 for h in refined],
            [100 * h["val_acc"] for h in refined],
            s=30,
            facecolors="none",
            edgecolors="C1",
            label="fine-tuned",
        )
    ax.set_xlabel("memory (Mbit, every stored tensor)")
    ax.set_ylabel("validation accuracy (%)")
    ax.legend(fontsize=8)
    table = _table(
        ["Mbit", "reduction", "val acc", "config"],
        [
            [f"{p['memory_bits'] / 1e6:.3f}", f"{p['reduction']:.2f}×", _pct(p["val_acc"]), p["config"]]
            for p in front
        ],
    )
    epochs = search.get("finetune_epochs_per_candidate", 0)
    how = (
        f" with calibrated ranges; {len(refined)} Pareto points then fine-tuned {epochs} epochs (circled),"
        " the choice among them"
        if refined
        else (f" after {epochs} fine-tuning epochs each" if epochs else " with calibrated ranges")
    )
    note = (
        f'<p class="note">{search["evaluated"]} configurations scored on the validation nodes'
        + how
        + f"; FP32 {fp32['memory_bits'] / 1e6:.3f} Mbit at {_pct(fp32['val_acc'])} validation. Chosen: "
        f"{_e(chosen['config'])}.</p>"
    )
    return _section(
        "sgquant-pareto", "SGQuant ABS: accuracy vs memory", f"<figure>{_svg(fig)}</figure>{table}{note}"
    )


def render_html(report: dict[str, Any]) -> str:
    """The report page as one HTML string."""
    Figure = _matplotlib()
    title = f"quantgraph · {report.get('policy')} · {_bits_label(report)} · {report.get('dataset')}"
    return _page(
        title,
        [
            _summary(report),
            _pipeline(report, Figure),
            _points(report, Figure),
            _kept_float(report),
            _degree(report, Figure),
            _bits_degree(report, Figure),
            _sgquant_pareto(report, Figure),
            _training(report, Figure),
        ],
    )


def write_html(report: dict[str, Any], path: str | Path) -> Path:
    """Render and write atomically."""
    text = render_html(report)
    atomic_write_bytes(path, text.encode("utf-8"))
    return Path(path)


def _average_bits(report: dict[str, Any]) -> float:
    mixq = report.get("mixq")
    if mixq:
        return float(mixq["average_bits"])
    return float(report.get("bitops", {}).get("average_bits") or report.get("bits") or 32)


def _runtime_acc(report: dict[str, Any]) -> float | None:
    acc = report.get("accuracy", {})
    return acc.get("native", acc.get("onnx", acc.get("quantized")))


def pareto(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats (lower cost and higher accuracy), by cost."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def render_compare_html(reports: Sequence[dict[str, Any]], names: Sequence[str]) -> str:
    Figure = _matplotlib()
    rows = []
    for name, r in zip(names, reports, strict=True):
        size = r.get("size_bytes", {})
        rows.append(
            [
                name,
                r.get("policy"),
                f"{_average_bits(r):.2f}",
                _pct(r.get("accuracy", {}).get("fp32")),
                _pct(r.get("accuracy", {}).get("quantized")),
                _pct(_runtime_acc(r)),
                f"{size.get('quantized', 0):,}",
                f"{r.get('bitops', {}).get('bitops', 0):.3g}",
            ]
        )
    table = _table(
        ["report", "policy", "mean bits", "FP32", "quantized (IR)", "runtime", "size (bytes)", "BitOPs"], rows
    )
    accs = [_runtime_acc(r) or 0.0 for r in reports]
    fig = Figure(figsize=(9, 3.4))
    axes = fig.subplots(1, 2)
    for ax, costs, xlabel in (
        (axes[0], [_average_bits(r) for r in reports], "mean bits per quantization point"),
        (axes[1], [r.get("size_bytes", {}).get("quantized", 0) / 1024 for r in reports], "model size (KiB)"),
    ):
        ax.scatter(costs, accs, color="#4c72b0")
        for x, y, name in zip(costs, accs, names, strict=True):
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        front = pareto(list(zip(costs, accs, strict=True)))
        ax.plot([costs[i] for i in front], [accs[i] for i in front], color="#c44e52", label="Pareto front")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("accuracy (exported model)")
        ax.legend(loc="lower right")
    fig.suptitle("accuracy against cost: points on the red line are not beaten on both")
    return _page(
        "quantgraph · compare",
        [
            _section("compare", "Policies side by side", table),
            _section("pareto", "Accuracy vs bits and memory (Pareto)", f"<figure>{_svg(fig)}</figure>"),
        ],
    )


def write_compare_html(reports: Sequence[dict[str, Any]], names: Sequence[str], path: str | Path) -> Path:
    text = render_compare_html(reports, names)
    atomic_write_bytes(path, text.encode("utf-8"))
    return Path(path)
