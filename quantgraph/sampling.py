"""Seeded node-induced subgraph samples for calibration (``compile --calibration-sample N``).

A sample is drawn like a GraphSAINT/ClusterGCN training subgraph and used like NNCF's ``subset_size``:

1. pick ``N`` *seed* nodes uniformly without replacement (``numpy.random.default_rng(seed)``);
2. add their in-neighbourhood up to ``hops`` hops (the sources of edges into the nodes reached so far);
3. keep every edge whose two ends are kept (the node-induced subgraph), renumbered in global id order.

With ``hops`` equal to the model's number of message-passing layers every seed's receptive field is
complete, so its rows in every layer see the values they see on the whole graph; rows further out see a
truncated neighbourhood (and degree normalisations of the outer ring differ). Labels and the
train/val/test masks are restricted to the kept nodes. ``N`` at or above the node count keeps the whole
graph (``clamped`` in the summary), as NNCF uses the whole data set when ``subset_size`` exceeds it.

Only ``edge_index`` (read ``hops + 1`` times) and the kept rows of ``x`` are touched, so ``x`` may be a
memory-mapped array that never fits in memory as a whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from quantgraph.data import GraphData
from quantgraph.errors import InputError


@dataclass
class Sample:
    """A sampled subgraph and what was drawn (``summary`` goes into the compile report)."""

    data: GraphData
    nodes: np.ndarray  # global ids of the kept nodes (ascending)
    seeds: np.ndarray  # global ids of the seed nodes (ascending)
    summary: dict[str, Any]


def check_sample_size(requested: Any) -> int:
    """``requested`` as a positive int, or an InputError in one line."""
    if isinstance(requested, bool) or not isinstance(requested, (int, np.integer)) or requested <= 0:
        raise InputError(
            f"--calibration-sample must be a positive number of seed nodes, got {requested!r}",
            "pass --calibration-sample N with N >= 1 (leave it out to calibrate on the whole graph)",
        )
    return int(requested)


def sample_nodes(
    edge_index: np.ndarray, num_nodes: int, requested: int, hops: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(kept node ids, seed ids), both ascending: ``requested`` seeds and their ``hops``-hop in-neighbourhood."""
    requested = check_sample_size(requested)
    if hops < 0:
        raise InputError(f"the sample hop count must be >= 0, got {hops}", "pass --sample-hops H with H >= 0")
    count = min(requested, num_nodes)
    rng = np.random.default_rng(seed)
    seeds = np.sort(rng.choice(num_nodes, size=count, replace=False)).astype(np.int64)
    src, dst = np.asarray(edge_index[0]), np.asarray(edge_index[1])
    kept = np.zeros(num_nodes, dtype=bool)
    kept[seeds] = True
    frontier = kept.copy()
    for _ in range(hops):
        reached = np.zeros(num_nodes, dtype=bool)
        reached[src[frontier[dst]]] = True
        frontier = reached & ~kept
        if not frontier.any():
            break
        kept |= frontier
    return np.flatnonzero(kept).astype(np.int64), seeds


def induced_edges(edge_index: np.ndarray, nodes: np.ndarray, num_nodes: int) -> np.ndarray:
    """The edges with both ends in ``nodes`` (ascending ids), renumbered to positions in ``nodes``."""
    position = np.full(num_nodes, -1, dtype=np.int64)
    position[nodes] = np.arange(len(nodes), dtype=np.int64)
    src, dst = np.asarray(edge_index[0]), np.asarray(edge_index[1])
    keep = (position[src] >= 0) & (position[dst] >= 0)
    return np.stack([position[src[keep]], position[dst[keep]]])


def sample_subgraph(data: GraphData, requested: int, hops: int, seed: int = 0) -> Sample:
    """The seeded node-induced sample of ``data`` (see the module docs)."""
    if data.batch is not None:
        raise InputError(
            "--calibration-sample samples nodes of one graph, but this data set is a batch of graphs",
            "leave --calibration-sample out for graph-classification data",
        )
    edge_index = data.edge_index.numpy()
    nodes, seeds = sample_nodes(edge_index, data.num_nodes, requested, hops, seed)
    edges = induced_edges(edge_index, nodes, data.num_nodes)
    index = torch.from_numpy(nodes)

    def rows(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t[index]

    sub = GraphData(
        x=data.x[index],
        edge_index=torch.from_numpy(edges).to(data.edge_index.dtype),
        y=rows(data.y),
        train_mask=rows(data.train_mask),
        val_mask=rows(data.val_mask),
        test_mask=rows(data.test_mask),
        name=f"{data.name} (sample of {len(seeds)} seeds, {hops} hops)",
    )
    summary: dict[str, Any] = {
        "requested": int(requested),
        "seeds": len(seeds),
        "hops": int(hops),
        "seed": int(seed),
        "clamped": int(requested) > data.num_nodes,
        "nodes": len(nodes),
        "edges": int(edges.shape[1]),
        "graph_nodes": data.num_nodes,
        "graph_edges": data.num_edges,
        "node_fraction": round(len(nodes) / max(data.num_nodes, 1), 6),
        "edge_fraction": round(int(edges.shape[1]) / max(data.num_edges, 1), 6),
    }
    for split in ("train", "val"):
        mask = getattr(sub, f"{split}_mask")
        if mask is not None:
            summary[f"{split}_nodes"] = int(mask.sum())
    if summary["clamped"]:
        summary["note"] = (
            f"{requested} seeds asked for, the graph has {data.num_nodes} nodes: the whole graph is the sample"
        )
    return Sample(sub, nodes, seeds, summary)


def qparams_range(scale: torch.Tensor, zero_point: torch.Tensor, qmin: torch.Tensor, qmax: torch.Tensor):
    """The float range ``[(qmin - zp) * s, (qmax - zp) * s]`` a set of parameters represents."""
    s = scale.double()
    return (qmin.double() - zero_point.double()) * s, (qmax.double() - zero_point.double()) * s


def _values(t: torch.Tensor) -> float | list[float]:
    return round(float(t), 8) if t.dim() == 0 else [round(float(v), 8) for v in t.reshape(-1)]


def compare_ranges(sampled: dict[str, Any], full: dict[str, Any], roles: dict[str, str]) -> dict[str, Any]:
    """Per quantization point (name -> QParams), the sampled vs full scale and range, and a summary.

    ``relative_scale_difference`` of a point is ``max |s_sample - s_full| / s_full`` over its channels or
    groups (0 when the sample gives the full graph's parameters).
    """
    points = []
    for name in sorted(set(sampled) & set(full)):
        a, b = sampled[name], full[name]
        if a.scale.shape != b.scale.shape:
            continue
        rel = ((a.scale.double() - b.scale.double()).abs() / b.scale.double()).max()
        lo_a, hi_a = qparams_range(a.scale, a.zero_point, a.qmin, a.qmax)
        lo_b, hi_b = qparams_range(b.scale, b.zero_point, b.qmin, b.qmax)
        points.append(
            {
                "point": name,
                "role": roles.get(name, ""),
                "sample_scale": _values(a.scale),
                "full_scale": _values(b.scale),
                "sample_range": [_values(lo_a), _values(hi_a)],
                "full_range": [_values(lo_b), _values(hi_b)],
                "relative_scale_difference": round(float(rel), 8),
            }
        )
    activations = [p for p in points if p["role"] != "weight"]
    worst = max(activations, key=lambda p: p["relative_scale_difference"], default=None)
    if worst is not None and worst["relative_scale_difference"] == 0:
        worst = None  # nothing differs
    diffs = [p["relative_scale_difference"] for p in activations]
    return {
        "points": points,
        "summary": {
            "compared_points": len(points),
            "activation_points": len(activations),
            "max_relative_scale_difference": worst["relative_scale_difference"] if worst else 0.0,
            "worst_point": worst["point"] if worst else None,
            "mean_relative_scale_difference": round(float(np.mean(diffs)), 8) if diffs else 0.0,
        },
    }
