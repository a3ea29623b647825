"""Pass infrastructure, registry, annotation, observers, calibration and Q/DQ insertion."""

import pytest
import torch
from torch import fx

from quantgraph.errors import InputError, PassError
from quantgraph.frontend import trace
from quantgraph.ir.ops import DEQUANTIZE, QUANTIZE
from quantgraph.ir.qspec import Granularity, QParams, QuantSpec
from quantgraph.passes import (
    CompileContext,
    PassBase,
    PassManager,
    PassResult,
    Sequential,
    get_pass,
    load_pass,
)
from quantgraph.passes.observers import MinMaxObserver, PercentileObserver, make_observer
from quantgraph.policies import get_policy

from .conftest import TwoLayer, random_graph


class CountingPass(PassBase):
    name = "counting"
    description = "counts nodes"

    def call(self, gm, ctx):
        ctx.report["counted"] = len(gm.graph.nodes)
        return PassResult(gm, False)


class FailingPass(PassBase):
    name = "failing"

    def call(self, gm, ctx):
        raise RuntimeError("boom")


class NeedsRoles(PassBase):
    name = "needs-roles"

    def requires(self, gm, ctx):
        if not any("qg_role" in n.meta for n in gm.graph.nodes):
            raise InputError("no roles", "run tag-roles first")

    def call(self, gm, ctx):
        return PassResult(gm, False)


def _traced(kind="gcn"):
    torch.manual_seed(0)
    model = TwoLayer(kind).eval()
    x, ei = random_graph(24, 80)
    traced = trace(model, {"x": x, "edge_index": ei})
    ctx = CompileContext(
        input_names=traced.input_names,
        dim_names=traced.dim_names,
        calibration_data=[{"x": x, "edge_index": ei}],
    )
    return model, traced.graph_module, ctx, (x, ei)


def test_pass_manager_records_and_names_failing_pass():
    _, gm, ctx, _ = _traced()
    pm = PassManager([get_pass("canonicalize"), CountingPass()])
    pm(gm, ctx)
    assert [r.name for r in pm.records] == ["canonicalize", "counting"]
    assert ctx.report["counted"] > 0
    with pytest.raises(PassError, match=r"pass 'failing' \(after 'counting'\) failed: RuntimeError: boom"):
        PassManager([CountingPass(), FailingPass()])(gm, ctx)


def test_requires_is_checked_before_call():
    _, gm, ctx, _ = _traced()
    with pytest.raises(InputError, match=r"pass 'needs-roles' \(after '<start>'\) failed: no roles"):
        PassManager([NeedsRoles()])(gm, ctx)


def test_sequential_and_load_pass():
    _, gm, ctx, _ = _traced()
    result = Sequential([get_pass("canonicalize"), get_pass("tag-roles")])(gm, ctx)
    assert result.modified
    assert isinstance(load_pass("tests.test_passes:CountingPass"), CountingPass)
    with pytest.raises(InputError, match="not of the form module:Class"):
        load_pass("nocolon")
    with pytest.raises(InputError, match="no attribute"):
        load_pass("tests.test_passes:Missing")
    with pytest.raises(InputError, match="unknown pass 'nope'"):
        get_pass("nope")


def test_unknown_policy_and_bits_are_rejected():
    with pytest.raises(InputError, match="unknown policy 'nope'"):
        get_policy("nope")
    for bits in (1, 9, 16):
        with pytest.raises(InputError, match=f"bits={bits}"):
            get_policy("minmax").build_qconfig(bits)


def test_observers_minmax_percentile_and_per_channel():
    spec = QuantSpec(bits=8)
    obs = MinMaxObserver(spec)
    obs.update(torch.tensor([-1.0, 2.0]))
    obs.update(torch.tensor([3.0]))
    assert (obs.lo.item(), obs.hi.item()) == (-1.0, 3.0)
    x = torch.cat([torch.linspace(0, 1, 10000), torch.tensor([100.0])])
    perc = PercentileObserver(QuantSpec(bits=8, observer="percentile", observer_args=(("tail", 0.001),)))
    perc.update(x)
    assert perc.hi.item() < 1.01  # the outlier is cut off
    ch = make_observer(QuantSpec(bits=8, symmetric=True, granularity=Granularity.PER_CHANNEL, axis=0))
    ch.update(torch.tensor([[1.0, -2.0], [0.5, 0.25]]))
    qp = ch.qparams()
    torch.testing.assert_close(qp.scale, torch.tensor([2.0 / 127, 0.5 / 127]))


def test_qparams_range_contains_zero_and_affine_zero_point():
    spec = QuantSpec(bits=4, signed=True)
    qp = QParams.from_range(torch.tensor(2.0), torch.tensor(5.0), spec)  # widened to [0, 5]
    assert qp.zero_point.item() == -8
    zero = torch.ops.quantgraph.quantize(torch.tensor(0.0), qp.scale, qp.zero_point, qp.qmin, qp.qmax, 0)
    assert torch.ops.quantgraph.dequantize(zero, qp.scale, qp.zero_point, 0).item() == 0.0


def test_minmax_pipeline_inserts_qdq_at_every_annotated_node():
    model, gm, ctx, (x, ei) = _traced("gcn")
    policy = get_policy("minmax")
    ctx.qconfig = policy.build_qconfig(8)
    gm = PassManager([get_pass(n) for n in policy.pipeline])(gm, ctx).graph_module
    annotated = [n for n in gm.graph.nodes if "qg_qspec" in n.meta]
    assert len(annotated) == ctx.report["quantization_points"] > 10
    for node in annotated:
        assert [u.target for u in node.users] == [QUANTIZE]
        (q,) = node.users
        assert [u.target for u in q.users] == [DEQUANTIZE]
    out = gm(x, ei)[0]
    ref = model(x, ei)
    assert 0 < (out - ref).abs().max() < 0.1 * ref.abs().max()


def test_quantized_values_lie_on_the_grid():
    _, gm, ctx, (x, ei) = _traced("sage")
    policy = get_policy("minmax")
    ctx.qconfig = policy.build_qconfig(4)
    gm = PassManager([get_pass(n) for n in policy.pipeline])(gm, ctx).graph_module
    seen = {}

    class Rec(fx.Interpreter):
        def run_node(self, n):
            v = super().run_node(n)
            if n.target == QUANTIZE:
                seen[n.name] = v
            return v

    Rec(gm).run(x, ei)
    assert seen
    for v in seen.values():
        assert v.dtype == torch.int32 and v.min() >= -8 and v.max() <= 7


def test_annotate_requires_roles():
    _, gm, ctx, _ = _traced()
    ctx.qconfig = get_policy("minmax").build_qconfig(8)
    with pytest.raises(InputError, match="run the 'tag-roles' pass"):
        get_pass("annotate")(gm, ctx)


def test_percentile_calibration_keeps_weights_and_inputs_on_minmax():
    from quantgraph.ir.roles import Role

    qconfig = get_policy("minmax").build_qconfig(4, "percentile", 0.01)
    assert qconfig[Role.WEIGHT].observer == "minmax" and qconfig[Role.INPUT].observer == "minmax"
    assert qconfig[Role.AGGREGATION].observer == "percentile"
    assert dict(qconfig[Role.AGGREGATION].observer_args) == {"tail": 0.01}
    with pytest.raises(InputError, match="unknown calibration method"):
        get_policy("minmax").build_qconfig(8, "no-such-method")  # entropy is a real method now (issue 12)
