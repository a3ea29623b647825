"""End-to-end speed of the ``smp`` model (issue 15): native INT8/INT4/INT2 against torch FP32 on one graph.

The model is the zoo's ``smp`` (row-normalised input, Linear(F→hidden), ReLU, Linear(hidden→C), ``K``
smoothness-aware propagation steps, log-softmax), seeded, untrained (speed does not depend on the weights).
Methods, timed round-robin (one run of each per round, so drift on a shared machine hits them alike), median
of the rounds:

* ``torch_eager_fp32``: the zoo model itself (gather, scatter-add by ``index_add``);
* ``torch_csr_fp32``: the same arithmetic with ``Ã = D^-½(A+I)D^-½`` as a torch CSR matrix built once (its
  build time is reported as the graph stage), two sparse-dense products per step;
* ``native_int{8,4,2}``: ``compile(..., policy="smp", bits=b, backend="native")`` on a small calibration graph
  of the same generator, one QAT epoch, then ``NativeModel.prepare`` once on the benchmark graph (the graph
  stage) and ``run``.

Ratios are against ``torch_csr_fp32`` of the same run. ``--profile`` adds each native method's time per op.

    python tools/bench_smp.py --nodes 200000 --degree 20 --threads 2 --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from quantgraph.compiler import compile as qg_compile
from quantgraph.data import make_csbm
from quantgraph.data.graph import GraphData
from quantgraph.models import build_model
from quantgraph.models.zoo import SMP, normalized_adjacency


@dataclass
class Method:
    """One timed method: its run, the graph stage it needed (seconds) and, for native ones, what it runs."""

    name: str
    fn: Callable[[], torch.Tensor]
    graph_seconds: float = 0.0
    native: Any = None  # NativeModel
    prepared: Any = None  # its PreparedGraph for the benchmark graph
    compiled: Any = None  # the CompiledModel (the IR the native output is checked against)


def csr_adjacency(edge_index: torch.Tensor, n: int) -> torch.Tensor:
    """``Ã`` of the zoo's ``normalized_adjacency`` (self-loops appended) as CSR, rows = targets."""
    src, dst, weight = normalized_adjacency(edge_index, n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        coo = torch.sparse_coo_tensor(torch.stack([dst, src]), weight[:, 0], (n, n)).coalesce()
        return coo.to_sparse_csr()


def smp_csr_forward(model: SMP, x: torch.Tensor, adj: torch.Tensor, num_edges: float) -> torch.Tensor:
    """``model``'s eval forward with its propagations as CSR products (the same λ, s updates per step)."""
    if model.feature_norm is not None:
        x = model.feature_norm(x)
    h = model.lin2(torch.relu(model.lin1(x)))
    lam, s = torch.tensor(1e-3), torch.tensor(1e-3)
    x = h
    for step in model.steps:
        xt = step.mix * (adj @ x) + step.teleport * h
        if step.keep != 0.0:
            xt = xt + step.keep * x
        if step.gap is None:
            x = xt
            continue
        gap = xt - x
        gap_prop = adj @ gap
        x = xt + (2.0 * step.eta_h * lam) * gap_prop
        s = s + 2.0 * step.eta_s * lam * s
        smoothness = (gap * gap).sum() - (gap * gap_prop).sum()
        lam = lam + step.eta_lambda * (step.alpha * num_edges - s * s - smoothness)
    return torch.log_softmax(x, dim=-1)


def build_methods(args: argparse.Namespace, model: SMP, graph: GraphData, calib: GraphData) -> list[Method]:
    inputs = graph.inputs()
    methods = []

    def eager() -> torch.Tensor:
        with torch.inference_mode():
            return model(**inputs)

    methods.append(Method("torch_eager_fp32", eager))
    start = time.perf_counter()
    adj = csr_adjacency(graph.edge_index, graph.num_nodes)
    csr_seconds = time.perf_counter() - start
    num_edges = float(adj._nnz())

    def csr() -> torch.Tensor:
        with torch.inference_mode():
            return smp_csr_forward(model, graph.x, adj, num_edges)

    methods.append(Method("torch_csr_fp32", csr, csr_seconds))
    for bits in args.bits:
        start = time.perf_counter()
        compiled = qg_compile(
            model, calib, policy="smp", bits=bits, backend="native", options={"epochs": args.epochs}
        )
        native = compiled.to_native(calib, threads=args.threads)
        model.eval()  # the policy trains a copy; keep the FP32 model in eval mode regardless
        print(
            f"  native_int{bits}: compiled in {time.perf_counter() - start:.1f} s",
            file=sys.stderr,
            flush=True,
        )
        start = time.perf_counter()
        prepared = native.prepare(inputs)
        graph_seconds = time.perf_counter() - start
        run = partial(native.run, inputs, prepared)
        methods.append(Method(f"native_int{bits}", run, graph_seconds, native, prepared, compiled))
    return methods


def check(method: Method, out: torch.Tensor, reference: torch.Tensor, inputs: dict[str, Any]) -> str:
    """FP32 methods: max |diff| to the eager model; native ones: equality with the IR (``compiled.run``)."""
    compiled = method.compiled
    if compiled is None:
        return f"max abs diff vs eager {float((out - reference).abs().max()):.1e}"
    diff = float((out - compiled.run(inputs)).abs().max())
    return "== IR (compiled.run)" if diff == 0 else f"max abs diff vs IR {diff:.1e}"


def round_robin(methods: list[Method], rounds: int) -> dict[str, list[float]]:
    """Seconds of each method per round (one warm-up run each first)."""
    for m in methods:
        m.fn()
    times: dict[str, list[float]] = {m.name: [] for m in methods}
    for _ in range(rounds):
        for m in methods:
            start = time.perf_counter()
            m.fn()
            times[m.name].append(time.perf_counter() - start)
    return times


def profile(method: Method, inputs: dict[str, Any], runs: int = 3) -> list[tuple[str, int, float]]:
    """(op, steps, median total seconds) of one native method, slowest first."""
    native, prepared = method.native, method.prepared
    per_run = []
    for _ in range(runs):
        native.run_all(inputs, prepared, profile=True)
        groups: dict[str, list[float]] = {}
        for step in native.profile:
            groups.setdefault(step.op, []).append(step.seconds)
        per_run.append({op: (len(v), sum(v)) for op, v in groups.items()})
    ops = per_run[0]
    rows = [(op, ops[op][0], statistics.median(r[op][1] for r in per_run)) for op in ops]
    return sorted(rows, key=lambda r: -r[2])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=200_000)
    parser.add_argument("--degree", type=float, default=20.0, help="average degree (edges = nodes × degree)")
    parser.add_argument("--features", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--classes", type=int, default=7)
    parser.add_argument("-K", type=int, default=10, help="propagation steps")
    parser.add_argument("--bits", type=int, nargs="+", default=[8, 4, 2], choices=[8, 4, 2])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=1, help="QAT epochs of each compile")
    parser.add_argument("--calibration-nodes", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", action="store_true", help="time per op of each native method")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    graph = make_csbm(
        num_nodes=args.nodes, num_features=args.features, num_classes=args.classes,
        avg_degree=args.degree, seed=args.seed + 1,
    )  # fmt: skip
    calib = make_csbm(
        num_nodes=args.calibration_nodes, num_features=args.features, num_classes=args.classes,
        avg_degree=args.degree, seed=args.seed + 2,
    )  # fmt: skip
    model = build_model("smp", args.features, args.classes, hidden=args.hidden, K=args.K).eval()
    print(
        f"smp K={args.K} {args.features}→{args.hidden}→{args.classes}, graph {graph.num_nodes:,} nodes, "
        f"{graph.edge_index.shape[1]:,} edges (+{graph.num_nodes:,} self-loops), {args.threads} threads",
        file=sys.stderr,
        flush=True,
    )
    methods = build_methods(args, model, graph, calib)
    times = round_robin(methods, args.rounds)
    reference = methods[0].fn()
    base = statistics.median(times["torch_csr_fp32"])
    inputs = graph.inputs()
    print("| method | median ms | × torch CSR FP32 | graph stage ms | check |")
    print("|---|---|---|---|---|")
    for m in methods:
        t = statistics.median(times[m.name])
        print(
            f"| {m.name} | {t * 1e3:.1f} | {base / t:.2f}× | {m.graph_seconds * 1e3:.0f} | "
            f"{check(m, m.fn(), reference, inputs)} |",
            flush=True,
        )
    if args.profile:
        for m in methods:
            if m.native is not None:
                print(
                    f"\n{m.name}: time per op (median of 3 profiled runs)\n\n| op | steps | ms |\n|---|---|---|"
                )
                for op, count, seconds in profile(m, inputs):
                    print(f"| {op} | {count} | {seconds * 1e3:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
