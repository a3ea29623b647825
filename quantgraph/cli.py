"""The ``quantgraph`` command line: train, compile, eval, run, inspect, demo, passes."""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from quantgraph.errors import InputError, QuantGraphError

BACKENDS = ("onnx-qdq", "onnx-int", "native")
QAT_OPTIONS = ("epochs", "lr", "weight_decay", "seed", "p_min", "p_max", "batch_size")
#: mixq search flags: argparse dest -> compile option
MIXQ_OPTIONS = {
    "lambda_": "lambda",
    "target_bits": "target_bits",
    "bit_candidates": "bit_candidates",
    "search_epochs": "search_epochs",
}


def _console(args: argparse.Namespace) -> Console:
    return Console(quiet=getattr(args, "quiet", False), stderr=False)


def _add_data_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--data", required=required, help="cora | citeseer | pubmed | synthetic[:k=v,...] | FILE")
    p.add_argument("--data-root", help="folder with Planetoid raw files (default: $QUANTGRAPH_DATA_ROOT)")


def _parse_pass_option(spec: str):
    """``module:Class`` (appended), ``module:Class@before=NAME`` or ``module:Class@after=NAME``."""
    from quantgraph.compiler import PassInsertion
    from quantgraph.passes import load_pass

    target, _, where = spec.partition("@")
    before = after = None
    if where:
        key, _, name = where.partition("=")
        if key not in ("before", "after") or not name:
            raise InputError(
                f"bad --pass placement '@{where}'", "write module:Class@before=PASS or @after=PASS"
            )
        before, after = (name, None) if key == "before" else (None, name)
    return PassInsertion(load_pass(target), before=before, after=after)


def cmd_train(args: argparse.Namespace) -> int:
    import torch

    from quantgraph.data import collate
    from quantgraph.data.task import load_task
    from quantgraph.models import TRAIN_DEFAULTS, build_model, save_checkpoint, task_of
    from quantgraph.training import train_graph_classifier, train_node_classifier

    console = _console(args)
    task = load_task(args.data, args.data_root)
    if task_of(args.arch) != task.kind:
        raise InputError(
            f"--arch {args.arch} is a {task_of(args.arch)}-level model but {args.data} is a {task.kind}-level dataset",
            "use gin_graph with a graph-classification .npz, and gcn/gat/gin/sage with node datasets",
        )
    data = task.data
    if task.kind == "node" and (not data.has_labels or not data.has_splits):
        raise InputError(
            f"dataset {data.name} has no labels or train/val/test masks", "train on a labelled dataset"
        )
    hp = dict(TRAIN_DEFAULTS[args.arch])
    for key in ("epochs", "lr", "weight_decay"):
        if getattr(args, key) is not None:
            hp[key] = getattr(args, key)
    config = {"hidden": args.hidden} if args.hidden else {}
    torch.manual_seed(args.seed)
    common = {
        "epochs": hp["epochs"],
        "lr": hp["lr"],
        "weight_decay": hp["weight_decay"],
        "seed": args.seed,
        "progress": not args.quiet,
    }
    if task.kind == "node":  # the recipe's early stopping (GAT: validation loss, patience 100)
        common.update({k: hp[k] for k in ("patience", "select") if k in hp})
    if task.kind == "graph":
        classes = max(int(g.y.max()) for g in task.graphs["train"]) + 1
        model = build_model(args.arch, data.num_features, classes, **config)
        result = train_graph_classifier(
            model,
            task.graphs["train"],
            task.graphs["val"],
            task.graphs["test"],
            collate=collate,
            batch_size=hp.get("batch_size", 32),
            **common,
        )
    else:
        model = build_model(args.arch, data.num_features, data.num_classes, **config)
        result = train_node_classifier(model, data, **common)
    metrics = {
        "train_acc": result.train_acc,
        "val_acc": result.val_acc,
        "test_acc": result.test_acc,
        "best_epoch": float(result.best_epoch),
    }
    save_checkpoint(args.output, model, metrics=metrics, dataset=data.name)
    console.print(
        f"{args.arch} on {data.name}: best epoch {result.best_epoch}, val {100 * result.val_acc:.2f}%, "
        f"test {100 * result.test_acc:.2f}% → {args.output}"
    )
    return 0


def cmd_compile(args: argparse.Namespace) -> int:
    from quantgraph.compiler import compile as qg_compile
    from quantgraph.data.task import load_task
    from quantgraph.fileio import atomic_write_json
    from quantgraph.frontend import load_model
    from quantgraph.report import render_report

    console = _console(args)
    if args.imports and not args.trust_pickle:
        raise InputError("--import is only used with --trust-pickle", "add --trust-pickle or drop --import")
    insertions = [_parse_pass_option(s) for s in args.passes or []]
    pipeline = [p.strip() for p in args.pipeline.split(",") if p.strip()] if args.pipeline else None
    model = load_model(args.model, trust_pickle=args.trust_pickle, imports=args.imports or [])
    task = load_task(args.data, args.data_root)
    options = {k: v for k, v in vars(args).items() if k in QAT_OPTIONS and v is not None}
    options.update({"calibration": args.calibration, "percentile_tail": args.percentile_tail})
    if args.int_overflow:
        options["int_overflow"] = args.int_overflow
    if args.skip_roles:
        options["skip_roles"] = [r.strip() for spec in args.skip_roles for r in spec.split(",") if r.strip()]
    options.update(
        {opt: getattr(args, dest) for dest, opt in MIXQ_OPTIONS.items() if getattr(args, dest) is not None}
    )
    compiled = qg_compile(
        model,
        task.data,
        policy=args.policy,
        bits=args.bits,
        pipeline=pipeline,
        passes=insertions,
        options=options,
        calibration=task.calibration(),
        task_data=task.task_data(),
        progress=not args.quiet,
        backend=args.backend,
    )
    compiled.export(args.output, task.data)
    report = compiled.public_report()
    report["output"] = str(args.output)
    if args.report:
        atomic_write_json(args.report, report)
    render_report(report, console)
    console.print(f"wrote {args.output}" + (f" and {args.report}" if args.report else ""))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from quantgraph.backends.verify import ort_session, run_onnx
    from quantgraph.data.task import load_task
    from quantgraph.metrics import accuracy

    path = Path(args.model)
    if not path.is_file():
        raise InputError(
            f"ONNX file {path} does not exist", "check the path (create one with `quantgraph compile`)"
        )
    try:
        session = ort_session(str(path))
    except Exception as err:  # onnxruntime raises its own exception types
        raise InputError(
            f"{path} is not a loadable ONNX model ({str(err).splitlines()[0][:120]})",
            "re-export it with `quantgraph compile`",
        ) from err
    task = load_task(args.data, args.data_root)
    data = task.data
    logits = run_onnx(session, data.inputs())
    mask = getattr(data, f"{args.split}_mask") if args.split != "all" and task.kind == "node" else None
    acc = accuracy(logits, data.y, mask)
    if acc is None:
        raise InputError(f"dataset {data.name} has no labels", "evaluate on a labelled dataset")
    _console(args).print(f"{path.name} on {data.name} ({args.split}): accuracy {100 * acc:.2f}%")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    import numpy as np

    from quantgraph.data.task import load_task
    from quantgraph.fileio import atomic_write_bytes
    from quantgraph.metrics import accuracy
    from quantgraph.native.runtime import NativeModel

    model = NativeModel.load(args.model, threads=args.threads)
    task = load_task(args.data, args.data_root)
    data = task.data
    inputs = data.inputs()
    prepared = model.prepare(inputs)
    logits = model.run(inputs, prepared)  # warm-up: first calls start threads and fill caches
    start = time.perf_counter()
    logits = model.run(inputs, prepared)
    seconds = time.perf_counter() - start
    console = _console(args)
    name = Path(args.model).name
    console.print(
        f"{name} on {data.name}: graph prepared in {prepared.seconds:.3f} s, "
        f"inference {seconds:.3f} s (second run)"
    )
    mask = getattr(data, f"{args.split}_mask") if args.split != "all" and task.kind == "node" else None
    acc = accuracy(logits, data.y, mask)
    if acc is not None:
        console.print(f"{name} on {data.name} ({args.split}): accuracy {100 * acc:.2f}%")
    if args.output:
        buf = io.BytesIO()
        np.save(buf, logits.numpy(), allow_pickle=False)
        atomic_write_bytes(args.output, buf.getvalue())
        console.print(f"wrote logits {tuple(logits.shape)} to {args.output}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from quantgraph.printer import inspect_file

    inspect_file(
        args.file,
        _console(args),
        data_spec=args.data,
        data_root=args.data_root,
        policy=args.policy,
        bits=args.bits,
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    import torch

    from quantgraph.compiler import compile as qg_compile
    from quantgraph.data import load_dataset
    from quantgraph.models import build_model
    from quantgraph.report import render_report
    from quantgraph.training import train_node_classifier

    console = _console(args)
    data = load_dataset("synthetic")
    console.print(
        f"demo: {data.name}: {data.num_nodes} nodes, {data.num_edges} edges, "
        f"{data.num_features} features, {data.num_classes} classes"
    )
    torch.manual_seed(0)
    model = build_model("gcn", data.num_features, data.num_classes)
    train_node_classifier(
        model, data, epochs=100, lr=0.01, weight_decay=5e-4, seed=0, progress=not args.quiet
    )
    compiled = qg_compile(model, data, policy="minmax", bits=8, progress=not args.quiet)
    with tempfile.TemporaryDirectory() as tmp:
        compiled.export_onnx(Path(tmp) / "demo.onnx", data)
    render_report(compiled.public_report(), console)
    return 0


def cmd_passes(args: argparse.Namespace) -> int:
    from rich.table import Table

    from quantgraph.passes import available_passes
    from quantgraph.policies import available_policies

    console = _console(args)
    passes = Table(title="passes")
    passes.add_column("name")
    passes.add_column("description")
    for name, cls in available_passes().items():
        passes.add_row(name, cls.description)
    policies = Table(title="policies")
    policies.add_column("name")
    policies.add_column("pipeline")
    policies.add_column("description")
    for name, pol in available_policies().items():
        policies.add_row(name, ",".join(pol.pipeline), pol.description)
    console.print(passes)
    console.print(policies)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quantgraph", description="Quantization compiler for graph neural networks"
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a zoo model in FP32 (checkpoint chosen on validation)")
    p.add_argument("--arch", required=True, choices=["gcn", "gat", "gin", "sage", "gin_graph"])
    _add_data_args(p)
    p.add_argument("--epochs", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--hidden", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("compile", help="quantize a model with a policy and export ONNX")
    p.add_argument(
        "model", help="zoo checkpoint .pt, torch.export program .pt2, or pickled module (--trust-pickle)"
    )
    _add_data_args(p)
    p.add_argument("--policy", default="minmax")
    p.add_argument("--bits", type=int, default=None, help="bitwidth 2..8 (default: the policy's)")
    p.add_argument(
        "--calibration",
        choices=["minmax", "percentile", "mse", "relative-mse", "entropy"],
        default=None,
        help="activation range method (default minmax; percentile cuts --percentile-tail of each side; "
        "mse picks each range minimising the quantization error; relative-mse, the recommended PTQ, weights "
        "that error by each value's size; entropy is TensorRT's KL threshold; none needs labels)",
    )
    p.add_argument(
        "--percentile-tail",
        type=float,
        default=None,
        help="fraction cut per side (default 0.001 at 8 bits, 0.01 below)",
    )
    p.add_argument(
        "--backend",
        default="onnx-qdq",
        choices=BACKENDS,
        help="onnx-qdq: Q/DQ around float ops; onnx-int: integer linear layers and aggregations; "
        "native: the integer model for quantgraph's own kernels (a .qgn file, run with `quantgraph run`)",
    )
    p.add_argument(
        "--skip-role",
        dest="skip_roles",
        action="append",
        help="leave values of this role unquantized (repeatable or comma-separated, e.g. message)",
    )
    p.add_argument(
        "--int-overflow",
        choices=["error", "float"],
        help="integer backends: when an int32 accumulator could overflow, fail (default) or keep that op in float",
    )
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--report", help="write the report JSON here")
    qat = p.add_argument_group("quantization-aware training (qat, degree-quant)")
    qat.add_argument("--epochs", type=int, help="fine-tuning epochs (default 100)")
    qat.add_argument("--lr", type=float, help="learning rate (default 0.005; graph tasks 0.001)")
    qat.add_argument("--weight-decay", type=float, help="weight decay (default 5e-4; graph tasks 0)")
    qat.add_argument("--seed", type=int, help="training seed (default 0)")
    qat.add_argument(
        "--batch-size", type=int, help="graphs per mini-batch for graph classification (default 32)"
    )
    qat.add_argument("--p-min", type=float, help="degree-quant: lowest protection probability")
    qat.add_argument("--p-max", type=float, help="degree-quant: highest protection probability")
    mixq = p.add_argument_group("mixed precision (mixq)")
    mixq.add_argument(
        "--lambda", dest="lambda_", type=float, help="weight of the BitOPs penalty (default 0.1)"
    )
    mixq.add_argument("--target-bits", type=float, help="fit the chosen bits to this mean bitwidth (at most)")
    mixq.add_argument("--bit-candidates", help="comma-separated candidate bitwidths (default 2,4,8)")
    mixq.add_argument("--search-epochs", type=int, help="epochs of the bitwidth search (default 40)")
    p.add_argument(
        "--pass",
        dest="passes",
        action="append",
        help="add a pass: module:Class[@before=NAME|@after=NAME] (repeatable)",
    )
    p.add_argument("--pipeline", help="comma-separated pass names replacing the policy's pipeline")
    p.add_argument(
        "--trust-pickle", action="store_true", help="allow loading a pickled module (runs its code!)"
    )
    p.add_argument("--import", dest="imports", action="append", help="module to import before unpickling")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("eval", help="accuracy of an ONNX model in onnxruntime")
    p.add_argument("model")
    _add_data_args(p)
    p.add_argument("--split", default="test", choices=["train", "val", "test", "all"])
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("run", help="run a native model (.qgn) with the integer kernels")
    p.add_argument("model", help="a .qgn file from `quantgraph compile --backend native`")
    _add_data_args(p)
    p.add_argument("--split", default="test", choices=["train", "val", "test", "all"])
    p.add_argument("--threads", type=int, default=None, help="kernel threads (default: all cores)")
    p.add_argument("-o", "--output", help="write the logits here (.npy)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("inspect", help="print the IR (with quantization annotations) or an ONNX graph")
    p.add_argument("file")
    _add_data_args(p, required=False)
    p.add_argument("--policy", default=None, help="show the IR after this policy's passes")
    p.add_argument("--bits", type=int, default=None)
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("demo", help="train, quantize (INT8) and verify a GCN on a built-in synthetic graph")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("passes", help="list passes and policies")
    p.set_defaults(func=cmd_passes)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    warnings.filterwarnings("ignore", message="Failed to fetch module")  # torch.fx codegen noise
    warnings.filterwarnings("ignore", category=FutureWarning)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except QuantGraphError as err:
        if args.debug:
            raise
        print(f"error: {err.one_line()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
