"""Canonicalization rewrites message passing into IR ops; tag-roles labels every node."""

import torch

from quantgraph.frontend import trace
from quantgraph.ir.ops import GATHER, SCATTER
from quantgraph.ir.roles import Role
from quantgraph.passes import CompileContext, get_pass

from .conftest import PlainIndexAdd, TwoLayer, random_graph

EXPECTED_SCATTERS = {  # (reduce -> count) per 2-layer model; GCN's degree sums are scatters too
    "gcn": {"sum": 4},
    "sage": {"mean": 2},
    "gat": {"sum": 4, "max": 2},
    "gin": {"sum": 2},
}


def _canonical(model, n=20, e=60):
    x, ei = random_graph(n, e)
    traced = trace(model, {"x": x, "edge_index": ei})
    ctx = CompileContext(input_names=traced.input_names, dim_names=traced.dim_names)
    gm = get_pass("canonicalize")(traced.graph_module, ctx).graph_module
    gm = get_pass("tag-roles")(gm, ctx).graph_module
    return gm, ctx


def _scatters(gm):
    counts: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.target == SCATTER:
            counts[node.args[3]] = counts.get(node.args[3], 0) + 1
    return counts


def test_message_passing_becomes_ir_ops_and_semantics_hold(pyg_model):
    kind, model = pyg_model
    gm, ctx = _canonical(model)
    assert _scatters(gm) == EXPECTED_SCATTERS[kind]
    assert not any(
        n.target in (torch.ops.aten.scatter_add.default, torch.ops.aten.index_select.default)
        for n in gm.graph.nodes
    )
    assert any(n.target == GATHER for n in gm.graph.nodes)
    x, ei = random_graph(31, 97, seed=5)
    torch.testing.assert_close(gm(x, ei)[0], model(x, ei), atol=1e-5, rtol=1e-5)


def test_index_add_is_recognised():
    gm, _ = _canonical(PlainIndexAdd().eval())
    assert _scatters(gm) == {"sum": 1}


def _roles_by_layer(gm):
    out: dict[tuple[str, int | None], int] = {}
    for n in gm.graph.nodes:
        if "qg_role" in n.meta:
            key = (n.meta["qg_role"].value, n.meta["qg_layer"])
            out[key] = out.get(key, 0) + 1
    return out


def test_gcn_roles_per_layer():
    torch.manual_seed(0)
    gm, ctx = _canonical(TwoLayer("gcn").eval())
    roles = _roles_by_layer(gm)
    for layer in (0, 1):
        for role in ("linear_out", "edge_weight", "message", "aggregation", "weight", "bias"):
            assert roles.get((role, layer)) == 1, (role, layer, roles)
    assert roles[("input", None)] == 1
    assert ctx.report["num_layers"] == 2
    out = next(n for n in gm.graph.nodes if n.op == "output").all_input_nodes[0]
    assert out.meta["qg_role"] == Role.OUTPUT
    # the degree computation depends on the structure only
    degree_scatters = [
        n for n in gm.graph.nodes if n.target == SCATTER and n.meta["qg_role"] == Role.STRUCTURE
    ]
    assert len(degree_scatters) == 2


def test_sage_mean_and_gat_attention_roles():
    torch.manual_seed(0)
    sage, _ = _canonical(TwoLayer("sage").eval())
    assert all(n.meta["qg_role"] == Role.AGGREGATION for n in sage.graph.nodes if n.target == SCATTER)
    gat, _ = _canonical(TwoLayer("gat").eval())
    roles = _roles_by_layer(gat)
    assert roles.get(("attention", 0), 0) >= 1 and roles.get(("edge_weight", 0)) == 1


class _Copies(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(8, 4)

    def forward(self, x, edge_index):
        h = torch.nn.functional.dropout(x.clone(), p=0.0, training=self.training).detach()
        return self.lin(h)


def test_identity_ops_are_removed():
    gm, _ = _canonical(_Copies().train())
    targets = {n.target for n in gm.graph.nodes}
    assert not targets & {torch.ops.aten.clone.default, torch.ops.aten.detach.default}
    linear = next(n for n in gm.graph.nodes if n.target == torch.ops.aten.linear.default)
    assert linear.args[0].name == "x"


def test_training_mode_dropout_carries_features_to_the_next_layer():
    """A dropout between layers (training-mode trace) must not make the next layer's messages look like
    graph structure: the QAT policies trace in training mode and would leave them unquantized."""
    from quantgraph.models import build_model

    x, ei = random_graph(30, 90)
    for arch in ("gin", "sage", "gcn"):
        roles = {}
        for training in (False, True):
            torch.manual_seed(0)
            traced = trace(build_model(arch, x.shape[1], 3), {"x": x, "edge_index": ei}, training=training)
            ctx = CompileContext(input_names=traced.input_names, dim_names=traced.dim_names)
            gm = get_pass("canonicalize")(traced.graph_module, ctx).graph_module
            gm = get_pass("tag-roles")(gm, ctx).graph_module
            roles[training] = sorted(
                (n.meta["qg_role"].value, n.meta["qg_layer"]) for n in gm.graph.nodes if n.target == SCATTER
            )
            dropouts = [n for n in gm.graph.nodes if n.target == torch.ops.aten.native_dropout.default]
            assert all(n.meta["qg_role"] == Role.OTHER for n in dropouts)  # not a quantization point
        assert roles[True] == roles[False], arch
        assert ("aggregation", 1) in roles[True], arch
