"""Node orders for locality: the runtime's ``prepare`` may renumber a graph's nodes before its graph stage.

An aggregation gathers one feature row per edge; when the sources of nearby targets are far apart in memory,
every edge costs a cache-line miss whatever the row width. Renumbering nodes so that the rows gathered together
lie together (and the most gathered rows share cache lines) cuts those misses. Every kernel then runs in the
new order and the outputs are mapped back, so results are those of the original order.

* ``degree``: nodes by descending out-degree (how often their row is gathered), ties by id: the hot rows fill
  a few contiguous cache lines. O(N log N).
* ``rcm``: reverse Cuthill-McKee of the symmetrised graph (SciPy): neighbours get nearby ids.
* ``none``: the input order.
"""

from __future__ import annotations

import numpy as np

from quantgraph.errors import InputError

ORDERS = ("none", "degree", "rcm")


def node_order(edge_index: np.ndarray, num_nodes: int, order: str) -> np.ndarray | None:
    """``perm`` (new id -> old id) of ``order`` for a graph, or None for ``none``."""
    if order not in ORDERS:
        raise InputError(f"unknown node order {order!r}", f"use one of {', '.join(ORDERS)}")
    if order == "none" or num_nodes == 0:
        return None
    src = np.asarray(edge_index[0], dtype=np.int64)
    if order == "degree":
        out_degree = np.bincount(src, minlength=num_nodes)
        return np.argsort(-out_degree, kind="stable").astype(np.int64)
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import reverse_cuthill_mckee

    dst = np.asarray(edge_index[1], dtype=np.int64)
    ones = np.ones(src.shape[0], dtype=np.int8)
    a = coo_matrix((ones, (dst, src)), shape=(num_nodes, num_nodes)).tocsr()
    return np.asarray(reverse_cuthill_mckee(a, symmetric_mode=False), dtype=np.int64)


def inverse(perm: np.ndarray) -> np.ndarray:
    """``inv`` with ``inv[perm[i]] = i`` (old id -> new id)."""
    inv = np.empty_like(perm)
    inv[perm] = np.arange(perm.shape[0], dtype=perm.dtype)
    return inv
