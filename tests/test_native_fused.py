"""Fused native kernels (epilogues, input quantize in the GEMM, renumbering) equal the unfused steps."""

from __future__ import annotations

import numpy as np
import pytest

from quantgraph.native import kernels as K

pytestmark = pytest.mark.skipif(not __import__("quantgraph.native.build", fromlist=["x"]).available(),
                                reason="no C compiler")  # fmt: skip


def _graph(rng: np.random.Generator, n: int, e: int, weighted: bool) -> K.CSR:
    ei = np.stack([rng.integers(0, n, e), rng.integers(0, n, e)])
    w = rng.integers(-128, 128, e).astype(np.int8) if weighted else None
    return K.CSR.from_edge_index(ei, n, w)


def _chain(rng: np.random.Generator, rows: int, cols: int, last: tuple[int, int]) -> list[K.Stage]:
    """Three requantize stages: per-row multiplier, bias + per-column, relu into the last range."""
    return [
        K.Stage(rng.uniform(1e-3, 2e-2, rows), rng.integers(-3, 3, rows), -128, 127, axis=0),
        K.Stage(rng.uniform(0.3, 0.9, cols), 2, -128, 127, axis=1, input_zero_point=1,
                bias=rng.integers(-40, 40, cols).astype(np.int32)),  # fmt: skip
        K.Stage(0.37, -1, last[0], last[1], input_zero_point=2, relu_in=True, relu=True),
    ]


def _unfused(acc: np.ndarray, stages: list[K.Stage]) -> np.ndarray:
    t = acc
    for st in stages:
        t = K.requantize_affine(
            t, st.multiplier, st.zero_point, st.qmin, st.qmax, st.axis if st.axis is not None else -1,
            input_zero_point=st.input_zero_point, bias=st.bias, relu=st.relu_in, out_dtype=np.int32,
        ) if (st.input_zero_point or st.bias is not None or st.relu_in) else K.requantize(
            t, st.multiplier, st.zero_point, st.qmin, st.qmax, st.axis if st.axis is not None else -1,
            relu=st.relu, out_dtype=np.int32,
        )  # fmt: skip
    return t


@pytest.mark.parametrize("bits", [8, 4, 2])
@pytest.mark.parametrize("features", [7, 16, 64, 130])
@pytest.mark.parametrize("weighted", [False, True])
def test_spmm_epilogue_equals_unfused_chain(bits: int, features: int, weighted: bool) -> None:
    rng = np.random.default_rng(bits * 1000 + features + weighted)
    n = 300
    csr = _graph(rng, n, 4000, weighted)
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    q = rng.integers(lo, hi + 1, (n, features)).astype(np.int8)
    x = q if bits == 8 else K.pack(q, bits)
    acc = K.spmm(csr, x, bits, 1, num_features=features)
    for out_bits in (8, 4, 2):
        r = (-(2 ** (out_bits - 1)), 2 ** (out_bits - 1) - 1)
        stages = _chain(rng, n, features, r)
        want = _unfused(acc, stages)
        got = K.spmm_epilogue(csr, x, bits, 1, stages, out_bits=out_bits, num_features=features, threads=2)
        got = got if out_bits == 8 else K.unpack(got, out_bits, features)
        np.testing.assert_array_equal(got, want)
    stages = _chain(rng, n, features, (-128, 127))
    want = ((_unfused(acc, stages) - 3).astype(np.float32) * np.float32(0.0123)).astype(np.float32)
    got = K.spmm_epilogue(csr, x, bits, 1, stages, dequantize=(0.0123, 3), num_features=features)
    np.testing.assert_array_equal(got, want)


def test_spmm_epilogue_with_message_quantizer() -> None:
    rng = np.random.default_rng(5)
    csr = _graph(rng, 200, 3000, True)
    q = rng.integers(-128, 128, (200, 24)).astype(np.int8)
    msg = K.MessageQuant(0.01, 2, -128, 127)
    acc = K.spmm(csr, q, 8, 0, message=msg)
    stages = _chain(rng, 200, 24, (-8, 7))
    got = K.unpack(K.spmm_epilogue(csr, q, 8, 0, stages, out_bits=4, message=msg), 4, 24)
    np.testing.assert_array_equal(got, _unfused(acc, stages))


@pytest.mark.parametrize("out_bits", [8, 4, 2])
def test_gemm_epilogue_with_input_quantize_and_row_index(out_bits: int) -> None:
    rng = np.random.default_rng(out_bits)
    m, k, n = 301, 130, 37
    x = (rng.standard_normal((m, k)) * 3).astype(np.float32)
    w = rng.integers(-128, 128, (k, n)).astype(np.int8)
    pw = K.pack_weight(w)
    zb = rng.integers(-3, 3, n).astype(np.int32)
    bias = rng.integers(-1000, 1000, n).astype(np.int32)
    perm = rng.permutation(m).astype(np.int64)
    lo, hi = -(2 ** (out_bits - 1)), 2 ** (out_bits - 1) - 1
    stages = [K.Stage(rng.uniform(1e-4, 1e-3, n), rng.integers(-2, 2, n), lo, hi, axis=1)]
    qx = K.quantize(x, 0.05, 1, -128, 127)
    want = _unfused(K.gemm_i8(qx[perm].copy(), pw, 1, zb, bias), stages)
    got = K.gemm_epilogue(x, pw, 1, zb, bias, stages, out_bits=out_bits, input_quant=(0.05, 1, -128, 127),
                          row_index=perm, threads=2)  # fmt: skip
    got = got if out_bits == 8 else K.unpack(got, out_bits, n)
    np.testing.assert_array_equal(got, want)
    got8 = K.gemm_epilogue(qx, pw, 1, zb, bias, stages, out_bits=out_bits)
    got8 = got8 if out_bits == 8 else K.unpack(got8, out_bits, n)
    np.testing.assert_array_equal(got8, _unfused(K.gemm_i8(qx, pw, 1, zb, bias), stages))


def test_rows_epilogue_equals_requantize_affine() -> None:
    rng = np.random.default_rng(3)
    x = rng.integers(-128, 128, (50, 33)).astype(np.int8)
    stages = _chain(rng, 50, 33, (-2, 1))
    got = K.unpack(K.rows_epilogue(x, stages, out_bits=2), 2, 33)
    np.testing.assert_array_equal(got, _unfused(x.astype(np.int32), stages))


def test_epilogue_refuses_a_range_wider_than_the_packed_output() -> None:
    rng = np.random.default_rng(0)
    stages = [K.Stage(0.1, 0, -128, 127)]
    with pytest.raises(Exception, match="rows_epilogue failed"):
        K.rows_epilogue(rng.integers(-5, 5, (4, 4)).astype(np.int8), stages, out_bits=4)
