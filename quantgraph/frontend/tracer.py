"""Trace a GNN with torch.export and unlift it into a plain GraphModule (parameters as ``get_attr``).

Node and edge counts stay symbolic: ``x``-like inputs get a ``num_nodes`` dimension and ``edge_index``
a ``num_edges`` dimension, so one compiled model serves any graph.
"""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass, field

import torch
from torch import Tensor, fx
from torch.export import Dim, ExportedProgram
from torch.export.graph_signature import InputKind

from quantgraph.errors import InputError, UnsupportedOpError

NUM_NODES, NUM_EDGES = "num_nodes", "num_edges"
_EDGE_LEVEL_INPUTS = ("edge_weight", "edge_attr")
_DROPPED_TARGETS = {
    torch.ops.aten._assert_scalar.default,
    torch.ops.aten.sym_constrain_range_for_size.default,
    torch.ops.aten._assert_tensor_metadata.default,
}


@dataclass
class TracedGraph:
    """The IR of a model: the graph module plus the names a backend needs."""

    graph_module: fx.GraphModule
    input_names: list[str]
    dim_names: dict[str, str] = field(default_factory=dict)  # symbol (e.g. "s77") -> "num_nodes"

    def run(self, inputs: dict[str, Tensor]) -> tuple[Tensor, ...]:
        with torch.no_grad():
            return tuple(self.graph_module(*[inputs[n] for n in self.input_names]))


def forward_arg_names(model: torch.nn.Module) -> list[str]:
    """Names of the forward arguments, in order."""
    params = inspect.signature(model.forward).parameters.values()
    return [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def _dynamic_shapes(names: list[str], inputs: dict[str, Tensor]) -> dict[str, dict[int, Dim] | None]:
    num_nodes = Dim(NUM_NODES, min=1)
    num_edges = Dim(NUM_EDGES, min=0)
    n = inputs["x"].shape[0] if "x" in inputs else None
    shapes: dict[str, dict[int, Dim] | None] = {}
    for name in names:
        t = inputs[name]
        if not isinstance(t, Tensor):
            shapes[name] = None
        elif name == "edge_index":
            shapes[name] = {1: num_edges}
        elif name in _EDGE_LEVEL_INPUTS:
            shapes[name] = {0: num_edges}
        elif t.dim() >= 1 and (name in ("x", "batch") or t.shape[0] == n):
            shapes[name] = {0: num_nodes}
        else:
            shapes[name] = None
    return shapes


def trace(
    model: torch.nn.Module, inputs: dict[str, Tensor], *, dynamic: bool = True, training: bool = False
) -> TracedGraph:
    """Export ``model`` on example ``inputs`` keyed by forward-argument name.

    ``training=True`` traces train-mode behaviour (dropout) for quantization-aware training; the
    ``dropout-to-module`` pass then makes it follow the graph module's train/eval mode.
    """
    names = forward_arg_names(model)
    missing = [n for n in names if n not in inputs]
    if missing:
        raise InputError(
            f"the model's forward needs {missing} but the data provides {sorted(inputs)}",
            "pass a dataset with these fields or wrap the model so forward takes (x, edge_index)",
        )
    was_training = model.training
    model.train(training)
    args = tuple(inputs[n] for n in names)
    shapes = _dynamic_shapes(names, inputs) if dynamic else None
    try:
        ep = torch.export.export(model, args, dynamic_shapes=shapes, strict=False)
    except Exception as err:  # torch.export raises many types; report the first line
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UnsupportedOpError(
            f"torch.export could not trace the model: {first}",
            "make forward free of data-dependent Python control flow (see torch.export docs), "
            "or export it yourself and pass the .pt2 file",
        ) from err
    finally:
        model.train(was_training)
    return trace_exported(ep, names)


def trace_exported(ep: ExportedProgram, input_names: list[str] | None = None) -> TracedGraph:
    """Turn an ExportedProgram (e.g. loaded from a ``.pt2`` file) into the IR."""
    ep = ep.run_decompositions({})
    user_inputs = [s.arg.name for s in ep.graph_signature.input_specs if s.kind == InputKind.USER_INPUT]
    gm = _unlift(ep)
    names = input_names or user_inputs
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for node, name in zip(placeholders, names, strict=True):
        node.name = node.target = name
    gm.recompile()
    return TracedGraph(gm, list(names), _symbol_names(gm))


def _set_nested(root: torch.nn.Module, fqn: str, value: Tensor, is_param: bool) -> None:
    *path, leaf = fqn.split(".")
    mod = root
    for part in path:
        if not hasattr(mod, part):
            mod.add_module(part, torch.nn.Module())
        mod = getattr(mod, part)
    if is_param:
        mod.register_parameter(
            leaf, torch.nn.Parameter(value.detach().clone(), requires_grad=value.requires_grad)
        )
    else:
        mod.register_buffer(leaf, value.detach().clone())


def _unlift(ep: ExportedProgram) -> fx.GraphModule:
    graph = ep.graph_module.graph
    root = torch.nn.Module()
    lifted: dict[str, str] = {}
    for spec in ep.graph_signature.input_specs:
        if spec.kind == InputKind.USER_INPUT:
            continue
        if spec.kind not in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
            raise UnsupportedOpError(
                f"exported input {spec.arg.name} of kind {spec.kind.name} is not supported",
                "export a model whose inputs are tensors, parameters and buffers only",
            )
        value = ep.state_dict.get(spec.target)
        if value is None:
            value = ep.constants[spec.target]
        _set_nested(root, spec.target, value, spec.kind == InputKind.PARAMETER)
        lifted[spec.arg.name] = spec.target
    first = next(n for n in graph.nodes if n.op != "placeholder")
    for node in list(graph.nodes):
        if node.op == "placeholder" and node.name in lifted:
            with graph.inserting_before(first), warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # the attribute lives on the new root module
                attr = graph.get_attr(lifted[node.name])
            attr.meta = dict(node.meta)
            node.replace_all_uses_with(attr)
            graph.erase_node(node)
        elif node.op == "call_function" and node.target in _DROPPED_TARGETS:
            graph.erase_node(node)
    gm = fx.GraphModule(root, graph)
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.recompile()
    return gm


def _symbol_names(gm: fx.GraphModule) -> dict[str, str]:
    """Map each symbolic input dimension to a readable name (num_nodes, num_edges)."""
    names: dict[str, str] = {}
    for node in gm.graph.nodes:
        if node.op != "placeholder":
            continue
        val = node.meta.get("val")
        if not isinstance(val, Tensor):
            continue
        for axis, size in enumerate(val.shape):
            if isinstance(size, torch.SymInt):
                sym = str(size)
                if node.name == "edge_index" or node.name in _EDGE_LEVEL_INPUTS:
                    names.setdefault(sym, NUM_EDGES)
                elif axis == 0:
                    names.setdefault(sym, NUM_NODES)
                else:
                    names.setdefault(sym, f"{node.name}_dim{axis}")
    return names
