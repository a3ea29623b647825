"""Graph-classification sets in the pickle-free ``.npz`` layout, and batching graphs into one disjoint union."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from quantgraph.data.graph import GraphData
from quantgraph.data.validate import validate_graph
from quantgraph.errors import InputError

SPLITS = {"tr": "train", "val": "val", "te": "test"}
ARRAYS = ("x", "edge_index", "node_ptr", "edge_ptr", "y")


def _check_ptr(ptr: np.ndarray, total: int, what: str, where: str) -> None:
    if ptr.ndim != 1 or ptr.shape[0] < 1 or ptr[0] != 0 or ptr[-1] != total or np.any(np.diff(ptr) < 0):
        raise InputError(
            f"{where}: {what} is not a non-decreasing offset array from 0 to {total}",
            "store offsets with graph g owning items ptr[g]:ptr[g+1] (length graphs+1)",
        )


MAX_CLASSES = 1 << 16


def _check_graph_labels(y: np.ndarray, where: str) -> None:
    """One integer class id per graph in 0..MAX_CLASSES-1 (floats, negatives and huge ids are refused)."""
    fix = f"store one integer class id per graph in {{s}}_y, from 0 to at most {MAX_CLASSES - 1}"
    if y.dtype.kind not in "iu":
        raise InputError(f"{where}: labels y have dtype {y.dtype}, not an integer type", fix)
    if y.size and (int(y.min()) < 0 or int(y.max()) >= MAX_CLASSES):
        raise InputError(f"{where}: labels y range from {int(y.min())} to {int(y.max())}", fix)


def load_graph_classification(path: str | os.PathLike[str]) -> dict[str, list[GraphData]]:
    """Read ``{s}_x, {s}_edge_index, {s}_node_ptr, {s}_edge_ptr, {s}_y`` for s in tr/val/te.

    Returns ``{"train": [...], "val": [...], "test": [...]}``; each graph has local node ids and ``y = [label]``.
    Splits absent from the file are left out of the result.
    """
    path = Path(path)
    fix = "use an .npz with {s}_x, {s}_edge_index, {s}_node_ptr, {s}_edge_ptr and {s}_y for s in tr, val, te"
    if not path.is_file():
        raise InputError(f"graph-classification file {path} not found", "check the path")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, AttributeError) as exc:
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())
        raise InputError(f"cannot read {path} as an .npz archive ({detail})", fix) from exc
    out: dict[str, list[GraphData]] = {}
    for prefix, split in SPLITS.items():
        keys = [f"{prefix}_{a}" for a in ARRAYS]
        present = [k for k in keys if k in arrays]
        if not present:
            continue
        if len(present) != len(keys):
            missing = ", ".join(k for k in keys if k not in arrays)
            raise InputError(f"{path}: split {prefix!r} lacks {missing}", fix)
        out[split] = _split_graphs(
            *(arrays[k] for k in keys), where=f"{path}[{prefix}]", name=f"{path.stem}/{split}"
        )
    if not out:
        raise InputError(f"{path} holds no tr_/val_/te_ graph-classification arrays", fix)
    return out


def _split_graphs(
    x: np.ndarray,
    edge_index: np.ndarray,
    node_ptr: np.ndarray,
    edge_ptr: np.ndarray,
    y: np.ndarray,
    where: str,
    name: str,
) -> list[GraphData]:
    num_graphs = y.shape[0]
    if y.ndim != 1 or node_ptr.shape != (num_graphs + 1,) or edge_ptr.shape != (num_graphs + 1,):
        raise InputError(
            f"{where}: {num_graphs} labels but node_ptr/edge_ptr have shapes {node_ptr.shape}/{edge_ptr.shape}",
            "store graphs+1 offsets in node_ptr and edge_ptr and one label per graph in y",
        )
    if edge_index.ndim != 2 or edge_index.shape[0] != 2:
        raise InputError(
            f"{where}: edge_index has shape {list(edge_index.shape)}, expected [2, E]",
            "store edges as [2, E]",
        )
    _check_ptr(node_ptr, x.shape[0], "node_ptr", where)
    _check_ptr(edge_ptr, edge_index.shape[1], "edge_ptr", where)
    _check_graph_labels(y, where)
    x_all = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    ei_all = torch.from_numpy(np.ascontiguousarray(edge_index))
    y_all = torch.from_numpy(np.ascontiguousarray(y)).to(torch.int64)
    graphs = []
    for g in range(num_graphs):
        gx = x_all[node_ptr[g] : node_ptr[g + 1]]
        gei = ei_all[:, edge_ptr[g] : edge_ptr[g + 1]]
        validate_graph(gx, gei, name=f"{where} graph {g}")
        graphs.append(
            GraphData(x=gx, edge_index=gei.to(torch.int64), y=y_all[g : g + 1].clone(), name=f"{name}/{g}")
        )
    return graphs


def collate(graphs: list[GraphData]) -> GraphData:
    """Batch graphs into one disjoint union: edge ids offset per graph, ``batch`` maps nodes to graphs.

    ``y`` becomes one label per graph ([G]) when every graph carries graph labels, else None. Graphs that
    are already batches are merged with their graph ids shifted.
    """
    if not graphs:
        raise InputError("collate got an empty list of graphs", "pass at least one graph")
    width = graphs[0].num_features
    for i, g in enumerate(graphs):
        if g.num_features != width:
            raise InputError(
                f"collate: graph {i} has {g.num_features} features but graph 0 has {width}",
                "batch only graphs with the same feature width",
            )
    xs, edges, batches, ys = [], [], [], []
    node_offset = graph_offset = 0
    for g in graphs:
        n, count = g.num_nodes, g.num_graphs
        xs.append(g.x)
        edges.append(g.edge_index + node_offset)
        if g.batch is None:
            batches.append(torch.full((n,), graph_offset, dtype=torch.int64))
        else:
            batches.append(g.batch.to(torch.int64) + graph_offset)
        if g.y is not None and g.y.numel() == count:
            ys.append(g.y.reshape(count).to(torch.int64))
        node_offset += n
        graph_offset += count
    return GraphData(
        x=torch.cat(xs),
        edge_index=torch.cat(edges, dim=1),
        y=torch.cat(ys) if len(ys) == len(graphs) else None,
        batch=torch.cat(batches),
        name="batch",
    )
