"""Micro-benchmark of the ONNX aggregation formulations in onnxruntime (one aggregation, F features).

Each model takes ``msg`` [E, F] (float32 or int32), ``index`` [E] int64 (destinations) and ``x`` [N, 1]
(for N), and returns the reduction of the messages by destination:

* ``scatter``: today's ``ScatterElements(reduction=add|max)`` on the index expanded to [E, F];
* ``segment``: the default segment lowering (``quantgraph.backends.onnx_segment``): in-graph TopK sort,
  degree buckets, ``Loop`` of Gather + ReduceSum/ReduceMax;
* ``segment_csr``: the same with the sort order given as an input (``--graph-input csr``);
* ``cumsum``: CumSum over destination-sorted rows (float64 for float, int64 for int) and differences at
  the segment ends, the candidate the segment lowering was chosen against (sum only);
* ``sort_only``: just the in-graph preparation (TopK + degrees), to see what the sort costs.

    python tools/bench_aggregation.py --nodes 50000 --edges 1000000 --features 64 --threads 1 --repeats 5

Prints a Markdown table of the median of ``--repeats`` runs and checks every output against numpy.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from quantgraph.backends import onnx_segment
from quantgraph.backends.onnx_builder import OnnxBuilder

INT64 = TensorProto.INT64


def _model(ctx: OnnxBuilder, inputs: list[onnx.ValueInfoProto], output: str) -> onnx.ModelProto:
    from quantgraph.backends.onnx_export import _prune

    nodes, inits = _prune(ctx, [output])
    out = helper.make_tensor_value_info(output, ctx.dtype(output), [None] * ctx.rank(output))
    graph = helper.make_graph(nodes, "agg", inputs, [out], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    return model


def build(method: str, reduce: str, elem_type: int) -> onnx.ModelProto:
    ctx = OnnxBuilder(None)  # type: ignore[arg-type]
    if method == "segment_csr":
        ctx.options = {"graph_input": "csr"}
    inputs = [
        helper.make_tensor_value_info("msg", elem_type, ["E", "F"]),
        helper.make_tensor_value_info("index", INT64, ["E"]),
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1]),
    ]
    for i in inputs:
        ctx.set_info(i.name, i.type.tensor_type.elem_type, len(i.type.tensor_type.shape.dim))
        ctx.reserve(i.name)
    rows = ctx.shape("x", 0, 1)
    if method in ("segment", "segment_csr"):
        out = onnx_segment.segment_reduce(ctx, "msg", "index", rows, reduce)
    elif method == "sort_only":
        out = onnx_segment._nodes(ctx, "index", rows).ptr
    elif method == "scatter":
        shape = ctx.op("Concat", [rows, ctx.shape("msg", 1)], dtype=INT64, rank=1, axis=0)
        base = ctx.fill(shape, 0, elem_type, 2)
        wide = ctx.op("Expand", [ctx.op("Unsqueeze", ["index", ctx.ints([1])], rank=2), ctx.shape("msg")])
        if reduce == "max":
            best = ctx.op(
                "ScatterElements",
                [
                    ctx.fill(shape, -(2**31) if elem_type == TensorProto.INT32 else -np.inf, elem_type, 2),
                    wide,
                    "msg",
                ],
                axis=0,
                reduction="max",
            )
            count = ctx.op(
                "ScatterElements",
                [ctx.fill(rows, 0, INT64, 1), "index", ctx.fill(ctx.shape("index"), 1, INT64, 1)],
                axis=0,
                reduction="add",
            )
            touched = ctx.op(
                "Unsqueeze",
                [ctx.op("Greater", [count, ctx.scalar(0, INT64)], dtype=TensorProto.BOOL), ctx.ints([1])],
                rank=2,
            )
            out = ctx.op("Where", [touched, best, ctx.scalar(0, elem_type)], rank=2)
        else:
            out = ctx.op("ScatterElements", [base, wide, "msg"], axis=0, reduction="add")
    elif method == "cumsum":
        prep = onnx_segment._nodes(ctx, "index", rows)
        wide_type = TensorProto.DOUBLE if elem_type == TensorProto.FLOAT else INT64
        ordered = ctx.cast(ctx.op("Gather", ["msg", prep.sort.perm], axis=0), wide_type)
        zero_row = ctx.fill(
            ctx.op("Concat", [ctx.ints([1]), ctx.shape("msg", 1)], dtype=INT64, rank=1, axis=0),
            0,
            wide_type,
            2,
        )
        prefix = ctx.op("Concat", [zero_row, ctx.op("CumSum", [ordered, ctx.scalar(0, INT64)])], axis=0)
        ends = ctx.op("Add", [prep.ptr, prep.deg])
        total = ctx.op(
            "Sub", [ctx.op("Gather", [prefix, ends], axis=0), ctx.op("Gather", [prefix, prep.ptr], axis=0)]
        )
        out = ctx.cast(total, elem_type)
    else:
        raise ValueError(method)
    if method == "segment_csr":
        inputs.append(helper.make_tensor_value_info(ctx.perm_inputs[0][0], INT64, ["E"]))
    return _model(ctx, inputs, out)


def reference(msg: np.ndarray, index: np.ndarray, n: int, reduce: str) -> np.ndarray:
    out = np.zeros((n, msg.shape[1]), dtype=np.float64 if msg.dtype == np.float32 else np.int64)
    if reduce == "max":
        out[:] = -np.inf if msg.dtype == np.float32 else np.iinfo(np.int64).min
        np.maximum.at(out, index, msg)
        out[np.bincount(index, minlength=n) == 0] = 0
    else:
        np.add.at(out, index, msg)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=50_000)
    p.add_argument("--edges", type=int, default=1_000_000)
    p.add_argument("--features", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--reduce", default="sum,max")
    p.add_argument("--dtype", default="float32,int32")
    p.add_argument("--methods", default="scatter,segment,segment_csr,cumsum,sort_only")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    # Chung-Lu-like destinations: a few hubs, many low degrees
    weights = rng.pareto(2.0, args.nodes) + 1
    index = rng.choice(args.nodes, size=args.edges, p=weights / weights.sum()).astype(np.int64)
    x = np.zeros((args.nodes, 1), np.float32)
    print(
        f"{args.nodes} nodes, {args.edges} edges, F={args.features}, {args.threads} thread(s), "
        f"median of {args.repeats}; max in-degree {np.bincount(index).max()}; "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print("\n| dtype | reduce | method | ms | vs scatter | equal |\n|---|---|---|---|---|---|")
    for dtype in args.dtype.split(","):
        if dtype == "float32":
            msg = rng.standard_normal((args.edges, args.features), dtype=np.float32)
            elem = TensorProto.FLOAT
        else:
            msg = rng.integers(-127, 128, (args.edges, args.features)).astype(np.int32)
            elem = TensorProto.INT32
        perm = np.argsort(index, kind="stable")
        for reduce in args.reduce.split(","):
            ref = reference(msg, index, args.nodes, reduce)
            base = None
            for method in args.methods.split(","):
                if method == "cumsum" and reduce != "sum":
                    continue
                options = ort.SessionOptions()
                options.intra_op_num_threads = args.threads
                options.log_severity_level = 3
                model = build(method, reduce, elem)
                session = ort.InferenceSession(
                    model.SerializeToString(), options, providers=["CPUExecutionProvider"]
                )
                feeds = {"msg": msg, "index": index, "x": x}
                if method == "segment_csr":
                    feeds[model.graph.input[-1].name] = perm
                feeds = {k: v for k, v in feeds.items() if k in {i.name for i in session.get_inputs()}}
                times = []
                out = None
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    out = session.run(None, feeds)[0]
                    times.append(time.perf_counter() - start)
                ms = float(np.median(times)) * 1e3
                if method == "scatter":
                    base = ms
                if method == "sort_only":
                    equal = "-"
                elif dtype == "int32":
                    equal = str(bool(np.array_equal(out.astype(np.int64), ref)))
                else:
                    equal = f"max err {float(np.abs(out - ref).max()):.1e}"
                ratio = f"{base / ms:.1f}x" if base else "-"
                print(f"| {dtype} | {reduce} | {method} | {ms:.1f} | {ratio} | {equal} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
