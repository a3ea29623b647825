"""A²Q's report: bits per node against in-degree, average bits in two conventions, feature memory.

* ``a2q_convention``: as the official ``analysis_bit``: the mean over node-feature layers of each layer's
  mean bits, minus the sign bit where the layer's features are non-negative (post-ReLU, 0/1 inputs).
* ``stored``: the bits our integers are stored with (sign included), averaged over every node-feature value
  of every quantized layer (memory-weighted). Features a model reads unquantized count at 32 bits in
  ``stored_all_features``.
* Memory of the node features at their learned bits, against INT8 and FP32 storage of the same values.
* Per layer, ``spearman_bits_in_degree``: how strongly the learned bits rank with in-degree.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

#: In-degree buckets of the bits-against-degree table: [lo, hi) (the last one open).
DEGREE_EDGES = (0, 1, 2, 3, 4, 6, 8, 12, 16, 32, 64)


def in_degree(edge_index: Tensor, num_nodes: int) -> Tensor:
    return torch.bincount(edge_index[1], minlength=num_nodes)


def bits_by_degree(bits: Tensor, degree: Tensor) -> list[dict[str, Any]]:
    """Mean bits and node count per in-degree bucket (empty buckets left out)."""
    rows = []
    edges = [*DEGREE_EDGES, None]
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        mask = degree >= lo if hi is None else (degree >= lo) & (degree < hi)
        if bool(mask.any()):
            label = f"{lo}+" if hi is None else (str(lo) if hi == lo + 1 else f"{lo}-{hi - 1}")
            rows.append(
                {
                    "in_degree": label,
                    "nodes": int(mask.sum()),
                    "mean_bits": round(float(bits[mask].mean()), 3),
                }
            )
    return rows


def degree_by_bits(bits: Tensor, degree: Tensor) -> dict[str, dict[str, float]]:
    """For each learned bitwidth: how many nodes use it and their mean in-degree (official analysis_bit)."""
    out = {}
    for b in sorted({int(v) for v in bits.tolist()}):
        mask = bits == b
        out[str(b)] = {
            "nodes": int(mask.sum()),
            "mean_in_degree": round(float(degree[mask].float().mean()), 3),
        }
    return out


def layer_summary(name: str, bits: Tensor, width: int, non_negative: bool, degree: Tensor) -> dict[str, Any]:
    bits = bits.detach().float().reshape(-1)
    mean = float(bits.mean())
    return {
        "point": name,
        "rows": int(bits.numel()),
        "width": width,
        "non_negative": non_negative,
        "mean_bits": round(mean, 4),
        "a2q_convention_bits": round(mean - (1.0 if non_negative else 0.0), 4),
        "bits_histogram": {str(int(b)): int((bits == b).sum()) for b in bits.unique().tolist()},
        "bits_by_in_degree": bits_by_degree(bits, degree),
        "in_degree_by_bits": degree_by_bits(bits, degree),
        "spearman_bits_in_degree": spearman(bits, degree),
    }


def spearman(bits: Tensor, degree: Tensor) -> float | None:
    """Spearman rank correlation of a node's bits with its in-degree (A²Q's claim: positive); None when
    every node has the same bits (no ranking to correlate)."""
    from scipy.stats import spearmanr

    b, d = bits.double().reshape(-1).numpy(), degree.double().reshape(-1).numpy()
    if b.size < 2 or b.min() == b.max() or d.min() == d.max():
        return None
    return round(float(spearmanr(b, d).statistic), 4)


def a2q_summary(layers: list[dict[str, Any]], unquantized_values: int = 0) -> dict[str, Any]:
    """Average bits (both conventions) and memory from :func:`layer_summary` rows."""
    values = sum(layer["rows"] * layer["width"] for layer in layers)
    stored_bits = sum(layer["mean_bits"] * layer["rows"] * layer["width"] for layer in layers)
    feature_bytes = stored_bits / 8.0
    return {
        "layers": layers,
        "average_bits": {
            "a2q_convention": round(sum(la["a2q_convention_bits"] for la in layers) / max(len(layers), 1), 4),
            "stored": round(stored_bits / max(values, 1), 4),
            "stored_all_features": round(
                (stored_bits + 32.0 * unquantized_values) / max(values + unquantized_values, 1), 4
            ),
        },
        "memory_bytes": {
            "features": round(feature_bytes, 1),
            "int8": values,
            "fp32": 4 * values,
            "vs_int8": round(values / max(feature_bytes, 1e-9), 3),
            "vs_fp32": round(4 * values / max(feature_bytes, 1e-9), 3),
        },
    }
