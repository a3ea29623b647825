"""Split a graph into K partitions for layer-wise distributed inference (``quantgraph partition``).

Each partition ``p`` owns a set of nodes. Its *local graph* numbers them ``0 .. n-1`` (in global id order),
then its *halo* ``n .. n+h-1`` (the sources of edges into owned nodes that another partition owns, sorted by
owner and by position in the owner's list), then one *dummy* node ``n+h``. Its edges are

* every edge into an owned node (so an owned row aggregates exactly its global in-neighbourhood), and
* every edge into a halo node, its source replaced by the dummy node when it is neither owned nor halo.

``edges.npy`` stores the first kind first (in global edge order), then the second; ``owned_edges.npy`` holds
the count of the first. Two layouts are read from it (``layerwise.prepare_part`` picks one per model):

* *exchange* (the first kind only): when ``graph_exchange`` proves that the model's graph stage needs halo
  nodes only through node-level values such as degrees, the partition receives those values' halo rows from
  their owners instead (GCN, SAGE, GIN). Its graph stage then costs ``O(owned in-edges)``.
* *stub* (both kinds): every halo node's in-degree equals its global one, so degree normalisations computed by
  any graph stage are the global ones. On graphs without locality almost every node is some partition's halo
  node, and each partition then holds nearly every edge.

Either way the owned rows come out bit-equal to a single-process run; rows computed for halo and dummy nodes are
discarded.

Files written per partition (``part-<p>/``): ``owned.npy`` (global ids), ``halo_owner.npy`` and
``halo_pos.npy`` (for each halo node: its owning partition and its row there), ``edges.npy`` ([2, E_local]
local ids), ``owned_edges.npy`` and ``x.npy`` (the owned rows' features, read memory-mapped by workers).
``manifest.json`` records sizes, the halo counts between partitions and the SHA-256 of every file.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from quantgraph.checksum import file_sha256
from quantgraph.errors import InputError

FORMAT = "quantgraph-partitions"
VERSION = 2  # 2: edges into owned nodes first, owned_edges.npy
METHODS = ("metis", "hash", "range")
FILES = ("owned.npy", "halo_owner.npy", "halo_pos.npy", "edges.npy", "owned_edges.npy", "x.npy")


@dataclass
class PartitionSummary:
    """What ``partition_graph`` wrote and how long it took."""

    path: Path
    parts: int
    method: str
    seconds_assign: float
    seconds_total: float
    owned: list[int]
    halo: list[int]
    edges: list[int]
    owned_edges: list[int]


def assign(edge_index: np.ndarray, num_nodes: int, parts: int, method: str, seed: int = 0) -> np.ndarray:
    """The partition of every node (int32 [N]) by METIS (pymetis), a hash of the id, or contiguous ranges."""
    if parts < 1:
        raise InputError(f"--parts must be at least 1, got {parts}", "pass --parts K with K >= 1")
    if method not in METHODS:
        raise InputError(f"unknown partition method {method!r}", f"use one of {', '.join(METHODS)}")
    if parts == 1 or num_nodes == 0:
        return np.zeros(num_nodes, dtype=np.int32)
    if method == "range":
        return (np.arange(num_nodes, dtype=np.int64) * parts // num_nodes).astype(np.int32)
    if method == "hash":
        ids = np.arange(num_nodes, dtype=np.uint64)
        mixed = (ids * np.uint64(0x9E3779B97F4A7C15) + np.uint64(seed)) >> np.uint64(33)
        return (mixed % np.uint64(parts)).astype(np.int32)
    try:
        import pymetis
    except ImportError:
        raise InputError(
            "--method metis needs the pymetis package, which is not installed",
            "pip install pymetis, or pass --method hash or --method range",
        ) from None
    src, dst = edge_index
    keep = src != dst
    a = np.concatenate([src[keep], dst[keep]])
    b = np.concatenate([dst[keep], src[keep]])
    key = np.unique(a.astype(np.int64) * num_nodes + b)  # undirected, no duplicates, sorted by a
    a, b = key // num_nodes, key % num_nodes
    xadj = np.zeros(num_nodes + 1, dtype=np.int64)
    np.cumsum(np.bincount(a, minlength=num_nodes), out=xadj[1:])
    options = pymetis.Options(seed=seed)
    _, membership = pymetis.part_graph(parts, xadj=xadj, adjncy=b.astype(np.int64), options=options)
    return np.asarray(membership, dtype=np.int32)


def local_graphs(edge_index: np.ndarray, membership: np.ndarray, parts: int) -> list[dict[str, np.ndarray]]:
    """Per partition: owned ids, halo owner/position and local edges (see the module docstring)."""
    num_nodes = len(membership)
    src, dst = edge_index[0].astype(np.int64), edge_index[1].astype(np.int64)
    order = np.argsort(membership, kind="stable")
    counts = np.bincount(membership, minlength=parts)
    starts = np.concatenate([[0], np.cumsum(counts)])
    position = np.empty(num_nodes, dtype=np.int64)  # row of each node in its owner's list
    position[order] = np.arange(num_nodes) - np.repeat(starts[:-1], counts)
    dst_part = membership[dst]
    out = []
    local = np.full(num_nodes, -1, dtype=np.int64)
    for p in range(parts):
        owned = order[starts[p] : starts[p + 1]]  # ascending global ids (stable sort)
        into_owned = dst_part == p
        s_in = src[into_owned]
        halo = np.unique(s_in[membership[s_in] != p])
        halo = halo[np.lexsort((position[halo], membership[halo]))]
        n, h = len(owned), len(halo)
        local[owned] = np.arange(n)
        local[halo] = n + np.arange(h)
        is_halo = np.zeros(num_nodes, dtype=bool)
        is_halo[halo] = True
        into_halo = is_halo[dst]
        keep = np.concatenate([np.flatnonzero(into_owned), np.flatnonzero(into_halo)])  # disjoint
        ls, ld = local[src[keep]], local[dst[keep]]
        ls[ls < 0] = n + h  # sources outside the local graph: the dummy node (keeps halo in-degrees)
        out.append(
            {
                "owned": owned.astype(np.int64),
                "halo_owner": membership[halo].astype(np.int32),
                "halo_pos": position[halo].astype(np.int64),
                "edges": np.stack([ls, ld]).astype(np.int64),
                "owned_edges": np.array(int(into_owned.sum()), dtype=np.int64),
            }
        )
        local[owned] = -1
        local[halo] = -1
    return out


def partition_graph(
    x: np.ndarray,
    edge_index: np.ndarray,
    parts: int,
    output: str | os.PathLike[str],
    method: str = "metis",
    seed: int = 0,
    overwrite: bool = False,
    membership: np.ndarray | None = None,
) -> PartitionSummary:
    """Partition a graph and write the partition folder atomically (a temporary folder, then a rename).

    ``membership`` (int [N] in ``[0, parts)``) replaces the partitioner with a given assignment."""
    start = time.perf_counter()
    x = np.asarray(x)
    edge_index = np.asarray(edge_index)
    if x.ndim != 2:
        raise InputError(f"node features must be [N, F], got shape {x.shape}", "store x as a 2-D array")
    num_nodes = x.shape[0]
    if edge_index.ndim != 2 or edge_index.shape[0] != 2:
        raise InputError(f"edge_index must be [2, E], got shape {edge_index.shape}", "store edges as [2, E]")
    if parts > max(num_nodes, 1):
        raise InputError(
            f"--parts {parts} exceeds the graph's {num_nodes} nodes", "pass --parts at most the node count"
        )
    target = Path(output)
    if target.exists() and not overwrite:
        raise InputError(f"{target} already exists", "remove it or pass --overwrite")
    if membership is None:
        membership = assign(edge_index, num_nodes, parts, method, seed)
    else:
        membership = np.asarray(membership, dtype=np.int32)
        if membership.shape != (num_nodes,) or (
            num_nodes and not 0 <= membership.min() <= membership.max() < parts
        ):
            raise InputError(f"membership must be [N] ints in [0, {parts})", "pass one partition per node")
        method = "given"
    seconds_assign = time.perf_counter() - start
    graphs = local_graphs(edge_index, membership, parts)
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        entries: list[dict[str, Any]] = []
        features = np.ascontiguousarray(x, dtype=np.float32) if x.dtype != np.float32 else x
        for p, g in enumerate(graphs):
            folder = temp / f"part-{p}"
            folder.mkdir()
            arrays = dict(g, x=np.ascontiguousarray(features[g["owned"]]))
            for name in FILES:
                np.save(folder / name, arrays[name[:-4]], allow_pickle=False)
            halo_from = np.bincount(g["halo_owner"], minlength=parts)
            entries.append(
                {
                    "owned": len(g["owned"]),
                    "halo": len(g["halo_owner"]),
                    "edges": int(g["edges"].shape[1]),
                    "owned_edges": int(g["owned_edges"]),
                    "halo_from": {str(q): int(c) for q, c in enumerate(halo_from) if c},
                    "sha256": {name: file_sha256(folder / name) for name in FILES},
                }
            )
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "num_nodes": int(num_nodes),
            "num_edges": int(edge_index.shape[1]),
            "num_features": int(x.shape[1]),
            "parts": parts,
            "method": method,
            "seed": seed,
            "seconds_assign": round(seconds_assign, 4),
            "partitions": entries,
        }
        (temp / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
        if target.exists():
            shutil.rmtree(target)
        os.replace(temp, target)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return PartitionSummary(
        target, parts, method, seconds_assign, time.perf_counter() - start,
        [e["owned"] for e in entries], [e["halo"] for e in entries], [e["edges"] for e in entries],
        [e["owned_edges"] for e in entries],
    )  # fmt: skip
