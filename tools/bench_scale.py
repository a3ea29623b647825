"""Partitioned Dask/Ray inference vs the single-process native run on a synthetic power-law graph (issue 18).

    python tools/bench_scale.py --nodes 1000000 --edges 20000000 --features 128 \
        --configs 1x1 2x2 4x4 8x8 8x2 --engines dask ray --repeats 3

A config ``PxW`` is P partitions on W worker processes (one kernel thread each). Each partitioning is made
once and shared by the engines; each engine's cluster is started once per config (its start-up is reported,
not timed into the runs), then one first run (workers import torch and load the model; reported apart) and
``--repeats`` timed runs whose median is reported beside the single-process native run (first run and median
of the same number of repeats, 1 and 2 threads). Prints one JSON line per configuration:
wall seconds, per-segment seconds, peak RSS per worker, halo bytes per segment (packed, and as float32 would
be), partitioning seconds, and whether every repeat's logits equal the single-process run bit for bit.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import quantgraph as qg  # noqa: E402
from quantgraph.data import GraphData  # noqa: E402
from quantgraph.native.runtime import NativeModel  # noqa: E402
from quantgraph.scale.engine_dask import run_dask  # noqa: E402
from quantgraph.scale.partition import partition_graph  # noqa: E402
from quantgraph.scale.result import ScaleResult, peak_rss  # noqa: E402
from tests.conftest import TwoLayer  # noqa: E402


def power_law(nodes: int, edges: int, features: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Zipf-distributed targets (hubs with huge in-degree), uniform sources, Gaussian features."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, nodes + 1)
    dst = rng.choice(nodes, size=edges, p=weights / weights.sum())
    src = rng.integers(0, nodes, size=edges)
    x = rng.standard_normal((nodes, features), dtype=np.float32)
    return x, np.stack([src, dst]).astype(np.int64)


def _dask_runs(qgn: Path, parts: Path, workers: int, repeats: int) -> tuple[float, list[ScaleResult]]:
    import distributed

    t0 = time.perf_counter()
    cluster = distributed.LocalCluster(
        n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None,
        memory_limit=None,
    )  # fmt: skip
    client = distributed.Client(cluster)
    client.wait_for_workers(workers)
    startup = time.perf_counter() - t0
    try:
        return startup, [run_dask(qgn, parts, threads=1, client=client) for _ in range(repeats + 1)]
    finally:
        client.close()
        cluster.close()


def _ray_runs(qgn: Path, parts: Path, workers: int, repeats: int) -> tuple[float, list[ScaleResult]]:
    import ray

    from quantgraph.scale.engine_ray import run_ray

    t0 = time.perf_counter()
    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    startup = time.perf_counter() - t0
    try:
        return startup, [run_ray(qgn, parts, workers=workers, threads=1) for _ in range(repeats + 1)]
    finally:
        ray.shutdown()


def _row(engine: str, p: int, w: int, split: Any, startup: float, runs: list[ScaleResult], expected) -> dict:
    r = runs[-1]
    return {
        "config": f"{engine} {p} partitions / {w} workers", "partition_seconds": round(split.seconds_total, 2),
        "assign_seconds": round(split.seconds_assign, 2), "halo_rows": sum(split.halo),
        "stored_edges": sum(split.edges), "owned_in_edges": sum(split.owned_edges),
        "owned_min_max": [min(split.owned), max(split.owned)], "cluster_start_seconds": round(startup, 2),
        "first_run_seconds": round(runs[0].seconds, 3),
        "seconds_median": round(statistics.median(x.seconds for x in runs[1:]), 3),
        "seconds_all": [round(x.seconds, 3) for x in runs[1:]],
        "seconds_per_segment": [round(t, 3) for t in r.seconds_per_layer],
        "graph_segments": r.graph_segments, "graph_bytes": r.graph_bytes, "state_moves": r.state_moves,
        "halo_bytes_per_segment": r.bytes_per_layer, "float32_bytes_per_segment": r.float32_bytes_per_layer,
        "worker_peak_rss_mb": sorted(round(v / 2**20) for v in r.worker_peak_rss.values()),
        "bit_equal": all(bool(np.array_equal(x.logits, expected)) for x in runs),
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=100_000)
    ap.add_argument("--edges", type=int, default=1_000_000)
    ap.add_argument("--features", type=int, default=128)
    ap.add_argument(
        "--configs", nargs="+", default=["1x1", "2x2", "4x4"], help="PxW: P partitions, W workers"
    )
    ap.add_argument("--engines", nargs="+", default=["dask"], choices=["dask", "ray"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--bits", type=int, default=8)
    ap.add_argument("--method", default="metis")
    args = ap.parse_args()
    t0 = time.perf_counter()
    x, ei = power_law(args.nodes, args.edges, args.features, 0)
    print(json.dumps({"graph": "power-law", "nodes": args.nodes, "edges": args.edges, "features": args.features,
                      "bits": args.bits, "generate_seconds": round(time.perf_counter() - t0, 1)}), flush=True)  # fmt: skip
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
    inputs = {"x": torch.from_numpy(x), "edge_index": torch.from_numpy(ei)}
    expected = None
    for threads in (1, 2):
        native = NativeModel.load(qgn, threads=threads)
        times = []
        for _ in range(args.repeats + 1):
            t0 = time.perf_counter()
            out = native.run(inputs).numpy()
            times.append(time.perf_counter() - t0)
            assert expected is None or np.array_equal(out, expected)
            expected = out
        print(json.dumps({"config": f"single process, {threads} thread(s)",
                          "first_run_seconds": round(times[0], 3),
                          "seconds_median": round(statistics.median(times[1:]), 3),
                          "seconds_all": [round(t, 3) for t in times[1:]],
                          "peak_rss_mb": round(peak_rss() / 2**20)}), flush=True)  # fmt: skip
    del inputs
    splits: dict[int, Any] = {}
    for config in args.configs:
        p, w = (int(v) for v in config.split("x"))
        if p not in splits:
            splits[p] = partition_graph(x, ei, p, work / f"parts{p}", method=args.method)
        for engine in args.engines:
            runner = _dask_runs if engine == "dask" else _ray_runs
            startup, runs = runner(qgn, work / f"parts{p}", w, args.repeats)
            print(json.dumps(_row(engine, p, w, splits[p], startup, runs, expected)), flush=True)


if __name__ == "__main__":
    main()
