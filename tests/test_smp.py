"""SMP (issue 15): the QLR quantizer (gradient, α grid, BT/BT*), the smoothness-aware propagation's
multiplier updates, the ``smp`` policy's freeze, and ONNX/native exactness on small synthetic graphs."""

from __future__ import annotations

import pytest
import torch

from quantgraph.compiler import compile as qg_compile
from quantgraph.data import make_csbm
from quantgraph.ir.qlr_quantizer import QLRFunction, QLRQuantizer, affine, skewness
from quantgraph.ir.qspec import QuantSpec
from quantgraph.ir.quantizer import QuantizerSettings, get_quantizer
from quantgraph.ir.smp_ops import SMP_MULTIPLIER
from quantgraph.models import build_model
from quantgraph.models.zoo import normalized_adjacency
from quantgraph.native.runtime import GraphCSR


def _qlr(kind: str = "qlr", bits: int = 4) -> QLRQuantizer:
    spec = QuantSpec(bits=bits, signed=True, symmetric=False, quantizer=kind)
    return get_quantizer(kind).from_spec(spec, None, QuantizerSettings())


def _dense_adjacency(edge_index: torch.Tensor, n: int) -> torch.Tensor:
    a = torch.zeros(n, n)
    a[edge_index[1], edge_index[0]] = 1.0
    a = a + torch.eye(n)
    d = a.sum(1).pow(-0.5)
    return d[:, None] * a * d[None, :]


# ------------------------------------------------------------------------------------------ QLR quantizer
def test_qlr_forward_is_the_asymmetric_unsigned_grid_of_alpha_times_the_batch_range():
    q = _qlr(bits=4).train()
    x = torch.linspace(-1.0, 3.0, 101)
    q.initialized.fill_(True)
    with torch.no_grad():
        q.alpha.fill_(0.5)
    out = q(x)
    lo, hi = -0.5, 1.5  # α·[min, max]
    scale = (hi - lo) / 15
    zp = round(-lo / scale)
    expected = (torch.clamp(torch.round(x / torch.tensor(scale)) + zp, 0, 15) - zp) * scale
    assert torch.allclose(out, expected, atol=1e-6)
    assert len(out.unique()) == 16 and float(out.detach().max()) <= hi + 1e-6
    qp = q.qparams()  # stored signed: the same grid shifted by 8
    assert int(qp.qmin) == -8 and int(qp.qmax) == 7 and int(qp.zero_point) == zp - 8
    regrid = (torch.clamp(torch.round(x / qp.scale) + qp.zero_point, -8, 7) - qp.zero_point) * qp.scale
    assert torch.equal(regrid, out.detach())


def test_qlr_range_follows_the_batch_in_training_and_is_frozen_in_eval():
    q = _qlr(bits=8).train()
    q(torch.tensor([-1.0, 2.0]))
    assert (float(q.lo), float(q.hi)) == (-1.0, 2.0)
    q.eval()
    q(torch.tensor([-5.0, 9.0]))
    assert (float(q.lo), float(q.hi)) == (-1.0, 2.0)


def _surrogate(
    x: torch.Tensor, alpha: float, frozen_round: torch.Tensor, inside: torch.Tensor, q
) -> torch.Tensor:
    """x̂ with round(v) − v held at its value at α₀ (the STE's view): inside ``x + s·(round(v) − v)``,
    clipped the scaled bound; smooth in α, so finite differences give the intended gradient."""
    lo, hi = min(alpha * float(q.lo), 0.0), max(alpha * float(q.hi), 0.0)
    scale = (hi - lo) / (q.levels - 1)  # float64 (``affine`` rounds the scale to float32)
    zp = affine(q.lo, q.hi, torch.tensor(alpha), q.levels)[1].double()  # does not depend on α
    clipped = (torch.clamp(torch.round(x / scale) + zp, 0, q.levels - 1) - zp) * scale
    return torch.where(inside, x + scale * frozen_round, clipped)


def test_qlr_alpha_gradient_matches_finite_differences_of_the_ste_surrogate():
    torch.manual_seed(0)
    q = _qlr(bits=4).train()
    x = torch.randn(400, dtype=torch.float64) * 2 + 0.3
    q.lo.fill_(float(x.min()))
    q.hi.fill_(float(x.max()))
    q.initialized.fill_(True)
    alpha0 = 0.6
    g = torch.randn(400, dtype=torch.float64)
    a = torch.tensor(alpha0, dtype=torch.float64, requires_grad=True)
    scale, zp = affine(q.lo.double(), q.hi.double(), a.detach(), q.levels)
    out = QLRFunction.apply(x.clone().requires_grad_(True), a, scale, zp, q.levels - 1, torch.zeros(()))
    (out * g).sum().backward()
    v = x / scale
    q_int = torch.round(v) + zp
    inside = (q_int >= 0) & (q_int <= q.levels - 1)
    assert 0 < int(inside.sum()) < 400  # both terms of the formula are exercised
    frozen = torch.round(v) - v
    eps = 1e-5
    fd = (
        (g * _surrogate(x, alpha0 + eps, frozen, inside, q)).sum()
        - (g * _surrogate(x, alpha0 - eps, frozen, inside, q)).sum()
    ) / (2 * eps)
    assert float(a.grad) == pytest.approx(float(fd), rel=1e-5)
    # the bracket: clipped values contribute the batch bound (the grid's end ÷ α: min/max up to the
    # zero point's rounding), in-range ones (round(v) − v)·s/α
    ends = (-zp.double() * scale / alpha0, (q.levels - 1 - zp.double()) * scale / alpha0)
    assert abs(float(ends[0]) - float(q.lo)) <= float(scale) and abs(float(ends[1]) - float(q.hi)) <= float(
        scale
    )
    bound = torch.where(q_int < 0, ends[0], ends[1])
    formula = (g * torch.where(inside, frozen * scale / alpha0, bound)).sum()
    assert float(a.grad) == pytest.approx(float(formula), rel=1e-6)


def test_qlr_input_gradient_is_straight_through_inside_and_zero_where_clipped():
    q = _qlr(bits=2).train()
    q.initialized.fill_(True)
    x = torch.tensor([-3.0, -0.2, 0.1, 0.7, 4.0], requires_grad=True)
    q.lo.fill_(-1.0)
    q.hi.fill_(1.0)
    with torch.no_grad():
        q.alpha.fill_(1.0)
    q.eval()(x).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]


def test_alpha_is_grid_initialised_on_the_first_batch_minimising_mean_absolute_error():
    torch.manual_seed(1)
    x = torch.cat([torch.randn(2000) * 0.1, torch.tensor([8.0])])  # one outlier: a small α wins
    for bits, step, count in ((2, 0.1, 10), (4, 0.02, 50), (8, 0.02, 50)):
        q = _qlr(bits=bits).train()
        q(x)
        errors = {}
        for i in range(count):
            a = (i + 1) * step
            errors[a] = float((q.quantize_with(x, a) - x).abs().mean())
        best = min(errors, key=errors.get)
        expected = best + 0.1 if best < 0.1 else best
        assert float(q.alpha.detach()) == pytest.approx(expected, abs=1e-6), bits
        assert bool(q.initialized)
    assert float(_qlr(bits=8).train()(x).detach().sub(x).abs().mean()) < 0.01


@pytest.mark.slow  # a compile: traces and trains (> 5 s on 2 shared cores)
def test_one_alpha_per_quantizer_and_the_alpha_group_of_the_optimizer():
    from quantgraph.passes.smp_train import optimizer_groups

    data = make_csbm(num_nodes=60, num_features=6, num_classes=3, seed=1)
    torch.manual_seed(0)
    model = build_model("smp", 6, 3, K=2).eval()
    compiled = qg_compile(model, data, policy="smp", bits=4, options={"epochs": 1})
    points = compiled.report["smp"]["points"]
    # 2 steps × (2 messages + 2 aggregates + update + Δ), the linear layers' in/weight/out, the edge weights
    assert points == {"input": 1, "weight": 2, "linear_out": 2, "linear_input": 1, "edge_weight": 1,
                      "message": 4, "aggregation": 4, "update": 5}  # fmt: skip
    assert compiled.report["quantization_points"] == sum(points.values())
    groups = optimizer_groups(compiled.graph_module, 1e-4, 0.0)  # α's group (the frozen graph has none)
    assert all(g.get("lr") != 1e-4 for g in groups)


# ------------------------------------------------------------------------------------------ BT / BT*
def _official_bt(x: torch.Tensor, lo: float, hi: float, alpha: float, skew: float) -> torch.Tensor:
    """The official BT/BT* (8-bit quantize, then round((q + skew)/85)·85), with the 8-bit zero point on the
    85-grid (quantgraph's exportable variant)."""
    a_lo, a_hi = min(alpha * lo, 0.0), max(alpha * hi, 0.0)
    s8 = torch.tensor((a_hi - a_lo) / 255)
    zp8 = 85 * round(round(-a_lo / float(s8)) / 85)
    q = torch.clamp(torch.round(x / s8) + zp8, 0, 255)
    return (torch.clamp(torch.round((q + skew) / 85), 0, 3) * 85 - zp8) * s8


@pytest.mark.parametrize("kind, skew", [("qlr-bt", 0.0), ("qlr-sbt", 2.0), ("qlr-sbt", -3.0)])
def test_bt_is_the_8_bit_quantizer_snapped_to_4_levels(kind, skew):
    q = _qlr(kind, bits=2).eval()
    q.initialized.fill_(True)
    q.lo.fill_(-0.7)
    q.hi.fill_(2.3)
    q.skew.fill_(skew)
    with torch.no_grad():
        q.alpha.fill_(0.8)
    torch.manual_seed(0)
    x = torch.rand(3000) * 4.5 - 1.5  # random: the two roundings differ only at exact ties
    out = q(x).detach()
    assert torch.allclose(out, _official_bt(x, -0.7, 2.3, 0.8, skew), atol=1e-6)
    assert len(out.unique()) == 4


def test_bt_star_initialisation_fixes_the_rounded_skewness():
    torch.manual_seed(0)
    x = torch.distributions.Exponential(1.0).sample((5000,))  # skewness 2
    q = _qlr("qlr-sbt", bits=2).train()
    q(x)
    assert float(q.skew) == round(skewness(x)) == 2
    errors = {(i + 1) / 10: float((q.quantize_with(x, (i + 1) / 10) - x).abs().mean()) for i in range(10)}
    best = min(errors, key=errors.get)
    assert float(q.alpha.detach()) == pytest.approx(best + 0.1 if best < 0.5 else best)  # BT*: +0.1 below 0.5
    with pytest.raises(Exception, match="2-bit"):
        _qlr("qlr-bt", bits=4)


# ------------------------------------------------------------------------------------------ propagation
def test_normalized_adjacency_is_gcn_normalisation_with_self_loops():
    data = make_csbm(num_nodes=40, num_features=4, num_classes=2, seed=2)
    src, dst, w = normalized_adjacency(data.edge_index, 40)
    dense = torch.zeros(40, 40).index_put_((dst, src), w.squeeze(-1), accumulate=True)
    assert torch.allclose(dense, _dense_adjacency(data.edge_index, 40), atol=1e-6)


def test_multiplier_and_smoothness_updates_follow_the_official_step(monkeypatch):
    """λ, s and X over three steps against a dense re-implementation of the official SMP_forward."""
    data = make_csbm(num_nodes=30, num_features=5, num_classes=3, seed=4)
    torch.manual_seed(0)
    model = build_model("smp", 5, 3, K=3, alpha_threshold=0.2, eta_lambda=1e-3, eta_s=1e-2).eval()
    h = model.lin2(torch.relu(model.lin1(model.feature_norm(data.x))))
    a = _dense_adjacency(data.edge_index, 30)
    lap = torch.eye(30) - a
    num_edges = int((a != 0).sum())
    mu, eta_h, eta_s, eta_l, alpha = 9.0, 0.1, 1e-2, 1e-3, 0.2
    lam, s, x = torch.tensor(1e-3), torch.tensor(1e-3), h
    lams = []
    for _ in range(3):
        xt = (1 - (1 + mu) * eta_h) * x + mu * eta_h * (a @ x) + eta_h * h
        gap = xt - x
        lams.append(2 * eta_h * lam)
        x = xt + 2 * eta_h * lam * (a @ gap)
        s = s + 2 * eta_s * lam * s
        lam = lam + eta_l * (alpha * num_edges - s * s - torch.trace(gap.T @ lap @ gap))
    assert lams[2] > lams[1] > lams[0]  # the multiplier moves with these rates
    import quantgraph.models.zoo as zoo

    seen: list[torch.Tensor] = []
    original = zoo.smp_multiplier
    monkeypatch.setattr(zoo, "smp_multiplier", lambda c: seen.append(c.detach().clone()) or original(c))
    out = model(data.x, data.edge_index)
    assert torch.allclose(torch.stack(seen), torch.stack(lams).float(), rtol=1e-4)
    assert torch.allclose(out, torch.log_softmax(x, -1), atol=1e-5)


def test_the_multiplier_gets_no_gradient_and_appnp_has_no_constraint():
    c = torch.tensor(0.5, requires_grad=True)
    (torch.ops.quantgraph.smp_multiplier(c * 2) * 3).backward()
    assert float(c.grad) == 0.0
    data = make_csbm(num_nodes=30, num_features=5, num_classes=3, seed=4)
    torch.manual_seed(0)
    model = build_model("appnp", 5, 3, K=4).eval()
    h = model.lin2(torch.relu(model.lin1(model.feature_norm(data.x))))
    a, x = _dense_adjacency(data.edge_index, 30), h
    for _ in range(4):
        x = 0.9 * (a @ x) + 0.1 * h  # APPNP, teleport 0.1
    assert torch.allclose(model(data.x, data.edge_index), torch.log_softmax(x, -1), atol=1e-5)


# ------------------------------------------------------------------------------------------ policy and exports
@pytest.fixture(scope="module")
def smp_and_graph():
    torch.manual_seed(0)
    data = make_csbm(num_nodes=200, num_features=8, num_classes=4, power=2.0, seed=3)
    return build_model("smp", 8, 4, K=3).eval(), data


@pytest.mark.slow  # a compile: traces and trains (> 5 s on 2 shared cores)
def test_freeze_records_the_eval_multipliers_and_the_onnx_export_equals_the_ir(smp_and_graph, tmp_path):
    model, data = smp_and_graph
    compiled = qg_compile(model, data, policy="smp", bits=2, options={"epochs": 3})
    gm = compiled.graph_module
    assert not any(n.target == SMP_MULTIPLIER for n in gm.graph.nodes)
    assert not any(n.target == torch.ops.aten.sum.default for n in gm.graph.nodes)  # λ's reductions are gone
    frozen = compiled.report["smp"]["multipliers"]
    assert len(frozen) == 3 and frozen[0] == pytest.approx(2 * 0.1 * 1e-3)
    checks = compiled.export_onnx(tmp_path / "m.onnx", data)
    assert checks["max_abs_error"] <= 1e-5 and checks["argmax_agreement"] == 1.0


@pytest.mark.slow  # a compile: traces and trains (> 5 s on 2 shared cores)
def test_bt_star_exports_its_offset_as_an_add_and_onnx_equals_the_ir(smp_and_graph, tmp_path):
    model, data = smp_and_graph
    compiled = qg_compile(model, data, policy="smp", bits=2, options={"epochs": 2, "smp_bt": "bt*"})
    assert compiled.report["smp"]["variant"] == "bt*"
    checks = compiled.export_onnx(tmp_path / "m.onnx", data)
    assert checks["max_abs_error"] <= 1e-5 and checks["argmax_agreement"] == 1.0
    levels = [q for q in compiled.report["quantization"].values()]
    assert levels  # every point has frozen parameters


@pytest.mark.slow  # a compile: traces and trains (> 5 s on 2 shared cores)
@pytest.mark.parametrize("bits", [4, 2])
def test_native_integers_equal_the_ir_for_the_smp_model(smp_and_graph, tmp_path, bits):
    model, data = smp_and_graph
    compiled = qg_compile(model, data, policy="smp", bits=bits, options={"epochs": 2}, backend="native")
    checks = compiled.export(tmp_path / "m.qgn", data)
    ints = checks["integer_tensors"]
    assert ints["equal"] and ints["compared"] >= 12, ints
    assert checks["max_abs_error"] == 0.0 and checks["argmax_agreement"] == 1.0
    assert checks["kernels"]["native.aggregate"] == 6  # every aggregation of the 3 steps runs as a kernel
    native = compiled.to_native(data)
    other = make_csbm(num_nodes=77, num_features=8, num_classes=4, power=2.0, seed=9)
    assert torch.allclose(native.run(other.inputs()), compiled.run(other.inputs()), atol=1e-5)
    csrs = [v for v in native.prepare(other.inputs()).values.values() if isinstance(v, GraphCSR)]
    assert len(csrs) >= 2 and len({id(c) for c in csrs}) < len(csrs), len(csrs)  # propagations share a CSR


@pytest.mark.slow  # a compile: traces and trains (> 5 s on 2 shared cores)
def test_official_points_leave_updates_and_edge_weights_float_and_native_equals_the_ir(
    smp_and_graph, tmp_path
):
    model, data = smp_and_graph
    options = {"epochs": 2, "smp_points": "official"}
    compiled = qg_compile(model, data, policy="smp", bits=2, options=options, backend="native")
    assert compiled.report["smp"]["points"] == {"input": 1, "weight": 2, "linear_out": 2, "linear_input": 1,
                                                "message": 6, "aggregation": 6}  # fmt: skip
    checks = compiled.export(tmp_path / "m.qgn", data)
    assert checks["integer_tensors"]["equal"] and checks["max_abs_error"] == 0.0


@pytest.mark.slow  # a compile: traces and trains (> 5 s on 2 shared cores)
def test_bt_variants_need_two_bits(smp_and_graph):
    from quantgraph.errors import InputError

    model, data = smp_and_graph
    with pytest.raises(InputError, match="INT2 option"):
        qg_compile(model, data, policy="smp", bits=4, options={"epochs": 1, "smp_bt": "bt"})


@pytest.mark.slow
def test_readme_commands_train_and_compile_smp(planetoid_root, tmp_path):
    import json

    from quantgraph.cli import main

    ckpt, out, rep = tmp_path / "smp.pt", tmp_path / "m.onnx", tmp_path / "r.json"
    root = str(planetoid_root)
    assert main(["train", "--arch", "smp", "--data", "cora", "--data-root", root, "--epochs", "3", "--K", "3",
                 "-o", str(ckpt), "--quiet"]) == 0  # fmt: skip
    assert main(["compile", str(ckpt), "--data", "cora", "--data-root", root, "--policy", "smp", "--bits", "2",
                 "--epochs", "2", "-o", str(out), "--report", str(rep), "--quiet"]) == 0  # fmt: skip
    report = json.loads(rep.read_text())
    assert report["policy"] == "smp" and report["bits"] == 2 and report["onnx"]["argmax_agreement"] == 1.0


def _ir_quantize(x: torch.Tensor, kw: dict) -> torch.Tensor:
    params = (torch.tensor(kw["scale"], dtype=torch.float32), torch.tensor(kw["zero_point"]))
    return torch.ops.quantgraph.quantize(x, *params, torch.tensor(kw["qmin"]), torch.tensor(kw["qmax"]), 0)


@pytest.mark.slow  # a compile: traces and trains (> 5 s on 2 shared cores)
def test_intermediate_quantizes_run_natively_and_a_nan_gets_the_ir_result(smp_and_graph):
    model, data = smp_and_graph
    compiled = qg_compile(model, data, policy="smp", bits=8, options={"epochs": 1}, backend="native")
    native = compiled.to_native(data)
    quantizes = [s for s in native.program.steps if s.op == "native.quantize"]
    inner = [s for s in quantizes if s.args[0]["value"] not in native.program.inputs]
    assert len(inner) >= 3, [s.out for s in quantizes]  # the propagation steps' X and Δ, not only x
    step = inner[0]
    x = torch.randn(6, 4) * 3
    finite = native._quantize(step, {step.args[0]["value"]: x})
    assert finite.dtype == torch.int8 and torch.equal(finite.to(torch.int32), _ir_quantize(x, step.kwargs))
    x[1, 2] = float("nan")
    fallback = native._quantize(step, {step.args[0]["value"]: x})
    assert fallback.dtype == torch.int32 and torch.equal(fallback, _ir_quantize(x, step.kwargs))
