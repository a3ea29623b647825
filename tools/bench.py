"""Aggregation micro-benchmark: PyG scatter vs torch FP32 CSR SpMM vs native INT8/INT4/INT2 SpMM.

    python tools/bench.py                                  # quick: 10k/200k and 50k/1M edges
    python tools/bench.py --full --out docs/benchmarks.md  # 200k/4M and 200k/8M edges
    python tools/bench.py --sizes 50000:1000000 --threads 1 --data-root ../shared/data/planetoid

Graphs are seeded synthetic power-law graphs (``quantgraph.data.make_csbm``: Chung–Lu degrees, exponent
2.5) with F=128 random features, plus Cora (``--data-root``) with its own 1433 features. Every method
computes one sum aggregation ``out[i] = sum_{j -> i} x[j]`` (``--aggr weighted``: ``w_ij * x[j]`` with
int8 edge weights for the native kernels and their FP32 copies for torch/PyG; ``--aggr both``: both):

* ``pyg_scatter``: ``torch_geometric.utils.scatter(x[src] (* w), dst, reduce="sum")``, MessagePassing's path;
* ``torch_csr_fp32``: ``torch.sparse_csr_tensor(...) @ x`` (MKL);
* ``native_int{8,4,2}``: ``quantgraph.native.spmm_requantize``: packed features, int32 accumulation,
  requantized to int8 in the same row loop.

Times are the median of ``--repeats`` runs after one warm-up (more runs for fast methods, until
``--min-seconds`` are spent); ratios are ``time(torch_csr_fp32) / time``.
Each native result is checked bit for bit on sampled rows against an int64 NumPy reference.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from quantgraph import native
from quantgraph.data.synthetic import make_csbm

QUICK_SIZES = "10000:200000,50000:1000000"
FULL_SIZES = "200000:4000000,200000:8000000"
METHODS = ("pyg_scatter", "torch_csr_fp32", "native_int8", "native_int4", "native_int2")
FEATURES = 128


@dataclass
class Graph:
    """One benchmark input: edges (source, target), FP32 features and a label."""

    name: str
    edge_index: np.ndarray
    x: np.ndarray

    @property
    def num_nodes(self) -> int:
        return int(self.x.shape[0])

    @property
    def num_edges(self) -> int:
        return int(self.edge_index.shape[1])


@dataclass
class Row:
    """One measured (graph, method) pair."""

    graph: str
    nodes: int
    edges: int
    features: int
    method: str
    seconds: float
    feature_bytes: int


def parse_sizes(spec: str) -> list[tuple[int, int]]:
    """``"N:E,N:E"`` -> [(N, E), ...]."""
    sizes = []
    for part in spec.split(","):
        n, _, e = part.strip().partition(":")
        if not n or not e:
            raise SystemExit(f"bad --sizes entry {part!r}: expected NODES:EDGES, e.g. 50000:1000000")
        sizes.append((int(float(n)), int(float(e))))
    return sizes


def synthetic_graph(n: int, e: int, seed: int) -> Graph:
    """A power-law graph with about ``e`` directed edges and F=128 Gaussian features."""
    g = make_csbm(num_nodes=n, num_classes=4, num_features=4, avg_degree=e / n, power=2.5, seed=seed)
    rng = np.random.Generator(np.random.PCG64(seed + 1))
    x = rng.standard_normal((n, FEATURES), dtype=np.float32)
    return Graph(f"power-law {n // 1000}k/{g.num_edges / 1e6:.1f}M", g.edge_index.numpy(), x)


def cora_graph(root: str) -> Graph:
    """Cora with its bag-of-words features."""
    from quantgraph.data.planetoid import load_planetoid

    g = load_planetoid("cora", root)
    return Graph("Cora", g.edge_index.numpy(), g.x.numpy())


def timeit(fn: Callable[[], object], repeats: int, min_seconds: float = 0.0) -> float:
    """Median wall time of ``repeats`` calls after one warm-up call, more calls until ``min_seconds`` are spent."""
    fn()
    times: list[float] = []
    while len(times) < repeats or (sum(times) < min_seconds and len(times) < 1000):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def quantize(x: np.ndarray, bits: int) -> tuple[np.ndarray, float, int]:
    """Per-tensor affine quantization: (int8 values, scale, zero point)."""
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    scale = max(hi - lo, 1e-8) / (qmax - qmin)
    zp = int(np.clip(round(qmin - lo / scale), qmin, qmax))
    q = np.clip(np.round(x / scale) + zp, qmin, qmax).astype(np.int8)
    return q, scale, zp


def check_native(
    csr: native.CSR, q: np.ndarray, zx: int, m: float, out: np.ndarray, w: np.ndarray | None, rows: int = 256
) -> None:
    """Bit-exact check of sampled output rows against an int64 reference."""
    rng = np.random.Generator(np.random.PCG64(0))
    sample = rng.choice(csr.num_rows, min(rows, csr.num_rows), replace=False)
    deg = np.diff(csr.indptr)
    sample = np.union1d(sample, [int(np.argmax(deg))])  # always the hub
    for i in sample:
        lo, hi = csr.indptr[i], csr.indptr[i + 1]
        vals = q[csr.indices[lo:hi]].astype(np.int64) - zx
        if w is not None:
            vals = vals * w[lo:hi, None].astype(np.int64)
        ref = np.clip(np.round(vals.sum(axis=0) * m), -128, 127)
        if not np.array_equal(out[i], ref):
            raise SystemExit(f"native result differs from the int64 reference at row {i}")


def bench_graph(
    g: Graph, methods: list[str], threads: int, repeats: int, weighted: bool, min_seconds: float = 0.0
) -> list[Row]:
    """Time every method on one graph."""
    n, f = g.num_nodes, g.x.shape[1]
    rng = np.random.Generator(np.random.PCG64(7))
    w8 = rng.integers(1, 128, g.num_edges).astype(np.int8) if weighted else None
    csr = native.CSR.from_edge_index(g.edge_index, n, w8)
    rows: list[Row] = []

    name = f"{g.name} weighted" if weighted else g.name

    def add(method: str, seconds: float, nbytes: int) -> None:
        rows.append(Row(name, n, g.num_edges, f, method, seconds, nbytes))
        print(f"  {method:16s} {seconds * 1e3:10.2f} ms", file=sys.stderr, flush=True)

    x = torch.from_numpy(g.x)
    if "pyg_scatter" in methods:
        from torch_geometric.utils import scatter

        src = torch.from_numpy(g.edge_index[0]).long()
        dst = torch.from_numpy(g.edge_index[1]).long()
        ew = torch.from_numpy(w8.astype(np.float32))[:, None] if weighted else None

        def pyg() -> torch.Tensor:
            msg = x.index_select(0, src)
            if ew is not None:
                msg = msg * ew
            return scatter(msg, dst, dim=0, dim_size=n, reduce="sum")

        add("pyg_scatter", timeit(pyg, repeats, min_seconds), x.numel() * 4)
    if "torch_csr_fp32" in methods:
        vals = (
            torch.from_numpy(csr.edge_weights.astype(np.float32)) if weighted else torch.ones(csr.num_edges)
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            adj = torch.sparse_csr_tensor(
                torch.from_numpy(csr.indptr), torch.from_numpy(csr.indices.astype(np.int64)), vals, (n, n)
            )
        add("torch_csr_fp32", timeit(lambda: adj @ x, repeats, min_seconds), x.numel() * 4)
    avg_degree = max(g.num_edges / max(n, 1), 1.0)
    for bits in (8, 4, 2):
        if f"native_int{bits}" not in methods:
            continue
        q, _, zx = quantize(g.x, bits)
        packed = native.pack(q, bits)
        m = 1.0 / (avg_degree * (64 if weighted else 1))

        def run(packed: np.ndarray = packed, bits: int = bits, zx: int = zx, m: float = m) -> np.ndarray:
            return native.spmm_requantize(csr, packed, bits, zx, m, 0, num_features=f, threads=threads)

        seconds = timeit(run, repeats, min_seconds)
        check_native(csr, q, zx, m, run(), csr.edge_weights)
        add(f"native_int{bits}", seconds, packed.nbytes)
    return rows


def machine_details(threads: int) -> list[str]:
    """Lines describing the machine and software."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    lib = native.load()
    import torch_geometric

    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return [
        f"- CPU: {cpu}, {os.cpu_count()} logical cores ({len(os.sched_getaffinity(0))} usable)",
        f"- threads: {threads} (torch intra-op/MKL and native OpenMP)",
        f"- load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
        f"- torch {torch.__version__}, numpy {np.__version__}, torch_geometric {torch_geometric.__version__}, "
        f"Python {platform.python_version()}",
        f"- native kernels: {' '.join(lib.flags)} (OpenMP: {lib.openmp}, VNNI GEMM: {lib.vnni})",
        f"- date: {datetime.date.today().isoformat()}",
    ]


def markdown(rows: list[Row]) -> str:
    """The results as a markdown table, one block of rows per graph."""
    out = [
        "| graph | N | E | F | method | time (ms) | speed-up vs torch CSR FP32 | feature bytes |",
        "|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    base = {r.graph: r.seconds for r in rows if r.method == "torch_csr_fp32"}
    for r in rows:
        ratio = f"{base[r.graph] / r.seconds:.2f}x" if r.graph in base else "-"
        out.append(
            f"| {r.graph} | {r.nodes:,} | {r.edges:,} | {r.features} | {r.method} | {r.seconds * 1e3:.2f} | "
            f"{ratio} | {r.feature_bytes / 2**20:.1f} MiB |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default=None, help=f"NODES:EDGES,... (default {QUICK_SIZES})")
    p.add_argument("--full", action="store_true", help=f"use {FULL_SIZES}")
    p.add_argument("--data-root", default=None, help="Planetoid folder: also benchmark Cora")
    p.add_argument(
        "--methods", default=",".join(METHODS), help="comma-separated subset of " + ", ".join(METHODS)
    )
    p.add_argument(
        "--threads", type=int, default=len(os.sched_getaffinity(0)), help="default: all usable cores"
    )
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--min-seconds", type=float, default=0.2, help="keep repeating fast methods this long")
    p.add_argument("--aggr", choices=("sum", "weighted", "both"), default="sum", help="default: sum")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write a markdown report here (e.g. docs/benchmarks.md)")
    p.add_argument(
        "--note", default="", help="a line added to the report, e.g. 'preliminary, measured under load'"
    )
    args = p.parse_args(argv)

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise SystemExit(f"unknown --methods {', '.join(unknown)}: choose from {', '.join(METHODS)}")
    torch.set_num_threads(args.threads)
    details = machine_details(args.threads)
    sizes = parse_sizes(FULL_SIZES if args.full else (args.sizes or QUICK_SIZES))

    graphs: list[Callable[[], Graph]] = [lambda n=n, e=e: synthetic_graph(n, e, args.seed) for n, e in sizes]
    if args.data_root:
        graphs.append(lambda: cora_graph(args.data_root))
    rows: list[Row] = []
    for make in graphs:
        g = make()
        print(f"{g.name}: N={g.num_nodes:,} E={g.num_edges:,} F={g.x.shape[1]}", file=sys.stderr, flush=True)
        for weighted in {"sum": [False], "weighted": [True], "both": [False, True]}[args.aggr]:
            rows.extend(bench_graph(g, methods, args.threads, args.repeats, weighted, args.min_seconds))
        del g

    table = markdown(rows)
    print(table)
    if args.out:
        cmd = shlex.join(["python", "tools/bench.py", *(argv if argv is not None else sys.argv[1:])])
        aggregation = {"sum": "sum", "weighted": "weighted sum", "both": "sum and weighted sum"}[args.aggr]
        text = [
            "# Aggregation benchmark",
            "",
            *([f"**{args.note}**", ""] if args.note else []),
            f"One {aggregation} aggregation over the graph (weighted: int8 edge weights for the native "
            "kernels, their FP32 copies for torch/PyG); median of "
            f"{args.repeats} runs after a warm-up (fast methods: as many runs as fill {args.min_seconds} s); "
            "speed-up = time(torch_csr_fp32) / time. "
            "`native_int*` = packed features, int32 accumulation, fused requantization to int8 "
            "(`quantgraph.native.spmm_requantize`), checked bit for bit on sampled rows.",
            "",
            f"Command: `{cmd}`",
            "",
            *details,
            "",
            table,
            "",
        ]
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text("\n".join(text), encoding="utf-8")
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
