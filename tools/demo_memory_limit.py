"""A graph whose features exceed one Dask worker's memory limit, run partitioned to the exact result (issue 18).

    nice -n 19 python tools/demo_memory_limit.py --nodes 1000000 --edges 5000000 --features 512 \\
        --parts 16 --workers 4 --memory-limit 1900MB

Builds a synthetic power-law graph (FP32 features of ``nodes x features x 4`` bytes), compiles a 2-layer INT8
GCN for the native backend on a small graph of the same distribution, runs it in this process
(``NativeModel.run``), partitions the graph (hash), then runs it on a local Dask cluster whose workers each have
``memory_limit`` below the feature bytes (Dask's nanny restarts a worker past 95% of it). Prints one JSON line:
sizes, limit, each worker's peak RSS, whether any worker process was replaced during the run, and whether the
logits are bit-equal to the single-process run.
"""

from __future__ import annotations

import argparse
import json
import shutil
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
from tools.bench_scale import power_law  # noqa: E402


def _pid() -> int:
    import os

    return os.getpid()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=1_000_000)
    ap.add_argument("--edges", type=int, default=5_000_000)
    ap.add_argument("--features", type=int, default=512)
    ap.add_argument("--parts", type=int, default=16)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--memory-limit", default="1900MB", help="each Dask worker's memory_limit")
    ap.add_argument("--method", default="hash")
    args = ap.parse_args()

    import dask
    import distributed

    limit = int(dask.utils.parse_bytes(args.memory_limit))
    feature_bytes = args.nodes * args.features * 4
    if limit >= feature_bytes:
        sys.exit(f"error: --memory-limit {args.memory_limit} is not below the {feature_bytes} feature bytes")
    t0 = time.perf_counter()
    x, ei = power_law(args.nodes, args.edges, args.features, 0)
    xs, eis = power_law(2000, 20000, args.features, 1)
    torch.manual_seed(0)
    model = TwoLayer("gcn", fin=args.features, hidden=64, fout=16).eval()
    calib = GraphData(torch.from_numpy(xs), torch.from_numpy(eis))
    compiled = qg.compile(model, calib, policy="minmax", bits=8, backend="native")
    work = Path(tempfile.mkdtemp(prefix="demo_memlimit_"))
    try:
        qgn = work / "gcn.qgn"
        compiled.export_native(qgn)
        generate = time.perf_counter() - t0
        t0 = time.perf_counter()
        expected = NativeModel.load(qgn, threads=1).run(
            {"x": torch.from_numpy(x), "edge_index": torch.from_numpy(ei)}
        )
        expected = expected.numpy()
        single = time.perf_counter() - t0
        single_rss = peak_rss()
        t0 = time.perf_counter()
        summary = partition_graph(x, ei, args.parts, work / "parts", method=args.method)
        part_s = time.perf_counter() - t0
        del x, ei
        cluster = distributed.LocalCluster(
            n_workers=args.workers, threads_per_worker=1, processes=True, host="127.0.0.1",
            dashboard_address=None, memory_limit=limit,
        )  # fmt: skip
        client = distributed.Client(cluster)
        try:
            before = client.run(_pid)
            result = run_dask(qgn, work / "parts", client=client, threads=1)
            after = client.run(_pid)
            limits = sorted(w["memory_limit"] for w in client.scheduler_info()["workers"].values())
        finally:
            client.close()
            cluster.close()
        owned_bytes = [n * args.features * 4 for n in summary.owned]
        print(
            json.dumps(
                {
                    "nodes": args.nodes,
                    "edges": args.edges,
                    "features": args.features,
                    "feature_bytes_fp32": feature_bytes,
                    "worker_memory_limit": limit,
                    "worker_memory_limits_reported": limits,
                    "parts": args.parts,
                    "workers": args.workers,
                    "largest_partition_feature_bytes": max(owned_bytes),
                    "generate_compile_s": round(generate, 1),
                    "single_process_s": round(single, 2),
                    "single_process_peak_rss_mb": round(single_rss / 2**20),
                    "partition_s": round(part_s, 1),
                    "dask_s": round(result.seconds, 1),
                    "worker_peak_rss_mb": sorted(round(v / 2**20) for v in result.worker_peak_rss.values()),
                    "workers_replaced": sorted(set(before.values()) ^ set(after.values())) != [],
                    "halo_bytes_per_segment": result.bytes_per_layer,
                    "bit_equal": bool(np.array_equal(result.logits, expected)),
                }
            ),
            flush=True,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
