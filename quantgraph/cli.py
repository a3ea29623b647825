"""The ``quantgraph`` command line: train, compile, eval, run, inspect, report, compare, demo, passes.

Heavy modules (torch, onnx) are imported inside the commands, so ``quantgraph --help`` stays fast.
"""

from __future__ import annotations

import argparse
import functools
import io
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from quantgraph.cli_checks import check_args, parse_pass_spec
from quantgraph.errors import EXIT_INPUT, InputError, describe_failure, reading

if TYPE_CHECKING:
    from rich.console import Console

QAT_OPTIONS = ("epochs", "lr", "weight_decay", "seed", "p_min", "p_max", "batch_size")
#: sgquant flags: argparse dest -> compile option
SGQUANT_OPTIONS = {
    "memory_target": "memory_target",
    "accuracy_tolerance": "accuracy_tolerance",
    "sgquant_config": "sgquant_config",
}
#: mixq search flags: argparse dest -> compile option
MIXQ_OPTIONS = {
    "lambda_": "lambda",
    "target_bits": "target_bits",
    "bit_candidates": "bit_candidates",
    "search_epochs": "search_epochs",
}
#: a2q flags: argparse dest -> compile option
A2Q_FLAGS = {"target_kb": "target_kb"}


def _console(args: argparse.Namespace) -> Console:
    from rich.console import Console

    return Console(quiet=getattr(args, "quiet", False), stderr=False)


def _logs_stages(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Run ``command`` with timed stage lines on stderr unless ``--quiet`` (off again afterwards)."""

    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        from quantgraph.progress import disable_stage_log, enable_stage_log

        if not getattr(args, "quiet", False):
            enable_stage_log()
        try:
            return command(args)
        finally:
            disable_stage_log()

    return run


def _check_output_suffix(backend: str, output: str) -> None:
    """Refuse an output name whose suffix is another backend's (a .qgn zip under .onnx misleads)."""
    from quantgraph.backends.registry import available_backends

    suffixes = {name: b.suffix for name, b in available_backends().items() if b.suffix}
    want = suffixes.get(backend)
    suffix = Path(output).suffix
    if want is None or suffix == want:
        return
    if suffix in suffixes.values():
        raise InputError(
            f"--backend {backend} writes a {want} file, but -o {output} ends in {suffix}",
            f"name the output {Path(output).with_suffix(want).name}",
        )


def _refuse_compiled_input(path: str) -> None:
    """``compile`` takes a PyTorch model; name the format when it was given a compiled artifact."""
    from quantgraph.printer import FORMAT_NAMES, sniff_format

    file = Path(path)
    if not file.is_file():
        return
    kind = sniff_format(file)
    if kind in ("onnx", "native"):
        runner = "quantgraph eval" if kind == "onnx" else "quantgraph run"
        raise InputError(
            f"{file} is {FORMAT_NAMES[kind]}, a compiled output, not a model to compile",
            f"compile the .pt checkpoint or .pt2 program it came from; run this file with `{runner}`",
        )


def _add_data_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument(
        "--data",
        required=required,
        metavar="DATA",
        help="cora | citeseer | pubmed | synthetic[:k=v,...] | FILE (.npz, .pt, .json, .gml, .graphml)"
        + ("" if required else " (default: a synthetic graph of the model's width)"),
    )
    p.add_argument(
        "--data-root", metavar="DIR", help="folder with Planetoid raw files (default: $QUANTGRAPH_DATA_ROOT)"
    )


def _add_trust_args(p: argparse.ArgumentParser) -> None:
    """``--trust-pickle`` and ``--import`` (compile and inspect read models the same way)."""
    p.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow loading a pickled module or a .pt2 with pickled members (runs its code!)",
    )
    p.add_argument(
        "--import",
        dest="imports",
        action="append",
        metavar="MODULE",
        help="module to import before unpickling (repeatable)",
    )


def _parse_pass_option(spec: str):
    """``module:Class`` (appended), ``module:Class@before=NAME`` or ``module:Class@after=NAME``."""
    from quantgraph.compiler import PassInsertion
    from quantgraph.passes import load_pass

    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # `--pass mypkg.passes:P` finds mypkg in the current directory
    target, before, after = parse_pass_spec(spec)
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
    if args.K is not None:
        config["K"] = args.K  # smp/appnp only: build_model names the fix for other architectures
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


@_logs_stages
def cmd_compile(args: argparse.Namespace) -> int:
    from quantgraph.compiler import compile as qg_compile
    from quantgraph.data.task import load_task
    from quantgraph.fileio import atomic_write_json, output_transaction
    from quantgraph.frontend import load_model
    from quantgraph.options import parse_assignments
    from quantgraph.report import render_report

    console = _console(args)
    _check_output_suffix(args.backend, args.output)
    if args.html:  # before the compile: no artifact is written when the HTML cannot be
        from quantgraph.html_report import require_matplotlib

        require_matplotlib()
    _refuse_compiled_input(args.model)
    if args.imports and not args.trust_pickle:
        raise InputError("--import is only used with --trust-pickle", "add --trust-pickle or drop --import")
    insertions = [_parse_pass_option(s) for s in args.passes or []]
    pipeline = [p.strip() for p in args.pipeline.split(",") if p.strip()] if args.pipeline else None
    with reading(args.model, "model file", "pass a zoo checkpoint .pt or a torch.export .pt2 file"):
        model = load_model(args.model, trust_pickle=args.trust_pickle, imports=args.imports or [])
    task = load_task(args.data, args.data_root)
    options = {k: v for k, v in vars(args).items() if k in QAT_OPTIONS and v is not None}
    options.update({"calibration": args.calibration, "percentile_tail": args.percentile_tail})
    if args.int_overflow:
        options["int_overflow"] = args.int_overflow
    for dest in ("graph_input", "onnx_target"):  # ONNX backends' export options
        if getattr(args, dest, None):
            options[dest] = getattr(args, dest)
    if args.skip_roles:
        options["skip_roles"] = [r.strip() for spec in args.skip_roles for r in spec.split(",") if r.strip()]
    options.update(
        {opt: getattr(args, dest) for dest, opt in MIXQ_OPTIONS.items() if getattr(args, dest) is not None}
    )
    options.update(
        {opt: getattr(args, dest) for dest, opt in SGQUANT_OPTIONS.items() if getattr(args, dest) is not None}
    )
    options.update(
        {opt: getattr(args, dest) for dest, opt in A2Q_FLAGS.items() if getattr(args, dest) is not None}
    )
    options.update(parse_assignments(args.option or []))  # generic --option key=value (checked by compile)
    sampled = args.calibration_sample is not None and task.kind == "node"  # graph tasks: compile refuses
    compiled = qg_compile(
        model,
        task.data,
        policy=args.policy,
        bits=args.bits,
        pipeline=pipeline,
        passes=insertions,
        options=options,
        calibration=None if sampled else task.calibration(),
        task_data=None if sampled else task.task_data(),
        progress=not args.quiet,
        backend=args.backend,
        calibration_sample=args.calibration_sample,
        sample_hops=args.sample_hops,
        sample_seed=args.sample_seed,
    )
    if task.kind == "graph":
        compiled.report["accuracy"]["split"] = "test graphs"
    with output_transaction():  # the model, the report and the HTML appear together or not at all
        compiled.export(args.output, task.data)
        report = compiled.public_report()
        report["output"] = str(args.output)
        if args.report:
            atomic_write_json(args.report, report)
        if args.html:
            from quantgraph.html_report import write_html

            write_html(report, args.html)
    render_report(report, console)
    if "calibration_sample" in report:
        _print_sample(report["calibration_sample"], console)
    if "sgquant" in report:
        from quantgraph.sgquant.summary import render_sgquant

        render_sgquant(report, console)
    written = [str(p) for p in (args.output, args.report, args.html) if p]
    console.print("wrote " + ", ".join(written))
    return 0


def _print_sample(sample: dict, console: Console) -> None:
    """One line on the calibration sample and how far its ranges are from the whole graph's."""
    if sample.get("note"):
        console.print(f"note: {sample['note']}")
    line = (
        f"calibration sample: {sample['seeds']} seeds, {sample['hops']} hops, seed {sample['seed']}: "
        f"{sample['nodes']}/{sample['graph_nodes']} nodes, {sample['edges']}/{sample['graph_edges']} edges"
    )
    comparison = sample.get("range_comparison", {})
    if comparison.get("available"):
        summary = comparison["summary"]
        line += (
            f"; activation scales vs the whole graph: max relative difference "
            f"{summary['max_relative_scale_difference']:.4f} ({summary['worst_point']}), "
            f"mean {summary['mean_relative_scale_difference']:.4f}"
        )
    console.print(line)


def cmd_eval(args: argparse.Namespace) -> int:
    import onnx

    from quantgraph.backends.verify import check_onnx_inputs, ort_session, run_onnx, with_prepared_graph
    from quantgraph.data.task import load_task
    from quantgraph.metrics import accuracy

    path = Path(args.model)
    if not path.is_file():
        raise InputError(
            f"ONNX file {path} does not exist", "check the path (create one with `quantgraph compile`)"
        )
    from quantgraph.printer import sniff_format

    if sniff_format(path) == "native":
        raise InputError(
            f"{path} is a quantgraph native model (.qgn), not an ONNX model",
            f"score it with the integer kernels: `quantgraph run {path} --data ... --split ...`",
        )
    try:
        session = ort_session(str(path))
    except Exception as err:  # onnxruntime raises its own exception types
        raise InputError(
            f"{path} is not a loadable ONNX model ({str(err).splitlines()[0][:120]})",
            "re-export it with `quantgraph compile`",
        ) from err
    task = load_task(args.data, args.data_root)
    data, mask, split = _split_data(task, args.split)
    check_onnx_inputs(session, data, path)
    try:
        inputs = with_prepared_graph(onnx.load(str(path)), data.inputs())  # csr models: sorted once here
        logits = run_onnx(session, inputs, time_limit=args.timeout)
    except TimeoutError as err:
        raise InputError(
            f"{path} did not finish within --timeout {args.timeout:g} s on {data.name}",
            "check the model for unbounded loops, or raise --timeout",
        ) from err
    except Exception as err:  # onnxruntime raises its own exception types for inputs it refuses
        raise InputError(
            f"{path} cannot run on {data.name} ({str(err).splitlines()[0][:160]})",
            "evaluate on data of the shape and type the model was compiled for",
        ) from err
    acc = accuracy(logits, data.y, mask)
    if acc is None:
        raise InputError(f"dataset {data.name} has no labels", "evaluate on a labelled dataset")
    _console(args).print(f"{path.name} on {data.name} ({split}): accuracy {100 * acc:.2f}%")
    return 0


def cmd_prepare_graph(args: argparse.Namespace) -> int:
    import io

    import numpy as np
    import onnx

    from quantgraph.backends.onnx_segment import prep_model, prepare_graph_inputs
    from quantgraph.data.task import load_task
    from quantgraph.fileio import atomic_write_bytes

    path = Path(args.model)
    if not path.is_file():
        raise InputError(f"ONNX file {path} does not exist", "check the path")
    try:
        model = onnx.load(str(path))
    except Exception as err:  # onnx raises DecodeError and others
        raise InputError(
            f"{path} is not an ONNX model ({err})", "pass an .onnx file from `quantgraph compile`"
        ) from err
    if prep_model(model) is None:
        raise InputError(
            f"{path} takes x, edge_index only: it has no prepared-graph inputs",
            "compile it with --graph-input csr, or run it on the graph directly",
        )
    data = load_task(args.data, args.data_root).data
    prepared = prepare_graph_inputs(model, data.inputs())
    buffer = io.BytesIO()
    np.savez(buffer, **prepared)  # plain arrays: read back with np.load(..., allow_pickle=False)
    atomic_write_bytes(args.output, buffer.getvalue())
    sizes = ", ".join(f"{k} [{v.shape[0]:,}]" for k, v in prepared.items())
    _console(args).print(f"wrote {args.output}: {sizes}")
    return 0


def _split_data(task, split: str):
    """The graph, row mask and label for ``--split``: node masks, or the split's graphs batched."""
    from quantgraph.data import collate

    if task.kind == "graph":
        names = ("train", "val", "test") if split == "all" else (split,)
        graphs = [g for name in names for g in task.graphs[name]]
        data = collate(graphs)
        data.name = task.data.name.split(" (")[0]
        return data, None, f"{split} graphs, {len(graphs)}"
    data = task.data
    if split == "all":
        return data, None, "all nodes"
    mask = getattr(data, f"{split}_mask")
    if mask is None:
        return data, None, f"all nodes: the data has no {split} mask"
    return data, mask, f"{split} nodes"


def cmd_partition(args: argparse.Namespace) -> int:
    from quantgraph.data.files import load_graph_file
    from quantgraph.scale.partition import partition_graph

    data = load_graph_file(args.graph)
    summary = partition_graph(
        data.x.numpy(), data.edge_index.numpy(), args.parts, args.folder, method=args.method,
        seed=args.seed, overwrite=args.overwrite,
    )  # fmt: skip
    _console(args).print(
        f"{data.name}: {data.num_nodes} nodes in {summary.parts} partitions ({summary.method}, "
        f"{summary.seconds_assign:.2f} s to assign, {summary.seconds_total:.2f} s in all); owned "
        f"{min(summary.owned)}-{max(summary.owned)}, halo {sum(summary.halo)} rows; wrote {summary.path}"
    )
    return 0


def cmd_run_partitioned(args: argparse.Namespace) -> int:
    """``quantgraph run MODEL --data PARTS/``: layer-wise on Dask or Ray (quantgraph.scale)."""
    import numpy as np

    from quantgraph.fileio import atomic_write_bytes

    engine = args.engine or "dask"
    if engine == "ray":
        from quantgraph.scale.engine_ray import run_ray

        result = run_ray(args.model, args.data, args.workers, args.scheduler, args.threads or 1)
    else:
        from quantgraph.scale.engine_dask import run_dask

        result = run_dask(args.model, args.data, args.workers, args.scheduler, args.threads or 1)
    moved = ", ".join(f"{b}" for b in result.bytes_per_layer)
    _console(args).print(
        f"{Path(args.model).name} on {args.data}: {result.parts} partitions on {result.workers} "
        f"{engine} workers in {result.seconds:.3f} s; halo bytes per layer [{moved}]"
        + (f", graph values {result.graph_bytes}" if result.graph_segments else "")
    )
    if args.output:
        buf = io.BytesIO()
        np.save(buf, result.logits, allow_pickle=False)
        atomic_write_bytes(args.output, buf.getvalue())
        _console(args).print(f"wrote logits {tuple(result.logits.shape)} to {args.output}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    import numpy as np

    from quantgraph.scale.store import is_partition_folder

    if is_partition_folder(args.data):
        return cmd_run_partitioned(args)
    if args.engine is not None or args.scheduler is not None:
        raise InputError(
            "--engine and --scheduler need --data to be a partition folder",
            "create one with `quantgraph partition GRAPH --parts K -o DIR`",
        )

    from quantgraph.data.task import load_task
    from quantgraph.fileio import atomic_write_bytes
    from quantgraph.metrics import accuracy
    from quantgraph.native.runtime import NativeModel

    with reading(
        args.model, "native model (.qgn)", "re-create it with `quantgraph compile --backend native`"
    ):
        model = NativeModel.load(args.model, threads=args.threads)
    task = load_task(args.data, args.data_root)
    data, mask, split = _split_data(task, args.split)
    inputs = data.inputs()
    with reading(
        args.model, f"native model for {data.name}", "run it on data like the data it was compiled for"
    ):
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
    acc = accuracy(logits, data.y, mask)
    if acc is not None:
        console.print(f"{name} on {data.name} ({split}): accuracy {100 * acc:.2f}%")
    if args.output:
        buf = io.BytesIO()
        np.save(buf, logits.numpy(), allow_pickle=False)
        atomic_write_bytes(args.output, buf.getvalue())
        console.print(f"wrote logits {tuple(logits.shape)} to {args.output}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from quantgraph.printer import inspect_file

    if args.imports and not args.trust_pickle:
        raise InputError("--import is only used with --trust-pickle", "add --trust-pickle or drop --import")
    with reading(
        args.file, "model, ONNX or .qgn file", "pass a file written by quantgraph or torch.export.save"
    ):
        inspect_file(
            args.file,
            _console(args),
            data_spec=args.data,
            data_root=args.data_root,
            policy=args.policy,
            bits=args.bits,
            trust_pickle=args.trust_pickle,
            imports=args.imports or [],
        )
    return 0


@_logs_stages
def cmd_demo(args: argparse.Namespace) -> int:
    import torch

    from quantgraph.compiler import compile as qg_compile
    from quantgraph.data import load_dataset
    from quantgraph.models import build_model
    from quantgraph.progress import stage
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
    with stage("train FP32 (demo)"):
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
    if args.options:
        return _print_options(args.options, console)
    passes = Table(title="passes")
    passes.add_column("name", no_wrap=True)
    passes.add_column("description")
    for name, cls in available_passes().items():
        passes.add_row(name, cls.description)
    policies = Table(title="policies", show_lines=True)
    policies.add_column("name", no_wrap=True)
    policies.add_column("pipeline", overflow="fold", ratio=1)
    policies.add_column("description", ratio=1)
    for name, pol in available_policies().items():
        policies.add_row(name, " → ".join(pol.pipeline), pol.description)
    console.print(passes)
    console.print(policies)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from quantgraph.html_report import read_report, write_html

    report = read_report(args.report)
    write_html(report, args.output)
    _console(args).print(f"wrote {args.output}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from quantgraph.html_report import read_report, write_compare_html

    if len(args.reports) < 2:
        raise InputError("compare needs at least two report JSON files", "pass two or more --report files")
    reports = [read_report(path) for path in args.reports]
    write_compare_html(reports, [Path(p).stem for p in args.reports], args.output)
    _console(args).print(f"wrote {args.output} ({len(reports)} reports)")
    return 0


class _HelpFormatter(argparse.HelpFormatter):
    """Shows each option's default (when it has one) and, for ``--policy``, every policy with its line."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.dest == "policy" and "%(policies)s" in text:
            text = text.replace("%(policies)s", _policy_lines())
        if (
            action.option_strings
            and action.default not in (None, False, argparse.SUPPRESS)
            and "%(default)" not in text
        ):
            text += " (default: %(default)s)"
        return text

    def _split_lines(self, text: str, width: int) -> list[str]:
        lines: list[str] = []
        for part in text.split("\n"):
            lines += super()._split_lines(part, width) or [""]
        return lines


def _policy_lines() -> str:
    try:
        from quantgraph.policies import available_policies

        return "\n".join(f"  {name}: {pol.description}" for name, pol in available_policies().items())
    except Exception:  # listing help must not fail; `quantgraph passes` shows the same
        return "  (run `quantgraph passes` to list them)"


def _sub(sub, name: str, help_text: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help_text, description=help_text, formatter_class=_HelpFormatter)


def _quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--quiet", action="store_true", help="print nothing but errors (no progress or stage lines)"
    )


def _print_options(name: str, console: Console) -> int:
    """The declared options of a pass or policy (``quantgraph passes --options NAME``)."""
    from rich.table import Table

    from quantgraph.passes import available_passes
    from quantgraph.policies import available_policies

    passes, policies = available_passes(), available_policies()
    if name in passes:
        declared = passes[name].options
    elif name in policies:
        from quantgraph.compiler import build_pipeline, declared_options

        declared = tuple(declared_options(policies[name], build_pipeline(name)).values())
    else:
        raise InputError(
            f"no pass or policy named '{name}'", f"choose one of {', '.join([*passes, *policies])}"
        )
    table = Table(title=f"options of {name} (compile --option KEY=VALUE)")
    for column in ("name", "type", "default", "help"):
        table.add_column(column)
    for opt in declared:
        row = opt.to_row()
        table.add_row(row["name"], row["type"], row["default"], row["help"])
    if not declared:
        console.print(f"{name} declares no options")
        return 0
    console.print(table)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from quantgraph.backends.registry import available_backends

    parser = _Parser(prog="quantgraph", description="Quantization compiler for graph neural networks")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _sub(sub, "train", "train a zoo model in FP32 (checkpoint chosen on validation)")
    p.add_argument(
        "--arch",
        required=True,
        choices=["gcn", "gat", "gin", "sage", "agnn", "smp", "appnp", "gin_graph"],
        help="model: gcn, gat, gin, sage, agnn, smp, appnp (node tasks) or gin_graph (graph-classification .npz)",
    )
    _add_data_args(p)
    p.add_argument(
        "--epochs", type=int, help="training epochs (default: the architecture's, e.g. 200 for gcn)"
    )
    p.add_argument("--lr", type=float, help="Adam learning rate (default: the architecture's)")
    p.add_argument("--weight-decay", type=float, help="Adam weight decay (default: the architecture's)")
    p.add_argument("--hidden", type=int, help="hidden width (default: the architecture's)")
    p.add_argument("--K", type=int, help="propagation steps of smp/appnp (default 10)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("-o", "--output", required=True, metavar="FILE.pt", help="checkpoint to write")
    _quiet(p)
    p.set_defaults(func=cmd_train)

    p = _sub(sub, "compile", "quantize a model with a policy and export ONNX (or a native .qgn)")
    p.add_argument(
        "model", help="zoo checkpoint .pt, torch.export program .pt2, or pickled module (--trust-pickle)"
    )
    _add_data_args(p)
    p.add_argument(
        "--policy",
        default="minmax",
        metavar="NAME",
        help="the pass pipeline to run (default: %(default)s), one of:\n%(policies)s",
    )
    p.add_argument("--bits", type=int, default=None, help="bitwidth 2..8 (default: the policy's, 8)")
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
        metavar="F",
        help="fraction cut per side (default 0.001 at 8 bits, 0.01 below)",
    )
    p.add_argument(
        "--calibration-sample",
        type=int,
        default=None,
        metavar="N",
        help="calibrate (and train, for QAT policies) on a seeded sample: N seed nodes plus their in-neighbourhood "
        "(--sample-hops), node-induced; N above the node count keeps the whole graph (noted in the report); "
        "accuracy and the report still use the whole graph, with the sampled vs full ranges",
    )
    p.add_argument(
        "--sample-hops",
        type=int,
        default=None,
        metavar="H",
        help="hops of in-neighbourhood added to the sample's seeds (default: the model's message-passing layers)",
    )
    p.add_argument(
        "--sample-seed",
        type=int,
        default=None,
        metavar="S",
        help="seed of the sample's seed nodes (default: the compile seed, 0 unless --seed)",
    )
    p.add_argument(
        "--backend",
        default="onnx-qdq",
        choices=list(available_backends()),
        help="onnx-qdq: Q/DQ around float ops; onnx-int: integer linear layers and aggregations; "
        "native: the integer model for quantgraph's own kernels (a .qgn file, run with `quantgraph run`)",
    )
    p.add_argument(
        "--skip-role",
        dest="skip_roles",
        action="append",
        metavar="ROLE",
        help="leave values of this role unquantized (repeatable or comma-separated, e.g. message; default: none)",
    )
    p.add_argument(
        "--int-overflow",
        choices=["error", "float"],
        help="integer backends: when an int32 accumulator could overflow, fail (default) or keep that op in float",
    )
    p.add_argument(
        "--graph-input",
        choices=["edges", "csr"],
        help="ONNX backends: edges (default) takes x, edge_index and sorts the edges inside the model; csr "
        "also takes the destination-sorted edge order (graph_perm_<i>, made once per graph by "
        "`quantgraph prepare-graph`), so no sort runs per call",
    )
    p.add_argument(
        "--onnx-target",
        choices=["onnx", "ort"],
        help="ONNX backends: onnx (default) writes standard ONNX ops only; ort allows onnxruntime's "
        "com.microsoft ops",
    )
    p.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="FILE",
        help="artifact to write: .onnx, or .qgn for --backend native",
    )
    p.add_argument("--report", metavar="FILE.json", help="write the report JSON here (default: not written)")
    p.add_argument(
        "--html",
        metavar="FILE.html",
        help="write the HTML report (plots, per-point error) here (default: not written; needs matplotlib)",
    )
    qat = p.add_argument_group("quantization-aware training (qat, degree-quant, mixq)")
    qat.add_argument(
        "--epochs", type=int, help="fine-tuning epochs (defaults: `quantgraph passes --options train-qat`)"
    )
    qat.add_argument(
        "--lr", type=float, help="learning rate (default depends on the task: 0.005 nodes, 0.001 graphs)"
    )
    qat.add_argument(
        "--weight-decay", type=float, help="weight decay (default depends on the task: 5e-4 nodes, 0 graphs)"
    )
    qat.add_argument("--seed", type=int, help="training seed (default 0)")
    qat.add_argument(
        "--batch-size", type=int, help="graphs per mini-batch for graph classification (default 32)"
    )
    qat.add_argument(
        "--p-min",
        type=float,
        metavar="P",
        help="degree-quant: lowest protection probability (default 0 at INT8, 0.1 below)",
    )
    qat.add_argument(
        "--p-max",
        type=float,
        metavar="P",
        help="degree-quant: highest protection probability (default 0.1 at INT8, 0.2 below)",
    )
    mixq = p.add_argument_group("mixed precision (mixq)")
    mixq.add_argument(
        "--lambda",
        dest="lambda_",
        type=float,
        metavar="WEIGHT",
        help="weight of the BitOPs penalty (default 0.1; `quantgraph passes --options search-bits`)",
    )
    mixq.add_argument(
        "--target-bits",
        type=float,
        metavar="B",
        help="fit the chosen bits to this mean bitwidth, at most (default: no target)",
    )
    mixq.add_argument(
        "--bit-candidates", metavar="LIST", help="comma-separated candidate bitwidths (default 2,4,8)"
    )
    mixq.add_argument(
        "--search-epochs", type=int, metavar="N", help="epochs of the bitwidth search (default 40)"
    )
    a2q = p.add_argument_group("learned per-node bits (a2q, a2q-nns)")
    a2q.add_argument(
        "--target-kb",
        type=float,
        metavar="KB",
        help="a2q: total node-feature memory budget in KB (instead of --target-bits per layer, default 3.0)",
    )
    sgq = p.add_argument_group("multi-granularity bits (sgquant)")
    sgq.add_argument(
        "--memory-target", type=float, metavar="R", help="ABS: reach R× memory reduction vs FP32 (e.g. 16)"
    )
    sgq.add_argument(
        "--accuracy-tolerance",
        type=float,
        metavar="T",
        help="ABS: validation accuracy at most T (a fraction, e.g. 0.004) below FP32's; alone: the least memory "
        "within T; with --memory-target: checked and reported for the most accurate point within the memory",
    )
    sgq.add_argument(
        "--sgquant-config",
        metavar="RULES",
        help="bits per LAYER.COMPONENT[.bBUCKET], e.g. 0.aggregation=4,0.combination=8 (default: --bits)",
    )
    p.add_argument(
        "--pass",
        dest="passes",
        action="append",
        metavar="MODULE:CLASS[@before=NAME|@after=NAME]",
        help="add a pass (repeatable; appended by default). MODULE is imported from the current directory "
        "or sys.path",
    )
    p.add_argument(
        "--pipeline",
        metavar="A,B,C",
        help="comma-separated pass names replacing the policy's pipeline (default: the policy's)",
    )
    p.add_argument(
        "--option",
        action="append",
        metavar="KEY=VALUE",
        help="set any declared option (repeatable; `quantgraph passes --options NAME` lists them)",
    )
    _add_trust_args(p)
    _quiet(p)
    p.set_defaults(func=cmd_compile)

    p = _sub(sub, "eval", "accuracy of an ONNX model in onnxruntime")
    p.add_argument("model", help="an .onnx file from `quantgraph compile`")
    _add_data_args(p)
    p.add_argument(
        "--split",
        default="test",
        choices=["train", "val", "test", "all"],
        help="nodes (node tasks) or graphs (graph-classification .npz) to score",
    )
    p.add_argument(
        "--timeout", type=float, default=600.0, help="stop onnxruntime after this many seconds (default 600)"
    )
    _quiet(p)
    p.set_defaults(func=cmd_eval)

    p = _sub(
        sub,
        "prepare-graph",
        "the prepared-graph inputs of a --graph-input csr ONNX model for one graph (.npz)",
    )
    p.add_argument("model", help="an .onnx file from `quantgraph compile --graph-input csr`")
    _add_data_args(p)
    p.add_argument("-o", "--output", required=True, metavar="FILE.npz", help="write the arrays here")
    _quiet(p)
    p.set_defaults(func=cmd_prepare_graph)

    p = _sub(sub, "run", "run a native model (.qgn) with the integer kernels")
    p.add_argument("model", help="a .qgn file from `quantgraph compile --backend native`")
    _add_data_args(p)
    p.add_argument(
        "--split",
        default="test",
        choices=["train", "val", "test", "all"],
        help="nodes (node tasks) or graphs (graph-classification .npz) to score",
    )
    p.add_argument("--threads", type=int, default=None, help="kernel threads (default: all cores)")
    p.add_argument("-o", "--output", metavar="FILE.npy", help="write the logits here (default: not written)")
    p.add_argument(
        "--engine",
        choices=["dask", "ray"],
        default=None,
        help="with --data PARTS/ (a partition folder): the engine (default: dask)",
    )
    p.add_argument("--workers", type=int, default=2, help="local cluster workers (default: 2)")
    p.add_argument(
        "--scheduler", metavar="ADDRESS", help="join this Dask scheduler / Ray cluster instead of a local one"
    )
    _quiet(p)
    p.set_defaults(func=cmd_run)

    p = _sub(sub, "partition", "split a graph into partitions with halo lists for `run --data PARTS/`")
    p.add_argument("graph", help="a graph file (.npz, .pt, .json, .gml, .graphml)")
    p.add_argument("--parts", type=int, required=True, metavar="K", help="number of partitions")
    p.add_argument(
        "--method", choices=["metis", "hash", "range"], default="metis", help="partitioner (default: metis)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of METIS and of the hash (default: 0)")
    p.add_argument(
        "-o", "--output", dest="folder", required=True, metavar="DIR", help="the partition folder to write"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    _quiet(p)
    p.set_defaults(func=cmd_partition)

    p = _sub(
        sub,
        "inspect",
        "print a model's IR (with quantization annotations), an ONNX graph or a native program",
    )
    p.add_argument("file", help="a model (.pt/.pt2), an .onnx file or a native .qgn file")
    _add_data_args(p, required=False)
    p.add_argument("--policy", default=None, help="show the IR after this policy's passes (default: fp32)")
    p.add_argument("--bits", type=int, default=None, help="bitwidth for --policy (default: the policy's)")
    _add_trust_args(p)
    p.set_defaults(func=cmd_inspect)

    p = _sub(sub, "report", "write the HTML report of a compile report JSON")
    p.add_argument("report", help="a report JSON from `quantgraph compile --report`")
    p.add_argument("-o", "--output", required=True, metavar="FILE.html", help="HTML file to write")
    _quiet(p)
    p.set_defaults(func=cmd_report)

    p = _sub(
        sub, "compare", "compare compile reports side by side (accuracy vs bits and memory, Pareto plot)"
    )
    p.add_argument("reports", nargs="+", metavar="REPORT.json", help="two or more report JSON files")
    p.add_argument("-o", "--output", required=True, metavar="FILE.html", help="HTML file to write")
    _quiet(p)
    p.set_defaults(func=cmd_compare)

    p = _sub(sub, "demo", "train, quantize (INT8) and verify a GCN on a built-in synthetic graph")
    _quiet(p)
    p.set_defaults(func=cmd_demo)

    p = _sub(sub, "passes", "list passes and policies (built-in and from entry points)")
    p.add_argument(
        "--options", metavar="NAME", help="print the options a pass (or a policy's pipeline) declares"
    )
    p.set_defaults(func=cmd_passes)
    return parser


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (exit 2), like every other error of the CLI."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {self.prog}: {message}. See `{self.prog} --help`.", file=sys.stderr)
        sys.exit(EXIT_INPUT)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    """quantgraph's own warnings as one ``warning:`` line; others as Python prints them."""
    from quantgraph.checksum import UnverifiedFileWarning

    if issubclass(category, UnverifiedFileWarning):
        print(f"warning: {' '.join(str(message).split())}", file=sys.stderr)
    else:
        _PYTHON_SHOWWARNING(message, category, filename, lineno, file, line)


_PYTHON_SHOWWARNING = warnings.showwarning


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; every failure ends here as one line on stderr (a traceback only with --debug)."""
    warnings.filterwarnings("ignore", message="Failed to fetch module")  # torch.fx codegen noise
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.showwarning = _show_warning
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help, or a one-line usage error from _Parser.error
        return done.code if isinstance(done.code, int) else EXIT_INPUT
    try:
        check_args(args)
        return args.func(args)
    except KeyboardInterrupt:
        print("error: interrupted.", file=sys.stderr)
        return 130
    except Exception as err:  # the one place where errors become exit codes
        if args.debug:
            raise
        code, line = describe_failure(err)
        print(f"error: {line}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
