"""The four-edges-per-step vpdpbusd aggregation (int8 edge weights of zero point -128 or 0) equals the exact sum.

On CPUs without AVX-512 VNNI/VBMI the other kernel paths run; the assertions hold for every path.
"""

from __future__ import annotations

import numpy as np
import pytest

from quantgraph.native import available
from quantgraph.native import kernels as K

pytestmark = pytest.mark.skipif(not available(), reason="no C compiler")


def _reference(csr: K.CSR, q: np.ndarray, zx: int, zw: int) -> np.ndarray:
    w = csr.edge_weights.astype(np.int64) - zw
    rows = np.repeat(np.arange(csr.num_rows), np.diff(csr.indptr))
    out = np.zeros((csr.num_rows, q.shape[1]), np.int64)
    np.add.at(out, rows, w[:, None] * (q[csr.indices].astype(np.int64) - zx))
    return out


@pytest.mark.parametrize("zw", [-128, 0])
@pytest.mark.parametrize("bits", [8, 4, 2])
def test_weighted_short_rows_exact(bits: int, zw: int) -> None:
    rng = np.random.default_rng(bits * 7 + zw + 200)
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    for n, e in ((1, 0), (5, 3), (40, 401), (300, 4099)):  # degrees of every residue mod 4, empty rows
        ei = np.stack([rng.integers(0, n, e), rng.integers(0, n, e)])
        # extreme weights included: stored -128 and 127 (weights 0 / 255 at zero point -128)
        w = np.concatenate([np.array([-128, 127], np.int8), rng.integers(-128, 128, e).astype(np.int8)])[:e]
        csr = K.CSR.from_edge_index(ei, n, w)
        for f in (1, 7, 8, 9, 16, 17, 33, 64, 65):
            q = rng.integers(lo, hi + 1, (n, f)).astype(np.int8)
            q[: min(n, 2)] = lo  # extreme features
            zx = int(rng.integers(lo, hi + 1))
            x = q if bits == 8 else K.pack(q, bits)
            got = K.spmm(csr, x, bits, zx, weight_zero_point=zw, num_features=f, threads=2)
            np.testing.assert_array_equal(got.astype(np.int64), _reference(csr, q, zx, zw), err_msg=f"F={f}")
