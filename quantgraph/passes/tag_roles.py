"""Tag every IR node with its role (``meta[ROLE_KEY]``) and layer index (``meta[LAYER_KEY]``).

Roles follow the data flow: values that depend only on the graph structure are STRUCTURE; linear
outputs, gathered rows, messages (what is scattered), per-edge weights that multiply messages,
aggregation outputs and node updates are told apart. The layer is the message-passing module the node
belongs to (from ``nn_module_stack``), else the number of aggregations upstream of it.

Input preprocessing (a module whose class sets ``qg_preprocess = True``, e.g. the zoo's row normalisation)
is part of the traced model but not of what is quantized: its nodes get the PREPROCESS role, the raw
feature input too when only the preprocessing reads it, and the preprocessing's result (the tensor entering
the first layer) gets the INPUT role, so the input quantization point sits on the preprocessed features.
"""

from __future__ import annotations

import importlib
import operator

import torch
from torch import fx

from quantgraph.ir.meta import LAYER_KEY, ROLE_KEY, ROWS_KEY
from quantgraph.ir.ops import GATHER, SCATTER
from quantgraph.ir.roles import Role
from quantgraph.passes.infra import CompileContext, PassBase, PassResult, attr_tensor
from quantgraph.passes.registry import register_pass

aten = torch.ops.aten
_LINEAR = {aten.linear.default, aten.mm.default, aten.matmul.default, aten.addmm.default, aten.bmm.default}
_MUL = {aten.mul.Tensor}
# Ops whose output data does not depend on their tensor input's values (only on its shape/dtype).
_SHAPE_ONLY = {
    aten.sym_size.int,
    aten.new_zeros.default,
    aten.new_ones.default,
    aten.new_full.default,
    aten.new_empty.default,
    aten.zeros_like.default,
    aten.ones_like.default,
    aten.full_like.default,
    aten.empty_like.default,
}


def _weight_arg_index(node: fx.Node) -> int | None:
    if node.target in (aten.linear.default, aten.mm.default, aten.matmul.default, aten.bmm.default):
        return 1
    if node.target == aten.addmm.default:
        return 2
    return None


def _is_dropout(node: fx.Node) -> bool:
    """A training-mode dropout or the value it returns (``native_dropout(x)[0]``); its mask is not."""
    if node.target in (aten.native_dropout.default, aten.dropout.default):
        return True
    source = node.args[0] if node.target == operator.getitem and node.args else None
    return isinstance(source, fx.Node) and source.target == aten.native_dropout.default and node.args[1] == 0


def _inputs(node: fx.Node) -> list[fx.Node]:
    return list(node.all_input_nodes)


def _class_of(path_type: str) -> type | None:
    """The class a ``nn_module_stack`` type name refers to, or None where it cannot be imported."""
    module_name, _, cls_name = path_type.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), cls_name)
    except Exception:  # unknown or local classes
        return None
    return cls if isinstance(cls, type) else None


def _is_message_passing_class(path_type: str) -> bool:
    cls = _class_of(path_type)
    if cls is None:
        return False
    from torch_geometric.nn import MessagePassing

    return issubclass(cls, MessagePassing)


def _in_preprocessing(node: fx.Node) -> bool:
    """Whether ``node`` runs inside a module whose class declares ``qg_preprocess = True``."""
    stack = node.meta.get("nn_module_stack") or {}
    return any(
        path and getattr(_class_of(str(type_name)), "qg_preprocess", False) is True
        for path, type_name in stack.values()
    )


def _module_path(node: fx.Node, layer_paths: list[str]) -> str | None:
    stack = node.meta.get("nn_module_stack") or {}
    for path, _type in stack.values():
        if path in layer_paths:
            return path
    if node.op == "get_attr":
        for path in layer_paths:
            if node.target.startswith(path + "."):
                return path
    return None


def _layer_paths(gm: fx.GraphModule) -> list[str]:
    """Module paths that contain a scatter, in graph order: one per message-passing layer."""
    paths: list[str] = []
    for node in gm.graph.nodes:
        if node.target != SCATTER:
            continue
        entries = list((node.meta.get("nn_module_stack") or {}).values())
        chosen = None
        for path, type_name in entries:  # outermost first: prefer the PyG layer
            if path and _is_message_passing_class(str(type_name)):
                chosen = path
        if chosen is None:
            non_root = [p for p, _ in entries if p]
            chosen = non_root[0] if non_root else None
        if chosen is not None and chosen not in paths:
            paths.append(chosen)
    return paths


@register_pass
class TagRolesPass(PassBase):
    """Tag nodes with roles and layer indices; later passes select quantization points by role."""

    name = "tag-roles"
    description = "tag each node's role (input, weight, message, aggregation, ...) and its layer index"

    def call(self, gm: fx.GraphModule, ctx: CompileContext) -> PassResult:
        depends_on_features: dict[fx.Node, bool] = {}
        edge_level: dict[fx.Node, bool] = {}
        scatter_srcs = {n.args[0] for n in gm.graph.nodes if n.target == SCATTER}
        roles: dict[fx.Node, Role] = {}

        for node in gm.graph.nodes:
            ins = _inputs(node)
            if node.op == "placeholder":
                val = node.meta.get("val")
                is_float = isinstance(val, torch.Tensor) and val.is_floating_point()
                depends_on_features[node] = is_float
                edge_level[node] = node.name in ("edge_weight", "edge_attr")
                roles[node] = Role.INPUT if is_float else Role.STRUCTURE
                continue
            if node.op == "get_attr":
                t = attr_tensor(gm, node.target)
                depends_on_features[node] = isinstance(t, torch.nn.Parameter)
                edge_level[node] = False
                roles[node] = self._param_role(node, t)
                continue
            if node.op == "output":
                continue
            if _is_dropout(node):  # passes its input on: not a quantization point, but it carries features
                source = node.args[0]
                depends_on_features[node] = depends_on_features.get(source, False)
                edge_level[node] = edge_level.get(source, False)
                roles[node] = Role.OTHER
                continue
            is_tensor = isinstance(node.meta.get("val"), torch.Tensor) or node.target in (GATHER, SCATTER)
            data_dependent = is_tensor and node.target not in _SHAPE_ONLY
            depends_on_features[node] = data_dependent and any(depends_on_features.get(i, False) for i in ins)
            if node.target == GATHER:
                edge_level[node] = True
            elif node.target == SCATTER:
                edge_level[node] = False
            else:
                edge_level[node] = any(edge_level.get(i, False) for i in ins)
            roles[node] = self._role(node, depends_on_features[node], edge_level[node], scatter_srcs)

        self._tag_edge_weights(gm, roles, edge_level, scatter_srcs, depends_on_features)
        entering = self._tag_preprocessing(gm, roles, depends_on_features)
        out = next(n for n in gm.graph.nodes if n.op == "output")
        for value in out.all_input_nodes:
            if depends_on_features.get(value):
                roles[value] = Role.OUTPUT
        layers = self._layers(gm)
        num_nodes = self._num_nodes_symbol(gm)
        for node, role in roles.items():
            node.meta[ROLE_KEY] = role
            node.meta[LAYER_KEY] = None if node in entering else layers.get(node)
            node.meta[ROWS_KEY] = self._rows(node, edge_level.get(node, False), num_nodes)
        ctx.report["roles"] = {
            r.value: sum(1 for v in roles.values() if v == r) for r in Role if r in roles.values()
        }
        ctx.report["num_layers"] = max((v for v in layers.values() if v is not None), default=-1) + 1
        return PassResult(gm, True)

    @staticmethod
    def _num_nodes_symbol(gm: fx.GraphModule) -> str | None:
        x = next((n for n in gm.graph.nodes if n.op == "placeholder" and n.name == "x"), None)
        val = x.meta.get("val") if x is not None else None
        return str(val.shape[0]) if isinstance(val, torch.Tensor) and val.dim() else None

    @staticmethod
    def _rows(node: fx.Node, edge: bool, num_nodes: str | None) -> str:
        """What the first dimension of the value indexes: "node", "edge" or "other"."""
        if edge:
            return "edge"
        val = node.meta.get("val")
        if (
            isinstance(val, torch.Tensor)
            and val.dim()
            and num_nodes is not None
            and str(val.shape[0]) == num_nodes
        ):
            return "node"
        return "other"

    @staticmethod
    def _param_role(node: fx.Node, t: torch.Tensor) -> Role:
        if not isinstance(t, torch.nn.Parameter) or not t.is_floating_point():
            return Role.STRUCTURE
        for user in node.users:
            idx = _weight_arg_index(user)
            if idx is not None and len(user.args) > idx and user.args[idx] is node:
                return Role.WEIGHT
            if user.target == aten.linear.default and len(user.args) > 2 and user.args[2] is node:
                return Role.BIAS
            if user.target == aten.addmm.default and user.args[0] is node:
                return Role.BIAS
        if t.dim() == 1 and all(u.target in (aten.add.Tensor,) for u in node.users):
            return Role.BIAS
        return Role.WEIGHT

    @staticmethod
    def _role(node: fx.Node, feat: bool, edge: bool, scatter_srcs: set[fx.Node]) -> Role:
        if not feat:
            return Role.STRUCTURE
        val = node.meta.get("val")
        if isinstance(val, torch.Tensor) and not val.is_floating_point():
            return Role.OTHER
        if node.target in _LINEAR:
            return Role.LINEAR_OUT
        if node in scatter_srcs:
            return Role.MESSAGE
        if node.target == GATHER:
            return Role.GATHER
        if node.target == SCATTER:
            return Role.AGGREGATION
        if edge:
            return Role.ATTENTION
        return Role.UPDATE

    @staticmethod
    def _tag_preprocessing(gm: fx.GraphModule, roles: dict, features: dict) -> set[fx.Node]:
        """PREPROCESS inside preprocessing modules; INPUT on their results. Returns those results."""
        inside = {
            n for n in gm.graph.nodes if n.op == "call_function" and features.get(n) and _in_preprocessing(n)
        }
        if not inside:
            return set()
        for node in inside:
            roles[node] = Role.PREPROCESS
        entering = {
            n for n in inside if any(u not in inside and u.target not in _SHAPE_ONLY for u in n.users)
        }
        for node in entering:
            if isinstance(node.meta.get("val"), torch.Tensor) and node.meta["val"].is_floating_point():
                roles[node] = Role.INPUT
        for node in gm.graph.nodes:  # a raw input that only the preprocessing reads is not quantized
            readers = [u for u in node.users if u.target not in _SHAPE_ONLY]
            if node.op == "placeholder" and roles.get(node) == Role.INPUT and readers:
                if all(u in inside for u in readers):
                    roles[node] = Role.PREPROCESS
        return entering

    @staticmethod
    def _tag_edge_weights(
        gm: fx.GraphModule, roles: dict, edge_level: dict, scatter_srcs: set, features: dict
    ) -> None:
        """In per-edge products feeding a scatter, the operand with a trailing size-1 dim is an edge weight."""
        feeds_scatter: set[fx.Node] = set(scatter_srcs)
        for node in reversed(list(gm.graph.nodes)):
            if node in feeds_scatter:
                feeds_scatter.update(i for i in _inputs(node) if edge_level.get(i))
        for node in feeds_scatter:
            if node.target not in _MUL or len(node.args) != 2 or not features.get(node):
                continue
            for operand, other in (node.args, node.args[::-1]):
                if not isinstance(operand, fx.Node) or not edge_level.get(operand):
                    continue
                a, b = operand.meta.get("val"), getattr(other, "meta", {}).get("val")
                if not isinstance(a, torch.Tensor) or not a.is_floating_point():
                    continue
                narrower = a.dim() == 1 or (
                    a.shape[-1] == 1 and isinstance(b, torch.Tensor) and b.shape[-1] != 1
                )
                if narrower and roles.get(operand) not in (Role.GATHER, Role.MESSAGE):
                    roles[operand] = Role.EDGE_WEIGHT

    @staticmethod
    def _layers(gm: fx.GraphModule) -> dict[fx.Node, int | None]:
        paths = _layer_paths(gm)
        layers: dict[fx.Node, int | None] = {}
        upstream_aggs: dict[fx.Node, int] = {}
        for node in gm.graph.nodes:
            ins = _inputs(node)
            upstream_aggs[node] = max((upstream_aggs[i] + (i.target == SCATTER) for i in ins), default=0)
            path = _module_path(node, paths)
            if path is not None:
                layers[node] = paths.index(path)
            elif node.op in ("placeholder", "output"):
                layers[node] = None
            else:
                known = [layers[i] for i in ins if layers.get(i) is not None]
                layers[node] = max(known) if known and paths else upstream_aggs[node]
        return layers
