"""Inference benchmark: one aggregation and a 2-layer GCN end to end, FP32 baselines vs native INT8/INT4/INT2.

    python tools/bench.py                                  # quick: 10k/200k and 50k/1M edges (~2 min)
    python tools/bench.py --full --memory --profile --data-root ../shared/data/planetoid --out docs/benchmarks.md
    python tools/bench.py --sizes 50000:1000000 --threads 1 --sections agg --methods torch_csr_fp32,native_int8
    python tools/bench.py --sections e2e --profile --sizes 200000:4000000

Graphs are seeded synthetic power-law graphs (``quantgraph.data.make_csbm``: Chung–Lu degrees, exponent
2.5) with F=128 Gaussian features (``--full``: 200k/4M edges plus 200k/8M to show how time grows with E),
plus Cora (``--data-root``) with its own 1433 features.

**Aggregation** (``--sections agg``): every method computes one sum aggregation ``out[i] = sum_{j -> i} x[j]``
(``--aggr weighted``: ``w_ij * x[j]`` with int8 edge weights for the native kernels and their FP32 copies
elsewhere; ``--aggr both``: both):

* ``pyg_scatter``: ``torch_geometric.utils.scatter(x[src] (* w), dst, reduce="sum")``, MessagePassing's path;
* ``torch_csr_fp32``: ``torch.sparse_csr_tensor(...) @ x`` (MKL);
* ``ort_fp32``: onnxruntime on a small ONNX graph (opset 21): ``Gather`` of x's rows by source, optional
  ``Mul`` by the edge weight, ``ScatterElements(reduction="add")`` into zeros [N, F] (int32 indices, the
  target index broadcast to [E, F] in the graph by ``Expand``, as ScatterElements needs);
* ``ort_qdq_int8``: the same graph between ``DequantizeLinear`` of the int8 features and ``QuantizeLinear``
  of the sum (same scales as ``native_int8``; compared with it value for value);
* ``native_a2q``: A²Q's per-node bitwidths (``quantgraph.native.mixed_bits``): every node gets bits drawn by
  in-degree from ``--a2q-bits`` (default ``A2Q_BITS``), its row quantized symmetrically at its own scale and
  stored at 0/2/4/8 bits (rows grouped by width, each group packed), then ``spmm_mixed``: float32
  ``sum w_ij * s_j * q_j`` (its feature bytes include the per-node group, index and scale, 9 B a node);
* ``native_int{8,4,2}``: ``quantgraph.native.spmm_requantize``: packed features, int32 accumulation,
  requantized to int8 in the same row loop; ``native_int8_msg``: the same with the per-edge message
  quantizer (Degree-Quant form, ``message=MessageQuant(0.5)``).

**End to end** (``--sections e2e``): a 2-layer GCN (zoo ``gcn``: GCNConv, ReLU, GCNConv; F in, ``--hidden``
(default 64, the zoo default), ``--classes`` out; seeded init, eval mode) on the same graphs:

* ``pyg_fp32``: ``model(x, edge_index)``: GCNConv's default path normalises the graph (self-loops,
  D^-1/2 (A+I) D^-1/2) on every call, then gathers and scatters along the edges;
* ``torch_csr_fp32``: the same math with the normalised adjacency built once per graph as a
  ``torch.sparse_csr_tensor`` (its build time is the "graph stage"): A_hat @ (X W1) + b1, ReLU,
  A_hat @ (H W2) + b2, checked against PyG (allclose);
* ``ort_fp32``/``ort_qdq_int8``: onnxruntime on ``CompiledModel.to_onnx(quantized=False)`` and on the
  ``onnx-qdq`` minmax INT8 model (Q/DQ on weights, activations and per-edge messages); both recompute the
  normalisation in the graph on every run;
* ``native_int8`` (integer aggregation: ``skip_roles=["message"]``), ``native_int8_msg`` (with the per-edge
  message quantizer), ``native_int4``, ``native_int2``: ``qg.compile(..., backend="native")`` on a small
  calibration graph from the same generator (``--calib-nodes``, same degree and features), then
  ``NativeModel.run`` with a prepared graph; ``prepare`` (CSR + quantized edge weights) is the graph stage.

Times are the median of ``--repeats`` runs after one warm-up (fast methods: more runs until
``--min-seconds``; slow ones: fewer once ``--max-seconds`` are spent, at least one); aggregation ratios are
``time(torch_csr_fp32) / time``, end-to-end ratios ``time(fastest FP32 method) / time``. ``--threads`` sets
torch, onnxruntime (``intra_op_num_threads``) and the native kernels alike. ``--memory`` runs every method
once more in a fresh child process on the 4M-edge graph (or the one closest to it) and reports its peak
resident memory during the runs (VmHWM after resetting it through ``/proc/self/clear_refs``, minus the RSS
before the runs). Methods whose estimated working memory exceeds 70% of the available memory are skipped
(said so in the tables).
``--profile`` times every native step (grouped by op) on the 4M-edge (or largest) graph and the largest one.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from quantgraph import native
from quantgraph.data.synthetic import make_csbm

QUICK_SIZES = "10000:200000,50000:1000000"
FULL_SIZES = "200000:4000000,200000:8000000"
METHODS = (
    "pyg_scatter",
    "torch_csr_fp32",
    "ort_fp32",
    "ort_qdq_int8",
    "native_int8",
    "native_int8_msg",
    "native_int4",
    "native_int2",
    "native_a2q",
)
#: ``native_a2q`` (A²Q, issue 13): the share of nodes at each learned bitwidth, given to nodes by in-degree
#: (fewest bits to the lowest in-degrees, as A²Q learns); override with ``--a2q-bits``
A2Q_BITS = {1: 0.05, 2: 0.35, 3: 0.4, 4: 0.15, 8: 0.05}
#: native e2e method -> the native model it runs with one kernel call per program step (no fusion plan)
NATIVE_UNFUSED = {f"{m}_unfused": m for m in ("native_int8", "native_int4", "native_int2")}
#: onnxruntime e2e method -> (backend, quantized, ONNX export options); the plain names use the defaults
#: (segment aggregation with the messages computed inside the segment loop, x/edge_index inputs), ``_fused``
#: the same explicitly (``message_fusion=on``), ``_unfused`` with materialised ``[E, F]`` messages,
#: ``_scatter`` the old ScatterElements formulation, ``_csr`` the prepared-graph inputs (the sort order
#: computed once per graph: the graph stage)
ORT_E2E: dict[str, tuple[str, bool, dict[str, str]]] = {
    f"{name}{suffix}": (backend, quantized, options)
    for name, backend, quantized in (
        ("ort_fp32", "onnx-qdq", False),
        ("ort_qdq_int8", "onnx-qdq", True),
        ("ort_int8", "onnx-int", True),
    )
    for suffix, options in (
        ("", {}),
        ("_fused", {"message_fusion": "on"}),
        ("_unfused", {"message_fusion": "off"}),
        ("_scatter", {"onnx_aggregation": "scatter"}),
        ("_csr", {"graph_input": "csr"}),
    )
}
E2E_METHODS = (
    "pyg_fp32",
    "torch_csr_fp32",
    *ORT_E2E,
    "native_int8",
    "native_int8_msg",
    "native_int4",
    "native_int2",
    "native_int8_degree",
    "native_int8_rcm",
    *NATIVE_UNFUSED,
)
FP32_E2E = (
    "pyg_fp32",
    "torch_csr_fp32",
    "ort_fp32",
    "ort_fp32_fused",
    "ort_fp32_unfused",
    "ort_fp32_scatter",
    "ort_fp32_csr",
)
#: native e2e method -> (bits, integer aggregation i.e. skip_roles=["message"])
NATIVE_VARIANTS = {
    "native_int8": (8, True),
    "native_int8_msg": (8, False),
    "native_int4": (4, True),
    "native_int2": (2, True),
}
#: native e2e method -> (the native model it runs, node order of its prepare)
NATIVE_ORDERED = {"native_int8_degree": ("native_int8", "degree"), "native_int8_rcm": ("native_int8", "rcm")}
FEATURES = 128
TARGET_EDGES = 4_000_000
TARGETS = {"native_int8": 3.0, "native_int4": 4.0}  # aggregation: speed-up vs torch_csr_fp32
E2E_TARGET = 2.5  # native_int8 end to end vs the fastest FP32 method
IR_CHECK_EDGES = 300_000  # native logits are compared with compiled.run (the IR) up to this many edges
MESSAGE_MULTIPLIER = 0.5  # aggregation section's native_int8_msg: messages (x - zx) * 0.5, rounded to int8
MIB = 2**20


# ---------------------------------------------------------------------------------------------- graphs
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

    @property
    def avg_degree(self) -> float:
        return self.num_edges / max(self.num_nodes, 1)

    def save(self, path: Path) -> None:
        np.savez(path, edge_index=self.edge_index, x=self.x, name=np.array(self.name))

    @classmethod
    def load(cls, path: Path) -> Graph:
        with np.load(path) as f:
            return cls(str(f["name"]), f["edge_index"], f["x"])


def parse_sizes(spec: str) -> list[tuple[int, int]]:
    """``"N:E,N:E"`` -> [(N, E), ...]."""
    sizes = []
    for part in spec.split(","):
        n, _, e = part.strip().partition(":")
        if not n or not e:
            raise SystemExit(f"bad --sizes entry {part!r}: expected NODES:EDGES, e.g. 50000:1000000")
        sizes.append((int(float(n)), int(float(e))))
    return sizes


def synthetic_graph(n: int, e: int, seed: int, name: str | None = None) -> Graph:
    """A power-law graph with about ``e`` directed edges and F=128 Gaussian features."""
    g = make_csbm(num_nodes=n, num_classes=4, num_features=4, avg_degree=e / n, power=2.5, seed=seed)
    rng = np.random.Generator(np.random.PCG64(seed + 1))
    x = rng.standard_normal((n, FEATURES), dtype=np.float32)
    label = name or f"power-law {n // 1000}k/{g.num_edges / 1e6:.1f}M"
    return Graph(label, g.edge_index.numpy(), x)


def uniform_graph(n: int, e: int, seed: int, name: str | None = None) -> Graph:
    """Sources and targets drawn uniformly (no hubs, no locality), F=128 Gaussian features."""
    rng = np.random.Generator(np.random.PCG64(seed))
    ei = np.stack([rng.integers(0, n, e), rng.integers(0, n, e)]).astype(np.int64)
    x = rng.standard_normal((n, FEATURES), dtype=np.float32)
    return Graph(name or f"uniform {n // 1000}k/{e / 1e6:.1f}M", ei, x)


def one_sided_graph(n: int, e: int, seed: int, name: str | None = None) -> Graph:
    """Sources power-law (Chung-Lu weights of exponent 2.5, shuffled ids), targets uniform (issue 19's graph)."""
    rng = np.random.Generator(np.random.PCG64(seed))
    w = np.arange(1, n + 1, dtype=np.float64) ** (-1 / 1.5)
    rng.shuffle(w)
    src = rng.choice(n, size=e, p=w / w.sum())
    ei = np.stack([src, rng.integers(0, n, e)]).astype(np.int64)
    x = rng.standard_normal((n, FEATURES), dtype=np.float32)
    return Graph(name or f"one-sided power-law {n // 1000}k/{e / 1e6:.1f}M", ei, x)


#: --families: synthetic graph generators (name, nodes, edges, seed) -> Graph
FAMILIES: dict[str, Callable[..., Graph]] = {
    "chung-lu": synthetic_graph,
    "uniform": uniform_graph,
    "one-sided": one_sided_graph,
}
PLANETOID = {"cora": "Cora", "citeseer": "CiteSeer"}


def planetoid_graph(name: str, root: str) -> Graph:
    """A Planetoid graph (Cora, CiteSeer) with its bag-of-words features."""
    from quantgraph.data.planetoid import load_planetoid

    g = load_planetoid(name, root)
    return Graph(PLANETOID[name], g.edge_index.numpy(), g.x.numpy())


def family_of(g: Graph) -> str:
    """The generator family of a benchmark graph, from its label."""
    for family, label in (("uniform", "uniform"), ("one-sided", "one-sided"), ("chung-lu", "power-law")):
        if g.name.startswith(label):
            return family
    return g.name


def cora_graph(root: str) -> Graph:
    """Cora with its bag-of-words features."""
    from quantgraph.data.planetoid import load_planetoid

    g = load_planetoid("cora", root)
    return Graph("Cora", g.edge_index.numpy(), g.x.numpy())


# ---------------------------------------------------------------------------------------------- timing
def timeit(
    fn: Callable[[], object], repeats: int, min_seconds: float = 0.0, max_seconds: float = math.inf
) -> tuple[float, int]:
    """(median wall time, runs) of ``repeats`` calls after one warm-up call.

    More calls until ``min_seconds`` are spent (fast methods); fewer, but at least one, once the warm-up and
    the runs have taken ``max_seconds`` (slow methods).
    """
    t0 = time.perf_counter()
    fn()
    spent = time.perf_counter() - t0
    times: list[float] = []
    while len(times) < 1000:
        if len(times) >= repeats and sum(times) >= min_seconds:
            break
        if times and spent >= max_seconds:
            break
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        spent += times[-1]
    return statistics.median(times), len(times)


def ort_session(model: Any, threads: int) -> Any:
    """An onnxruntime CPU session with ``threads`` intra-op threads (and one inter-op thread)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    source = model if isinstance(model, bytes) else model.SerializeToString()
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def available_bytes() -> int:
    """Memory available to new allocations (MemAvailable), or a large number when unknown."""
    try:
        with open("/proc/meminfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62


class Skipped(Exception):
    """A method that is not run on this graph (e.g. it would not fit in memory); the message says why."""

    def __str__(self) -> str:
        return f"skipped: {super().__str__()}"


def failure(err: Exception) -> str:
    """An exception as one table cell: ``ERROR Type: first line (file:line)``."""
    import traceback

    frame = traceback.extract_tb(err.__traceback__)[-1] if err.__traceback__ else None
    where = f" ({Path(frame.filename).name}:{frame.lineno})" if frame else ""
    message = (str(err).splitlines() or [""])[0].replace("|", "/")
    return f"ERROR {type(err).__name__}: {message}{where}"


def check_memory(what: str, need: float) -> None:
    """Raise ``Skipped`` when ``need`` bytes are more than 70% of the available memory."""
    avail = available_bytes()
    if need > 0.7 * avail:
        raise Skipped(f"{what} needs ~{need / 2**30:.1f} GiB, {avail / 2**30:.1f} GiB available")


@dataclass
class Method:
    """A method ready to run on one graph: ``fn`` runs it once; ``check`` describes its result's correctness."""

    fn: Callable[[], Any]
    feature_bytes: int
    graph_bytes: int
    weight_bytes: int = 0
    hidden_bytes: int = 0
    graph_seconds: float = 0.0
    check: Callable[[Any], str] | None = None
    logits: Callable[[Any], torch.Tensor] | None = None


# ---------------------------------------------------------------------------------------------- aggregation
@dataclass
class Row:
    """One measured (graph, method) pair of the aggregation section."""

    graph: str
    nodes: int
    edges: int
    features: int
    method: str
    seconds: float
    feature_bytes: int
    runs: int = 0
    graph_bytes: int = 0
    check: str = ""


def quantize(x: np.ndarray, bits: int) -> tuple[np.ndarray, float, int]:
    """Per-tensor affine quantization: (int8 values, scale, zero point)."""
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    scale = max(hi - lo, 1e-8) / (qmax - qmin)
    zp = int(np.clip(round(qmin - lo / scale), qmin, qmax))
    q = np.clip(np.round(x / scale) + zp, qmin, qmax).astype(np.int8)
    return q, scale, zp


def check_native(
    csr: native.CSR,
    q: np.ndarray,
    zx: int,
    m: float,
    out: np.ndarray,
    w: np.ndarray | None,
    rows: int = 256,
    message: float | None = None,
) -> str:
    """Bit-exact check of sampled output rows against an int64 reference (``message``: per-edge multiplier)."""
    rng = np.random.Generator(np.random.PCG64(0))
    sample = rng.choice(csr.num_rows, min(rows, csr.num_rows), replace=False)
    deg = np.diff(csr.indptr)
    sample = np.union1d(sample, [int(np.argmax(deg))])  # always the hub
    for i in sample:
        lo, hi = csr.indptr[i], csr.indptr[i + 1]
        vals = q[csr.indices[lo:hi]].astype(np.int64) - zx
        if w is not None:
            vals = vals * w[lo:hi, None].astype(np.int64)
        if message is not None:
            vals = np.clip(np.round(vals * message), -128, 127).astype(np.int64)
        ref = np.clip(np.round(vals.sum(axis=0) * m), -128, 127)
        if not np.array_equal(out[i], ref):
            raise SystemExit(f"native result differs from the int64 reference at row {i}")
    return f"bit-exact ({len(sample)} rows)"


def onnx_aggregation(num_features: int, weighted: bool, qdq: tuple[float, int, float] | None = None) -> Any:
    """Gather -> (Mul) -> ScatterElements(add) as an ONNX model; ``qdq=(scale, zp, out_scale)`` wraps it in Q/DQ."""
    import onnx
    from onnx import TensorProto, helper

    f = num_features
    inputs = [
        helper.make_tensor_value_info("x", TensorProto.INT8 if qdq else TensorProto.FLOAT, ["N", f]),
        helper.make_tensor_value_info("src", TensorProto.INT32, ["E"]),
        helper.make_tensor_value_info("dst", TensorProto.INT32, ["E", 1]),
    ]
    inits, nodes = [], []
    x = "x"
    if qdq:
        scale, zp, out_scale = qdq
        inits += [
            helper.make_tensor("x_scale", TensorProto.FLOAT, [], [scale]),
            helper.make_tensor("x_zero_point", TensorProto.INT8, [], [zp]),
            helper.make_tensor("out_scale", TensorProto.FLOAT, [], [out_scale]),
            helper.make_tensor("out_zero_point", TensorProto.INT8, [], [0]),
        ]
        nodes.append(helper.make_node("DequantizeLinear", ["x", "x_scale", "x_zero_point"], ["xf"]))
        x = "xf"
    nodes += [
        helper.make_node("Gather", [x, "src"], ["msg"], axis=0),
        helper.make_node("Shape", [x], ["x_shape"]),
        helper.make_node(
            "ConstantOfShape",
            ["x_shape"],
            ["zeros"],
            value=helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0]),
        ),
    ]
    msg = "msg"
    if weighted:
        inputs.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, ["E", 1]))
        nodes.append(helper.make_node("Mul", ["msg", "w"], ["wmsg"]))
        msg = "wmsg"
    nodes += [
        helper.make_node("Shape", [msg], ["msg_shape"]),
        helper.make_node("Expand", ["dst", "msg_shape"], ["index"]),
        helper.make_node("ScatterElements", ["zeros", "index", msg], ["sum"], axis=0, reduction="add"),
    ]
    out = helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["N", f])
    if qdq:
        nodes.append(helper.make_node("QuantizeLinear", ["sum", "out_scale", "out_zero_point"], ["out"]))
        out = helper.make_tensor_value_info("out", TensorProto.INT8, ["N", f])
    graph = helper.make_graph(nodes, "aggregation", inputs, [out], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10  # onnx 1.23 writes 14 by default, which onnxruntime 1.31 refuses
    onnx.checker.check_model(model)
    return model


class AggCase:
    """One (graph, weighted) aggregation case: shared inputs and references, one ``Method`` per name."""

    def __init__(self, g: Graph, weighted: bool, threads: int) -> None:
        self.g, self.weighted, self.threads = g, weighted, threads
        rng = np.random.Generator(np.random.PCG64(7))
        self.w8 = rng.integers(1, 128, g.num_edges).astype(np.int8) if weighted else None
        self.csr = native.CSR.from_edge_index(g.edge_index, g.num_nodes, self.w8)
        self.m = 1.0 / (max(g.avg_degree, 1.0) * (64 if weighted else 1))
        self.x = torch.from_numpy(g.x)
        self._fp32: torch.Tensor | None = None
        self._int8: np.ndarray | None = None
        self._q: dict[int, tuple[np.ndarray, float, int]] = {}

    @property
    def name(self) -> str:
        return f"{self.g.name} weighted" if self.weighted else self.g.name

    def quantized(self, bits: int) -> tuple[np.ndarray, float, int]:
        if bits not in self._q:
            self._q[bits] = quantize(self.g.x, bits)
        return self._q[bits]

    def adjacency(self) -> torch.Tensor:
        csr = self.csr
        vals = (
            torch.from_numpy(csr.edge_weights.astype(np.float32))
            if self.weighted
            else torch.ones(csr.num_edges)
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.sparse_csr_tensor(
                torch.from_numpy(csr.indptr.astype(np.int64)),
                torch.from_numpy(csr.indices.astype(np.int64)),
                vals,
                (self.g.num_nodes, self.g.num_nodes),
            )

    def fp32_reference(self) -> torch.Tensor:
        if self._fp32 is None:
            self._fp32 = self.adjacency() @ self.x
        return self._fp32

    def int8_reference(self) -> np.ndarray:
        if self._int8 is None:
            q, _, zx = self.quantized(8)
            self._int8 = native.spmm_requantize(self.csr, q, 8, zx, self.m, 0, threads=self.threads)
        return self._int8

    def check_fp32(self, out: Any) -> str:
        ref = self.fp32_reference()
        err = float((torch.as_tensor(np.asarray(out)) - ref).abs().max()) / max(float(ref.abs().max()), 1e-30)
        return f"max rel. error {err:.1e} vs torch CSR" + (" MISMATCH" if err > 1e-4 else "")

    def setup(self, method: str) -> Method:
        g, n, f, e = self.g, self.g.num_nodes, self.g.x.shape[1], self.g.num_edges
        fp32_bytes = n * f * 4
        if method == "pyg_scatter":
            from torch_geometric.utils import scatter

            src = torch.from_numpy(g.edge_index[0]).long()
            dst = torch.from_numpy(g.edge_index[1]).long()
            ew = torch.from_numpy(self.w8.astype(np.float32))[:, None] if self.w8 is not None else None
            x = self.x

            def pyg() -> torch.Tensor:
                msg = x.index_select(0, src)
                if ew is not None:
                    msg = msg * ew
                return scatter(msg, dst, dim=0, dim_size=n, reduce="sum")

            graph_bytes = src.nbytes + dst.nbytes + (ew.nbytes if ew is not None else 0)
            return Method(pyg, fp32_bytes, graph_bytes, check=self.check_fp32)
        if method == "torch_csr_fp32":
            adj, x = self.adjacency(), self.x
            graph_bytes = sum(t.nbytes for t in (adj.crow_indices(), adj.col_indices(), adj.values()))
            return Method(lambda: adj @ x, fp32_bytes, graph_bytes)
        if method in ("ort_fp32", "ort_qdq_int8"):
            qdq = method == "ort_qdq_int8"
            # [E, F] int32 index, messages and the sum; onnxruntime's arena rounds up (~24 B per E x F measured)
            check_memory(method, e * f * 24 + n * f * 12)
            feeds: dict[str, np.ndarray] = {
                "src": g.edge_index[0].astype(np.int32),
                "dst": g.edge_index[1].astype(np.int32)[:, None],
            }
            if self.w8 is not None:
                feeds["w"] = self.w8.astype(np.float32)[:, None]
            if qdq:
                q, scale, zx = self.quantized(8)
                feeds["x"] = q
                model = onnx_aggregation(f, self.weighted, (scale, zx, scale / self.m))
            else:
                feeds["x"] = g.x
                model = onnx_aggregation(f, self.weighted)
            session = ort_session(model, self.threads)
            graph_bytes = sum(v.nbytes for k, v in feeds.items() if k != "x")
            check = self.check_qdq if qdq else self.check_fp32
            return Method(lambda: session.run(None, feeds)[0], feeds["x"].nbytes, graph_bytes, check=check)
        if method.startswith("native_int"):
            bits = int(method.removeprefix("native_int").removesuffix("_msg"))
            q, _, zx = self.quantized(bits)
            packed = native.pack(q, bits)
            csr, threads = self.csr, self.threads
            message, m = None, self.m
            if method.endswith("_msg"):
                message, m = native.MessageQuant(MESSAGE_MULTIPLIER), self.m / MESSAGE_MULTIPLIER

            def run() -> np.ndarray:
                kw = {"message": message} if message is not None else {}
                return native.spmm_requantize(
                    csr, packed, bits, zx, m, 0, num_features=f, threads=threads, **kw
                )

            graph_bytes = csr.indptr.nbytes + csr.indices.nbytes
            graph_bytes += csr.edge_weights.nbytes if csr.edge_weights is not None else 0
            mult = MESSAGE_MULTIPLIER if message is not None else None
            return Method(
                run,
                packed.nbytes,
                graph_bytes,
                check=lambda out: check_native(csr, q, zx, m, out, csr.edge_weights, message=mult),
            )
        if method == "native_a2q":
            return self.a2q_method()
        raise SystemExit(f"unknown aggregation method {method}")

    def a2q_rows(self) -> tuple[Any, np.ndarray]:
        """Per-node bits by in-degree (``A2Q_BITS``), rows quantized at their own scale, stored grouped."""
        from quantgraph.native.mixed_bits import BitGroupedRows

        n = self.g.num_nodes
        degree = np.bincount(self.g.edge_index[1], minlength=n)
        order = np.argsort(degree, kind="stable")
        shares = np.cumsum([A2Q_BITS[b] for b in sorted(A2Q_BITS)])
        bounds = np.round(shares / shares[-1] * n).astype(np.int64)
        bits = np.empty(n, dtype=np.int64)
        start = 0
        for b, end in zip(sorted(A2Q_BITS), bounds, strict=True):
            bits[order[start:end]] = b
            start = end
        qmax = (1 << (bits - 1)) - 1
        peak = np.abs(self.g.x).max(axis=1)
        scale = np.where((qmax > 0) & (peak > 0), peak / np.maximum(qmax, 1), 1.0).astype(np.float32)
        q = np.clip(np.rint(self.g.x / scale[:, None]), -qmax[:, None], qmax[:, None]).astype(np.int8)
        return BitGroupedRows.pack(q, bits, scale), bits

    def a2q_method(self) -> Method:
        from quantgraph.native.mixed_bits import spmm_mixed

        rows, bits = self.a2q_rows()
        csr, threads = self.csr, self.threads
        weights = csr.edge_weights.astype(np.float32) if csr.edge_weights is not None else None
        graph_bytes = csr.indptr.nbytes + csr.indices.nbytes + (weights.nbytes if weights is not None else 0)
        widths = ", ".join(f"{w}b {100 * c / rows.num_rows:.0f}%" for w, c in rows.rows_per_width().items())

        def check(out: Any) -> str:
            deq = torch.from_numpy(rows.unpack().astype(np.float32) * rows.row_scale[:, None])
            ref = self.adjacency() @ deq
            err = float((torch.from_numpy(out) - ref).abs().max()) / max(float(ref.abs().max()), 1e-30)
            mismatch = " MISMATCH" if err > 1e-4 else ""
            return f"mean {bits.mean():.2f} bits, stored {widths}; max rel. error {err:.1e} vs torch CSR{mismatch}"

        return Method(
            lambda: spmm_mixed(csr, rows, weights, threads=threads),
            rows.payload_bytes + rows.index_bytes,
            graph_bytes,
            check=check,
        )

    def check_qdq(self, out: Any) -> str:
        ref = self.int8_reference().astype(np.int16)
        diff = np.abs(np.asarray(out).astype(np.int16) - ref)
        return f"vs native_int8: {100 * float((diff == 0).mean()):.2f}% equal, max |diff| {int(diff.max())}"


def bench_graph(
    g: Graph,
    methods: list[str],
    threads: int,
    repeats: int,
    weighted: bool,
    min_seconds: float = 0.0,
    max_seconds: float = math.inf,
) -> list[Row]:
    """Time every aggregation method on one graph."""
    case = AggCase(g, weighted, threads)
    rows: list[Row] = []
    for method in methods:
        if method == "native_int8_msg" and not hasattr(native, "MessageQuant"):
            continue
        try:
            m = case.setup(method)
            seconds, runs = timeit(m.fn, repeats, min_seconds, max_seconds)
            check = m.check(m.fn()) if m.check else ""
        except Exception as err:  # a skipped or failing method is reported in its row, the others still run
            why = str(err) if isinstance(err, Skipped) else failure(err)
            rows.append(
                Row(case.name, g.num_nodes, g.num_edges, g.x.shape[1], method, math.nan, 0, 0, 0, why)
            )
            print(f"  {method:16s} {why}", file=sys.stderr, flush=True)
            continue
        rows.append(
            Row(
                case.name, g.num_nodes, g.num_edges, g.x.shape[1], method, seconds, m.feature_bytes, runs,
                m.graph_bytes, check,
            )
        )  # fmt: skip
        print(f"  {method:16s} {seconds * 1e3:10.2f} ms  ({runs} runs) {check}", file=sys.stderr, flush=True)
        del m
        gc.collect()
    return rows


# ---------------------------------------------------------------------------------------------- end to end
@dataclass
class E2ERow:
    """One measured (graph, method) pair of the end-to-end section."""

    graph: str
    nodes: int
    edges: int
    method: str
    seconds: float
    runs: int = 0
    graph_seconds: float = 0.0
    feature_bytes: int = 0
    hidden_bytes: int = 0
    weight_bytes: int = 0
    graph_bytes: int = 0
    agreement: float = math.nan
    check: str = ""


@dataclass
class E2EModels:
    """One GCN (per input width and degree) and its compiled forms: ONNX FP32, ONNX Q/DQ INT8, native."""

    model: torch.nn.Module
    onnx: dict[str, Any] = field(default_factory=dict)  # ORT_E2E method -> ONNX model
    native: dict[str, Any] = field(default_factory=dict)  # method -> NativeModel
    compiled: dict[str, Any] = field(default_factory=dict)  # method -> CompiledModel (parent only)
    calibration: str = ""
    compile_seconds: float = 0.0

    def save(self, folder: Path) -> None:
        import onnx

        folder.mkdir(parents=True, exist_ok=True)
        torch.save(self.model.state_dict(), folder / "model.pt")
        for method, proto in self.onnx.items():
            onnx.save(proto, str(folder / f"{method}.onnx"))
        for method, nm in self.native.items():
            nm.save(folder / f"{method}.qgn")

    @classmethod
    def load(cls, folder: Path, in_channels: int, hidden: int, classes: int, threads: int) -> E2EModels:
        import onnx

        from quantgraph.models import build_model
        from quantgraph.native.runtime import NativeModel

        model = build_model("gcn", in_channels, classes, hidden=hidden, normalize_features=False).eval()
        model.load_state_dict(torch.load(folder / "model.pt"))
        out = cls(model)
        for path in folder.glob("*.onnx"):
            out.onnx[path.stem] = onnx.load(str(path))
        for path in folder.glob("*.qgn"):
            out.native[path.stem] = NativeModel.load(path, threads)
        return out


def calibration_graph(g: Graph, nodes: int, seed: int) -> Any:
    """A small graph from the same generator as ``g`` (same average degree, F=128 Gaussian features)."""
    from quantgraph.data.graph import GraphData

    nodes = min(nodes, g.num_nodes)
    make = FAMILIES.get(family_of(g), synthetic_graph)
    c = make(nodes, round(nodes * g.avg_degree), seed + 1000, name="calibration")
    return GraphData(x=torch.from_numpy(c.x), edge_index=torch.from_numpy(c.edge_index), name=c.name)


def build_models(
    in_channels: int, calib: Any, methods: list[str], hidden: int, classes: int, seed: int, threads: int
) -> E2EModels:
    """Seeded GCN, traced once, compiled for every requested backend on the calibration graph ``calib``."""
    import quantgraph as qg
    from quantgraph.models import build_model

    start = time.perf_counter()
    torch.manual_seed(seed)
    # the benchmarked GCN is the plain layer pair (as the FP32 baselines), without the zoo's row normalisation
    model = build_model("gcn", in_channels, classes, hidden=hidden, normalize_features=False).eval()
    out = E2EModels(model, calibration=f"{calib.name} ({calib.num_nodes:,} nodes, {calib.num_edges:,} edges)")
    if not any(m.startswith(("ort_", "native_")) for m in methods):
        return out
    traced = qg.trace(model, calib.inputs())
    wanted = set(methods) | {NATIVE_ORDERED[m][0] for m in methods if m in NATIVE_ORDERED}
    wanted |= {NATIVE_UNFUSED[m] for m in methods if m in NATIVE_UNFUSED}
    for method, (bits, integer_aggregation) in NATIVE_VARIANTS.items():
        if method in wanted:
            options = {"skip_roles": ["message"]} if integer_aggregation else {}
            compiled = qg.compile(
                traced, calib, policy="minmax", bits=bits, backend="native", options=options
            )
            out.compiled[method] = compiled
            out.native[method] = compiled.to_native(calib, threads=threads)
    compiled_onnx: dict[str, Any] = {}
    for method in (m for m in methods if m in ORT_E2E):
        backend, quantized, options = ORT_E2E[method]
        if backend not in compiled_onnx:
            compiled_onnx[backend] = qg.compile(traced, calib, policy="minmax", bits=8, backend=backend)
        out.onnx[method] = compiled_onnx[backend].to_onnx(quantized=quantized, options=options)
    out.compile_seconds = time.perf_counter() - start
    return out


def gcn_adjacency(edge_index: torch.Tensor, n: int) -> torch.Tensor:
    """GCNConv's normalised adjacency D^-1/2 (A + I) D^-1/2 as CSR, rows = targets (PyG's gcn_norm)."""
    src, dst = edge_index[0], edge_index[1]
    keep = src != dst  # add_remaining_self_loops: every node gets exactly one self-loop of weight 1
    loop = torch.arange(n, dtype=edge_index.dtype)
    row, col = torch.cat([src[keep], loop]), torch.cat([dst[keep], loop])
    deg = torch.bincount(col, minlength=n).to(torch.float32)
    dinv = deg.pow(-0.5)
    dinv[torch.isinf(dinv)] = 0.0
    vals = dinv[row] * dinv[col]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        coo = torch.sparse_coo_tensor(torch.stack([col, row]), vals, (n, n)).coalesce()
        return coo.to_sparse_csr()


def onnx_bytes(model: Any) -> int:
    from onnx import numpy_helper

    return sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer)


def csr_bytes(csr: Any) -> int:
    return sum(a.nbytes for a in (csr.indptr, csr.indices, csr.edge_weights) if a is not None)


class E2ECase:
    """One graph for the end-to-end section: inputs, the FP32 reference logits, one ``Method`` per name."""

    def __init__(self, g: Graph, models: E2EModels, threads: int, hidden: int) -> None:
        self.g, self.models, self.threads, self.hidden = g, models, threads, hidden
        self.x = torch.from_numpy(g.x)
        self.edge_index = torch.from_numpy(g.edge_index).long()
        self.inputs = {"x": self.x, "edge_index": self.edge_index}
        self._reference: torch.Tensor | None = None
        self.notes: list[str] = []

    def reference(self) -> torch.Tensor:
        """PyG FP32 logits."""
        if self._reference is None:
            with torch.inference_mode():
                self._reference = self.models.model(self.x, self.edge_index)
        return self._reference

    def agreement(self, logits: Any) -> float:
        out = torch.as_tensor(np.asarray(logits))
        return float((out.argmax(1) == self.reference().argmax(1)).float().mean())

    def max_diff(self, logits: Any) -> float:
        return float((torch.as_tensor(np.asarray(logits)) - self.reference()).abs().max())

    def setup(self, method: str) -> Method:
        g, n, f, h = self.g, self.g.num_nodes, self.g.x.shape[1], self.hidden
        e = g.num_edges
        model = self.models.model
        weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        if method == "pyg_fp32":
            x, ei = self.x, self.edge_index

            def pyg() -> torch.Tensor:
                with torch.inference_mode():
                    return model(x, ei)

            return Method(pyg, n * f * 4, ei.nbytes, weight_bytes, n * h * 4)
        if method == "torch_csr_fp32":
            start = time.perf_counter()
            adj = gcn_adjacency(self.edge_index, n)
            seconds = time.perf_counter() - start
            c1, c2 = model.conv1, model.conv2
            w1, b1 = c1.lin.weight.detach().t().contiguous(), c1.bias.detach()
            w2, b2 = c2.lin.weight.detach().t().contiguous(), c2.bias.detach()
            x = self.x

            def csr() -> torch.Tensor:
                with torch.inference_mode():
                    hid = (adj @ (x @ w1)).add_(b1).relu_()
                    return (adj @ (hid @ w2)).add_(b2)

            def check(out: torch.Tensor) -> str:
                close = torch.allclose(out, self.reference(), rtol=1e-4, atol=1e-4)
                return (
                    f"{'allclose' if close else 'NOT allclose'} vs PyG (max |diff| {self.max_diff(out):.1e})"
                )

            graph_bytes = sum(t.nbytes for t in (adj.crow_indices(), adj.col_indices(), adj.values()))
            return Method(csr, n * f * 4, graph_bytes, weight_bytes, n * h * 4, seconds, check)
        if method in ORT_E2E:
            from quantgraph.backends.onnx_segment import prepare_graph_inputs

            qdq = ORT_E2E[method][1]
            model_proto = self.models.onnx[method]
            # int64 [E, H] scatter index, gathered and normalised messages in the arena (~44 B per E x H measured)
            check_memory(method, e * h * 44 + n * f * 8)
            session = ort_session(model_proto, self.threads)
            feeds = {"x": g.x, "edge_index": g.edge_index.astype(np.int64)}
            start = time.perf_counter()
            feeds.update(prepare_graph_inputs(model_proto, feeds))  # csr models: the sort, once per graph
            seconds = time.perf_counter() - start
            check = None if qdq else (lambda out: f"max |diff| vs PyG {self.max_diff(out):.1e}")
            return Method(
                lambda: session.run(None, feeds)[0],
                n * f * (1 if qdq else 4),
                sum(v.nbytes for k, v in feeds.items() if k != "x"),
                onnx_bytes(model_proto),
                n * h * (1 if qdq else 4),
                seconds,
                check=check,
            )
        if method in NATIVE_VARIANTS or method in NATIVE_ORDERED or method in NATIVE_UNFUSED:
            base, order = NATIVE_ORDERED.get(method, (NATIVE_UNFUSED.get(method, method), "none"))
            bits, integer_aggregation = NATIVE_VARIANTS[base]
            nm = self.models.native[base]
            if method in NATIVE_UNFUSED:
                from quantgraph.native.runtime import NativeModel

                nm = NativeModel(nm.program, fuse=False)
            nm.threads = self.threads

            prepared = self.prepare(base, order)
            inputs = self.inputs
            csrs = [getattr(v, "csr", v) for v in prepared.values.values()]  # GraphCSR holds its CSR
            csrs = [c for c in csrs if isinstance(c, native.CSR)]
            compiled = self.models.compiled.get(base)

            def check(out: torch.Tensor) -> str:
                if compiled is None or e > IR_CHECK_EDGES:
                    return ""
                ir = compiled.run(inputs)
                d = float((out - ir).abs().max())
                return "== IR (compiled.run)" if d == 0 else f"max |diff| vs IR {d:.1e}"

            return Method(
                lambda: nm.run(inputs, prepared),
                n * f,
                sum(csr_bytes(c) for c in csrs),
                sum(a.nbytes for a in nm.program.arrays.values()),
                n * h * bits // 8,
                prepared.seconds,
                check,
            )
        raise SystemExit(f"unknown end-to-end method {method}")

    def prepare(self, method: str, order: str = "none") -> Any:
        """The graph stage; on an int32-overflow refusal, say so and recompile on the graph itself."""
        from quantgraph.errors import InputError

        nm = self.models.native[method]
        try:
            return nm.prepare(self.inputs, order=order)
        except InputError as err:
            compiled = self.models.compiled.get(method)
            note = f"{method}: prepare refused {self.g.name}: {err}"
            print(f"  {note}", file=sys.stderr, flush=True)
            self.notes.append(note + " -> recompiled with this graph as calibration graph")
            if compiled is None:
                raise
            import quantgraph as qg
            from quantgraph.data.graph import GraphData

            data = GraphData(x=self.x, edge_index=self.edge_index, name=self.g.name)
            bits, integer_aggregation = NATIVE_VARIANTS[method]
            options = {"skip_roles": ["message"]} if integer_aggregation else {}
            compiled = qg.compile(
                self.models.model, data, policy="minmax", bits=bits, backend="native", options=options
            )
            self.models.compiled[method] = compiled
            self.models.native[method] = compiled.to_native(data, threads=self.threads)
            return self.models.native[method].prepare(self.inputs, order=order)


def bench_e2e(
    case: E2ECase, methods: list[str], repeats: int, min_seconds: float, max_seconds: float
) -> list[E2ERow]:
    """Time every end-to-end method on one graph."""
    g = case.g
    rows: list[E2ERow] = []
    for method in methods:
        try:
            m = case.setup(method)
            seconds, runs = timeit(m.fn, repeats, min_seconds, max_seconds)
            out = m.fn()
            check = m.check(out) if m.check else ""
        except Exception as err:  # a skipped or failing method is reported in its row, the others still run
            why = str(err) if isinstance(err, Skipped) else failure(err)
            rows.append(E2ERow(g.name, g.num_nodes, g.num_edges, method, math.nan, check=why))
            print(f"  {method:16s} {why}", file=sys.stderr, flush=True)
            continue
        row = E2ERow(
            g.name, g.num_nodes, g.num_edges, method, seconds, runs, m.graph_seconds, m.feature_bytes,
            m.hidden_bytes, m.weight_bytes, m.graph_bytes, case.agreement(out), check,
        )  # fmt: skip
        rows.append(row)
        stage = f" graph stage {m.graph_seconds * 1e3:.1f} ms," if m.graph_seconds else ""
        print(
            f"  {method:16s} {seconds * 1e3:10.2f} ms  ({runs} runs){stage} argmax agreement "
            f"{row.agreement:.4f} {check}",
            file=sys.stderr,
            flush=True,
        )
        del m, out
        gc.collect()
    return rows


# ---------------------------------------------------------------------------------------------- profile
@dataclass
class Profile:
    """Median time per native step over a few profiled runs of one method on one graph."""

    graph: str
    method: str
    steps: list[tuple[str, str, float]]  # (op, out, seconds)
    run_seconds: float

    def by_op(self) -> list[tuple[str, int, float]]:
        groups: dict[str, list[float]] = {}
        for op, _, s in self.steps:
            groups.setdefault(op, []).append(s)
        return sorted(((op, len(v), sum(v)) for op, v in groups.items()), key=lambda t: -t[2])


def profile_native(case: E2ECase, method: str, runs: int = 3) -> Profile:
    nm = case.models.native[method]
    nm.threads = case.threads
    prepared = case.prepare(method)
    nm.run(case.inputs, prepared)  # warm-up
    per_run, totals = [], []
    for _ in range(runs):
        start = time.perf_counter()
        nm.run_all(case.inputs, prepared, profile=True)
        totals.append(time.perf_counter() - start)
        per_run.append([(s.op, s.out, s.seconds) for s in nm.profile])
    steps = [
        (op, out, statistics.median(r[i][2] for r in per_run)) for i, (op, out, _) in enumerate(per_run[0])
    ]
    return Profile(case.g.name, method, steps, statistics.median(totals))


def profile_markdown(profiles: list[Profile]) -> str:
    out = []
    for p in profiles:
        total = sum(s for _, _, s in p.steps)
        out += [
            f"**{p.method}** on {p.graph}: profiled run {p.run_seconds * 1e3:.1f} ms "
            f"(steps {total * 1e3:.1f} ms, the rest is Python dispatch)",
            "",
            "| op | steps | time (ms) | share |",
            "|---|---:|---:|---:|",
        ]
        out += [f"| `{op}` | {k} | {s * 1e3:.2f} | {100 * s / total:.0f}% |" for op, k, s in p.by_op()]
        out.append("")
        if p.method == "native_int8":
            out += ["| step | op | output | time (ms) | share |", "|---:|---|---|---:|---:|"]
            out += [
                f"| {i} | `{op}` | {name} | {s * 1e3:.2f} | {100 * s / total:.0f}% |"
                for i, (op, name, s) in enumerate(p.steps)
            ]
            out.append("")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------- memory
@dataclass
class MemRow:
    """Peak resident memory of one method in a fresh process."""

    section: str
    graph: str
    method: str
    runs: int
    peak_bytes: int
    before_bytes: int
    how: str


def _status() -> dict[str, int]:
    values = {}
    with open("/proc/self/status", encoding="utf-8") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) * 1024
    return values


def child(spec: dict[str, Any]) -> int:
    """``--child``: build one method's inputs, reset the peak-RSS counter, run it, print the peak as JSON.

    The peak is VmHWM after ``/proc/self/clear_refs`` reset it to the RSS before the runs (Linux); where that
    reset fails, the ``ru_maxrss`` delta, which also covers the setup's peak (an upper bound).
    """
    torch.set_num_threads(spec["threads"])
    g = Graph.load(Path(spec["graph"]))
    if spec["section"] == "agg":
        m = AggCase(g, spec["weighted"], spec["threads"]).setup(spec["method"])
    else:
        models = E2EModels.load(
            Path(spec["models"]), g.x.shape[1], spec["hidden"], spec["classes"], spec["threads"]
        )
        m = E2ECase(g, models, spec["threads"], spec["hidden"]).setup(spec["method"])
    gc.collect()
    before = _status()["VmRSS"]
    how = "VmHWM"
    try:
        with open("/proc/self/clear_refs", "w", encoding="utf-8") as fh:
            fh.write("5")
    except OSError:
        how = "ru_maxrss"
    for _ in range(spec["runs"]):
        out = m.fn()
        del out
    if how == "VmHWM":
        peak = _status()["VmHWM"]
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"peak": peak - before, "before": before, "how": how}))
    return 0


def measure_memory(section: str, graph: str, method: str, spec: dict[str, Any], runs: int) -> MemRow | None:
    """Run ``method`` in a fresh ``python tools/bench.py --child`` process and read its peak memory."""
    spec = {**spec, "section": section, "method": method, "runs": runs}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        print(f"  memory {section} {method}: child failed: {tail}", file=sys.stderr, flush=True)
        return None
    res = json.loads(lines[-1])
    print(
        f"  memory {section:3s} {method:16s} peak {res['peak'] / MIB:9.1f} MiB "
        f"(RSS before {res['before'] / MIB:.0f} MiB)",
        file=sys.stderr,
        flush=True,
    )
    return MemRow(section, graph, method, runs, res["peak"], res["before"], res["how"])


# ---------------------------------------------------------------------------------------------- report
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
    import onnxruntime
    import torch_geometric

    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    mem = available_bytes()
    return [
        f"- CPU: {cpu}, {os.cpu_count()} logical cores ({len(os.sched_getaffinity(0))} usable), "
        f"{mem / 2**30:.1f} GiB memory available at start",
        f"- threads: {threads} (torch intra-op/MKL, onnxruntime intra_op_num_threads, native OpenMP)",
        f"- load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
        f"- torch {torch.__version__}, numpy {np.__version__}, torch_geometric {torch_geometric.__version__}, "
        f"onnxruntime {onnxruntime.__version__}, Python {platform.python_version()}",
        f"- native kernels: {' '.join(lib.flags)} (OpenMP: {lib.openmp}, VNNI GEMM: {lib.vnni})",
        f"- date: {datetime.date.today().isoformat()}",
    ]


def _ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1e3:.2f}"


def _size(nbytes: int) -> str:
    if nbytes < MIB:
        return f"{nbytes / 1024:.1f} KiB"
    return f"{nbytes / MIB:.2f} MiB" if nbytes < 10 * MIB else f"{nbytes / MIB:.1f} MiB"


def markdown(rows: list[Row]) -> str:
    """The aggregation results as a markdown table, one block of rows per graph."""
    out = [
        "| graph | N | E | F | method | time (ms) | runs | speed-up vs torch CSR FP32 | feature bytes "
        "| graph bytes | check |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    base = {r.graph: r.seconds for r in rows if r.method == "torch_csr_fp32"}
    for r in rows:
        skipped = math.isnan(r.seconds)
        ratio = f"{base[r.graph] / r.seconds:.2f}x" if r.graph in base and not skipped else "-"
        sizes = "- | -" if skipped else f"{_size(r.feature_bytes)} | {_size(r.graph_bytes)}"
        out.append(
            f"| {r.graph} | {r.nodes:,} | {r.edges:,} | {r.features} | {r.method} | {_ms(r.seconds)} | {r.runs} "
            f"| {ratio} | {sizes} | {r.check} |"
        )
    return "\n".join(out)


def fastest_fp32(rows: list[E2ERow]) -> dict[str, E2ERow]:
    """Per graph, the fastest FP32 end-to-end row."""
    best: dict[str, E2ERow] = {}
    for r in rows:
        if r.method in FP32_E2E and not math.isnan(r.seconds):
            if r.graph not in best or r.seconds < best[r.graph].seconds:
                best[r.graph] = r
    return best


def e2e_markdown(rows: list[E2ERow]) -> str:
    """The end-to-end results as a markdown table."""
    out = [
        "| graph | N | E | method | time (ms) | runs | speed-up vs fastest FP32 | graph stage (ms) | x bytes "
        "| hidden bytes | weight bytes | graph bytes | argmax agreement vs FP32 | check |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    best = fastest_fp32(rows)
    for r in rows:
        skipped = math.isnan(r.seconds)
        ratio = "-"
        if r.graph in best and not skipped:
            ratio = f"{best[r.graph].seconds / r.seconds:.2f}x"
            if best[r.graph] is r:
                ratio += " (fastest FP32)"
        stage = _ms(r.graph_seconds) if r.graph_seconds else "-"
        agree = "-" if math.isnan(r.agreement) else f"{r.agreement:.4f}"
        sizes = (
            "- | - | - | -"
            if skipped
            else " | ".join(
                _size(b) for b in (r.feature_bytes, r.hidden_bytes, r.weight_bytes, r.graph_bytes)
            )
        )
        out.append(
            f"| {r.graph} | {r.nodes:,} | {r.edges:,} | {r.method} | {_ms(r.seconds)} | {r.runs} | {ratio} "
            f"| {stage} | {sizes} | {agree} | {r.check} |"
        )
    return "\n".join(out)


def memory_markdown(rows: list[MemRow], agg: list[Row], e2e: list[E2ERow]) -> str:
    """Peak memory per method, with the bytes of features, weights and graph structure it stores."""
    out = [
        "| section | graph | method | runs | peak during the runs (MiB) | RSS before the runs (MiB) "
        "| feature bytes | weight bytes | graph bytes |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    sizes = {("agg", r.graph, r.method): (r.feature_bytes, 0, r.graph_bytes) for r in agg}
    sizes.update({("e2e", r.graph, r.method): (r.feature_bytes, r.weight_bytes, r.graph_bytes) for r in e2e})
    for r in rows:
        fb, wb, gb = sizes.get((r.section, r.graph, r.method), (0, 0, 0))
        note = "" if r.how == "VmHWM" else " (ru_maxrss)"
        out.append(
            f"| {r.section} | {r.graph} | {r.method} | {r.runs} | {r.peak_bytes / MIB:.1f}{note} "
            f"| {r.before_bytes / MIB:.0f} | {_size(fb)} | {'-' if r.section == 'agg' else _size(wb)} "
            f"| {_size(gb)} |"
        )
    return "\n".join(out)


def target_graph(names_edges: list[tuple[str, int]]) -> str | None:
    """The synthetic graph closest to 4M edges (the targets' graph); None without synthetic graphs."""
    synthetic = [(name, e) for name, e in names_edges if name.startswith("power-law")]
    if not synthetic:
        return None
    return min(synthetic, key=lambda t: abs(math.log(t[1] / TARGET_EDGES)))[0]


FAMILY_TARGET = 3.0  # native_int8 GCN end to end vs torch_csr_fp32 on every family at >= 1M edges
REAL_TARGET = 2.0  # ... on Cora


def family_markdown(rows: list[E2ERow]) -> str:
    """Per graph: torch CSR FP32 time, native speed-ups over it, native prepare times; targets per row."""
    methods = [
        m for m in (*NATIVE_VARIANTS, *NATIVE_UNFUSED, *NATIVE_ORDERED) if any(r.method == m for r in rows)
    ]
    head = [
        "graph",
        "E",
        "torch_csr_fp32 (ms)",
        *methods,
        "prepare native_int8 / degree / rcm (ms)",
        "target",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for graph in dict.fromkeys(r.graph for r in rows):
        at = {r.method: r for r in rows if r.graph == graph}
        base = at.get("torch_csr_fp32")
        if base is None or math.isnan(base.seconds):
            continue
        cells = [graph, f"{base.edges:,}", f"{base.seconds * 1e3:.1f}"]
        for m in methods:
            r = at.get(m)
            ok = r is not None and not math.isnan(r.seconds)
            cells.append(f"{base.seconds / r.seconds:.2f}x ({r.seconds * 1e3:.1f} ms)" if ok else "-")
        prep = [at.get(m) for m in ("native_int8", "native_int8_degree", "native_int8_rcm")]
        cells.append(
            " / ".join(f"{r.graph_seconds * 1e3:.0f}" if r and r.graph_seconds else "-" for r in prep)
        )
        verdict = []
        i8 = at.get("native_int8")
        target = REAL_TARGET if graph in PLANETOID.values() else FAMILY_TARGET
        if (
            i8 is not None
            and not math.isnan(i8.seconds)
            and (base.edges >= 1_000_000 or target == REAL_TARGET)
        ):
            ratio = base.seconds / i8.seconds
            verdict.append(f"int8 >= {target:g}x: {'met' if ratio >= target else '**missed**'}")
            for m in ("native_int4", "native_int2"):
                r = at.get(m)
                if r is not None and not math.isnan(r.seconds):
                    verdict.append(f"{m[7:]} < int8: {'met' if r.seconds < i8.seconds else '**missed**'}")
        cells.append("; ".join(verdict) or "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def targets_text(rows: list[Row], e2e: list[E2ERow], profiles: list[Profile]) -> list[str]:
    """The "targets" paragraph: met / missed by how much, computed from the numbers."""
    lines: list[str] = []
    graphs = list(dict.fromkeys((r.graph, r.edges) for r in rows if not r.graph.endswith("weighted")))
    tg = target_graph(graphs)
    if tg is not None:
        at = {r.method: r.seconds for r in rows if r.graph == tg}
        where = (
            tg
            if abs(math.log(dict(graphs)[tg] / TARGET_EDGES)) < 0.1
            else f"{tg} (no 4M-edge graph in this run)"
        )
        for method, target in TARGETS.items():
            if method in at and "torch_csr_fp32" in at and not math.isnan(at[method]):
                ratio = at["torch_csr_fp32"] / at[method]
                verdict = (
                    "met"
                    if ratio >= target
                    else f"**missed** by {target / ratio:.2f}x (needs {at['torch_csr_fp32'] / target * 1e3:.1f} ms)"
                )
                lines.append(
                    f"- aggregation {method} vs torch_csr_fp32 on {where}: {ratio:.2f}x "
                    f"(target >= {target:g}x): {verdict}"
                )
    e2e_graphs = list(dict.fromkeys((r.graph, r.edges) for r in e2e))
    tg = target_graph(e2e_graphs)
    if tg is not None:
        best = fastest_fp32(e2e).get(tg)
        where = (
            tg
            if abs(math.log(dict(e2e_graphs)[tg] / TARGET_EDGES)) < 0.1
            else f"{tg} (no 4M-edge graph in this run)"
        )
        for r in e2e:
            if r.graph != tg or r.method not in NATIVE_VARIANTS or best is None or math.isnan(r.seconds):
                continue
            ratio = best.seconds / r.seconds
            if r.method == "native_int8":
                verdict = (
                    "met"
                    if ratio >= E2E_TARGET
                    else f"**missed** by {E2E_TARGET / ratio:.2f}x (needs {best.seconds / E2E_TARGET * 1e3:.1f} ms, "
                    f"takes {r.seconds * 1e3:.1f} ms)"
                )
                lines.append(
                    f"- 2-layer GCN end to end, native_int8 vs the fastest FP32 ({best.method}, "
                    f"{best.seconds * 1e3:.1f} ms) on {where}: {ratio:.2f}x (target >= {E2E_TARGET:g}x): {verdict}"
                )
            else:
                lines.append(f"  - {r.method}: {ratio:.2f}x (for comparison)")
    for p in profiles:
        if p.method != "native_int8":
            continue
        total = sum(s for _, _, s in p.steps)
        by_op = p.by_op()
        top = ", ".join(f"`{op}` {100 * s / total:.0f}% ({s * 1e3:.1f} ms)" for op, _, s in by_op[:4])
        steps = ", ".join(f"{out} {s * 1e3:.1f} ms" for op, out, s in p.steps if op == by_op[0][0])
        lines.append(
            f"- what bounds native_int8 end to end on {p.graph} (profile): {top}; the `{by_op[0][0]}` "
            f"steps in program order: {steps}"
        )
    return lines


# ---------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default=None, help=f"NODES:EDGES,... (default {QUICK_SIZES})")
    p.add_argument("--full", action="store_true", help=f"use {FULL_SIZES}")
    p.add_argument("--data-root", default=None, help="Planetoid folder: also benchmark Cora")
    p.add_argument(
        "--families",
        default="chung-lu",
        help="graph families at every --sizes entry: "
        + ", ".join(FAMILIES)
        + "; and real graphs "
        + ", ".join(PLANETOID)
        + " (need --data-root; without a real one, --data-root adds Cora)",
    )
    p.add_argument("--sections", default="agg,e2e", help="agg (one aggregation), e2e (2-layer GCN) or both")
    p.add_argument(
        "--methods", default=",".join(METHODS), help="aggregation methods, a subset of " + ", ".join(METHODS)
    )
    p.add_argument(
        "--e2e-methods",
        default=",".join(E2E_METHODS),
        help="end-to-end methods, a subset of " + ", ".join(E2E_METHODS),
    )
    p.add_argument(
        "--threads", type=int, default=len(os.sched_getaffinity(0)), help="default: all usable cores"
    )
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--min-seconds", type=float, default=0.2, help="keep repeating fast methods this long")
    p.add_argument(
        "--max-seconds",
        type=float,
        default=None,
        help="stop repeating slow methods after this long, warm-up included (>= 1 run; default 5, --full: 20)",
    )
    p.add_argument("--aggr", choices=("sum", "weighted", "both"), default="sum", help="default: sum")
    p.add_argument("--hidden", type=int, default=64, help="GCN hidden width (default 64, the zoo default)")
    p.add_argument("--classes", type=int, default=16, help="GCN output classes (default 16)")
    p.add_argument(
        "--calib-nodes",
        type=int,
        default=5000,
        help="nodes of the synthetic calibration graph (default 5000)",
    )
    p.add_argument(
        "--memory", action="store_true", help="peak memory per method on the 4M-edge graph (or the closest)"
    )
    p.add_argument(
        "--memory-runs", type=int, default=2, help="runs per method in the memory child (default 2)"
    )
    p.add_argument("--profile", action="store_true", help="native per-step time breakdown")
    p.add_argument(
        "--a2q-bits",
        default=None,
        metavar="B:SHARE,...",
        help="native_a2q: share of nodes per learned bitwidth, by in-degree (default 1:0.05,2:0.35,3:0.4,4:0.15,8:0.05)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write a markdown report here (e.g. docs/benchmarks.md)")
    p.add_argument(
        "--note", default="", help="a line added to the report, e.g. 'preliminary, measured under load'"
    )
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.a2q_bits:
        A2Q_BITS.clear()
        for part in args.a2q_bits.split(","):
            b, _, share = part.partition(":")
            A2Q_BITS[int(b)] = float(share)
    if args.child:
        return child(json.loads(args.child))

    def pick(spec: str, known: tuple[str, ...], option: str) -> list[str]:
        chosen = [m.strip() for m in spec.split(",") if m.strip()]
        unknown = sorted(set(chosen) - set(known))
        if unknown:
            raise SystemExit(f"unknown {option} {', '.join(unknown)}: choose from {', '.join(known)}")
        return chosen

    sections = pick(args.sections, ("agg", "e2e"), "--sections")
    methods = pick(args.methods, METHODS, "--methods") if "agg" in sections else []
    e2e_methods = pick(args.e2e_methods, E2E_METHODS, "--e2e-methods") if "e2e" in sections else []
    torch.set_num_threads(args.threads)
    details = machine_details(args.threads)
    sizes = parse_sizes(FULL_SIZES if args.full else (args.sizes or QUICK_SIZES))
    if args.max_seconds is None:
        args.max_seconds = 20.0 if args.full else 5.0
    started = time.perf_counter()

    families = pick(args.families, (*FAMILIES, *PLANETOID), "--families")
    graphs: list[Callable[[], Graph]] = [
        lambda n=n, e=e, f=f: FAMILIES[f](n, e, args.seed)
        for n, e in sizes
        for f in families
        if f in FAMILIES
    ]
    graph_sizes = [(n, e) for n, e in sizes for f in families if f in FAMILIES]  # per synthetic graph
    real = [f for f in families if f in PLANETOID]
    if args.data_root:
        for name in real or ["cora"]:
            graphs.append(lambda name=name: planetoid_graph(name, args.data_root))
    elif real:
        raise SystemExit(f"--families {','.join(real)} needs --data-root (the Planetoid folder)")
    largest = max(range(len(sizes)), key=lambda i: sizes[i][1]) if sizes else len(graphs) - 1
    target_index = (
        min(range(len(sizes)), key=lambda i: abs(math.log(sizes[i][1] / TARGET_EDGES))) if sizes else largest
    )
    weightings = {"sum": [False], "weighted": [True], "both": [False, True]}[args.aggr]
    rows: list[Row] = []
    e2e_rows: list[E2ERow] = []
    profiles: list[Profile] = []
    mem_rows: list[MemRow] = []
    notes: list[str] = []
    model_cache: dict[tuple[int, int], E2EModels] = {}
    workdir = tempfile.TemporaryDirectory(prefix="qg-bench-")
    for index, make in enumerate(graphs):
        g = make()
        print(f"{g.name}: N={g.num_nodes:,} E={g.num_edges:,} F={g.x.shape[1]}", file=sys.stderr, flush=True)
        for weighted in weightings if methods else []:
            rows.extend(
                bench_graph(
                    g, methods, args.threads, args.repeats, weighted, args.min_seconds, args.max_seconds
                )
            )
        models = None
        if e2e_methods:
            real_graph = g.name in PLANETOID.values()
            key = (g.x.shape[1], round(g.avg_degree) if not real_graph else -1, family_of(g))
            if key not in model_cache:
                if real_graph:
                    from quantgraph.data.graph import GraphData

                    calib = GraphData(
                        x=torch.from_numpy(g.x), edge_index=torch.from_numpy(g.edge_index), name=g.name
                    )
                else:
                    calib = calibration_graph(g, args.calib_nodes, args.seed)
                model_cache[key] = build_models(
                    g.x.shape[1], calib, e2e_methods, args.hidden, args.classes, args.seed, args.threads
                )
                print(
                    f"  compiled on {model_cache[key].calibration} in {model_cache[key].compile_seconds:.1f} s",
                    file=sys.stderr,
                    flush=True,
                )
            models = model_cache[key]
            case = E2ECase(g, models, args.threads, args.hidden)
            e2e_rows.extend(bench_e2e(case, e2e_methods, args.repeats, args.min_seconds, args.max_seconds))
            notes.extend(case.notes)
            at_size = graph_sizes[index] if index < len(graph_sizes) else None
            if args.profile and sizes and at_size in (sizes[largest], sizes[target_index]):
                timed = {r.method: r.seconds for r in e2e_rows if r.graph == g.name}
                for method in NATIVE_VARIANTS:
                    if not math.isnan(timed.get(method, math.nan)):  # skipped methods are not profiled
                        runs = 1 if timed[method] > 5 else 3
                        profiles.append(profile_native(case, method, runs))
                        print(profile_markdown(profiles[-1:]), file=sys.stderr, flush=True)
            del case
        if args.memory and index == target_index * len([f for f in families if f in FAMILIES]):
            folder = Path(workdir.name)
            g.save(folder / "graph.npz")
            spec = {"graph": str(folder / "graph.npz"), "threads": args.threads}
            timed = {(r.method, r.graph): r.seconds for r in rows}
            for weighted in weightings if methods else []:
                name = f"{g.name} weighted" if weighted else g.name
                for method in methods:
                    if math.isnan(timed.get((method, name), math.nan)):
                        continue
                    runs = 1 if timed[(method, name)] > 5 else args.memory_runs
                    row = measure_memory("agg", name, method, {**spec, "weighted": weighted}, runs)
                    mem_rows.extend([row] if row else [])
            if models is not None:
                models.save(folder / "models")
                spec.update(models=str(folder / "models"), hidden=args.hidden, classes=args.classes)
                timed = {r.method: r.seconds for r in e2e_rows if r.graph == g.name}
                for method in e2e_methods:
                    if math.isnan(timed.get(method, math.nan)):
                        continue
                    runs = 1 if timed[method] > 5 else args.memory_runs
                    row = measure_memory("e2e", g.name, method, spec, runs)
                    mem_rows.extend([row] if row else [])
        del g
        gc.collect()

    elapsed = time.perf_counter() - started
    tables = []
    if rows:
        tables += ["## One aggregation", "", markdown(rows), ""]
    if e2e_rows:
        tables += ["## 2-layer GCN end to end", "", e2e_markdown(e2e_rows), ""]
        if "torch_csr_fp32" in e2e_methods and any(m in e2e_methods for m in NATIVE_VARIANTS):
            tables += [
                "### Native by graph family (speed-up over torch_csr_fp32)",
                "",
                family_markdown(e2e_rows),
                "",
            ]
    if mem_rows:
        tables += ["## Bytes and peak memory", "", memory_markdown(mem_rows, rows, e2e_rows), ""]
    if profiles:
        tables += ["## Native per-step profile", "", profile_markdown(profiles)]
    target_lines = targets_text(rows, e2e_rows, profiles)
    if target_lines:
        tables += ["## Targets", "", *target_lines, ""]
    print("\n".join(tables))
    print(f"total {elapsed:.0f} s", file=sys.stderr)
    if args.out:
        cmd = shlex.join(["python", "tools/bench.py", *(argv if argv is not None else sys.argv[1:])])
        aggregation = {"sum": "sum", "weighted": "weighted sum", "both": "sum and weighted sum"}[args.aggr]
        calibrations = "; ".join(sorted({m.calibration for m in model_cache.values()}))
        text = [
            "# Inference benchmark",
            "",
            *([f"**{args.note}**", ""] if args.note else []),
            f"**One aggregation**: one {aggregation} aggregation over the graph (weighted: int8 edge weights "
            "for the native kernels, their FP32 copies elsewhere). `pyg_scatter` = gather + "
            "`torch_geometric.utils.scatter`; `torch_csr_fp32` = `torch.sparse_csr_tensor @ x` (MKL); "
            "`ort_fp32` = onnxruntime on Gather -> (Mul) -> ScatterElements(add) (opset 21, int32 indices "
            "expanded to [E, F] in the graph); `ort_qdq_int8` = the same between DequantizeLinear and "
            "QuantizeLinear (compared with native_int8 value for value); `native_int*` = packed features, "
            "int32 accumulation, fused requantization to int8 (`quantgraph.native.spmm_requantize`), checked "
            "bit for bit on sampled rows; `native_int8_msg` = with the per-edge message quantizer. "
            "Speed-up = time(torch_csr_fp32) / time.",
            "",
            f"**2-layer GCN end to end**: zoo `gcn` (GCNConv, ReLU, GCNConv), F in, hidden {args.hidden}, "
            f"{args.classes} classes, seeded random weights, eval mode. `pyg_fp32` = `model(x, edge_index)` "
            "(GCNConv normalises the graph on every call); `torch_csr_fp32` = A_hat @ (X W1) + b1, ReLU, "
            "A_hat @ (H W2) + b2 with A_hat = D^-1/2 (A+I) D^-1/2 built once per graph as a CSR tensor "
            "(graph stage); `ort_fp32` / `ort_qdq_int8` / `ort_int8` = onnxruntime on the compiled FP32 ONNX, on the "
            "onnx-qdq minmax INT8 model (Q/DQ on weights, activations and messages) and on the onnx-int model "
            "(MatMulInteger, int32 aggregation); all normalise the graph in the graph on every run and "
            "aggregate by destination-sorted segments (the sort inside the model); `_csr` = the same with "
            "`--graph-input csr` (the sort order as an input, computed once per graph: graph stage); "
            "`_fused` = `message_fusion=on` (messages computed per block inside the segment loop, no [E, F] tensor); "
            "`_scatter` = `onnx_aggregation=scatter`, the old element-wise ScatterElements export; "
            '`native_int8` = `backend="native"` with `skip_roles=["message"]` '
            "(integer aggregation), `native_int8_msg` = with the per-edge message quantizer, `native_int4` / "
            "`native_int2` = integer aggregation at 4 / 2 bits; `NativeModel.run` on a prepared graph "
            "(graph stage = `prepare`: CSRs and quantized edge weights, once per graph), its steps fused "
            "(`native/fusion.py`: input quantize inside the first GEMM, requantize chains, 4/2-bit packing and "
            "the output dequantize in the producing kernel); `native_int8_degree` / `native_int8_rcm` = "
            "native_int8 with `prepare(order=...)` renumbering the nodes (degree-sorted / reverse "
            "Cuthill-McKee; outputs mapped back); `native_int*_unfused` = the same program with one kernel call "
            "per step (`NativeModel(fuse=False)`). Compiled on "
            f"{calibrations or '-'}. Speed-up = time(fastest FP32 method on that graph) / time; argmax "
            "agreement is against the PyG FP32 logits (random weights: accuracy means nothing). "
            "x bytes: input features as the first layer's kernel reads them (native: int8 after the input "
            "quantize step that every run performs); hidden bytes: the layer-1 features the aggregation reads.",
            "",
            f"Times: median of {args.repeats} runs after a warm-up (fast methods: as many runs as fill "
            f"{args.min_seconds} s; slow ones: fewer once {args.max_seconds} s are spent, see `runs`). "
            + (
                "Peak memory: each method once more in a fresh process on the 4M-edge (or closest) graph, VmHWM reset "
                "through /proc/self/clear_refs before the runs, minus the RSS before them (which holds the "
                "interpreter, torch and onnxruntime, ~0.5 GiB, plus the method's inputs, model and graph stage)."
                if args.memory
                else ""
            ),
            "",
            f"Command: `{cmd}` ({elapsed / 60:.1f} min)",
            "",
            *details,
            "",
            *([f"- note: {n}" for n in notes] + ([""] if notes else [])),
            *tables,
        ]
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text("\n".join(text), encoding="utf-8")
        print(f"wrote {args.out}", file=sys.stderr)
    workdir.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
