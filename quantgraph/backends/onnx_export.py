"""Export the quantgraph IR (a torch.fx GraphModule) to an ONNX model that onnxruntime runs.

>>> model = export_onnx(tg.graph_module, input_names=tg.input_names, dim_names=tg.dim_names)
>>> save_onnx(model, "model.onnx")

* Default-domain opset 21, ``ir_version`` 10 (onnxruntime 1.31 reads IR versions up to 13).
* Graph inputs are the placeholders, in order, named ``input_names``; symbolic sizes become ``dim_param``
  from ``dim_names`` (``num_nodes``, ``num_edges``), so one file serves any graph.
* Outputs are named ``logits`` (one output) or ``logits``, ``output_1``, ... .
* ``get_attr`` tensors become initializers named by their attribute path; only those that are used.
* Each ATen/IR op is lowered by an entry of :data:`LOWERINGS` (see ``onnx_ops`` and ``onnx_qdq``); an op
  without a lowering raises :class:`~quantgraph.errors.UnsupportedOpError` naming the op and the model line.
* Deterministic: names derive from FX node names, constants are numbered in graph order, no timestamps.
* The result passes ``onnx.checker.check_model(full_check=True)``, which includes strict shape inference.
  Data-dependent sizes (boolean-mask indexing lowers to ``Compress``, e.g. GCNConv's self-loop removal) only
  leave those dimensions unknown in inference; they are no errors.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import onnx
import torch
from onnx import TensorProto, helper
from torch import fx

import quantgraph
from quantgraph.backends import onnx_int, onnx_qdq, onnx_segment  # noqa: F401  (register the Q/DQ and integer lowerings)
from quantgraph.backends.onnx_builder import (
    AttrRef,
    Lazy,
    OnnxBuilder,
    QValue,
    onnx_type,
    target_name,
    unsupported,
    with_subgraphs,
)
from quantgraph.backends.onnx_ops import LOWERINGS, register
from quantgraph.errors import InputError, QuantGraphError, UnsupportedOpError

__all__ = ["DEFAULT_OPSET", "IR_VERSION", "LOWERINGS", "export_onnx", "register", "save_onnx"]

DEFAULT_OPSET = 21
#: export options and their choices (the first is the default); backends declare them as compile options
ONNX_OPTION_CHOICES: dict[str, tuple[str, ...]] = {
    "onnx_aggregation": onnx_segment.AGGREGATIONS,
    "graph_input": onnx_segment.GRAPH_INPUTS,
    "onnx_target": ("onnx", "ort"),
    "message_fusion": onnx_segment.MESSAGE_FUSION,
}
DEFAULT_OPTIONS = {key: choices[0] for key, choices in ONNX_OPTION_CHOICES.items()}
IR_VERSION = 10  # the IR version of opset 21; onnx 1.23 would write 14, which onnxruntime 1.31 refuses


def _output_args(node: fx.Node) -> list[Any]:
    result = node.args[0]
    if isinstance(result, tuple | list):
        flat: list[Any] = []
        for item in result:
            flat.extend(item if isinstance(item, tuple | list) else [item])
        return flat
    return [result]


def _default_output_names(count: int) -> list[str]:
    return ["logits"] + [f"output_{i}" for i in range(1, count)]


def _dims(shape: Sequence[Any], dim_names: Mapping[str, str]) -> list[int | str | None]:
    dims: list[int | str | None] = []
    for size in shape:
        if isinstance(size, int):
            dims.append(size)
        else:
            sym = str(size)
            dims.append(dim_names.get(sym))
    return dims


def _placeholder_type(node: fx.Node, example: Any, dim_names: Mapping[str, str]) -> tuple[int, list]:
    val = node.meta.get("val")
    if isinstance(val, torch.Tensor):
        return onnx_type(val.dtype), _dims(val.shape, dim_names)
    if isinstance(example, torch.Tensor):
        return onnx_type(example.dtype), [None] * example.dim()
    raise InputError(
        f"graph input {node.name!r} has no shape information (node.meta['val'])",
        "export a graph made by quantgraph.frontend.trace, or pass example_inputs=",
    )


def _check_meta(ctx: OnnxBuilder, node: fx.Node, value: Any) -> None:
    """Compare the tracked ONNX type/rank with the traced FakeTensor: a mismatch is a lowering bug."""
    if not isinstance(value, str):
        return
    val = node.meta.get("val")
    if isinstance(val, torch.Tensor):
        expected = (onnx_type(val.dtype), val.dim())
    elif isinstance(val, torch.SymInt | int) and not isinstance(val, bool):
        expected = (TensorProto.INT64, 0)
    elif isinstance(val, torch.SymBool | bool):
        expected = (TensorProto.BOOL, 0)
    else:
        return
    if ctx.info[value] != expected:
        raise RuntimeError(
            f"internal error in the ONNX lowering of {target_name(node.target)} (node {node.name}): "
            f"made (type, rank) {ctx.info[value]}, the traced graph says {expected}"
        )


def _lower(ctx: OnnxBuilder, node: fx.Node) -> None:
    fn = LOWERINGS.get(node.target)
    if fn is None:
        raise unsupported(node)
    start = ctx.begin(node)
    try:
        value = fn(ctx, node)
    except QuantGraphError:
        raise
    except Exception as err:
        raise unsupported(
            node,
            f"the lowering failed ({type(err).__name__}: {err})",
            "rewrite that line with simpler ops, or fix the lowering registered in LOWERINGS",
        ) from err
    if isinstance(value, str):
        value = ctx.rename_output(value, node.name, start)
    elif isinstance(value, QValue):
        value = QValue(ctx.rename_output(value.name, node.name, start), value.dtype, value.rank, value.offset)
    elif not isinstance(value, tuple | list | Lazy | QValue):
        raise unsupported(node, f"its lowering returned {type(value).__name__}")
    ctx.env[node] = value
    _check_meta(ctx, node, value)


def _rename_everywhere(ctx: OnnxBuilder, old: str, new: str) -> None:
    for n in with_subgraphs(ctx.nodes):
        for seq in (n.input, n.output):
            for i, name in enumerate(seq):
                if name == old:
                    seq[i] = new
    ctx.info[new] = ctx.info.pop(old)


def _subgraph_inputs(node: onnx.NodeProto) -> set[str]:
    """Every name read inside ``node``'s subgraphs (``Loop`` bodies read outer values by name)."""
    names: set[str] = set()
    for attr in node.attribute:
        for graph in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
            for inner in graph.node:
                names.update(i for i in inner.input if i)
                names |= _subgraph_inputs(inner)
    return names


def _prune(ctx: OnnxBuilder, outputs: list[str]) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Drop nodes and initializers that no output depends on."""
    needed = set(outputs)
    kept = []
    for n in reversed(ctx.nodes):
        if any(o in needed for o in n.output):
            kept.append(n)
            needed.update(i for i in n.input if i)
            needed |= _subgraph_inputs(n)
    kept.reverse()
    return kept, [t for name, t in ctx.initializers.items() if name in needed]


def export_onnx(
    graph_module: fx.GraphModule,
    *,
    input_names: Sequence[str],
    dim_names: Mapping[str, str],
    output_names: Sequence[str] | None = None,
    opset: int = DEFAULT_OPSET,
    model_name: str = "quantgraph",
    example_inputs: Sequence[torch.Tensor] | Mapping[str, torch.Tensor] | None = None,
    check: bool = True,
    integer: bool = False,
    output_shapes: Sequence[Sequence[Any] | None] | None = None,
    options: Mapping[str, Any] | None = None,
) -> onnx.ModelProto:
    """Lower ``graph_module`` to an ONNX model (see the module docstring for the conventions).

    ``output_shapes`` (traced shapes, symbolic sizes allowed) names the output dims where the output
    node keeps no shape of its own (the integer IR's requantize ops record none).

    ``example_inputs`` (one tensor per graph input, or a dict by input name) is only needed for placeholders without
    ``node.meta["val"]``; ``check`` runs ``onnx.checker.check_model(full_check=True)``; ``integer``
    stores every quantized tensor in 8-bit types (the integer backend's Gather/MatMulInteger need them).
    ``options`` (:data:`ONNX_OPTIONS`): ``onnx_aggregation`` ``segment`` (default; race-free sorted
    segments, see ``onnx_segment``) or ``scatter`` (element-wise ScatterElements, the old formulation);
    ``graph_input`` ``edges`` (default: ``x, edge_index``) or ``csr`` (adds the destination-sorted edge
    order of every aggregation index as inputs ``graph_perm_<i>``: ``onnx_segment.prepare_graph_inputs``);
    ``onnx_target`` ``onnx`` (standard ops only, default) or ``ort`` (onnxruntime's com.microsoft ops allowed).
    """
    options = {**DEFAULT_OPTIONS, **(options or {})}
    for key, value in options.items():
        if key not in DEFAULT_OPTIONS or value not in ONNX_OPTION_CHOICES[key]:
            raise InputError(
                f"ONNX export option {key}={value!r} is not valid",
                f"use one of: {', '.join(f'{k} in {v}' for k, v in ONNX_OPTION_CHOICES.items())}",
            )
    if options["graph_input"] == "csr" and options["onnx_aggregation"] != "segment":
        raise InputError("graph_input=csr needs onnx_aggregation=segment", "drop onnx_aggregation=scatter")
    if not 21 <= opset <= onnx.defs.onnx_opset_version():
        raise InputError(
            f"opset {opset} is not supported by the ONNX exporter",
            f"use an opset from 21 to {onnx.defs.onnx_opset_version()} (INT4 Q/DQ needs 21)",
        )
    graph = graph_module.graph
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    if len(placeholders) != len(input_names):
        raise InputError(
            f"the graph has {len(placeholders)} inputs but {len(input_names)} input names were given",
            "pass the input_names of the TracedGraph",
        )
    output_node = next(n for n in graph.nodes if n.op == "output")
    results = _output_args(output_node)
    names = list(output_names) if output_names is not None else _default_output_names(len(results))
    if len(names) != len(results) or len(set(names)) != len(names):
        raise InputError(f"{len(results)} distinct output names are needed, got {names}", "fix output_names")

    ctx = OnnxBuilder(graph_module)
    ctx.integer_storage = integer
    ctx.options = dict(options)
    for name in [*input_names, *names]:
        ctx.reserve(name)
    inputs = []
    if isinstance(example_inputs, Mapping):
        examples = [example_inputs.get(name) for name in input_names]
    else:
        examples = list(example_inputs) if example_inputs is not None else [None] * len(placeholders)
    for node, name, example in zip(placeholders, input_names, examples, strict=True):
        elem_type, dims = _placeholder_type(node, example, dim_names)
        inputs.append(helper.make_tensor_value_info(name, elem_type, dims))
        ctx.set_info(name, elem_type, len(dims))
        ctx.env[node] = name

    for node in graph.nodes:
        if node.op in ("placeholder", "output"):
            continue
        if node.op == "get_attr":
            tensor = _fetch_attr(graph_module, node)
            ctx.env[node] = AttrRef(str(node.target), tensor)
        elif node.op == "call_function":
            _lower(ctx, node)
        else:
            raise unsupported(
                node,
                "only call_function nodes can be exported",
                "trace the model with quantgraph.frontend.trace",
            )

    ctx.current = output_node
    outputs = []
    hints = list(output_shapes) if output_shapes is not None else [None] * len(results)
    for arg, out_name, hint in zip(results, names, hints, strict=True):
        if not isinstance(arg, fx.Node):
            raise UnsupportedOpError(
                f"model output {out_name} is the constant {arg!r}", "return tensors only"
            )
        ctx.begin(output_node)
        value = ctx.t(arg)
        produced = any(value in n.output for n in ctx.nodes)
        if produced and value not in names:
            _rename_everywhere(ctx, value, out_name)
            for other, env_value in list(ctx.env.items()):
                if env_value == value:
                    ctx.env[other] = out_name
        else:
            ctx.nodes.append(helper.make_node("Identity", [value], [out_name], name=f"output/{out_name}"))
            ctx.set_info(out_name, *ctx.info[value])
        elem_type, rank = ctx.info[out_name]
        val = arg.meta.get("val")
        if isinstance(val, torch.Tensor) and val.dim() == rank:
            dims = _dims(val.shape, dim_names)
        elif hint is not None and len(hint) == rank:
            dims = _dims(hint, dim_names)
        else:
            dims = [None] * rank
        outputs.append(helper.make_tensor_value_info(out_name, elem_type, dims))

    nodes, initializers = _prune(ctx, names)
    for perm, _ in ctx.perm_inputs:  # graph_input="csr"
        if any(perm in n.input or perm in _subgraph_inputs(n) for n in nodes):
            inputs.append(helper.make_tensor_value_info(perm, TensorProto.INT64, [f"{perm}_edges"]))
    onnx_graph = helper.make_graph(nodes, model_name, inputs, outputs, initializer=initializers)
    model = helper.make_model(
        onnx_graph,
        opset_imports=[helper.make_opsetid("", opset)],
        producer_name="quantgraph",
        producer_version=quantgraph.__version__,
    )
    model.ir_version = max(IR_VERSION, helper.find_min_ir_version_for([helper.make_opsetid("", opset)]))
    _complete_output_shapes(model)
    used_perms = [(p, topk) for p, topk in ctx.perm_inputs if p in {i.name for i in inputs}]
    if used_perms:
        prep_nodes, prep_inits = _prune(ctx, [topk for _, topk in used_perms])
        onnx_segment.attach_prep_model(
            model, prep_nodes, prep_inits, [t for _, t in used_perms], [p for p, _ in used_perms]
        )
    if check:
        onnx.checker.check_model(model, full_check=True)
    return model


def _complete_output_shapes(model: onnx.ModelProto) -> None:
    """Fill output dims the IR did not record (integer ops keep no shape) from ONNX shape inference.

    A dim neither the IR nor inference can name gets the symbol ``<output>_dim<i>``, so a reader sees
    ``logits[num_nodes, 7]`` rather than an unnamed size.
    """

    def unknown(dim: onnx.TensorShapeProto.Dimension) -> bool:
        invented = dim.HasField("dim_param") and dim.dim_param.startswith("unk__")  # inference's placeholder
        return invented or (not dim.HasField("dim_value") and not dim.HasField("dim_param"))

    if not any(unknown(d) for o in model.graph.output for d in o.type.tensor_type.shape.dim):
        return
    try:
        inferred = {o.name: o for o in onnx.shape_inference.infer_shapes(model).graph.output}
    except onnx.shape_inference.InferenceError:
        inferred = {}
    for out in model.graph.output:
        found = inferred.get(out.name)
        found_dims = list(found.type.tensor_type.shape.dim) if found is not None else []
        for i, dim in enumerate(out.type.tensor_type.shape.dim):
            if not unknown(dim):
                continue
            if i < len(found_dims) and not unknown(found_dims[i]):
                dim.CopyFrom(found_dims[i])
            else:
                dim.dim_param = f"{out.name}_dim{i}"


def _fetch_attr(gm: fx.GraphModule, node: fx.Node) -> torch.Tensor:
    obj: Any = gm
    for part in str(node.target).split("."):
        obj = getattr(obj, part)
    if not isinstance(obj, torch.Tensor):
        raise unsupported(node, f"get_attr {node.target} is a {type(obj).__name__}, not a tensor")
    return obj.detach()


def save_onnx(model: onnx.ModelProto, path: str | os.PathLike) -> Path:
    """Write ``model`` atomically (``quantgraph.fileio``: whole or not at all); same model, same bytes."""
    from quantgraph.fileio import atomic_write_bytes

    path = Path(path)
    atomic_write_bytes(path, model.SerializeToString(deterministic=True))
    return path
