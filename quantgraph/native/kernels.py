"""NumPy-facing wrappers of the native integer kernels (see ``kernels.c`` for the exact semantics).

* ``CSR.from_edge_index``: rows are aggregation targets (``edge_index[1]``), columns sources.
* ``spmm``: ``acc[i, f] = sum_e (w_e - zw) * (x[col_e, f] - zx)`` in int32 for 8, 4 or 2-bit features;
  ``spmm_requantize`` fuses ``requantize`` into the row loop and returns int8. ``message=MessageQuant(...)``
  quantizes every message before the sum: ``acc[i, f] = sum_e (clamp(round_half_even(float64(p_ef) * m) + z,
  qmin, qmax) - z)`` with ``p_ef = (w_e - zw) * (x[col_e, f] - zx)``, fused (no per-edge intermediate).
* ``requantize``: ``clamp(round_half_even(acc * m) + z, qmin, qmax)``, bit-exact with
  ``quantgraph::requantize``.
* ``gemm_i8``: ``(a - za) @ (b - zb) + bias`` in int32; ``pack_weight`` pre-packs ``b`` once.
* ``pack``/``unpack``: signed fields, little end first (4 bits: feature 2k in the low nibble of byte k).

Arithmetic wraps modulo 2**32: results are exact whenever the true value fits in int32. ``threads``:
an explicit count, else ``$QUANTGRAPH_THREADS``, else OpenMP's default (``$OMP_NUM_THREADS`` or all cores).
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from quantgraph.errors import InputError
from quantgraph.native.build import load

BITS = (8, 4, 2)
_MODES = {"tensor": 0, "row": 1, "col": 2}
_ERRORS = {-1: "invalid argument", -2: "out of memory", -3: "NaN in the input"}
QG_ENAN = -3


class NaNInput(InputError):
    """``quantize`` met a NaN: a NaN has no integer image (the IR's quantize casts it to int32 -2**31)."""


def _ptr(a: np.ndarray | None) -> int | None:
    return None if a is None else a.ctypes.data


def _array(x: Any, name: str) -> np.ndarray:
    """A NumPy view of an array-like (torch CPU tensors included)."""
    if hasattr(x, "detach") and hasattr(x, "numpy"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _check(a: np.ndarray, name: str, dtypes: tuple[Any, ...], ndim: int) -> np.ndarray:
    if a.dtype not in [np.dtype(d) for d in dtypes]:
        want = " or ".join(np.dtype(d).name for d in dtypes)
        raise InputError(
            f"{name} has dtype {a.dtype}, expected {want}",
            f"convert {name} with .astype(np.{want.split()[0]})",
        )
    if a.ndim != ndim:
        raise InputError(f"{name} has {a.ndim} dimensions, expected {ndim}", f"reshape {name} to {ndim}-D")
    if not a.flags.c_contiguous:
        raise InputError(f"{name} is not C-contiguous", f"pass np.ascontiguousarray({name})")
    return a


#: the most kernel threads accepted (``quantgraph run --threads`` has the same bound)
MAX_THREADS = 1024


def _threads(threads: int | None) -> int:
    if threads is None:
        env = os.environ.get("QUANTGRAPH_THREADS", "").strip()
        if not env:
            return 0
        try:
            threads = int(env)
        except ValueError:
            raise InputError(
                f"QUANTGRAPH_THREADS={env!r} is not an integer", "set it to a thread count"
            ) from None
    if not 0 <= threads <= MAX_THREADS:  # OpenMP crashes when it cannot create that many threads
        raise InputError(
            f"threads must be 0..{MAX_THREADS}, got {threads}", "pass a thread count, or 0 for all cores"
        )
    return int(threads)


def _raise(status: int, what: str) -> None:
    if status != 0:
        raise InputError(
            f"native {what} failed: {_ERRORS.get(status, status)}", "check the arguments' shapes and ranges"
        )


def _int32(value: int, name: str) -> int:
    value = int(value)
    if not -(2**31) <= value < 2**31:
        raise InputError(f"{name}={value} does not fit in int32", f"pass an int32 {name}")
    return value


def _check_bits(bits: int) -> int:
    if bits not in BITS:
        raise InputError(f"unsupported bit width {bits}", "use 8, 4 or 2 bits")
    return int(bits)


def aligned_empty(shape: tuple[int, ...], dtype: Any, align: int = 64) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on an ``align``-byte boundary."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    buf = np.empty(nbytes + align, dtype=np.uint8)
    off = (-buf.ctypes.data) % align
    return buf[off : off + nbytes].view(dtype).reshape(shape)


def row_bytes(num_features: int, bits: int) -> int:
    """Bytes of one packed feature row."""
    return (num_features * _check_bits(bits) + 7) // 8


# ---------------------------------------------------------------------------------------------------- packing


def pack(q: Any, bits: int, *, check: bool = True, threads: int | None = None) -> np.ndarray:
    """Pack signed values ``q[N, F]`` (within the ``bits`` range) into ``uint8[N, ceil(F * bits / 8)]``.

    8 bits returns an int8 copy. Lower widths store two's complement fields, little end first. The result
    starts on a 64-byte boundary (rows of a multiple of 64 bytes then never straddle extra cache lines).
    ``check=False`` skips the range check (for values a requantize clamped already); C-contiguous int8
    input is packed by the ``pack_i8`` kernel in one pass.
    """
    q = _array(q, "q")
    bits = _check_bits(bits)
    if q.ndim != 2 or not np.issubdtype(q.dtype, np.integer):
        raise InputError(
            f"q must be a 2-D integer array, got {q.ndim}-D {q.dtype}", "pass q[N, F] of integers"
        )
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    if check and q.size and (q.min() < lo or q.max() > hi):
        raise InputError(
            f"q holds values outside the {bits}-bit range [{lo}, {hi}]", "clamp q before packing"
        )
    n, f = q.shape
    if bits == 8:
        out8 = aligned_empty((n, f), np.int8)
        out8[...] = q
        return out8
    if q.dtype == np.int8 and q.flags.c_contiguous:
        return _pack_int8(q, bits, threads)
    per = 8 // bits
    if n == 0 or f == 0:
        return np.zeros((n, row_bytes(f, bits)), dtype=np.uint8)
    fields = np.zeros((n, row_bytes(f, bits) * per), dtype=np.uint8)
    fields[:, :f] = q.astype(np.int64) & (2**bits - 1)
    fields = fields.reshape(n, -1, per)
    out = aligned_empty(fields.shape[:2], np.uint8)
    out[...] = 0
    for j in range(per):
        out |= fields[:, :, j] << np.uint8(j * bits)
    return out


def _pack_int8(q: np.ndarray, bits: int, threads: int | None) -> np.ndarray:
    n, f = q.shape
    out = aligned_empty((n, row_bytes(f, bits)), np.uint8)
    status = load().lib.pack_i8(_ptr(q), n, f, f, bits, _ptr(out), out.shape[1], _threads(threads))
    _raise(status, "pack")
    return out


def unpack(packed: Any, bits: int, num_features: int) -> np.ndarray:
    """Inverse of ``pack``: int8 ``[N, num_features]``."""
    packed = _array(packed, "packed")
    bits = _check_bits(bits)
    if packed.ndim != 2:
        raise InputError(f"packed must be 2-D, got {packed.ndim}-D", "pass packed[N, bytes]")
    if packed.shape[1] < row_bytes(num_features, bits):
        raise InputError(
            f"packed rows have {packed.shape[1]} bytes, {num_features} features of {bits} bits need "
            f"{row_bytes(num_features, bits)}",
            "pass the num_features used when packing",
        )
    if bits == 8:
        return np.ascontiguousarray(packed[:, :num_features]).view(np.int8).copy()
    per = 8 // bits
    u = packed.view(np.uint8)
    fields = np.stack([(u >> np.uint8(j * bits)) & np.uint8(2**bits - 1) for j in range(per)], axis=-1)
    fields = fields.reshape(u.shape[0], u.shape[1] * per)[:, :num_features].astype(np.int8)
    sign = np.int8(2 ** (bits - 1))
    return ((fields ^ sign) - sign).astype(np.int8)


# ---------------------------------------------------------------------------------------------------- CSR


@dataclass(frozen=True)
class CSR:
    """Compressed sparse rows of an aggregation: row i gathers from ``indices[indptr[i]:indptr[i + 1]]``.

    ``indptr`` is int64 ``[num_rows + 1]``, ``indices`` int32 or int64 ``[E]`` within ``[0, num_cols)``,
    ``edge_weights`` optional int8/int16 ``[E]`` in CSR order. Checked once, on construction.
    """

    indptr: np.ndarray
    indices: np.ndarray
    num_cols: int
    edge_weights: np.ndarray | None = None

    def __post_init__(self) -> None:
        indptr = _check(_array(self.indptr, "indptr"), "indptr", (np.int64,), 1)
        indices = _check(_array(self.indices, "indices"), "indices", (np.int32, np.int64), 1)
        object.__setattr__(self, "indptr", indptr)
        object.__setattr__(self, "indices", indices)
        if indptr.shape[0] < 1 or indptr[0] != 0 or indptr[-1] != indices.shape[0]:
            raise InputError(
                f"indptr must start at 0 and end at the edge count {indices.shape[0]}",
                "rebuild it with CSR.from_edge_index",
            )
        if indptr.shape[0] > 1 and np.any(indptr[1:] < indptr[:-1]):
            raise InputError("indptr is not non-decreasing", "rebuild it with CSR.from_edge_index")
        if indices.size and (indices.min() < 0 or indices.max() >= self.num_cols):
            raise InputError(
                f"indices fall outside [0, {self.num_cols})", "pass num_cols = the number of source nodes"
            )
        if self.edge_weights is not None:
            w = _check(_array(self.edge_weights, "edge_weights"), "edge_weights", (np.int8, np.int16), 1)
            if w.shape[0] != indices.shape[0]:
                raise InputError(
                    f"edge_weights has {w.shape[0]} entries for {indices.shape[0]} edges",
                    "pass one weight per edge",
                )
            object.__setattr__(self, "edge_weights", w)

    @property
    def num_rows(self) -> int:
        """Number of target rows."""
        return int(self.indptr.shape[0] - 1)

    @property
    def num_edges(self) -> int:
        """Number of stored edges."""
        return int(self.indices.shape[0])

    @classmethod
    def from_edge_index(
        cls, edge_index: Any, num_nodes: int, edge_weights: Any = None, index_dtype: Any = np.int32
    ) -> CSR:
        """Rows = targets ``edge_index[1]``, columns = sources ``edge_index[0]``, stable-sorted by target
        (the ``csr_build`` kernel's counting sort: O(N + E)).

        Edge weights (int8/int16, one per edge in ``edge_index`` order) are permuted alongside.
        """
        ei = _array(edge_index, "edge_index")
        if ei.ndim != 2 or ei.shape[0] != 2 or not np.issubdtype(ei.dtype, np.integer):
            raise InputError(
                f"edge_index must be an integer [2, E] array, got {ei.dtype} {ei.shape}",
                "pass edge_index[2, E]",
            )
        n = int(num_nodes)
        if ei.size and (ei.min() < 0 or ei.max() >= n):
            raise InputError(
                f"edge_index has node ids outside [0, {n})", "pass num_nodes = the number of nodes"
            )
        if np.dtype(index_dtype) not in (np.dtype(np.int32), np.dtype(np.int64)):
            raise InputError(
                f"index_dtype {np.dtype(index_dtype)} is not int32 or int64", "pass np.int32 or np.int64"
            )
        if np.dtype(index_dtype) == np.int32 and n > 2**31 - 1:
            raise InputError(f"{n} nodes do not fit int32 indices", "pass index_dtype=np.int64")
        src = np.ascontiguousarray(ei[0], dtype=np.int64)
        dst = np.ascontiguousarray(ei[1], dtype=np.int64)
        e = src.shape[0]
        indptr = np.empty(n + 1, dtype=np.int64)
        indices = np.empty(e, dtype=index_dtype)
        order = np.empty(e, dtype=np.int64)
        wide = int(np.dtype(index_dtype) == np.int64)
        status = load().lib.csr_build(
            _ptr(src), _ptr(dst), e, n, _ptr(indptr), _ptr(indices), wide, _ptr(order)
        )
        _raise(status, "csr_build")
        w = None
        if edge_weights is not None:
            w = _array(edge_weights, "edge_weights")
            if w.shape != (ei.shape[1],):
                raise InputError(
                    f"edge_weights has shape {w.shape}, expected ({ei.shape[1]},)", "pass one weight per edge"
                )
            w = np.ascontiguousarray(w[order])
        return cls(indptr, indices, n, w)


# ---------------------------------------------------------------------------------------------------- SpMM


@dataclass(frozen=True)
class MessageQuant:
    """Per-tensor quantizer of every message of an aggregation, applied before the sum.

    A message ``p = (w_e - zw) * (q[col_e, f] - zx)`` becomes
    ``clamp(round_half_even(float64(p) * multiplier) + zero_point, qmin, qmax)`` (the integer IR's
    ``requantize``), and the aggregation sums it minus ``zero_point``. Exact whenever ``|p| < 2**53``.
    """

    multiplier: float
    zero_point: int = 0
    qmin: int = -128
    qmax: int = 127

    def __post_init__(self) -> None:
        m = _array(self.multiplier, "multiplier")
        if m.size != 1 or not np.issubdtype(m.dtype, np.number) or np.iscomplexobj(m):
            raise InputError(
                f"message multiplier must be one real number, got {m.size} of {m.dtype}",
                "pass a per-tensor float multiplier",
            )
        mult = float(m.reshape(-1)[0])
        if not np.isfinite(mult):
            raise InputError(f"message multiplier {mult} is not finite", "pass a finite multiplier")
        values = {}
        for name in ("zero_point", "qmin", "qmax"):
            v = _array(getattr(self, name), name)
            if v.size != 1 or not np.issubdtype(v.dtype, np.integer):
                raise InputError(f"message {name} must be one integer, got {v.dtype}", f"pass an int {name}")
            values[name] = _int32(int(v.reshape(-1)[0]), f"message {name}")
        if values["qmin"] > values["qmax"]:
            raise InputError(
                f"message range [{values['qmin']}, {values['qmax']}] is empty", "pass qmin <= qmax"
            )
        object.__setattr__(self, "multiplier", mult)
        for name, v in values.items():
            object.__setattr__(self, name, v)


def _message(message: Any) -> MessageQuant:
    if isinstance(message, MessageQuant):
        return message
    if isinstance(message, tuple | list) and len(message) == 4:
        return MessageQuant(*message)
    raise InputError(
        f"message must be a MessageQuant or (multiplier, zero_point, qmin, qmax), got {type(message).__name__}",
        "pass message=MessageQuant(multiplier, zero_point, qmin, qmax)",
    )


def _message_args(message: Any) -> list[Any]:
    mq = _message(message)
    return [mq.multiplier, mq.zero_point, mq.qmin, mq.qmax]


def _features(q: Any, bits: int, num_rows: int, num_features: int | None) -> tuple[np.ndarray, int]:
    q = _array(q, "q")
    if bits == 8:
        q = _check(q, "q", (np.int8,), 2)
        f = q.shape[1] if num_features is None else int(num_features)
    else:
        q = _check(q, "q", (np.uint8, np.int8), 2)
        f = q.shape[1] * (8 // bits) if num_features is None else int(num_features)
    if f < 0 or row_bytes(f, bits) > q.shape[1]:
        raise InputError(
            f"q rows of {q.shape[1]} bytes cannot hold {f} features of {bits} bits", "check num_features"
        )
    if q.shape[0] != num_rows:
        raise InputError(
            f"q has {q.shape[0]} rows, the graph has {num_rows} source nodes", "pass one row per node"
        )
    return q, f


def _weights(csr: CSR, edge_weights: Any) -> np.ndarray | None:
    if edge_weights is None:
        return csr.edge_weights
    w = _check(_array(edge_weights, "edge_weights"), "edge_weights", (np.int8, np.int16), 1)
    if w.shape[0] != csr.num_edges:
        raise InputError(
            f"edge_weights has {w.shape[0]} entries for {csr.num_edges} edges",
            "pass one weight per edge (CSR order)",
        )
    return w


def _spmm_args(
    csr: CSR,
    q: Any,
    bits: int,
    zero_point: int,
    edge_weights: Any,
    weight_zero_point: int,
    num_features: int | None,
) -> tuple[list[Any], int]:
    if not isinstance(csr, CSR):
        raise InputError(f"csr must be a CSR, got {type(csr).__name__}", "build one with CSR.from_edge_index")
    bits = _check_bits(bits)
    x, f = _features(q, bits, csr.num_cols, num_features)
    w = _weights(csr, edge_weights)
    args = [
        csr.num_rows,
        csr.num_cols,
        f,
        _ptr(csr.indptr),
        _ptr(csr.indices),
        int(csr.indices.dtype == np.int64),
        _ptr(x),
        x.shape[1],
        _int32(zero_point, "zero_point"),
        _ptr(w),
        0 if w is None else w.dtype.itemsize,
        _int32(weight_zero_point, "weight_zero_point"),
    ]
    return args, f


def spmm(
    csr: CSR,
    q: Any,
    bits: int,
    zero_point: int,
    edge_weights: Any = None,
    threads: int | None = None,
    *,
    weight_zero_point: int = 0,
    num_features: int | None = None,
    message: MessageQuant | tuple[float, int, int, int] | None = None,
) -> np.ndarray:
    """int32 ``[num_rows, F]``: ``sum_e (w_e - weight_zero_point) * (q[col_e] - zero_point)``.

    ``q`` is int8 ``[num_cols, F]`` (8 bits) or packed ``[num_cols, bytes]`` (4/2 bits, see ``pack``;
    ``num_features`` defaults to every field of a row). ``edge_weights`` (CSR order) override
    ``csr.edge_weights``; without either every edge weighs 1. ``message``: quantize each product before the
    sum (see ``MessageQuant``), summing ``q_msg - message.zero_point``.
    """
    lib = load().lib
    args, f = _spmm_args(csr, q, bits, zero_point, edge_weights, weight_zero_point, num_features)
    threads = _threads(threads)
    out = np.empty((csr.num_rows, f), dtype=np.int32)
    if message is not None:
        status = lib.csr_spmm_msg(bits, *args, *_message_args(message), _ptr(out), f, threads)
    else:
        fn = {8: lib.csr_spmm_i8, 4: lib.csr_spmm_i4, 2: lib.csr_spmm_i2}[bits]
        status = fn(*args, _ptr(out), f, threads)
    _raise(status, "spmm")
    return out


def _requant_param(
    value: Any, name: str, length_row: int, length_col: int, axis: int | None, dtype: Any
) -> tuple[np.ndarray, int]:
    """A 1-element (per tensor) or per-row/per-column parameter and its mode."""
    raw = _array(value, name)
    if np.dtype(dtype).kind == "f":
        if raw.size and not np.all(np.isfinite(raw.astype(np.float64))):
            raise InputError(f"{name} holds non-finite values", f"pass finite {name}s")
    elif raw.size and (raw.min() < -(2**31) or raw.max() >= 2**31 or np.any(raw != np.round(raw))):
        raise InputError(f"{name} must hold int32 integers", f"pass integer {name}s within int32")
    arr = np.ascontiguousarray(raw, dtype=dtype).reshape(-1)
    if arr.size == 1:
        return arr, _MODES["tensor"]
    if axis is None:
        raise InputError(
            f"{name} has {arr.size} values but no axis was given", "pass axis=0 (rows) or axis=1 (columns)"
        )
    mode, length = (_MODES["row"], length_row) if axis == 0 else (_MODES["col"], length_col)
    if arr.size != length:
        raise InputError(
            f"{name} has {arr.size} values, axis {axis} has {length}",
            f"pass one {name} per entry of axis {axis}",
        )
    return arr, mode


def _axis(axis: int | None, ndim: int) -> int | None:
    if axis is None:
        return None
    if axis not in (-2, -1, 0, 1) or (ndim == 1 and axis not in (0, -1)):
        raise InputError(
            f"axis {axis} is out of range for a {ndim}-D accumulator", "use axis 0 (rows) or 1 / -1 (columns)"
        )
    if ndim == 1:
        return 1
    return axis % 2


def _check_range(qmin: int, qmax: int, out_dtype: Any) -> None:
    info = np.iinfo(out_dtype)
    if not info.min <= qmin <= qmax <= info.max:
        raise InputError(
            f"[qmin, qmax] = [{qmin}, {qmax}] does not fit {np.dtype(out_dtype).name}", "pass a valid range"
        )


def spmm_requantize(
    csr: CSR,
    q: Any,
    bits: int,
    zero_point: int,
    multiplier: Any,
    out_zero_point: Any,
    qmin: int = -128,
    qmax: int = 127,
    *,
    axis: int | None = None,
    relu: bool = False,
    edge_weights: Any = None,
    weight_zero_point: int = 0,
    num_features: int | None = None,
    threads: int | None = None,
    message: MessageQuant | tuple[float, int, int, int] | None = None,
) -> np.ndarray:
    """``requantize(spmm(...), multiplier, out_zero_point, qmin, qmax, axis, relu)`` as int8, fused per row.

    ``multiplier``/``out_zero_point``: one value, or one per row (``axis=0``, e.g. mean aggregation) or per
    column (``axis=1``). ``message``: as in ``spmm``, the per-message quantizer applied before the sum.
    """
    lib = load().lib
    args, f = _spmm_args(csr, q, bits, zero_point, edge_weights, weight_zero_point, num_features)
    ax = _axis(axis, 2)
    m, m_mode = _requant_param(multiplier, "multiplier", csr.num_rows, f, ax, np.float64)
    z, z_mode = _requant_param(out_zero_point, "out_zero_point", csr.num_rows, f, ax, np.int32)
    _check_range(qmin, qmax, np.int8)
    out = np.empty((csr.num_rows, f), dtype=np.int8)
    if message is not None:
        fn, head = lib.csr_spmm_msg_requant, [bits, *args, *_message_args(message)]
    else:
        fn, head = lib.csr_spmm_requant, [bits, *args]
    status = fn(
        *head,
        _ptr(m),
        m_mode,
        _ptr(z),
        z_mode,
        int(qmin),
        int(qmax),
        int(bool(relu)),
        _ptr(out),
        f,
        _threads(threads),
    )
    _raise(status, "spmm_requantize")
    return out


# ---------------------------------------------------------------------------------------------------- requantize


def _requant_setup(
    a: np.ndarray, multiplier: Any, zero_point: Any, qmin: int, qmax: int, axis: int | None, out_dtype: Any
) -> tuple[np.ndarray, tuple[np.ndarray, int], tuple[np.ndarray, int], np.ndarray]:
    """2-D view of ``a``, multiplier and zero point with their modes, and the output array."""
    ax = _axis(axis, a.ndim)
    a2 = a.reshape(1, -1) if a.ndim == 1 else a
    rows, cols = a2.shape
    mult = _requant_param(multiplier, "multiplier", rows, cols, ax, np.float64)
    zero = _requant_param(zero_point, "zero_point", rows, cols, ax, np.int32)
    out_dtype = np.dtype(out_dtype)
    if out_dtype not in (np.dtype(np.int8), np.dtype(np.int32)):
        raise InputError(f"out_dtype {out_dtype} is not supported", "use np.int8 or np.int32")
    _check_range(qmin, qmax, out_dtype)
    return a2, mult, zero, np.empty(a2.shape, dtype=out_dtype)


def requantize(
    acc: Any,
    multiplier: Any,
    zero_point: Any,
    qmin: int,
    qmax: int,
    axis: int | None = -1,
    relu: bool = False,
    out_dtype: Any = np.int8,
    threads: int | None = None,
) -> np.ndarray:
    """``clamp(round_half_even(float64(acc) * multiplier) + zero_point, qmin, qmax)`` of int32 ``acc``.

    ``multiplier``/``zero_point`` hold one value or one per entry of ``axis`` (0: rows, 1/-1: columns) of a 1-D
    or 2-D ``acc``. ``relu`` raises the lower clamp to the zero point. ``out_dtype``: np.int8 or np.int32.
    """
    lib = load().lib
    a = _array(acc, "acc")
    if a.ndim not in (1, 2):
        raise InputError(f"acc has {a.ndim} dimensions, expected 1 or 2", "reshape acc to [rows, cols]")
    ndim = a.ndim
    a = _check(a, "acc", (np.int32,), ndim)
    a2, (m, m_mode), (z, z_mode), out = _requant_setup(a, multiplier, zero_point, qmin, qmax, axis, out_dtype)
    rows, cols = a2.shape
    status = lib.requantize_i32(
        _ptr(a2), rows, cols, cols, _ptr(m), m_mode, _ptr(z), z_mode, int(qmin), int(qmax), int(bool(relu)),
        _ptr(out), out.dtype.itemsize, cols, _threads(threads),
    )  # fmt: skip
    _raise(status, "requantize")
    return out.reshape(a.shape)


def requantize_affine(
    x: Any,
    multiplier: Any,
    zero_point: Any,
    qmin: int,
    qmax: int,
    axis: int | None = -1,
    *,
    input_zero_point: int = 0,
    bias: Any = None,
    relu: bool = False,
    out_dtype: Any = np.int8,
    threads: int | None = None,
) -> np.ndarray:
    """``requantize(t)`` of ``t = x - input_zero_point + bias`` (then ``max(t, 0)`` when ``relu``).

    ``x``: int8 or int32, 1-D or 2-D; ``bias``: int32, one value or one per column. The same exactness as
    ``requantize`` (int32 arithmetic modulo 2**32; the compiler proves no overflow).
    """
    lib = load().lib
    a = _array(x, "x")
    if a.ndim not in (1, 2):
        raise InputError(f"x has {a.ndim} dimensions, expected 1 or 2", "reshape x to [rows, cols]")
    a = _check(a, "x", (np.int8, np.int32), a.ndim)
    a2, (m, m_mode), (z, z_mode), out = _requant_setup(a, multiplier, zero_point, qmin, qmax, axis, out_dtype)
    rows, cols = a2.shape
    b = None
    if bias is not None:
        b = np.ascontiguousarray(_array(bias, "bias"), dtype=np.int32).reshape(-1)
        if b.size == 1:
            b = np.full(cols, b[0], dtype=np.int32)
        if b.size != cols:
            raise InputError(f"bias has {b.size} values for {cols} columns", "pass one bias per column")
    status = lib.requantize_affine(
        _ptr(a2), a2.dtype.itemsize, rows, cols, cols, _int32(input_zero_point, "input_zero_point"), _ptr(b),
        int(bool(relu)), _ptr(m), m_mode, _ptr(z), z_mode, int(qmin), int(qmax), _ptr(out), out.dtype.itemsize,
        cols, _threads(threads),
    )  # fmt: skip
    _raise(status, "requantize_affine")
    return out.reshape(a.shape)


def quantize(
    x: Any, scale: float, zero_point: int, qmin: int, qmax: int, threads: int | None = None
) -> np.ndarray:
    """int8 ``clamp(round_half_even(x / scale) + zero_point, qmin, qmax)`` of float32 ``x``, computed in float32.

    Bit-exact with ``quantgraph::quantize`` per tensor (the same float32 division, rounding and clamps).
    A NaN in ``x`` raises :class:`NaNInput`.
    """
    lib = load().lib
    a = _array(x, "x")
    if a.ndim not in (1, 2):
        raise InputError(f"x has {a.ndim} dimensions, expected 1 or 2", "reshape x to [rows, cols]")
    a = _check(a, "x", (np.float32,), a.ndim)
    a2 = a.reshape(1, -1) if a.ndim == 1 else a
    _check_range(qmin, qmax, np.int8)
    s = float(np.float32(scale))
    if not np.isfinite(s) or s <= 0:
        raise InputError(f"scale {scale} is not a positive finite number", "pass the quantizer's scale")
    out = np.empty(a2.shape, dtype=np.int8)
    status = lib.quantize_f32(
        _ptr(a2), a2.shape[0], a2.shape[1], a2.shape[1], s, float(zero_point), float(qmin), float(qmax),
        _ptr(out), a2.shape[1], _threads(threads),
    )  # fmt: skip
    if status == QG_ENAN:
        raise NaNInput("x holds NaN, which has no int8 image", "check the inputs of the quantize")
    _raise(status, "quantize")
    return out.reshape(a.shape)


# ---------------------------------------------------------------------------------------------------- GEMM


@dataclass(frozen=True)
class PackedWeight:
    """An int8 ``[K, N]`` weight in the kernel's VNNI layout, with its column sums."""

    data: np.ndarray
    colsum: np.ndarray
    in_features: int
    out_features: int


def pack_weight(b: Any, layout: str = "kn") -> PackedWeight:
    """Pack int8 ``b`` given as ``[K, N]`` (``layout="kn"``) or ``[N, K]`` (``"nk"``, a Linear weight)."""
    lib = load().lib
    b = _check(_array(b, "b"), "b", (np.int8,), 2)
    if layout not in ("kn", "nk"):
        raise InputError(f"unknown weight layout {layout!r}", "use 'kn' ([in, out]) or 'nk' ([out, in])")
    k, n = b.shape if layout == "kn" else b.shape[::-1]
    data = np.empty(int(lib.gemm_i8_packed_size(k, n)), dtype=np.int8)
    colsum = np.empty(n, dtype=np.int32)
    _raise(
        lib.gemm_i8_pack(_ptr(b), k, n, int(layout == "nk"), b.shape[1], _ptr(data), _ptr(colsum)),
        "gemm_i8_pack",
    )
    return PackedWeight(data, colsum, int(k), int(n))


def gemm_i8(
    a: Any,
    b: Any,
    a_zero_point: int = 0,
    b_zero_point: Any = 0,
    bias: Any = None,
    layout: str = "kn",
    threads: int | None = None,
) -> np.ndarray:
    """int32 ``(a - a_zero_point) @ (b - b_zero_point) + bias`` for int8 ``a[M, K]``.

    ``b``: int8 ``[K, N]``/``[N, K]`` (see ``layout``) or a ``PackedWeight``; ``b_zero_point`` one value or one
    per output column; ``bias`` int32 ``[N]`` at the accumulator's scale.
    """
    lib = load().lib
    a = _check(_array(a, "a"), "a", (np.int8,), 2)
    pw = b if isinstance(b, PackedWeight) else pack_weight(b, layout)
    m, k = a.shape
    if k != pw.in_features:
        raise InputError(
            f"a has {k} columns, the weight has {pw.in_features} input features", "match the inner sizes"
        )
    n = pw.out_features
    zb = np.ascontiguousarray(_array(b_zero_point, "b_zero_point"), dtype=np.int32).reshape(-1)
    if zb.size not in (1, n):
        raise InputError(
            f"b_zero_point has {zb.size} values for {n} columns", "pass one value or one per column"
        )
    bias_arr = None
    if bias is not None:
        bias_arr = _check(_array(bias, "bias"), "bias", (np.int32,), 1)
        if bias_arr.shape[0] != n:
            raise InputError(
                f"bias has {bias_arr.shape[0]} values for {n} columns", "pass one bias per column"
            )
    out = np.empty((m, n), dtype=np.int32)
    status = lib.gemm_i8(
        _ptr(a), m, k, k, _int32(a_zero_point, "a_zero_point"), _ptr(pw.data), _ptr(pw.colsum), n, _ptr(zb),
        int(zb.size > 1), _ptr(bias_arr), _ptr(out), n, _threads(threads),
    )  # fmt: skip
    _raise(status, "gemm_i8")
    return out


# ---------------------------------------------------------------------------------------------------- fused epilogues


@dataclass(frozen=True)
class Stage:
    """One requantize of a fused epilogue: ``requantize(relu_in ? max(t - input_zero_point + bias, 0) : ...)``.

    ``requantize(v) = clamp(round_half_even(float64(v) * multiplier) + zero_point, qmin, qmax)``; ``relu`` raises
    the lower clamp to the zero point (as ``spmm_requantize``'s ``relu``). ``multiplier``/``zero_point``: one
    value or one per row (``axis=0``) or column (``axis=1``); ``bias``: int32, one per column, or None.
    """

    multiplier: Any
    zero_point: Any
    qmin: int = -128
    qmax: int = 127
    axis: int | None = None
    input_zero_point: int = 0
    bias: Any = None
    relu_in: bool = False
    relu: bool = False


class _StageC(ctypes.Structure):
    _fields_ = [
        ("mult", ctypes.c_void_p), ("zp", ctypes.c_void_p), ("bias", ctypes.c_void_p),
        ("mult_mode", ctypes.c_int32), ("zp_mode", ctypes.c_int32), ("qmin", ctypes.c_int32),
        ("qmax", ctypes.c_int32), ("zin", ctypes.c_int32), ("relu_in", ctypes.c_int32),
        ("relu_out", ctypes.c_int32), ("pad", ctypes.c_int32),
    ]  # fmt: skip


MAX_STAGES = 4


class _EpilogueC(ctypes.Structure):
    _fields_ = [
        ("n_stages", ctypes.c_int32), ("out_kind", ctypes.c_int32), ("dq_scale", ctypes.c_float),
        ("dq_zero", ctypes.c_int32), ("out", ctypes.c_void_p), ("out_stride", ctypes.c_int64),
        ("st", _StageC * MAX_STAGES),
    ]  # fmt: skip


@dataclass(frozen=True)
class Epilogue:
    """``stages`` (then packing or dequantize) checked and laid out once for ``[rows, cols]`` results.

    Pass it in place of the stage list to ``spmm_epilogue`` / ``rows_epilogue`` / ``gemm_epilogue`` to skip
    that work on every call (``NativeModel`` keeps one per fused step and graph size).
    """

    rows: int
    cols: int
    out_bits: int
    dequantize: tuple[float, int] | None
    struct: bytes  # the _EpilogueC without its output pointer
    keep: tuple[np.ndarray, ...]  # the parameter arrays it points to


def prepare_epilogue(
    rows: int,
    cols: int,
    stages: list[Stage],
    out_bits: int = 8,
    dequantize: tuple[float, int] | None = None,
) -> Epilogue:
    """The checked C epilogue of ``stages`` for ``[rows, cols]`` results (see ``Epilogue``)."""
    if not 1 <= len(stages) <= MAX_STAGES:
        raise InputError(f"an epilogue takes 1 to {MAX_STAGES} stages, got {len(stages)}", "split the chain")
    epi = _EpilogueC()
    keep: list[np.ndarray] = []
    for k, st in enumerate(stages):
        ax = _axis(st.axis, 2)
        m, m_mode = _requant_param(st.multiplier, "multiplier", rows, cols, ax, np.float64)
        z, z_mode = _requant_param(st.zero_point, "zero_point", rows, cols, ax, np.int32)
        _check_range(st.qmin, st.qmax, np.int32)
        b = None
        if st.bias is not None:
            b = np.ascontiguousarray(_array(st.bias, "bias"), dtype=np.int32).reshape(-1)
            if b.size == 1:
                b = np.full(cols, b[0], dtype=np.int32)
            if b.size != cols:
                raise InputError(f"bias has {b.size} values for {cols} columns", "pass one bias per column")
        keep += [m, z] + ([b] if b is not None else [])
        epi.st[k] = _StageC(
            m.ctypes.data, z.ctypes.data, _ptr(b), m_mode, z_mode, int(st.qmin), int(st.qmax),
            _int32(st.input_zero_point, "input_zero_point"), int(bool(st.relu_in)), int(bool(st.relu)), 0,
        )  # fmt: skip
    epi.n_stages = len(stages)
    if dequantize is not None:
        dq = (float(np.float32(dequantize[0])), int(dequantize[1]))
        epi.out_kind, epi.dq_scale, epi.dq_zero = 32, dq[0], dq[1]
        bits = 8
    else:
        dq = None
        bits = _check_bits(out_bits)
        epi.out_kind = bits
    return Epilogue(int(rows), int(cols), bits, dq, bytes(epi), tuple(keep))


def _epilogue(
    rows: int,
    cols: int,
    stages: list[Stage] | Epilogue,
    out_bits: int,
    dequantize: tuple[float, int] | None,
) -> tuple[_EpilogueC, np.ndarray, Epilogue]:
    """The C epilogue of ``stages`` for a ``[rows, cols]`` result, its output array and the prepared epilogue
    (which holds the arrays it points to)."""
    if isinstance(stages, Epilogue):
        prepared = stages
        if (prepared.rows, prepared.cols) != (rows, cols):
            raise InputError(
                f"the epilogue was prepared for [{prepared.rows}, {prepared.cols}] results, not [{rows}, {cols}]",
                "prepare it for this shape",
            )
        dq = None if dequantize is None else (float(np.float32(dequantize[0])), int(dequantize[1]))
        if dq != prepared.dequantize or (dq is None and out_bits != prepared.out_bits):
            raise InputError(
                "out_bits / dequantize differ from those the epilogue was prepared with", "pass the same ones"
            )
    else:
        prepared = prepare_epilogue(rows, cols, stages, out_bits, dequantize)
    epi = _EpilogueC.from_buffer_copy(prepared.struct)
    if prepared.dequantize is not None:
        out = np.empty((rows, cols), dtype=np.float32)
    elif prepared.out_bits == 8:
        out = np.empty((rows, cols), dtype=np.int8)
    else:
        out = aligned_empty((rows, row_bytes(cols, prepared.out_bits)), np.uint8)
    epi.out = out.ctypes.data
    epi.out_stride = out.strides[0] if out.ndim == 2 and rows else out.shape[-1] * out.itemsize
    return epi, out, prepared


def spmm_epilogue(
    csr: CSR,
    q: Any,
    bits: int,
    zero_point: int,
    stages: list[Stage] | Epilogue,
    *,
    out_bits: int = 8,
    dequantize: tuple[float, int] | None = None,
    weight_zero_point: int = 0,
    num_features: int | None = None,
    message: MessageQuant | tuple[float, int, int, int] | None = None,
    threads: int | None = None,
) -> np.ndarray:
    """``spmm`` followed by the requantize ``stages`` in the row loop (no int32 intermediate).

    The last stage's integers are returned as int8 (``out_bits=8``), packed 4/2-bit rows (``out_bits=4/2``, the
    layout of ``pack``) or, with ``dequantize=(scale, zero_point)``, float32 ``float(t - zero_point) * scale``.
    Equal to ``spmm`` then ``requantize_affine`` per stage (then ``pack`` / the IR's ``dequantize``).
    """
    lib = load().lib
    args, f = _spmm_args(csr, q, bits, zero_point, None, weight_zero_point, num_features)
    epi, out, keep = _epilogue(csr.num_rows, f, stages, out_bits, dequantize)
    msg = [1, *_message_args(message)] if message is not None else [0, 0.0, 0, 0, 0]
    status = lib.csr_spmm_epilogue(bits, *args, *msg, ctypes.byref(epi), _threads(threads))
    _raise(status, "spmm_epilogue")
    del keep
    return out


def rows_epilogue(
    x: Any,
    stages: list[Stage] | Epilogue,
    *,
    out_bits: int = 8,
    dequantize: tuple[float, int] | None = None,
    threads: int | None = None,
) -> np.ndarray:
    """The requantize ``stages`` (then packing or dequantize, as in ``spmm_epilogue``) of int8/int32 rows."""
    lib = load().lib
    a = _array(x, "x")
    a = _check(a, "x", (np.int8, np.int32), 2)
    epi, out, keep = _epilogue(a.shape[0], a.shape[1], stages, out_bits, dequantize)
    status = lib.rows_epilogue(_ptr(a), a.dtype.itemsize, a.shape[0], a.shape[1], a.shape[1], ctypes.byref(epi),
                               _threads(threads))  # fmt: skip
    _raise(status, "rows_epilogue")
    del keep
    return out


def gemm_epilogue(
    a: Any,
    b: PackedWeight,
    a_zero_point: int,
    b_zero_point: Any,
    bias: Any,
    stages: list[Stage] | Epilogue,
    *,
    out_bits: int = 8,
    dequantize: tuple[float, int] | None = None,
    input_quant: tuple[float, int, int, int] | None = None,
    row_index: np.ndarray | None = None,
    threads: int | None = None,
) -> np.ndarray:
    """``gemm_i8`` with the requantize ``stages`` (then packing/dequantize) fused into its tile loop.

    ``input_quant=(scale, zero_point, qmin, qmax)``: ``a`` is float32 and is quantized per row as ``quantize``
    does, inside the GEMM (no int8 copy of it). ``row_index`` (int64 ``[M]``): output row m reads row
    ``row_index[m]`` of ``a`` (``M = len(row_index)``).
    """
    lib = load().lib
    arr = _check(_array(a, "a"), "a", (np.float32,) if input_quant else (np.int8,), 2)
    k = arr.shape[1]
    if k != b.in_features:
        raise InputError(
            f"a has {k} columns, the weight has {b.in_features} input features", "match the inner sizes"
        )
    m = arr.shape[0]
    idx = None
    if row_index is not None:
        idx = _check(np.ascontiguousarray(_array(row_index, "row_index")), "row_index", (np.int64,), 1)
        if idx.size and (idx.min() < 0 or idx.max() >= m):
            raise InputError(f"row_index falls outside [0, {m})", "pass row numbers of a")
        m = idx.shape[0]
    n = b.out_features
    zb = np.ascontiguousarray(_array(b_zero_point, "b_zero_point"), dtype=np.int32).reshape(-1)
    if zb.size not in (1, n):
        raise InputError(
            f"b_zero_point has {zb.size} values for {n} columns", "pass one value or one per column"
        )
    bias_arr = None if bias is None else _check(_array(bias, "bias"), "bias", (np.int32,), 1)
    if bias_arr is not None and bias_arr.shape[0] != n:
        raise InputError(f"bias has {bias_arr.shape[0]} values for {n} columns", "pass one bias per column")
    xq = None
    if input_quant is not None:
        scale, zp, qmin, qmax = input_quant
        s = float(np.float32(scale))
        if not np.isfinite(s) or s <= 0:
            raise InputError(f"scale {scale} is not a positive finite number", "pass the quantizer's scale")
        _check_range(qmin, qmax, np.int8)
        xq = np.array([s, zp, qmin, qmax], dtype=np.float32)
    epi, out, keep = _epilogue(m, n, stages, out_bits, dequantize)
    status = lib.gemm_i8_epilogue(
        None if xq is not None else _ptr(arr), _ptr(arr) if xq is not None else None, _ptr(xq), _ptr(idx), m, k, k,
        _int32(a_zero_point, "a_zero_point"), _ptr(b.data), _ptr(b.colsum), n, _ptr(zb), int(zb.size > 1),
        _ptr(bias_arr), ctypes.byref(epi), _threads(threads),
    )  # fmt: skip
    _raise(status, "gemm_epilogue")
    del keep
    return out
