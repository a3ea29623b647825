"""Native integer kernels: bit-exact against int64 NumPy/torch references (skipped without a C compiler)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from quantgraph.errors import EnvironmentFailure, InputError
from quantgraph.ir.int_ops import LINEAR_INT, REQUANTIZE
from quantgraph.native import build
from quantgraph.native import kernels as nk

if not build.available():
    pytest.skip(
        "no C compiler found (install gcc or set CC) to build the native kernels", allow_module_level=True
    )


@pytest.fixture(scope="module", autouse=True)
def lib() -> build.NativeLib:
    """Build (or load from the cache) once per module."""
    return build.load()


def _rng(seed: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(seed))


def _graph(rng: np.random.Generator, n: int, e: int, hub: bool = True) -> np.ndarray:
    """Random edge_index [2, E]: node 0 is a hub (a third of the edges target it), the top rows stay empty."""
    src = rng.integers(0, n, e)
    dst = rng.integers(0, max(1, n - n // 4), e)  # the last quarter of the nodes has no in-edges
    if hub and e:
        dst[rng.random(e) < 0.33] = 0
    return np.stack([src, dst])


def _values(rng: np.random.Generator, shape: tuple[int, ...], bits: int) -> np.ndarray:
    return rng.integers(-(2 ** (bits - 1)), 2 ** (bits - 1), shape).astype(np.int8)


def _reference(
    edge_index: np.ndarray, n: int, q: np.ndarray, zx: int, w: np.ndarray | None, zw: int
) -> np.ndarray:
    """int64 torch scatter-add of (w - zw) * (q[src] - zx) at dst, in edge_index order."""
    src, dst = torch.from_numpy(edge_index[0]), torch.from_numpy(edge_index[1])
    msg = torch.from_numpy(q).to(torch.int64)[src] - zx
    if w is not None:
        msg = msg * (torch.from_numpy(w).to(torch.int64) - zw)[:, None]
    out = torch.zeros((n, q.shape[1]), dtype=torch.int64).index_add_(0, dst, msg)
    return out.numpy()


CASES = [(1, 0, 5), (7, 30, 1), (50, 400, 37), (300, 3000, 130), (257, 2500, 64)]


@pytest.mark.parametrize("bits", [8, 4, 2])
@pytest.mark.parametrize("weights", [None, "int8", "int16"])
def test_spmm_matches_int64_reference(bits: int, weights: str | None) -> None:
    rng = _rng(bits * 10 + (0 if weights is None else len(weights)))
    for k, (n, e, f) in enumerate(CASES):
        ei = _graph(rng, n, e)
        q = _values(rng, (n, f), bits)
        zx = int(rng.integers(-(2 ** (bits - 1)), 2 ** (bits - 1)))
        w, zw = None, 0
        if weights == "int8":
            w, zw = rng.integers(-128, 128, e).astype(np.int8), int(rng.integers(-5, 5))
        elif weights == "int16":
            w, zw = rng.integers(-(2**15), 2**15, e).astype(np.int16), 7
        index_dtype = np.int32 if k % 2 else np.int64
        csr = nk.CSR.from_edge_index(ei, n, w, index_dtype=index_dtype)
        got = nk.spmm(csr, nk.pack(q, bits), bits, zx, weight_zero_point=zw, num_features=f)
        assert got.dtype == np.int32 and got.shape == (n, f)
        np.testing.assert_array_equal(got, _reference(ei, n, q, zx, w, zw), err_msg=f"case {(n, e, f)}")


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_spmm_rows_around_the_partial_sum_flush(bits: int) -> None:
    """Rows at, just past and far past the narrow partial sums' capacity, extreme values and weights."""
    n, f = 3, 5
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    q = np.array([[lo] * f, [hi] * f, [0] * f], dtype=np.int8)
    flush = {8: 256, 4: 17, 2: 85}[bits]
    for deg in (flush, flush + 1, 2 * flush + 3, 40000):
        ei = np.stack([np.arange(deg) % 2, np.zeros(deg, dtype=np.int64)])
        csr = nk.CSR.from_edge_index(ei, n)
        for zx in (0, hi):
            got = nk.spmm(csr, nk.pack(q, bits), bits, zx, num_features=f)
            np.testing.assert_array_equal(got, _reference(ei, n, q, zx, None, 0), err_msg=f"degree {deg}")
        w = np.full(deg, -128, dtype=np.int8)  # the largest |w - zw| the weight type allows
        for zw in (0, 127):
            got = nk.spmm(csr, nk.pack(q, bits), bits, lo, w, weight_zero_point=zw, num_features=f)
            np.testing.assert_array_equal(
                got, _reference(ei, n, q, lo, w, zw), err_msg=f"weighted, degree {deg}"
            )


def test_spmm_threads_and_strided_rows_agree() -> None:
    rng = _rng(1)
    n, e, f = 400, 6000, 70
    ei = _graph(rng, n, e)
    q = _values(rng, (n, f), 8)
    csr = nk.CSR.from_edge_index(ei, n, rng.integers(-100, 100, e).astype(np.int8))
    one = nk.spmm(csr, q, 8, 3, threads=1)
    two = nk.spmm(csr, q, 8, 3, threads=2)
    np.testing.assert_array_equal(one, two)
    padded = np.zeros((n, 128), dtype=np.int8)  # rows of 128 bytes holding 70 features
    padded[:, :f] = q
    np.testing.assert_array_equal(nk.spmm(csr, padded, 8, 3, num_features=f), one)


def test_csr_from_edge_index_sorts_by_target_and_permutes_weights() -> None:
    ei = np.array([[0, 2, 1, 3, 0], [2, 0, 2, 0, 1]])
    w = np.array([10, 20, 30, 40, 50], dtype=np.int8)
    csr = nk.CSR.from_edge_index(torch.from_numpy(ei), 4, torch.from_numpy(w))
    np.testing.assert_array_equal(csr.indptr, [0, 2, 3, 5, 5])
    np.testing.assert_array_equal(csr.indices, [2, 3, 0, 0, 1])  # stable within a row
    np.testing.assert_array_equal(csr.edge_weights, [20, 40, 50, 10, 30])
    assert csr.indices.dtype == np.int32 and csr.num_rows == 4 and csr.num_edges == 5


@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
def test_csr_counting_sort_equals_a_stable_argsort(index_dtype) -> None:
    """The ``csr_build`` kernel against numpy's stable sort: repeated edges, empty rows, isolated nodes."""
    rng = _rng(7)
    for n, e in [(1, 0), (6, 0), (9, 40), (3000, 50000)]:
        ei = np.stack([rng.integers(0, n, e), rng.integers(0, max(n // 3, 1), e)])  # rows >= n // 3 empty
        w = rng.integers(-30000, 30000, e).astype(np.int16)
        csr = nk.CSR.from_edge_index(ei, n, w, index_dtype=index_dtype)
        order = np.argsort(ei[1], kind="stable")
        np.testing.assert_array_equal(
            csr.indptr, np.concatenate([[0], np.cumsum(np.bincount(ei[1], minlength=n))])
        )
        np.testing.assert_array_equal(csr.indices, ei[0][order])
        np.testing.assert_array_equal(csr.edge_weights, w[order])
        assert csr.indices.dtype == index_dtype


def test_csr_refuses_ids_outside_the_graph_and_other_index_types() -> None:
    with pytest.raises(InputError, match="outside"):
        nk.CSR.from_edge_index(np.array([[0, 4], [1, 0]]), 4)
    with pytest.raises(InputError, match="not int32 or int64"):
        nk.CSR.from_edge_index(np.array([[0], [1]]), 4, index_dtype=np.int16)


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_pack_unpack_roundtrip(bits: int) -> None:
    rng = _rng(bits)
    for f in (1, 3, 5, 16, 33, 130):
        q = _values(rng, (9, f), bits)
        packed = nk.pack(q, bits)
        assert packed.shape == (9, nk.row_bytes(f, bits)) and packed.ctypes.data % 64 == 0
        np.testing.assert_array_equal(nk.unpack(packed, bits, f), q)


def test_pack_layout_is_little_end_first() -> None:
    np.testing.assert_array_equal(nk.pack(np.array([[1, -2, 7]]), 4), [[0xE1, 0x07]])
    np.testing.assert_array_equal(nk.pack(np.array([[1, -1, -2, 0, 1]]), 2), [[0x2D, 0x01]])


def _torch_requantize(
    acc: np.ndarray, m: np.ndarray, z: np.ndarray, qmin: int, qmax: int, axis: int
) -> np.ndarray:
    t = REQUANTIZE(
        torch.from_numpy(acc),
        torch.from_numpy(np.asarray(m, dtype=np.float64)),
        torch.from_numpy(np.asarray(z, dtype=np.int32)),
        torch.tensor(qmin),
        torch.tensor(qmax),
        axis,
    )
    return t.numpy()


def test_requantize_matches_int_ops_bit_for_bit() -> None:
    rng = _rng(2)
    rows, cols = 64, 45
    acc = rng.integers(-(2**20), 2**20, (rows, cols)).astype(np.int32)
    acc[:4] = np.arange(-90, 90, 4)[:cols]  # with m = 0.5 or 0.25 below: exact ties x.5
    acc[0, :3] = [2**31 - 1, -(2**31), 0]
    cases = [
        (np.array(0.5), np.array(3), None),
        (np.array(0.25), np.array(-7), None),
        (np.array(2.0**-9 * 1.234567), np.array(0), None),
        (
            1.0 / rng.integers(1, 40, rows).astype(np.float64),
            rng.integers(-20, 20, rows),
            0,
        ),  # per row (mean)
        (rng.random(cols) * 2.0**-8, rng.integers(-20, 20, cols), 1),  # per column
        (np.full(rows, 0.5), np.array(1), 0),
    ]
    for m, z, axis in cases:
        for qmin, qmax, dtype in ((-128, 127, np.int8), (-8, 7, np.int8), (-(2**31), 2**31 - 1, np.int32)):
            ref = _torch_requantize(acc, m, z, qmin, qmax, 0 if axis is None else axis)
            got = nk.requantize(acc, m, z, qmin, qmax, axis=axis, out_dtype=dtype)
            assert got.dtype == dtype
            np.testing.assert_array_equal(got.astype(np.int32), ref, err_msg=f"m={m}, z={z}, axis={axis}")
        relu = nk.requantize(acc, m, z, -128, 127, axis=axis, relu=True)
        zb = np.asarray(z).reshape((-1, 1) if axis == 0 else (1, -1)) if np.ndim(z) else z
        ref = np.maximum(_torch_requantize(acc, m, z, -128, 127, 0 if axis is None else axis), zb)
        np.testing.assert_array_equal(relu.astype(np.int32), ref)


def test_requantize_ties_round_half_to_even() -> None:
    acc = np.array([-5, -3, -1, 1, 3, 5, 7], dtype=np.int32)
    np.testing.assert_array_equal(nk.requantize(acc, 0.5, 0, -128, 127), [-2, -2, 0, 0, 2, 2, 4])


@pytest.mark.parametrize("bits", [8, 4])
def test_spmm_requantize_fuses_mean(bits: int) -> None:
    rng = _rng(3)
    n, e, f = 200, 2500, 40
    ei = _graph(rng, n, e)
    q = _values(rng, (n, f), bits)
    csr = nk.CSR.from_edge_index(ei, n, rng.integers(-128, 128, e).astype(np.int8))
    deg = np.maximum(np.diff(csr.indptr), 1).astype(np.float64)
    m = 0.37 / deg
    acc = nk.spmm(csr, nk.pack(q, bits), bits, 1, num_features=f)
    fused = nk.spmm_requantize(csr, nk.pack(q, bits), bits, 1, m, 5, axis=0, num_features=f)
    np.testing.assert_array_equal(fused, nk.requantize(acc, m, 5, -128, 127, axis=0))
    relu = nk.spmm_requantize(csr, nk.pack(q, bits), bits, 1, 0.01, -3, relu=True, num_features=f, threads=2)
    np.testing.assert_array_equal(relu, np.maximum(nk.requantize(acc, 0.01, -3, -128, 127), -3))


def _message_reference(
    edge_index: np.ndarray,
    n: int,
    q: np.ndarray,
    zx: int,
    w: np.ndarray | None,
    zw: int,
    mq: nk.MessageQuant,
) -> np.ndarray:
    """int64 scatter-add of clamp(rint(float64(p) * m) + z, qmin, qmax) - z, p = (w - zw) * (q[src] - zx)."""
    src, dst = edge_index
    p = q[src].astype(np.int64) - zx
    if w is not None:
        p = p * (w.astype(np.int64) - zw)[:, None]
    msg = np.minimum(np.rint(p.astype(np.float64) * mq.multiplier) + mq.zero_point, mq.qmax)
    msg = torch.from_numpy(np.maximum(msg, mq.qmin).astype(np.int64) - mq.zero_point)
    out = torch.zeros((n, q.shape[1]), dtype=torch.int64).index_add_(0, torch.from_numpy(dst), msg)
    return out.numpy().astype(np.int32)  # the kernels wrap modulo 2**32 like this cast


# (multiplier, zero point, qmin, qmax): exact .5 ties (m = 0.5, 0.25, 2**-7), narrow and shifted ranges, a
# zero point outside the range, ranges wider than 256 values (direct evaluation) and the full int32 range
MESSAGES = [
    nk.MessageQuant(0.5, 3, -128, 127),
    nk.MessageQuant(0.25, -7, -8, 7),
    nk.MessageQuant(2.0**-7, 0, -128, 127),
    nk.MessageQuant(-0.5, 200, -128, 127),
    nk.MessageQuant(0.37, -128, -128, 127),
    nk.MessageQuant(0.5, 0, 0, 255),
    nk.MessageQuant(0.5, 5, -1000, 1000),
    nk.MessageQuant(1.0 / 3.0, 100, -(2**31), 2**31 - 1),
]
MESSAGE_CASES = [*CASES, (40, 500, 600)]


@pytest.mark.parametrize("bits", [8, 4, 2])
@pytest.mark.parametrize("weights", [None, "int8", "int16"])
def test_spmm_message_quantizer_matches_reference(bits: int, weights: str | None) -> None:
    rng = _rng(100 + bits * 10 + (0 if weights is None else len(weights)))
    for k, (n, e, f) in enumerate(MESSAGE_CASES):
        ei = _graph(rng, n, e)
        q = _values(rng, (n, f), bits)
        zx = int(rng.integers(-(2 ** (bits - 1)), 2 ** (bits - 1)))
        w, zw = None, 0
        if weights == "int8":
            w, zw = rng.integers(-128, 128, e).astype(np.int8), int(rng.integers(-5, 5))
        elif weights == "int16":
            w, zw = rng.integers(-3000, 3000, e).astype(np.int16), 7
        csr = nk.CSR.from_edge_index(ei, n, w, index_dtype=np.int32 if k % 2 else np.int64)
        packed = nk.pack(q, bits)
        for mq in MESSAGES:
            got = nk.spmm(csr, packed, bits, zx, weight_zero_point=zw, num_features=f, message=mq)
            assert got.dtype == np.int32 and got.shape == (n, f)
            np.testing.assert_array_equal(
                got, _message_reference(ei, n, q, zx, w, zw, mq), err_msg=f"case {(n, e, f)}, {mq}"
            )


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_spmm_message_quantizer_short_rows_match_reference(bits: int) -> None:
    """Rows of 1–17 features (AVX2 keeps rows of at most 16 in registers, one or two 8-field chunks; packed
    rows are unpacked in feature order), with and without weights, the last row at the array's end."""
    rng = _rng(300 + bits)
    n, e = 90, 1200
    ei = _graph(rng, n, e)
    for f in (1, 3, 7, 8, 9, 13, 16, 17):
        q = _values(rng, (n, f), bits)
        zx = int(rng.integers(-(2 ** (bits - 1)), 2 ** (bits - 1)))
        for w, zw in ((None, 0), (rng.integers(-128, 128, e).astype(np.int8), -3)):
            csr = nk.CSR.from_edge_index(ei, n, w)
            for mq in MESSAGES[:5]:
                got = nk.spmm(
                    csr, nk.pack(q, bits), bits, zx, weight_zero_point=zw, num_features=f, message=mq
                )
                np.testing.assert_array_equal(
                    got, _message_reference(ei, n, q, zx, w, zw, mq), err_msg=f"F={f}, {mq}"
                )


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_spmm_message_quantizer_extreme_zero_points(bits: int) -> None:
    """Products far beyond int32 (exact in float64 below 2**53) and message zero points at the int32 limits:
    every sum wraps modulo 2**32 like the int64 reference cast to int32."""
    rng = _rng(200 + bits)
    n, e, f = 80, 1500, 45
    ei = _graph(rng, n, e)
    q = _values(rng, (n, f), bits)
    packed = nk.pack(q, bits)
    for w in (
        None,
        rng.integers(-128, 128, e).astype(np.int8),
        rng.integers(-(2**15), 2**15, e).astype(np.int16),
    ):
        csr = nk.CSR.from_edge_index(ei, n, w)
        for zx, mq in (
            (2**30 - 5, nk.MessageQuant(2.0**-20, 0, -128, 127)),
            (-(2**31), nk.MessageQuant(2.0**-30, 7, -(2**31), 2**31 - 1)),
            (3, nk.MessageQuant(0.5, 2**31 - 1, -128, 127)),
            (-1, nk.MessageQuant(0.25, -(2**31), -(2**31), 2**31 - 1)),
        ):
            got = nk.spmm(csr, packed, bits, zx, num_features=f, message=mq)
            np.testing.assert_array_equal(
                got, _message_reference(ei, n, q, zx, w, 0, mq), err_msg=f"{zx}, {mq}"
            )


def test_spmm_message_quantizer_is_the_int_ops_requantize() -> None:
    """Each message is quantgraph::requantize of the int32 product (torch.round), summed minus its zero point."""
    rng = _rng(7)
    n, e, f = 60, 700, 33
    ei = _graph(rng, n, e)
    q = _values(rng, (n, f), 8)
    w = rng.integers(-128, 128, e).astype(np.int8)
    csr = nk.CSR.from_edge_index(ei, n, w)
    p = (q[ei[0]].astype(np.int64) + 3) * (w.astype(np.int64) - 2)[:, None]
    for m, z, qmin, qmax in ((2.0**-8, 4, -128, 127), (0.5, -1, -8, 7), (0.011, 0, -(2**15), 2**15 - 1)):
        msg = _torch_requantize(p.astype(np.int32), np.array(m), np.array(z), qmin, qmax, 0).astype(np.int64)
        ref = torch.zeros((n, f), dtype=torch.int64).index_add_(
            0, torch.from_numpy(ei[1]), torch.from_numpy(msg - z)
        )
        got = nk.spmm(csr, q, 8, -3, weight_zero_point=2, message=(m, z, qmin, qmax))
        np.testing.assert_array_equal(got, ref.numpy())


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_spmm_message_rows_around_the_partial_sum_flush(bits: int) -> None:
    """Every message at the top of a 256-value range: 16-bit partial sums at, past and far past capacity."""
    n, f = 3, 70
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    q = np.array([[lo] * f, [hi] * f, [0] * f], dtype=np.int8)
    for deg in (255, 256, 257, 513, 40000):
        ei = np.stack([np.arange(deg) % 2, np.zeros(deg, dtype=np.int64)])
        for w in (None, np.full(deg, -128, dtype=np.int8), np.full(deg, -300, dtype=np.int16)):
            csr = nk.CSR.from_edge_index(ei, n, w)
            for mq in (nk.MessageQuant(1000.0, -128, -128, 127), nk.MessageQuant(-1000.0, 127, -128, 127)):
                got = nk.spmm(csr, nk.pack(q, bits), bits, 0, num_features=f, message=mq)
                np.testing.assert_array_equal(
                    got, _message_reference(ei, n, q, 0, w, 0, mq), err_msg=f"degree {deg}, {mq}"
                )


def test_spmm_message_threads_and_strided_rows_agree() -> None:
    rng = _rng(8)
    n, e, f = 3000, 60000, 70
    ei = _graph(rng, n, e)
    q = _values(rng, (n, f), 8)
    for w in (None, rng.integers(-100, 100, e).astype(np.int8), rng.integers(-999, 999, e).astype(np.int16)):
        csr = nk.CSR.from_edge_index(ei, n, w)
        for mq in (nk.MessageQuant(2.0**-6, 1, -128, 127), nk.MessageQuant(0.5, 0, -2000, 2000)):
            one = nk.spmm(csr, q, 8, 3, threads=1, message=mq)
            np.testing.assert_array_equal(nk.spmm(csr, q, 8, 3, threads=2, message=mq), one)
            np.testing.assert_array_equal(nk.spmm(csr, q, 8, 3, threads=7, message=mq), one)
            np.testing.assert_array_equal(one, _message_reference(ei, n, q, 3, w, 0, mq))
            padded = np.zeros((n, 128), dtype=np.int8)  # rows of 128 bytes holding 70 features
            padded[:, :f] = q
            np.testing.assert_array_equal(nk.spmm(csr, padded, 8, 3, num_features=f, message=mq), one)


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_spmm_requantize_with_message_quantizer(bits: int) -> None:
    rng = _rng(9 + bits)
    n, e, f = 200, 2500, 41
    ei = _graph(rng, n, e)
    q = _values(rng, (n, f), bits)
    csr = nk.CSR.from_edge_index(ei, n, rng.integers(-128, 128, e).astype(np.int8))
    packed = nk.pack(q, bits)
    deg = np.maximum(np.diff(csr.indptr), 1).astype(np.float64)
    for mq in (nk.MessageQuant(2.0**-5, 2, -128, 127), nk.MessageQuant(0.75, -3, -500, 500)):
        acc = nk.spmm(csr, packed, bits, 1, num_features=f, message=mq)
        fused = nk.spmm_requantize(csr, packed, bits, 1, 0.37 / deg, 5, axis=0, num_features=f, message=mq)
        np.testing.assert_array_equal(fused, nk.requantize(acc, 0.37 / deg, 5, -128, 127, axis=0))
        m_col = rng.random(f) * 0.1
        fused = nk.spmm_requantize(
            csr, packed, bits, 1, m_col, -4, axis=1, relu=True, num_features=f, message=mq, threads=2
        )
        np.testing.assert_array_equal(fused, np.maximum(nk.requantize(acc, m_col, -4, -128, 127, axis=1), -4))


def test_quantize_of_nan_raises_nan_input() -> None:
    x = np.array([[0.5, np.nan, -1.0]], dtype=np.float32)
    with pytest.raises(nk.NaNInput, match="NaN"):
        nk.quantize(x, 0.1, 0, -128, 127)
    np.testing.assert_array_equal(nk.quantize(np.nan_to_num(x), 0.1, 0, -128, 127), [[5, 0, -10]])


def test_message_quantizer_bad_inputs_raise_one_line_input_errors() -> None:
    csr = nk.CSR.from_edge_index(np.array([[0, 1], [1, 0]]), 2)
    q = np.zeros((2, 4), dtype=np.int8)
    bad = [
        lambda: nk.MessageQuant(float("nan")),
        lambda: nk.MessageQuant(np.ones(2)),
        lambda: nk.MessageQuant(0.5, 0, 5, 1),
        lambda: nk.MessageQuant(0.5, 2**40),
        lambda: nk.MessageQuant(0.5, 1.5),
        lambda: nk.spmm(csr, q, 8, 0, message=(0.5, 0)),
        lambda: nk.spmm(csr, q, 8, 0, message="int8"),
        lambda: nk.spmm_requantize(csr, q, 8, 0, 0.5, 0, message=(0.5, 0, 127, -128)),
    ]
    for fn in bad:
        with pytest.raises(InputError) as info:
            fn()
        assert "\n" not in str(info.value)
    mq = nk.MessageQuant(np.float32(0.5), np.int32(1), -8, torch.tensor(7))
    assert mq == nk.MessageQuant(0.5, 1, -8, 7) and isinstance(mq.multiplier, float)


GEMM_SHAPES = [(1, 1, 1), (37, 13, 19), (70, 130, 70), (5, 64, 16), (33, 3, 65)]


@pytest.mark.parametrize("layout", ["kn", "nk"])
def test_gemm_i8_matches_int64_matmul(layout: str) -> None:
    rng = _rng(4)
    for m, k, n in GEMM_SHAPES:
        a = _values(rng, (m, k), 8)
        b = _values(rng, (k, n), 8)
        a[0, 0], b[0, 0] = -128, -128
        za = int(rng.integers(-128, 128))
        zb = rng.integers(-128, 128, n).astype(np.int32)
        bias = rng.integers(-(2**20), 2**20, n).astype(np.int32)
        ref = (a.astype(np.int64) - za) @ (b.astype(np.int64) - zb[None, :]) + bias
        given = b if layout == "kn" else np.ascontiguousarray(b.T)
        got = nk.gemm_i8(a, given, za, zb, bias, layout=layout)
        np.testing.assert_array_equal(got, ref, err_msg=f"shape {(m, k, n)}")
        packed = nk.pack_weight(given, layout)
        np.testing.assert_array_equal(
            nk.gemm_i8(a, packed, za, 3, threads=2), (a.astype(np.int64) - za) @ (b.astype(np.int64) - 3)
        )


def test_gemm_i8_register_tiles_tasks_and_threads() -> None:
    """Every panel width (1 to 4 blocks of 16 columns, column tails), row tails of the 6-row tiles and of the
    48-row tasks, K tails, extreme values with a long K, per-column zero points: exact for any thread count."""
    rng = _rng(12)
    shapes = [
        (49, 5, 20),
        (97, 17, 33),
        (100, 40, 48),
        (50, 8, 100),
        (200, 96, 130),
        (7, 1433, 64),
        (301, 130, 256),
    ]
    for m, k, n in shapes:
        a, b = _values(rng, (m, k), 8), _values(rng, (k, n), 8)
        za = int(rng.integers(-128, 128))
        zb = rng.integers(-128, 128, n).astype(np.int32)
        bias = rng.integers(-(2**20), 2**20, n).astype(np.int32)
        ref = (a.astype(np.int64) - za) @ (b.astype(np.int64) - zb[None, :]) + bias
        packed = nk.pack_weight(b)
        for threads in (1, 2, 3):
            got = nk.gemm_i8(a, packed, za, zb, bias, threads=threads)
            np.testing.assert_array_equal(got, ref, err_msg=f"shape {(m, k, n)}, {threads} threads")
    a = np.full((13, 1433), -128, dtype=np.int8)  # |C| = 1433 * 255 * 255: near the int32 limit
    b = np.full((1433, 40), 127, dtype=np.int8)
    ref = (a.astype(np.int64) - 127) @ (b.astype(np.int64) + 128)
    np.testing.assert_array_equal(nk.gemm_i8(a, b, 127, -128), ref)


def test_gemm_i8_matches_linear_int() -> None:
    rng = _rng(5)
    x, w = _values(rng, (50, 24), 8), _values(rng, (24, 10), 8)
    bias = rng.integers(-1000, 1000, 10).astype(np.int32)
    ref = LINEAR_INT(
        torch.from_numpy(x), torch.tensor(4), torch.from_numpy(w), torch.tensor(-2), torch.from_numpy(bias)
    ).numpy()
    np.testing.assert_array_equal(nk.gemm_i8(x, w, 4, -2, bias), ref)


def test_bad_inputs_raise_one_line_input_errors() -> None:
    csr = nk.CSR.from_edge_index(np.array([[0, 1], [1, 0]]), 2)
    q = np.zeros((2, 4), dtype=np.int8)
    bad = [
        lambda: nk.spmm(csr, q.astype(np.int16), 8, 0),
        lambda: nk.spmm(csr, np.zeros((4, 4), dtype=np.int8)[::2], 8, 0),
        lambda: nk.spmm(csr, np.zeros((3, 4), dtype=np.int8), 8, 0),
        lambda: nk.spmm(csr, q, 3, 0),
        lambda: nk.spmm(csr, q, 4, 0, num_features=9),
        lambda: nk.spmm(csr, q, 8, 0, edge_weights=np.ones(3, dtype=np.int8)),
        lambda: nk.CSR.from_edge_index(np.array([[0, 5], [1, 0]]), 2),
        lambda: nk.CSR(np.array([0, 1, 2]), np.array([0, 7], dtype=np.int32), 2),
        lambda: nk.CSR(np.array([0, 2, 1]), np.array([0, 1], dtype=np.int32), 2),
        lambda: nk.requantize(np.zeros((2, 3), dtype=np.int64), 0.5, 0, -128, 127),
        lambda: nk.requantize(np.zeros((2, 3), dtype=np.int32), np.ones(4), 0, -128, 127),
        lambda: nk.requantize(np.zeros((2, 3), dtype=np.int32), 0.5, 0, -300, 127),
        lambda: nk.gemm_i8(np.zeros((2, 3), dtype=np.int8), np.zeros((4, 2), dtype=np.int8)),
        lambda: nk.pack(np.array([[8]]), 4),
    ]
    for fn in bad:
        with pytest.raises(InputError) as info:
            fn()
        assert "\n" not in str(info.value)


def test_missing_compiler_is_a_clear_input_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(build, "_loaded", {})
    monkeypatch.setenv("CC", "/nonexistent/cc")
    monkeypatch.setenv("PATH", str(tmp_path))  # no cc / gcc / clang to fall back to
    assert not build.available()
    with pytest.raises(InputError, match="no C compiler found. install gcc"):
        build.load()


def _fake_compiler(folder: Path, name: str) -> Path:
    script = folder / name
    script.write_text("#!/bin/sh\necho 'error: not a C compiler' >&2\nexit 1\n")
    script.chmod(0o755)
    return script


def test_broken_cc_falls_back_to_the_compilers_on_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, lib: build.NativeLib
) -> None:
    broken = _fake_compiler(tmp_path, "brokencc")
    for cc in ("/nonexistent/cc", str(broken), f"{broken} -O2", "'unbalanced"):
        monkeypatch.setattr(build, "_loaded", {})
        monkeypatch.setenv("CC", cc)
        candidates = build.compiler_candidates()
        assert candidates and build.available()
        if cc.startswith(str(broken)):
            assert candidates[0][0] == str(broken) and len(candidates) > 1
        fallback = build.load()
        assert fallback.compiler and fallback.compiler[0] != str(broken)
        assert fallback.path == lib.path  # the compiler on PATH: its cached library
        np.testing.assert_array_equal(nk.requantize(np.array([3, 5], dtype=np.int32), 0.5, 0, -8, 7), [2, 2])


def test_no_working_compiler_is_one_clear_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(build, "_loaded", {})
    monkeypatch.setenv("QUANTGRAPH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path))
    _fake_compiler(tmp_path, "cc")
    monkeypatch.setenv("CC", str(_fake_compiler(tmp_path, "mycc")))
    with pytest.raises(InputError, match="could not compile kernels.c with any C compiler") as info:
        build.load()
    assert "\n" not in str(info.value) and "mycc" in str(info.value) and "not a C compiler" in str(info.value)
    assert not list((tmp_path / "cache" / "native").glob("*.so*"))


def test_library_is_cached_by_hash(lib: build.NativeLib) -> None:
    assert lib.path.parent == build.cache_dir() and lib.path.suffix == ".so"
    assert lib.path.stem == build.library_key(build.find_compiler())
    assert "-O3" in lib.flags and build.load() is lib


def test_portable_build_without_vnni_or_openmp_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    """The plain-C fallbacks (scalar GEMM, no OpenMP) give the same integers."""
    monkeypatch.setattr(build, "_loaded", {})
    monkeypatch.setattr(build, "FLAG_SETS", [[]])
    portable = build.load()
    assert not portable.vnni and not portable.openmp and portable.flags[-1] == "-fPIC"
    rng = _rng(6)
    a, b = _values(rng, (33, 13), 8), _values(rng, (13, 21), 8)
    zb = rng.integers(-128, 128, 21).astype(np.int32)
    ref = (a.astype(np.int64) + 5) @ (b.astype(np.int64) - zb) + 9
    np.testing.assert_array_equal(nk.gemm_i8(a, b, -5, zb, np.full(21, 9, dtype=np.int32)), ref)
    a, b = _values(rng, (50, 37), 8), _values(rng, (37, 100), 8)  # panels of 4 and 3 column blocks
    np.testing.assert_array_equal(
        nk.gemm_i8(a, b, 2, -3), (a.astype(np.int64) - 2) @ (b.astype(np.int64) + 3)
    )
    ei = _graph(rng, 60, 500)
    q = _values(rng, (60, 19), 4)
    csr = nk.CSR.from_edge_index(ei, 60)
    acc = nk.spmm(csr, nk.pack(q, 4), 4, -1, num_features=19, threads=2)
    np.testing.assert_array_equal(acc, _reference(ei, 60, q, -1, None, 0))
    np.testing.assert_array_equal(
        nk.requantize(acc, 0.5, 2, -128, 127),
        _torch_requantize(acc, np.array(0.5), np.array(2), -128, 127, 0),
    )
    for bits in (8, 4, 2):  # scalar table look-ups and direct evaluation
        qb = _values(rng, (60, 19), bits)
        w = rng.integers(-128, 128, 500).astype(np.int8)
        for weights in (None, w, w.astype(np.int16) * 3):
            csr = nk.CSR.from_edge_index(ei, 60, weights)
            for mq in (nk.MessageQuant(0.25, 1, -128, 127), nk.MessageQuant(0.5, 0, -999, 999)):
                got = nk.spmm(csr, nk.pack(qb, bits), bits, 1, num_features=19, message=mq)
                np.testing.assert_array_equal(got, _message_reference(ei, 60, qb, 1, weights, 0, mq))


def test_quantize_matches_ir_quantize_bit_for_bit():
    from quantgraph.ir.ops import quantize as ir_quantize

    rng = np.random.default_rng(5)
    x = (rng.standard_normal((700, 37)) * 4).astype(np.float32)
    x[0, :6] = [0.5, 1.5, 2.5, -0.5, -2.5, 1e9]  # ties (scale 1) and a saturating value
    for scale, zp, lo, hi in [(1.0, 0, -128, 127), (0.1, 3, -128, 127), (0.0371, -5, -8, 7), (0.5, 1, -2, 1)]:
        got = nk.quantize(x, scale, zp, lo, hi, threads=2)
        ref = ir_quantize(
            torch.from_numpy(x), torch.tensor(scale), torch.tensor(zp), torch.tensor(lo), torch.tensor(hi), 0
        )
        assert np.array_equal(got, ref.numpy()), scale


@pytest.mark.parametrize("dtype", [np.int8, np.int32])
def test_requantize_affine_matches_ir_ops(dtype):
    from quantgraph.ir.int_ops import requantize as ir_requantize

    rng = np.random.default_rng(6)
    lo, hi = (-128, 127) if dtype == np.int8 else (-50000, 50000)
    x = rng.integers(lo, hi + 1, (400, 29)).astype(dtype)
    bias = rng.integers(-3000, 3000, 29).astype(np.int32)
    for zin, b, relu, m in [(5, bias, True, 0.013), (0, None, False, 0.5), (-7, bias[:1], True, 0.25)]:
        got = nk.requantize_affine(x, m, 3, -128, 127, input_zero_point=zin, bias=b, relu=relu, threads=2)
        t = torch.from_numpy(x).int() - zin
        if b is not None:
            t = t + torch.from_numpy(b)
        if relu:
            t = t.clamp_min(0)
        ref = ir_requantize(t, torch.tensor(m, dtype=torch.float64), torch.tensor(3), torch.tensor(-128),
                            torch.tensor(127), 0)  # fmt: skip
        assert np.array_equal(got, ref.numpy())


@pytest.mark.parametrize("bits", [4, 2])
def test_pack_kernel_equals_numpy_packing(bits):
    rng = np.random.default_rng(7)
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    for f in (1, 5, 37, 128):
        q = rng.integers(lo, hi + 1, (301, f)).astype(np.int8)
        fast = nk.pack(q, bits, check=False, threads=2)
        slow = nk.pack(q.astype(np.int64), bits)
        assert np.array_equal(fast, slow)
        assert np.array_equal(nk.unpack(fast, bits, f), q)


def test_build_without_the_fastest_flags_warns_and_strict_mode_fails(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A compiler that rejects -march=native gets a slower build, and says so (an error when strict)."""
    real = build.find_compiler()
    assert real is not None
    picky = tmp_path / "pickycc"
    picky.write_text(
        '#!/bin/sh\nfor a in "$@"; do [ "$a" = -march=native ] && '
        "{ echo 'error: unrecognized option -march=native' >&2; exit 1; }; done\n"
        f'exec {real[0]} "$@"\n'
    )
    picky.chmod(0o755)
    monkeypatch.setenv("CC", str(picky))
    monkeypatch.setenv("QUANTGRAPH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(build.STRICT_ENV, raising=False)
    monkeypatch.setattr(build, "_loaded", {})
    with pytest.warns(build.NativeFallbackWarning, match="without -march=native .*unrecognized option"):
        built = build.load()
    assert "-march=native" not in built.flags and built.compiler[0] == str(picky)
    monkeypatch.setattr(build, "_loaded", {})
    monkeypatch.setenv(build.STRICT_ENV, "1")
    with pytest.raises(EnvironmentFailure, match="without -march=native .*cached build") as info:
        build.load()  # the cached fallback build is reported too
    assert "\n" not in str(info.value)
