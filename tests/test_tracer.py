"""Frontend: tracing keeps node/edge counts symbolic and reproduces the eager model."""

import pytest
import torch

from quantgraph.errors import InputError, UnsupportedOpError
from quantgraph.frontend import trace, trace_exported

from .conftest import PlainIndexAdd, random_graph


def test_trace_matches_eager_on_other_graph_sizes(pyg_model):
    _, model = pyg_model
    x, ei = random_graph(20, 60)
    traced = trace(model, {"x": x, "edge_index": ei})
    assert traced.input_names == ["x", "edge_index"]
    assert sorted(traced.dim_names.values()) == ["num_edges", "num_nodes"]
    for n, e in [(7, 3), (33, 150), (5, 0)]:
        x2, ei2 = random_graph(n, e, seed=n)
        out = traced.run({"x": x2, "edge_index": ei2})[0]
        torch.testing.assert_close(out, model(x2, ei2), atol=1e-5, rtol=1e-5)


def test_parameters_are_unlifted_to_get_attr(pyg_model):
    _, model = pyg_model
    x, ei = random_graph(10, 30)
    gm = trace(model, {"x": x, "edge_index": ei}).graph_module
    placeholders = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
    assert placeholders == ["x", "edge_index"]
    attrs = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    assert attrs <= {name for name, _ in model.named_parameters()} | {
        name for name, _ in model.named_buffers()
    }
    assert any(t.endswith("weight") for t in attrs)


def test_plain_pytorch_model_traces():
    model = PlainIndexAdd().eval()
    x, ei = random_graph(12, 40)
    traced = trace(model, {"x": x, "edge_index": ei})
    x2, ei2 = random_graph(30, 90, seed=3)
    torch.testing.assert_close(traced.run({"x": x2, "edge_index": ei2})[0], model(x2, ei2))


def test_exported_program_round_trip(tmp_path):
    model = PlainIndexAdd().eval()
    x, ei = random_graph(12, 40)
    ep = torch.export.export(
        model,
        (x, ei),
        dynamic_shapes={"x": {0: torch.export.Dim("n")}, "edge_index": {1: torch.export.Dim("e")}},
    )
    torch.export.save(ep, tmp_path / "m.pt2")
    traced = trace_exported(torch.export.load(tmp_path / "m.pt2"))
    assert traced.input_names == ["x", "edge_index"]
    x2, ei2 = random_graph(25, 70, seed=4)
    torch.testing.assert_close(traced.run({"x": x2, "edge_index": ei2})[0], model(x2, ei2))


def test_missing_forward_argument_is_reported():
    model = PlainIndexAdd().eval()
    with pytest.raises(InputError, match="edge_index"):
        trace(model, {"x": torch.randn(4, 8)})


class _DataDependent(torch.nn.Module):
    def forward(self, x, edge_index):
        if x.sum() > 0:  # data-dependent Python control flow cannot be traced
            return x
        return -x


def test_untraceable_model_gives_one_clear_error():
    x, ei = random_graph(6, 10)
    with pytest.raises(UnsupportedOpError, match="torch.export could not trace"):
        trace(_DataDependent(), {"x": x, "edge_index": ei})
