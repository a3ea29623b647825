"""Degree-Quant with a range per in-degree bucket (``--option group_roles=...``): the per-group
``FakeQuantize`` learns each bucket's range from that bucket's rows only, and the compiled model exports
the per-bucket parameters to ONNX with the IR's integers on graphs of other sizes."""

from __future__ import annotations

import pytest
import torch

from quantgraph.backends.verify import compare_integers, ort_session, run_onnx
from quantgraph.compiler import compile as qg_compile
from quantgraph.data import make_csbm
from quantgraph.errors import InputError
from quantgraph.ir.fake_quant import FakeQuantize
from quantgraph.ir.qspec import Granularity, QParams, QuantSpec
from quantgraph.models import build_model
from quantgraph.training import train_node_classifier

from .conftest import HOST_EXACT

GROUPED = QuantSpec(bits=8, granularity=Granularity.PER_GROUP, axis=0, group_index="b", num_groups=3)
ROLES = "linear_out,aggregation,update,output"


def test_each_group_tracks_its_own_rows():
    fq = FakeQuantize(GROUPED).train()
    x = torch.tensor([[1.0, -1.0], [2.0, 0.5], [10.0, -4.0], [20.0, 3.0]])
    groups = torch.tensor([0, 0, 2, 2])
    fq(x, groups=groups)
    assert fq.hi.tolist() == [2.0, 0.0, 20.0] and fq.lo.tolist() == [-1.0, 0.0, -4.0]
    assert fq.group_seen.tolist() == [True, False, True]
    fq(torch.tensor([[5.0, -2.0]]), groups=torch.tensor([1]))  # group 1 first seen: its range is taken
    fq(torch.tensor([[3.0, -3.0]]), groups=torch.tensor([0]))  # group 0: running min/max
    assert fq.hi.tolist() == [3.0, 5.0, 20.0] and fq.lo.tolist() == [-3.0, -2.0, -4.0]


def test_rows_use_their_groups_scale_and_protected_rows_do_not_count():
    fq = FakeQuantize(GROUPED).train()
    x = torch.tensor([[0.3, -0.2], [100.0, 1.0], [8.0, -6.0]])
    groups = torch.tensor([0, 0, 1])
    protect = torch.tensor([False, True, False])
    out = fq(x, protect, groups)
    assert fq.hi[0].item() == pytest.approx(0.3)  # the protected outlier did not widen group 0
    torch.testing.assert_close(out[1], x[1])
    fq.eval()
    qp = fq.qparams()
    assert qp.scale.shape == (3,) and qp.scale[1] > 10 * qp.scale[0]
    small = fq(torch.tensor([[0.25, 0.25]]), groups=torch.tensor([0]))
    coarse = fq(torch.tensor([[0.25, 0.25]]), groups=torch.tensor([1]))
    assert (small - 0.25).abs().max() < qp.scale[0] and not torch.equal(small, coarse)


def test_grouped_quantizer_needs_the_group_index():
    with pytest.raises(InputError, match="group index"):
        FakeQuantize(GROUPED).train()(torch.ones(2, 2))


def test_calibrated_group_ranges_are_kept():
    lo, hi = torch.tensor([-1.0, -2.0, -3.0]), torch.tensor([1.0, 2.0, 3.0])
    fq = FakeQuantize(GROUPED, QParams.from_range(lo, hi, GROUPED))
    assert fq.group_seen.all()
    torch.testing.assert_close(fq.hi, hi, atol=0.02, rtol=0)


@pytest.fixture(scope="module")
def gin_and_graph():
    data = make_csbm(num_nodes=400, num_features=16, power=2.0, seed=7)
    torch.manual_seed(0)
    model = build_model("gin", 16, data.num_classes)
    train_node_classifier(model, data, epochs=30, seed=0)
    return model, data


def test_degree_quant_per_bucket_ranges_export_with_the_irs_integers(gin_and_graph, tmp_path):
    model, data = gin_and_graph
    options = {"epochs": 4, "seed": 0, "group_roles": ROLES, "degree_boundaries": "2,4,8", **HOST_EXACT}
    compiled = qg_compile(model, data, policy="degree-quant", bits=8, options=options)
    points = compiled.report["quantization"].values()
    grouped = [q for q in points if q["granularity"] == "per_group"]
    assert {q["role"] for q in grouped} == set(ROLES.split(","))
    assert all(len(q["scale"]) == 4 for q in grouped)
    assert any(len(set(q["scale"])) > 1 for q in grouped)  # buckets really have their own ranges
    assert compiled.report["degree_buckets"]["groups"] == 4
    assert compiled.export_onnx(tmp_path / "dqb.onnx", data)["argmax_agreement"] == 1.0
    onnx_model = compiled.to_onnx()
    session = ort_session(onnx_model)
    for n in (50, 700):
        graph = make_csbm(num_nodes=n, num_features=16, power=2.0, seed=n)
        ints = compare_integers(onnx_model, compiled, graph.inputs())
        assert ints["equal"] and ints["compared"] >= 4, (n, ints)
        assert torch.allclose(run_onnx(session, graph.inputs()), compiled.run(graph.inputs()), atol=1e-5)


def test_plain_degree_quant_has_no_buckets(gin_and_graph):
    model, data = gin_and_graph
    compiled = qg_compile(model, data, policy="degree-quant", bits=8, options={"epochs": 1})
    assert all(q["granularity"] != "per_group" for q in compiled.report["quantization"].values())
    assert "degree_buckets" not in compiled.report
