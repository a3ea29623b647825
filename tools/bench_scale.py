"""Partitioned Dask inference vs the single-process native run on a synthetic power-law graph (issue 18).

    nice -n -15 python tools/bench_scale.py --nodes 100000 --edges 1000000 --features 128 --parts 1 2 4

Prints one JSON line per configuration: wall seconds, peak RSS per worker, halo bytes per layer (packed, and
as float32 would be), partitioning seconds, and whether the logits equal the single-process run bit for bit.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import quantgraph as qg  # noqa: E402
from quantgraph.data import GraphData  # noqa: E402
from quantgraph.native.runtime import NativeModel  # noqa: E402
from quantgraph.scale.engine_dask import run_dask  # noqa: E402
from quantgraph.scale.partition import partition_graph  # noqa: E402
from quantgraph.scale.result import peak_rss  # noqa: E402
from tests.conftest import TwoLayer  # noqa: E402


def power_law(nodes: int, edges: int, features: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Zipf-distributed targets (hubs with huge in-degree), uniform sources, Gaussian features."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, nodes + 1)
    dst = rng.choice(nodes, size=edges, p=weights / weights.sum())
    src = rng.integers(0, nodes, size=edges)
    x = rng.standard_normal((nodes, features), dtype=np.float32)
    return x, np.stack([src, dst]).astype(np.int64)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=100_000)
    ap.add_argument("--edges", type=int, default=1_000_000)
    ap.add_argument("--features", type=int, default=128)
    ap.add_argument("--parts", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--bits", type=int, default=8)
    ap.add_argument("--method", default="metis")
    args = ap.parse_args()
    x, ei = power_law(args.nodes, args.edges, args.features, 0)
    torch.manual_seed(0)
    xs, eis = power_law(2000, 20000, args.features, 1)  # calibration graph: small, same distribution
    model = TwoLayer("gcn", fin=args.features, hidden=64, fout=16).eval()
    compiled = qg.compile(
        model, GraphData(torch.from_numpy(xs), torch.from_numpy(eis)), policy="minmax", bits=args.bits,
        backend="native",
    )  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="bench_scale_"))
    qgn = work / "gcn.qgn"
    compiled.export_native(qgn)
    native = NativeModel.load(qgn, threads=1)
    inputs = {"x": torch.from_numpy(x), "edge_index": torch.from_numpy(ei)}
    t0 = time.perf_counter()
    expected = native.run(inputs).numpy()
    single = time.perf_counter() - t0
    rss = peak_rss()
    print(json.dumps({"config": "single-process", "nodes": args.nodes, "edges": args.edges,
                      "features": args.features, "bits": args.bits, "seconds": round(single, 3),
                      "peak_rss_mb": round(rss / 2**20)}), flush=True)  # fmt: skip
    for k in args.parts:
        s = partition_graph(x, ei, k, work / f"parts{k}", method=args.method)
        r = run_dask(qgn, work / f"parts{k}", workers=k, threads=1)
        print(json.dumps({
            "config": f"dask {k} partitions / {k} workers", "partition_seconds": round(s.seconds_total, 2),
            "metis_seconds": round(s.seconds_assign, 2), "halo_rows": sum(s.halo),
            "seconds_total": round(r.seconds, 3), "seconds_per_segment": [round(t, 3) for t in r.seconds_per_layer],
            "halo_bytes_per_segment": r.bytes_per_layer, "float32_bytes_per_segment": r.float32_bytes_per_layer,
            "worker_peak_rss_mb": sorted(round(v / 2**20) for v in r.worker_peak_rss.values()),
            "bit_equal": bool(np.array_equal(r.logits, expected)),
        }), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
