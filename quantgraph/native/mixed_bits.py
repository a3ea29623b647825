"""Node rows stored at their own bitwidth (A²Q) and the CSR aggregation that reads them.

A²Q learns one bitwidth per node; :class:`BitGroupedRows` stores each row at the narrowest of the native
widths that holds it: rows are grouped by stored width (8, 4 or 2 bits, and 0 for A²Q's 1-bit rows, whose
``qmax = 2^0 - 1 = 0`` makes every value 0), and each group is packed at its width with
:func:`~quantgraph.native.kernels.pack` (two's complement fields, little end first). A node's row is found
through its group (``uint8``) and its index in the group (``int32``); its scale is one ``float32``.

:func:`spmm_mixed` is ``out[i] = Σ_{j→i} q_j · (s_j · w_ij)`` in float32 over that storage (the C kernel
``csr_spmm_mixed_f32``), added in edge order like the IR's sequential scatter-add: without edge weights each
term is the IR's dequantized ``q_j · s_j`` and the sum equals the IR's bit for bit; with them the IR rounds
``(q_j · s_j) · w_ij``, so the two differ in the last bits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from quantgraph.errors import InputError
from quantgraph.native.build import load
from quantgraph.native.kernels import CSR, _array, _ptr, _raise, _threads, aligned_empty, pack, unpack

#: stored width of each group, in group order
GROUP_WIDTHS = (8, 4, 2, 0)
INDEX_BYTES_PER_ROW = 1 + 4 + 4  # group (uint8), index in the group (int32), scale (float32)


def stored_width(bits: int) -> int:
    """The native width a row of ``bits`` learned bits is stored at: 0 (1 bit: all zero), 2, 4 or 8."""
    if not 1 <= bits <= 8:
        raise InputError(f"{bits} bits per row is outside [1, 8]", "A²Q rows have 1 to 8 bits")
    return 0 if bits == 1 else 2 if bits == 2 else 4 if bits <= 4 else 8


@dataclass(frozen=True)
class BitGroupedRows:
    """``[N, F]`` signed integer rows grouped by stored width, each group packed at its width."""

    data: np.ndarray  # uint8: the groups one after the other, each 64-byte aligned
    group_base: np.ndarray  # int64 [4]: byte offset of each group in data
    group_stride: np.ndarray  # int64 [4]: bytes per row of each group
    row_group: np.ndarray  # uint8 [N]: the group of each node
    row_index: np.ndarray  # int32 [N]: the node's row in its group
    row_scale: np.ndarray  # float32 [N]: the node's scale (dequantized value = q * scale)
    num_features: int

    @classmethod
    def pack(cls, q: Any, bits: Any, scale: Any) -> BitGroupedRows:
        """Rows ``q[N, F]`` (integers within each row's signed ``bits`` range, 1-bit rows all 0) with the
        per-row learned ``bits[N]`` and ``scale[N]``."""
        q = _array(q, "q")
        bits = np.asarray(_array(bits, "bits")).reshape(-1).astype(np.int64)
        scale = np.ascontiguousarray(_array(scale, "scale"), dtype=np.float32).reshape(-1)
        if q.ndim != 2 or not np.issubdtype(q.dtype, np.integer):
            raise InputError(f"q must be a 2-D integer array, got {q.ndim}-D {q.dtype}", "pass q[N, F]")
        n, f = q.shape
        if bits.shape[0] != n or scale.shape[0] != n:
            raise InputError(
                f"{n} rows need {n} bits and scales, got {bits.shape[0]} and {scale.shape[0]}",
                "pass one bitwidth and one scale per row",
            )
        if n and (bits.min() < 1 or bits.max() > 8):
            raise InputError("per-row bits fall outside [1, 8]", "A²Q rows have 1 to 8 bits")
        qmax = (1 << (bits - 1)) - 1
        if n and f and (np.abs(q.astype(np.int64)).max(axis=1) > qmax).any():
            raise InputError(
                "q holds values outside their row's bit range", "clamp each row to ±(2^(b-1) - 1)"
            )
        width = np.select([bits == 1, bits == 2, bits <= 4], [0, 2, 4], 8)
        row_group = np.select([width == 8, width == 4, width == 2], [0, 1, 2], 3).astype(np.uint8)
        row_index = np.zeros(n, dtype=np.int32)
        parts: list[np.ndarray] = []
        base = np.zeros(4, dtype=np.int64)
        stride = np.zeros(4, dtype=np.int64)
        offset = 0
        q8 = np.ascontiguousarray(q, dtype=np.int8)
        for g, w in enumerate(GROUP_WIDTHS):
            rows = np.flatnonzero(row_group == g)
            row_index[rows] = np.arange(rows.shape[0], dtype=np.int32)
            base[g] = offset
            if w == 0:
                continue
            packed = np.ascontiguousarray(pack(np.ascontiguousarray(q8[rows]), w, check=False)).view(np.uint8)
            stride[g] = (f * w + 7) // 8
            payload = packed.reshape(-1)
            parts.append(payload)
            offset += payload.shape[0]
            pad = (-offset) % 64
            if pad:
                parts.append(np.zeros(pad, dtype=np.uint8))
                offset += pad
        data = aligned_empty((max(offset, 1),), np.uint8)
        data[...] = 0
        if parts:
            data[:offset] = np.concatenate(parts)
        return cls(data, base, stride, row_group, row_index, scale, f)

    @property
    def num_rows(self) -> int:
        return int(self.row_group.shape[0])

    @property
    def payload_bytes(self) -> int:
        """Bytes of the packed values (rows at their stored width, without group padding)."""
        counts = np.bincount(self.row_group, minlength=4)
        return int(sum(int(counts[g]) * int(self.group_stride[g]) for g in range(4)))

    @property
    def index_bytes(self) -> int:
        """Per-row bookkeeping: group, index in the group, scale."""
        return self.num_rows * INDEX_BYTES_PER_ROW

    def rows_per_width(self) -> dict[int, int]:
        counts = np.bincount(self.row_group, minlength=4)
        return {w: int(counts[g]) for g, w in enumerate(GROUP_WIDTHS)}

    def unpack(self) -> np.ndarray:
        """The int8 ``[N, F]`` rows back, in node order."""
        out = np.zeros((self.num_rows, self.num_features), dtype=np.int8)
        for g, w in enumerate(GROUP_WIDTHS):
            rows = np.flatnonzero(self.row_group == g)
            if w == 0 or rows.size == 0:
                continue
            size = rows.shape[0] * int(self.group_stride[g])
            block = self.data[int(self.group_base[g]) : int(self.group_base[g]) + size]
            block = block.reshape(rows.shape[0], int(self.group_stride[g]))
            out[rows[self.row_index[rows]]] = unpack(block, w, self.num_features)
        return out


def csr_edge_weights(edge_index: Any, weights: Any) -> np.ndarray:
    """Per-edge float32 weights (``edge_index`` order) in the CSR order of ``CSR.from_edge_index``."""
    ei = _array(edge_index, "edge_index")
    order = np.argsort(ei[1].astype(np.int64), kind="stable")
    return np.ascontiguousarray(_array(weights, "weights").reshape(-1)[order], dtype=np.float32)


def spmm_mixed(
    csr: CSR, rows: BitGroupedRows, edge_weights: Any = None, threads: int | None = None
) -> np.ndarray:
    """float32 ``[num_rows, F]``: ``out[i] = Σ_e q_j · (s_j · w_e)`` over the mixed-bit ``rows``.

    ``edge_weights``: float32, one per edge in CSR order (:func:`csr_edge_weights`), or None (weight 1).
    """
    if not isinstance(csr, CSR):
        raise InputError(f"csr must be a CSR, got {type(csr).__name__}", "build one with CSR.from_edge_index")
    if rows.num_rows != csr.num_cols:
        raise InputError(
            f"the rows hold {rows.num_rows} nodes, the graph has {csr.num_cols} sources",
            "pack one row per node",
        )
    w = None
    if edge_weights is not None:
        w = np.ascontiguousarray(_array(edge_weights, "edge_weights"), dtype=np.float32).reshape(-1)
        if w.shape[0] != csr.num_edges:
            raise InputError(
                f"edge_weights has {w.shape[0]} entries for {csr.num_edges} edges", "pass one per edge"
            )
    f = rows.num_features
    out = np.empty((csr.num_rows, f), dtype=np.float32)
    status = load().lib.csr_spmm_mixed_f32(
        csr.num_rows, csr.num_cols, f, _ptr(csr.indptr), _ptr(csr.indices), int(csr.indices.dtype == np.int64),
        _ptr(w), _ptr(rows.data), _ptr(rows.group_base), _ptr(rows.group_stride), _ptr(rows.row_group),
        _ptr(rows.row_index), _ptr(rows.row_scale), _ptr(out), f, _threads(threads),
    )  # fmt: skip
    _raise(status, "spmm_mixed")
    return out


@dataclass(frozen=True)
class MixedCSR:
    """The CSR of an A²Q aggregation and its float32 edge weights in CSR order (None: weight 1)."""

    csr: CSR
    weights: np.ndarray | None


def mixed_csr(src: np.ndarray, dst: np.ndarray, num_nodes: int, weights: np.ndarray | None) -> MixedCSR:
    """``native.mixed_csr``: targets as rows, the per-edge weights (``[E]`` or ``[E, 1]``) permuted alongside."""
    ei = np.stack([src.astype(np.int64), dst.astype(np.int64)])
    index_dtype = np.int32 if num_nodes < 2**31 else np.int64
    csr = CSR.from_edge_index(ei, num_nodes, index_dtype=index_dtype)
    return MixedCSR(csr, None if weights is None else csr_edge_weights(ei, weights))


def bits_of_qmax(qmax: np.ndarray) -> np.ndarray:
    """Per-row bits ``b`` with ``qmax = 2^(b-1) - 1`` (A²Q's symmetric grid); other ranges are refused."""
    qmax = np.asarray(qmax).reshape(-1).astype(np.int64)
    bits = np.round(np.log2(np.maximum(qmax, 0) + 1)).astype(np.int64) + 1
    if qmax.size and (((1 << (bits - 1)) - 1 != qmax).any() or bits.max() > 8):
        raise InputError(
            "a mixed-bit row's qmax is not 2^(b-1) - 1 for b in [1, 8]",
            "re-create the model with --policy a2q",
        )
    return bits


def mixed_pack(q: np.ndarray, scale: np.ndarray, qmax: np.ndarray) -> BitGroupedRows:
    """``native.mixed_pack``: the rows of ``q`` at their own width (bits read off each row's ``qmax``)."""
    return BitGroupedRows.pack(q, bits_of_qmax(qmax), np.asarray(scale, dtype=np.float32).reshape(-1))
