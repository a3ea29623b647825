"""Input checks for graph tensors: each bad case raises an InputError that names the problem and the fix."""

from __future__ import annotations

import torch

from quantgraph.errors import InputError


def _kind(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return (
            f"a {value.dim()}-D {str(value.dtype).removeprefix('torch.')} tensor of shape {list(value.shape)}"
        )
    return f"a {type(value).__module__}.{type(value).__qualname__}"


def _is_integer(t: torch.Tensor) -> bool:
    return not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool)


def validate_graph(
    x: torch.Tensor,
    edge_index: torch.Tensor,
    expected_features: int | None = None,
    name: str = "graph",
) -> None:
    """Check node features and edges; raise InputError on the first problem found.

    Valid graphs may have isolated nodes, self-loops and no edges at all (as long as there are nodes).
    Any integer dtype is accepted for ``edge_index``; loaders convert it to int64.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or not x.is_floating_point():
        raise InputError(
            f"{name}: node features x must be a 2-D float tensor [num_nodes, num_features], got {_kind(x)}",
            "pass x as a float32 tensor of shape [N, F], e.g. torch.as_tensor(x).float().reshape(N, -1)",
        )
    n, f = x.shape
    if n == 0:
        raise InputError(
            f"{name}: the graph is empty (0 nodes)",
            "pass a graph with at least one node; check that the file or the filtering step produced data",
        )
    if f == 0:
        raise InputError(
            f"{name}: node features x have 0 columns",
            "give every node at least one feature, e.g. a constant 1.0 column",
        )
    if expected_features is not None and f != expected_features:
        raise InputError(
            f"{name}: node features have {f} columns but the model was trained on {expected_features} features",
            f"pass a graph with {expected_features} features per node (the same features the model was trained on)",
        )
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        num_nan = int(torch.isnan(x).sum())
        num_inf = int(torch.isinf(x).sum())
        bad_rows = int((~finite).any(dim=1).sum())
        raise InputError(
            f"{name}: node features contain {num_nan} NaN and {num_inf} Inf values (in {bad_rows} of {n} nodes)",
            "clean or impute the features first, e.g. x = torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)",
        )
    if not isinstance(edge_index, torch.Tensor):
        raise InputError(
            f"{name}: edge_index must be a tensor, got {_kind(edge_index)}",
            "pass edge_index as an int64 tensor of shape [2, E], e.g. torch.as_tensor(edge_index).long()",
        )
    if not _is_integer(edge_index):
        dtype = str(edge_index.dtype).removeprefix("torch.")
        raise InputError(
            f"{name}: edge_index has dtype {dtype} but node indices must be integers (int64 expected)",
            "convert it with edge_index.long() (or edge_index.astype('int64') in NumPy)",
        )
    if edge_index.dim() != 2 or edge_index.shape[0] != 2:
        fix = "pass edge_index with shape [2, E]: row 0 source nodes, row 1 target nodes"
        if edge_index.dim() == 2 and edge_index.shape[1] == 2:
            fix += "; it looks transposed, use edge_index.t().contiguous()"
        raise InputError(f"{name}: edge_index has shape {list(edge_index.shape)}, expected [2, E]", fix)
    if edge_index.numel() == 0:
        return
    lowest = int(edge_index.min())
    if lowest < 0:
        num_neg = int((edge_index < 0).sum())
        raise InputError(
            f"{name}: edge_index contains {num_neg} negative node indices (smallest {lowest})",
            f"use node ids 0..{n - 1}; relabel the nodes or drop edges to missing nodes",
        )
    highest = int(edge_index.max())
    if highest >= n:
        num_bad = int((edge_index >= n).any(dim=0).sum())
        raise InputError(
            f"{name}: edge_index refers to node {highest} but the graph has only N={n} nodes "
            f"(valid ids 0..{n - 1}; {num_bad} edges out of range)",
            "drop edges to missing nodes or add their rows to x, so every index is below N",
        )


def validate_labels(
    num_nodes: int,
    y: torch.Tensor | None = None,
    masks: dict[str, torch.Tensor | None] | None = None,
    name: str = "graph",
) -> None:
    """Check node labels ``y`` (integer [N], no negatives) and split masks (bool or 0/1, [N])."""
    if y is not None:
        if not isinstance(y, torch.Tensor) or not _is_integer(y) or y.dim() != 1 or y.shape[0] != num_nodes:
            raise InputError(
                f"{name}: labels y must be an integer tensor of shape [{num_nodes}], got {_kind(y)}",
                "store one integer class id per node (e.g. y.long()), or leave y out",
            )
        if y.numel() and int(y.min()) < 0:
            raise InputError(
                f"{name}: labels y contain negative class ids (smallest {int(y.min())})",
                "use class ids 0..C-1; mark unlabelled nodes with the masks instead of negative labels",
            )
    for key, mask in (masks or {}).items():
        if mask is None:
            continue
        ok = isinstance(mask, torch.Tensor) and mask.dim() == 1 and mask.shape[0] == num_nodes
        if ok and mask.dtype != torch.bool:
            ok = _is_integer(mask) and bool(((mask == 0) | (mask == 1)).all())
        if not ok:
            raise InputError(
                f"{name}: {key} must be a boolean tensor of shape [{num_nodes}], got {_kind(mask)}",
                f"store {key} as one True/False (or 0/1) value per node, or leave it out",
            )
