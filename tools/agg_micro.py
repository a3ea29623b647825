"""Micro-benchmark of the native CSR aggregation per edge (issues 19, 15): ns/edge by width and bits (plain, with
an epilogue, with a message quantizer), and the machine's stream bandwidth, on a one-sided power-law graph. ``python tools/agg_micro.py [N E threads]``."""

from __future__ import annotations

import sys
import time
from functools import partial

import numpy as np

from quantgraph.native import kernels as K


def best(fn, reps: int = 7) -> float:
    """Fastest of ``reps`` timed calls after a warm-up, seconds."""
    fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return min(ts)


def main() -> None:
    n, e, threads = (int(float(a)) for a in (sys.argv[1:4] if len(sys.argv) > 3 else ("2e5", "4e6", "2")))
    rng = np.random.Generator(np.random.PCG64(0))
    w = np.arange(1, n + 1, dtype=np.float64) ** (-1 / 1.5)
    rng.shuffle(w)
    src = rng.choice(n, size=e, p=w / w.sum())
    ei = np.stack([src, rng.integers(0, n, e)])
    ew = rng.integers(-128, 128, e).astype(np.int8)
    csr = K.CSR.from_edge_index(ei, n, ew)
    big = np.ones(64 << 20, dtype=np.uint8)
    dst = np.empty_like(big)
    t = best(lambda: np.copyto(dst, big), 5)
    print(f"stream copy (numpy, 1 thread): {2 * big.nbytes / t / 1e9:.1f} GB/s (read + write)")
    for f in (64, 7):
        q = rng.integers(-128, 128, (n, f)).astype(np.int8)
        for bits in (8, 4, 2):
            lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
            qb = np.clip(q, lo, hi).astype(np.int8)
            x = qb if bits == 8 else K.pack(qb, bits)
            t = best(
                partial(K.spmm, csr, x, bits, 0, threads=threads, num_features=f, weight_zero_point=-128)
            )
            st = [
                K.Stage(1e-4, 3, input_zero_point=5, bias=np.arange(f, dtype=np.int32), relu_in=True),
                K.Stage(0.7, -2, lo, hi),
            ]
            dq = (0.01, 1) if f == 7 else None
            te = best(
                partial(
                    K.spmm_epilogue,
                    csr,
                    x,
                    bits,
                    0,
                    st,
                    out_bits=bits,
                    dequantize=dq,
                    weight_zero_point=-128,
                    threads=threads,
                    num_features=f,
                )
            )
            tm = best(
                partial(
                    K.spmm, csr, x, bits, 0, threads=threads, num_features=f, weight_zero_point=-128,
                    message=K.MessageQuant(1 / 300, 3, lo, hi),
                )
            )  # fmt: skip
            print(
                f"F={f:3d} int{bits}: {t * 1e3:7.2f} ms  {t / e * 1e9:5.2f} ns/edge  "
                f"({t / e * 1e9 * threads:5.2f} ns/edge/thread, row {x.shape[1]} B); "
                f"with 2-stage epilogue{' + dequantize' if dq else ''} {te * 1e3:7.2f} ms; "
                f"with a {bits}-bit message quantizer {tm * 1e3:7.2f} ms"
            )


if __name__ == "__main__":
    main()
