"""A²Q's quantization points: per-node learned bits on the node features entering each layer.

As in the official code (weihai-98/A-2Q): the node features a layer reads (the rows its linear transform
or aggregation consumes: the model input ``x`` for the first layer, the previous layer's output, before
dropout, for the next) get one learned ``(s_i, b_i)`` per node (``PER_NODE``, quantizer ``a2q``) or, with
``a2q_nns``, the Nearest-Neighbour Strategy's groups (quantizer ``a2q-nns``); weights get per-output-channel
scales at fixed bits; linear outputs ``XW`` per-column scales (``axis=1``) at fixed bits. Attention (GAT), as
the official ``qGATConv``: the attention vectors ``(1, heads, C)`` get one scale per head at
``a2q_attention_bits``, and so do the attention logits, the first per-edge attention value of each layer
(``a_src·x_j + a_dst·x_i``, ``[E, heads]``, before the leaky ReLU). Nothing else is quantized (softmax
and aggregation outputs stay float).

The raw input features: the official GCN/GAT leave them float; here they are quantized like any other
layer's features unless ``a2q_quantize_input=false`` (binary bag-of-words features then settle at 2 bits,
exact). The initial bits are ``a2q_feature_bits`` (4), one more for non-negative features (post-ReLU, or
an input without negative values), whose sign bit is unused.
"""

from __future__ import annotations

import torch
from torch import fx, nn

from quantgraph.errors import InputError
from quantgraph.ir.meta import LAYER_KEY, QSPEC_KEY, ROLE_KEY, ROWS_KEY
from quantgraph.ir.qspec import Granularity, QuantSpec
from quantgraph.ir.roles import Role
from quantgraph.options import Option
from quantgraph.passes.infra import CompileContext, PassBase, PassResult, node_value_is_float
from quantgraph.passes.registry import register_pass

aten = torch.ops.aten

A2Q_OPTIONS = (
    Option("a2q_nns", bool, False, "Nearest-Neighbour Strategy: learned groups chosen per node (any graph)"),
    Option("a2q_groups", int, 1000, "NNS: number of (scale, bits) groups per layer", minimum=1),
    Option("a2q_feature_bits", int, 4, "initial bits of node features (+1 when non-negative)", minimum=2),
    Option("a2q_weight_bits", int, 4, "fixed bits of weights (per output channel scales)", minimum=2),
    Option("a2q_xw_bits", int, 4, "fixed bits of linear outputs XW (per column scales)", minimum=2),
    Option("a2q_quantize_input", bool, True, "quantize the model's input features per node too"),
    Option("a2q_attention_bits", int, 4, "fixed bits of attention vectors and logits (per head)", minimum=2),
)
NON_NEGATIVE_OPS = (aten.relu.default,)


def _skip_dropout(gm: fx.GraphModule, node: fx.Node) -> fx.Node:
    while node.op == "call_module" and isinstance(gm.get_submodule(str(node.target)), nn.Dropout):
        node = node.args[0]
    return node


def _layer(node: fx.Node) -> int:
    layer = node.meta.get(LAYER_KEY)
    return -1 if layer is None or node.op == "placeholder" else int(layer)


def layer_feature_inputs(gm: fx.GraphModule, input_name: str = "x") -> list[fx.Node]:
    """Node-row float values read by a later layer (the features entering each layer), dropout skipped."""
    found: dict[str, fx.Node] = {}
    for node in gm.graph.nodes:
        source = _skip_dropout(gm, node) if node.op == "call_module" else node
        if source.meta.get(ROLE_KEY) in (Role.STRUCTURE, Role.PREPROCESS) or source.op == "output":
            continue  # (preprocessing, e.g. row normalisation: its result, role INPUT, is the input point)
        if source.op == "placeholder" and source.name != input_name:
            continue
        if source.op != "placeholder" and source.meta.get(ROWS_KEY) != "node":
            continue
        if not node_value_is_float(source, gm):
            continue
        readers = [
            u
            for u in node.users
            if u.meta.get(ROLE_KEY) not in (Role.STRUCTURE, None) and u.meta.get(LAYER_KEY) is not None
        ]
        if any(int(u.meta[LAYER_KEY]) > _layer(source) for u in readers):
            found.setdefault(source.name, source)
    return list(found.values())


def _non_negative(node: fx.Node, ctx: CompileContext, gm: fx.GraphModule) -> bool:
    if node.op == "placeholder":
        return all(bool((g[node.name] >= 0).all()) for g in ctx.calibration_data if node.name in g)
    if node.meta.get(ROLE_KEY) == Role.INPUT:  # preprocessed input features: their values on the graphs
        from quantgraph.quant_error import capture

        return all(
            bool((capture(gm, ctx.input_names, g, {node.name})[node.name] >= 0).all())
            for g in ctx.calibration_data
        )
    return node.target in NON_NEGATIVE_OPS


@register_pass
class A2QAnnotatePass(PassBase):
    """Mark A²Q's points: per-node (or NNS) features entering each layer, weights, linear outputs."""

    name = "a2q-annotate"
    description = "A²Q points: learned per-node bits on layer input features, fixed-bit weights and XW"
    options = A2Q_OPTIONS

    def requires(self, gm: fx.GraphModule, ctx: CompileContext) -> None:
        if not any(ROLE_KEY in n.meta for n in gm.graph.nodes):
            raise InputError("nodes have no roles", "run the 'tag-roles' pass before 'a2q-annotate'")

    def call(self, gm: fx.GraphModule, ctx: CompileContext) -> PassResult:
        nns, groups = self.option(ctx, "a2q_nns"), self.option(ctx, "a2q_groups")
        fbits = self.option(ctx, "a2q_feature_bits")

        def per_channel(option: str, axis: int) -> QuantSpec:  # A²Q's learned scales, fixed bits
            return QuantSpec(
                bits=self.option(ctx, option),
                symmetric=True,
                granularity=Granularity.PER_CHANNEL,
                axis=axis,
                quantizer="a2q",
            )

        weight = per_channel("a2q_weight_bits", 0)
        xw = per_channel("a2q_xw_bits", 1)
        per_head = per_channel("a2q_attention_bits", 1)
        features = layer_feature_inputs(gm)
        if not self.option(ctx, "a2q_quantize_input"):
            features = [n for n in features if n.op != "placeholder" and n.meta.get(ROLE_KEY) != Role.INPUT]
        logits = attention_logits(gm)
        marked: dict[str, str] = {}
        for node in features:
            bits = min(fbits + int(_non_negative(node, ctx, gm)), 8)
            if nns:
                spec = QuantSpec(bits=bits, symmetric=True, num_groups=groups, quantizer="a2q-nns")
            else:
                spec = QuantSpec(
                    bits=bits, symmetric=True, granularity=Granularity.PER_NODE, axis=0, quantizer="a2q"
                )
            node.meta[QSPEC_KEY] = spec
            marked[node.name] = "features"
        for node in gm.graph.nodes:
            if node.name in marked or not node_value_is_float(node, gm):
                continue
            role = node.meta.get(ROLE_KEY)
            if role == Role.WEIGHT and node.op == "get_attr" and _attr_dim(gm, node) == 2:
                node.meta[QSPEC_KEY] = weight
                marked[node.name] = "weight"
            elif role == Role.WEIGHT and node.op == "get_attr" and _attr_dim(gm, node) == 3:
                node.meta[QSPEC_KEY] = per_head  # attention vector (1, heads, C)
                marked[node.name] = "attention"
            elif node in logits:
                node.meta[QSPEC_KEY] = per_head
                marked[node.name] = "attention"
            elif role == Role.LINEAR_OUT and node.meta.get(ROWS_KEY) == "node":
                node.meta[QSPEC_KEY] = xw
                marked[node.name] = "xw"
        if not any(kind == "features" for kind in marked.values()):
            raise InputError(
                "A²Q found no node features entering a layer",
                "the model needs node-row inputs named x read by its layers (see docs/architecture.md)",
            )
        ctx.report["a2q_points"] = marked
        ctx.report["quantization_points"] = len(marked)
        return PassResult(gm, True)


def _attr_dim(gm: fx.GraphModule, node: fx.Node) -> int:
    from quantgraph.passes.infra import attr_tensor

    value = attr_tensor(gm, str(node.target))
    return value.dim() if isinstance(value, torch.Tensor) else -1


def attention_logits(gm: fx.GraphModule) -> set[fx.Node]:
    """The first per-edge attention value of each layer with a heads axis (``[E, heads]``): GAT's logits."""
    first: dict[int, fx.Node] = {}
    for node in gm.graph.nodes:
        if node.meta.get(ROLE_KEY) != Role.ATTENTION or node.meta.get(LAYER_KEY) is None:
            continue
        val = node.meta.get("val")
        if isinstance(val, torch.Tensor) and val.dim() == 2 and val.is_floating_point():
            first.setdefault(int(node.meta[LAYER_KEY]), node)
    return set(first.values())
