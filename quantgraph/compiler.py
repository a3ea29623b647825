"""The Python API: ``compile`` a model on a graph with a policy and get a ``CompiledModel``.

Data flows one way: frontend (trace) -> IR -> passes (policy pipeline) -> backend (ONNX export).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, fx

import quantgraph
from quantgraph.backends.registry import OnnxQDQBackend, available_backends, get_backend
from quantgraph.bitops import bit_conventions, count_bitops
from quantgraph.data import GraphData, validate_graph
from quantgraph.errors import InputError
from quantgraph.frontend import TracedGraph, trace, trace_exported
from quantgraph.ir.meta import LAYER_KEY, QPARAMS_KEY, QSPEC_KEY, ROLE_KEY
from quantgraph.ir.roles import Role
from quantgraph.metrics import accuracy, argmax_agreement
from quantgraph.options import (
    CALIBRATION,
    COMPILE_OPTIONS,
    PER_CHANNEL_WEIGHTS,
    PERCENTILE_TAIL,
    REDUCE_RANGE,
    SEED,
    SKIP_ROLES,
    TRACE_TRAINING,
    Option,
    check_options,
    index_options,
)
from quantgraph.passes import CompileContext, PassBase, PassManager, available_passes, get_pass
from quantgraph.policies import get_policy
from quantgraph.policies.base import (
    GRAPH_PASSES,
    Policy,
    available_policies,
    with_per_channel_weights,
    with_reduced_weight_range,
    without_roles,
)
from quantgraph.progress import stage
from quantgraph.quant_error import kept_float_points, point_errors
from quantgraph.sampling import check_sample_size, compare_ranges, sample_subgraph

#: The FP32 reference: the graph passes, without the dropout a training-mode trace keeps.
GRAPH_ONLY_PASSES = ("strip-dropout", *GRAPH_PASSES)


@dataclass
class PassInsertion:
    """A user pass to add to a pipeline: appended, or placed before/after a named pass."""

    pass_: PassBase
    before: str | None = None
    after: str | None = None


@dataclass
class CompiledModel:
    """A compiled model: the quantized IR, its FP32 reference, and the compile report."""

    graph_module: fx.GraphModule
    fp32_module: fx.GraphModule
    input_names: list[str]
    dim_names: dict[str, str]
    report: dict[str, Any] = field(default_factory=dict)
    backend: str = "onnx-qdq"
    #: the graph it was compiled on (the default for export checks)
    data: GraphData | None = None
    #: integer backends: the Q/DQ form before ``fold-scales`` rewrote it
    qdq_module: fx.GraphModule | None = None
    #: the backend's declared options as compiled (ONNX: ``onnx_aggregation``, ``graph_input``, ...)
    backend_options: dict[str, Any] = field(default_factory=dict)

    def run(self, inputs: dict[str, Tensor] | GraphData) -> Tensor:
        """Logits of the quantized IR (the fake-quant reference semantics)."""
        return _run(self.graph_module, self.input_names, _as_inputs(inputs))

    def integer_values(self, inputs: dict[str, Tensor] | GraphData) -> dict[str, Tensor]:
        """The integers at every quantize/requantize of the IR, keyed by the quantized node."""
        from quantgraph.ir.reference import integer_values

        values = _as_inputs(inputs)
        return integer_values(self.graph_module, [values[n] for n in self.input_names])

    def run_fp32(self, inputs: dict[str, Tensor] | GraphData) -> Tensor:
        return _run(self.fp32_module, self.input_names, _as_inputs(inputs))

    def to_onnx(self, quantized: bool = True, options: dict[str, Any] | None = None):
        """The ONNX model (``options``: ONNX export options over the compiled ones, see ``export_onnx``)."""
        from quantgraph.backends.onnx_export import DEFAULT_OPTIONS, export_onnx

        gm = self.graph_module if quantized else self.fp32_module
        integer = quantized and get_backend(self.backend).integer_ir
        onnx_options = {k: v for k, v in self.backend_options.items() if k in DEFAULT_OPTIONS}
        return export_onnx(
            gm,
            input_names=self.input_names,
            dim_names=self.dim_names,
            integer=integer,
            output_shapes=_output_shapes(self.fp32_module),
            options={**onnx_options, **(options or {})},
        )

    def export_onnx(self, path: str | Path, data: GraphData | None = None) -> dict[str, Any]:
        """Export, verify in onnxruntime against the IR reference, write ``path``; returns the ONNX report.

        Uses this model's backend when it writes ONNX, else ``onnx-qdq`` (the ONNX form of its IR).
        """
        backend = get_backend(self.backend)
        if not isinstance(backend, OnnxQDQBackend):
            backend = get_backend("onnx-qdq")
        return backend.export(self, path, data if data is not None else self.data)

    def to_native(self, data: GraphData | None = None, threads: int | None = None):
        """The native program of the integer IR (``backend="native"``), as a runnable ``NativeModel``."""
        from quantgraph.native.lower import lower_to_native
        from quantgraph.native.runtime import NativeModel

        if not get_backend(self.backend).integer_ir:
            raise InputError(
                f"this model was compiled for {self.backend}, not to the integer IR",
                "compile it with backend='native'",
            )
        data = data if data is not None else self.data
        meta = {
            "quantgraph_version": quantgraph.__version__,
            "policy": self.report.get("policy"),
            "bits": self.report.get("bits"),
            "dim_names": dict(self.dim_names),
        }
        proven = {
            a["node"]: a["max_in_degree"]
            for a in self.report.get("integer", {}).get("accumulators", [])
            if a.get("kind") == "aggregation"
        }
        program = lower_to_native(self.graph_module, self.input_names, data.inputs(), meta, proven)
        return NativeModel(program, threads)

    def export_native(self, path: str | Path, data: GraphData | None = None) -> dict[str, Any]:
        """Lower to a native program, check it against the IR on ``data``, write ``path`` (``.qgn``)."""
        return get_backend("native").export(self, path, data if data is not None else self.data)

    def export(self, path: str | Path, data: GraphData | None = None) -> dict[str, Any]:
        """Write this model's backend artifact (checked against the IR on ``data`` first)."""
        return get_backend(self.backend).export(self, path, data if data is not None else self.data)

    def public_report(self) -> dict[str, Any]:
        return {k: v for k, v in self.report.items() if not k.startswith("_")}


def _as_inputs(data: dict[str, Tensor] | GraphData) -> dict[str, Tensor]:
    return data.inputs() if isinstance(data, GraphData) else data


def _run(gm: fx.GraphModule, names: list[str], inputs: dict[str, Tensor]) -> Tensor:
    with torch.no_grad():
        out = gm(*[inputs[n] for n in names])
    return out[0] if isinstance(out, (tuple, list)) else out


def expected_feature_width(model: torch.nn.Module | torch.export.ExportedProgram) -> int | None:
    """The node-feature width a model was built for, when it can be read off the model."""
    if isinstance(model, torch.export.ExportedProgram):
        for node in model.graph.nodes:
            if node.op == "placeholder" and node.name == "x":
                val = node.meta.get("val")
                if isinstance(val, Tensor) and val.dim() == 2 and isinstance(val.shape[1], int):
                    return int(val.shape[1])
        return None
    config = getattr(model, "qg_config", None)
    if isinstance(config, dict) and "in_channels" in config:
        return int(config["in_channels"])
    return None


def declared_options(policy: Policy, pass_list: Sequence[PassBase]) -> dict[str, Option]:
    """Every option a compile with ``policy`` and these passes reads: compile's own, the policy's, the passes'."""
    declared = [*COMPILE_OPTIONS, *policy.options]
    for p in pass_list:
        declared.extend(type(p).options)
    return index_options(declared)


def known_option_names() -> set[str]:
    """Option names declared anywhere (every registered pass and policy): valid in some pipeline."""
    names = {o.name for o in COMPILE_OPTIONS}
    for cls in available_passes().values():
        names.update(o.name for o in cls.options)
    for pol in available_policies().values():
        names.update(o.name for o in pol.options)
    for backend in available_backends().values():
        names.update(o.name for o in backend.options)
    return names


def build_pipeline(
    policy_name: str, pipeline: Sequence[str] | None = None, insertions: Sequence[PassInsertion] = ()
) -> list[PassBase]:
    """The passes to run: the policy's pipeline (or an explicit one) with user passes inserted."""
    policy = get_policy(policy_name)
    names = list(pipeline) if pipeline else list(policy.pipeline)
    passes = [get_pass(n) for n in names]
    for ins in insertions:
        anchor = ins.before or ins.after
        if anchor is None:
            passes.append(ins.pass_)
            continue
        positions = [i for i, p in enumerate(passes) if p.display_name == anchor]
        if not positions:
            raise InputError(
                f"cannot place pass {ins.pass_.display_name}: no pass '{anchor}' in the pipeline",
                f"use one of {', '.join(p.display_name for p in passes)}",
            )
        passes.insert(positions[0] + (ins.after is not None), ins.pass_)
    return passes


def compile(  # noqa: A001 - mirrors the CLI command
    model: torch.nn.Module | torch.export.ExportedProgram | TracedGraph,
    data: GraphData,
    *,
    policy: str = "minmax",
    bits: int | None = None,
    pipeline: Sequence[str] | None = None,
    passes: Sequence[PassInsertion] = (),
    calibration: Sequence[GraphData] | None = None,
    options: dict[str, Any] | None = None,
    task_data: dict[str, Any] | None = None,
    progress: bool = False,
    backend: str = "onnx-qdq",
    calibration_sample: int | None = None,
    sample_hops: int | None = None,
    sample_seed: int | None = None,
) -> CompiledModel:
    """Trace ``model`` on ``data``, run the policy's passes and return the compiled model.

    ``data`` is the graph used for calibration (and for accuracy when it has labels); ``calibration``
    may give more graphs. ``pipeline`` replaces the policy's pass list; ``passes`` adds user passes.
    ``options``: keys declared by compile (:data:`quantgraph.options.COMPILE_OPTIONS`: ``seed``,
    ``calibration``, ``percentile_tail``, ``skip_roles``, ``trace_training``), the policy and the pipeline's
    passes (``quantgraph passes --options NAME``); a key nothing declares is an error naming the valid ones.
    ``task_data``: labelled data for training passes (default ``{"node": data}``; graph
    classification: ``{"graphs": {"train": [...], "val": [...]}}``).
    Passes run under ``torch.manual_seed(options["seed"])`` (default 0), so a compile is repeatable.
    ``backend``: "onnx-qdq" (Q/DQ around float ops), "onnx-int" (adds ``quantize-bias`` and
    ``fold-scales``: integer linear layers and aggregations; ``options["int_overflow"]``) or "native" (the
    same integer IR, for the native kernels: ``CompiledModel.to_native`` / ``export_native``).
    ``calibration_sample``: calibrate (and, for QAT policies, train) on a seeded node-induced sample of
    ``data`` instead (:func:`quantgraph.sampling.sample_subgraph`: that many seed nodes plus their
    ``sample_hops``-hop in-neighbourhood, default the model's number of message-passing layers;
    ``sample_seed`` defaults to ``options["seed"]``). The passes see only the sample; the report's accuracy,
    the int32 in-degree proof and the export check use ``data``, and ``report["calibration_sample"]`` compares
    the sampled calibration ranges with those of ``data``.
    """
    target = get_backend(backend)
    pol = get_policy(policy)
    bits = pol.default_bits if bits is None else bits
    pass_list = build_pipeline(policy, pipeline, passes)
    if target.integer_ir and not pol.quantizes:
        raise InputError(
            f"backend {backend} needs a quantizing policy", "use --policy minmax, degree-quant or mixq"
        )
    for name in target.passes:
        if not any(p.display_name == name for p in pass_list):
            pass_list.append(get_pass(name))
    given = {k: v for k, v in {**pol.defaults, **(options or {})}.items() if v is not None}
    declared = index_options([*declared_options(pol, pass_list).values(), *target.options])
    opts = check_options(given, declared, known_option_names())
    qconfig = (
        pol.build_qconfig(bits, CALIBRATION.read(opts), PERCENTILE_TAIL.read(opts)) if pol.quantizes else {}
    )
    qconfig = without_roles(qconfig, SKIP_ROLES.read(opts))
    if REDUCE_RANGE.read(opts):
        qconfig = with_reduced_weight_range(qconfig)
    if PER_CHANNEL_WEIGHTS.read(opts):
        qconfig = with_per_channel_weights(qconfig, pol.pipeline)
    if calibration_sample is not None:
        check_sample_size(calibration_sample)
        if calibration or (task_data is not None and "node" not in task_data) or data.batch is not None:
            raise InputError(
                "calibration_sample samples the nodes of the graph given as data; it cannot be combined with "
                "other calibration graphs or graph-level data",
                "leave calibration_sample out for graph classification, or drop the calibration graphs",
            )
    width = None if isinstance(model, TracedGraph) else expected_feature_width(model)
    validate_graph(data.x, data.edge_index, expected_features=width, name=data.name)
    with stage("trace"):
        traced = _trace(model, data, training=TRACE_TRAINING.read(opts))
    _check_input_names(traced.input_names, data)
    fp32_module = _graph_only_copy(traced.graph_module)
    sample = None
    if calibration_sample is not None:
        hops = message_passing_layers(fp32_module) if sample_hops is None else sample_hops
        seed = SEED.read(opts) if sample_seed is None else sample_seed
        with stage("calibration sample"):
            sample = sample_subgraph(data, calibration_sample, hops, seed)
        if any("train" in p.display_name for p in pass_list) and not sample.summary.get("train_nodes", 1):
            raise InputError(
                f"the calibration sample ({sample.summary['nodes']} nodes) holds no training node, so "
                f"{pol.name} has nothing to train on",
                "sample more seed nodes (--calibration-sample) or another --sample-seed",
            )
    graphs = [sample.data] if sample else (list(calibration) if calibration else [data])
    ctx = CompileContext(
        input_names=traced.input_names,
        dim_names=traced.dim_names,
        calibration_data=[g.inputs() for g in graphs],
        qconfig=qconfig,
        bits=bits,
        options=opts,
        progress=progress,
        task_data=(
            {"node": sample.data}
            if sample
            else (dict(task_data) if task_data is not None else {"node": data})
        ),
        degree_data=[data.inputs()] if sample else [],
    )
    if sample is not None:
        with stage("sampled vs full calibration ranges"):
            comparison = _compare_calibration(traced, pass_list, ctx, graphs[0], data.inputs(), opts)
    traced_module = traced.graph_module
    manager = PassManager(pass_list)
    with torch.random.fork_rng():  # seeded, without touching the caller's generator
        torch.manual_seed(SEED.read(opts))
        result = manager(traced_module, ctx)
    compiled = CompiledModel(
        result.graph_module,
        fp32_module,
        traced.input_names,
        traced.dim_names,
        backend=backend,
        data=data,
        qdq_module=ctx.qdq_module,
        backend_options={o.name: o.read(opts) for o in target.options},
    )
    with stage("report (accuracy, SQNR)"):
        compiled.report = _report(compiled, ctx, manager, pol.name, bits if pol.quantizes else 32, data)
    compiled.report["calibration"] = CALIBRATION.read(opts) or "minmax"
    if sample is not None:
        compiled.report["calibration_sample"] = {**sample.summary, "range_comparison": comparison}
    return compiled


def message_passing_layers(gm: fx.GraphModule) -> int:
    """The number of layers with an aggregation in a tagged graph (the receptive field in hops); 1 if none."""
    layers = {n.meta.get(LAYER_KEY) for n in gm.graph.nodes if n.meta.get(ROLE_KEY) == Role.AGGREGATION}
    return max(len(layers), 1)


def _compare_calibration(
    traced: TracedGraph,
    pass_list: Sequence[PassBase],
    ctx: CompileContext,
    sample_inputs: GraphData,
    full_inputs: dict[str, Tensor],
    opts: dict[str, Any],
) -> dict[str, Any]:
    """The calibration ranges of the sample against the full graph's: the pipeline up to ``calibrate``, twice."""
    names = [p.display_name for p in pass_list]
    if "calibrate" not in names:
        return {"available": False, "reason": "the pipeline has no calibrate pass"}
    prefix = list(pass_list[: names.index("calibrate") + 1])
    found = []
    for inputs in (sample_inputs.inputs(), full_inputs):
        run_ctx = CompileContext(
            input_names=list(ctx.input_names),
            dim_names=dict(ctx.dim_names),
            calibration_data=[inputs],
            qconfig=ctx.qconfig,
            bits=ctx.bits,
            options=opts,
        )
        with torch.random.fork_rng():
            torch.manual_seed(SEED.read(opts))
            gm = PassManager(prefix)(copy.deepcopy(traced.graph_module), run_ctx).graph_module
        found.append({n.name: n for n in gm.graph.nodes if QPARAMS_KEY in n.meta})
    sampled, full = ({k: n.meta[QPARAMS_KEY] for k, n in f.items()} for f in found)
    roles = {k: n.meta[ROLE_KEY].value for k, n in found[1].items() if ROLE_KEY in n.meta}
    return {"available": True, **compare_ranges(sampled, full, roles)}


def _check_input_names(names: list[str], data: GraphData) -> None:
    """The model's inputs must be ones the data provides (a damaged .pt2 can rename them)."""
    provided = data.inputs()
    missing = [n for n in names if n not in provided]
    if missing:
        raise InputError(
            f"the model takes inputs {', '.join(names)} but {data.name} provides {', '.join(provided)}",
            "name the forward arguments after the data's fields (x, edge_index, ...) and export again",
        )


def _trace(
    model: torch.nn.Module | torch.export.ExportedProgram | TracedGraph,
    data: GraphData,
    training: bool = False,
) -> TracedGraph:
    if isinstance(model, TracedGraph):
        return TracedGraph(copy.deepcopy(model.graph_module), list(model.input_names), dict(model.dim_names))
    if isinstance(model, torch.export.ExportedProgram):
        return trace_exported(model)
    return trace(model, data.inputs(), training=training)


def _graph_only_copy(gm: fx.GraphModule) -> fx.GraphModule:
    """The FP32 reference: a copy with only the graph passes (same node names as the quantized IR)."""
    ref = copy.deepcopy(gm)
    ctx = CompileContext(input_names=[])
    for name in GRAPH_ONLY_PASSES:
        ref = get_pass(name)(ref, ctx).graph_module
    return ref


def per_layer_sqnr(compiled: CompiledModel, inputs: dict[str, Tensor]) -> list[dict[str, Any]]:
    """SQNR (dB) of each layer's last quantized activation against the FP32 reference."""
    return point_errors(compiled.graph_module, compiled.fp32_module, compiled.input_names, inputs)[
        "per_layer_sqnr"
    ]


def _output_shapes(gm: fx.GraphModule) -> list[Any]:
    """The traced (symbolic) shape of each output of ``gm``, or None where it was not recorded."""
    output = next(n for n in gm.graph.nodes if n.op == "output")
    args = output.args[0] if isinstance(output.args[0], (tuple, list)) else [output.args[0]]
    shapes = []
    for arg in args:
        val = arg.meta.get("val") if isinstance(arg, fx.Node) else None
        shapes.append(tuple(val.shape) if isinstance(val, Tensor) else None)
    return shapes


def _report(
    compiled: CompiledModel,
    ctx: CompileContext,
    manager: PassManager,
    policy: str,
    bits: int,
    data: GraphData,
) -> dict[str, Any]:
    inputs = data.inputs()
    q_logits, f_logits = compiled.run(inputs), compiled.run_fp32(inputs)
    mask = data.test_mask
    qdq = ctx.qdq_module or compiled.graph_module  # integer IR: its Q/DQ form has every point
    annotated = [n for n in qdq.graph.nodes if QSPEC_KEY in n.meta]
    errors = (
        point_errors(qdq, compiled.fp32_module, compiled.input_names, inputs)
        if annotated
        else {"points": [], "per_layer_sqnr": [], "error_by_degree": []}
    )
    report: dict[str, Any] = {
        "policy": policy,
        "bits": bits,
        "dataset": data.name,
        "accuracy": {
            "split": "test" if mask is not None else "all",
            "fp32": accuracy(f_logits, data.y, mask),
            "quantized": accuracy(q_logits, data.y, mask),
        },
        "ir": {"argmax_agreement_vs_fp32": argmax_agreement(q_logits, f_logits)},
        "passes": [r.name for r in manager.records],
        "pass_seconds": {r.name: round(r.seconds, 4) for r in manager.records},
        "quantization": {
            n.name: {
                "role": n.meta[ROLE_KEY].value,
                "layer": n.meta.get(LAYER_KEY),
                **n.meta[QSPEC_KEY].to_json(),
                **(n.meta[QPARAMS_KEY].to_json() if QPARAMS_KEY in n.meta else {}),
            }
            for n in annotated
        },
        "quantization_points": len(annotated),
        "points": errors["points"],
        "per_layer_sqnr": errors["per_layer_sqnr"],
        "error_by_degree": errors["error_by_degree"],
    }
    if annotated:
        counted = inputs if ctx.degree_data else ctx.calibration_data[0]  # a sample: count the whole graph
        report["bitops"] = count_bitops(qdq, compiled.input_names, counted)
        conventions = bit_conventions(qdq, compiled.input_names, counted)  # the papers'
        report["bitops"]["mixq_convention"] = conventions["mixq"]
        report["average_bits"] = conventions["average_bits"]
        report["sgquant_memory"] = conventions["sgquant_memory"]
    for key, value in ctx.report.items():
        report.setdefault(key, value)
    if "integer" in report:
        report["integer"] = {
            **report["integer"],
            "kept_float_points": kept_float_points(qdq, report["integer"]),
        }
    return report
