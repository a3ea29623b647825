"""Degree-Quant: protective masks, percentile ranges, STE variants, and the compiled result."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from quantgraph.cli import main
from quantgraph.compiler import compile as qg_compile
from quantgraph.data import collate, load_graph_classification, make_csbm
from quantgraph.errors import InputError
from quantgraph.frontend import trace
from quantgraph.ir.fake_quant import FakeQuantize
from quantgraph.ir.meta import ROLE_KEY
from quantgraph.ir.ops import GATHER, SCATTER
from quantgraph.ir.qspec import QuantSpec
from quantgraph.ir.roles import Role
from quantgraph.models import build_model
from quantgraph.passes import CompileContext, PassManager, get_pass
from quantgraph.passes.degree_mask import ProtectiveMask, protection_probability
from quantgraph.passes.infra import same_value
from quantgraph.passes.prepare_qat import fake_quant_nodes
from quantgraph.policies import get_policy
from quantgraph.training import train_node_classifier

from .conftest import HOST_EXACT, data_root


def test_protection_probability_follows_degree_cdf():
    # in-degrees: node0=3, node1=1, node2=1, node3=0
    edge_index = torch.tensor([[1, 2, 3, 0, 0], [0, 0, 0, 1, 2]])
    p = protection_probability(edge_index, 4, p_min=0.1, p_max=0.5)
    cdf = torch.tensor([4 / 4, 3 / 4, 3 / 4, 1 / 4])  # fraction of nodes with in-degree <= own
    torch.testing.assert_close(p, 0.1 + 0.4 * cdf)


def test_mask_is_fresh_bernoulli_in_training_and_off_in_eval():
    torch.manual_seed(0)
    n = 400
    edge_index = torch.stack([torch.arange(n).repeat_interleave(2) % n, torch.randint(0, 40, (2 * n,))])
    mask = ProtectiveMask(0.0, 0.8).train()
    x = torch.zeros(n, 1)
    draws = torch.stack([mask(x, edge_index) for _ in range(300)]).float()
    assert not torch.equal(draws[0], draws[1])  # a new mask every forward pass
    expected = protection_probability(edge_index, n, 0.0, 0.8)
    assert (draws.mean(0) - expected).abs().max() < 0.12
    assert not mask.eval()(x, edge_index).any()


def test_masked_rows_bypass_quantization_in_training_only():
    fq = FakeQuantize(QuantSpec(bits=4)).train()
    x = torch.linspace(-1, 1, 40).reshape(10, 4)
    protect = torch.zeros(10, dtype=torch.bool)
    protect[[2, 7]] = True
    out = fq(x, protect)
    torch.testing.assert_close(out[protect], x[protect])
    assert not torch.allclose(out[~protect], x[~protect])
    fq.eval()
    evaluated = fq(x, protect)
    assert not torch.allclose(evaluated[protect], x[protect])  # everything is quantized at evaluation


def test_protected_values_do_not_update_ranges():
    fq = FakeQuantize(QuantSpec(bits=8)).train()
    x = torch.rand(10, 3)
    x[4] = 100.0
    protect = torch.zeros(10, dtype=torch.bool)
    protect[4] = True
    fq(x, protect)
    assert fq.hi.item() <= 1.0
    fq(x)  # unprotected: the outlier now widens the range
    assert fq.hi.item() == 100.0


def test_percentile_ranges_running_minmax_and_ema():
    torch.manual_seed(0)
    x = torch.randn(100_000)
    x[0] = 50.0
    fq = FakeQuantize(QuantSpec(bits=8), tail=0.001).train()
    fq(x)
    assert 2.5 < fq.hi.item() < 4.0 and -4.0 < fq.lo.item() < -2.5  # tails cut, the outlier ignored
    fq(x * 2)
    assert fq.hi.item() > 5.0  # running max across batches
    ema = FakeQuantize(QuantSpec(bits=8), momentum=0.01).train()
    ema(torch.ones(10))
    ema(torch.full((10,), 2.0))
    assert ema.hi.item() == pytest.approx(1.01)


def test_gradient_is_zero_where_saturated_in_gc_variant():
    x = torch.tensor([-10.0, -0.5, 0.0, 0.5, 10.0], requires_grad=True)
    gc = FakeQuantize(QuantSpec(bits=4), clip_grad=True)
    gc.lo.fill_(-1.0)
    gc.hi.fill_(1.0)
    gc.initialized.fill_(True)
    gc.eval()(x).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]
    x.grad = None
    plain = FakeQuantize(QuantSpec(bits=4), clip_grad=False)
    plain.load_state_dict(gc.state_dict())
    plain.eval()(x).sum().backward()
    assert x.grad.tolist() == [1.0] * 5


@pytest.fixture(scope="module")
def small_gcn():
    data = make_csbm(num_nodes=300, num_features=16, seed=7)
    torch.manual_seed(0)
    model = build_model("gcn", 16, data.num_classes)
    train_node_classifier(model, data, epochs=30, seed=0)
    return model, data


def _prepared(model, data, bits=4):
    traced = trace(model, data.inputs(), training=True)
    policy = get_policy("degree-quant")
    ctx = CompileContext(
        input_names=traced.input_names,
        dim_names=traced.dim_names,
        calibration_data=[data.inputs()],
        qconfig=policy.build_qconfig(bits),
        bits=bits,
        options=dict(policy.defaults),
    )
    names = [n for n in policy.pipeline if n not in ("train-qat", "convert-qat")]
    gm = PassManager([get_pass(n) for n in names])(traced.graph_module, ctx).graph_module
    return gm, ctx


def test_masks_are_wired_by_node_and_by_source_node(small_gcn):
    model, data = small_gcn
    gm, ctx = _prepared(model, data)
    fqs = fake_quant_nodes(gm)
    mask = next(n for n in gm.graph.nodes if n.target == "qg_degree_mask")
    node_level = [f for f in fqs if f.meta["qg_rows"] == "node"]
    edge_level = [f for f in fqs if f.meta["qg_rows"] == "edge"]
    assert node_level and edge_level
    assert all(len(f.args) == 2 and f.args[1] is mask for f in node_level)
    scatter_targets = {n.args[1] for n in gm.graph.nodes if n.target == SCATTER}
    feature_gathers = {
        n.args[1]
        for n in gm.graph.nodes
        if n.target == GATHER and n.meta.get("qg_role") is not None and n.meta["qg_role"].value == "gather"
    }
    for f in edge_level:
        gathered = f.args[1]
        assert gathered.target == GATHER and gathered.args[0] is mask
        idx = gathered.args[1]
        assert any(same_value(idx, g) for g in feature_gathers)  # the source index of the messages
        assert not any(same_value(idx, t) for t in scatter_targets)
    assert ctx.report["degree_mask"] == {
        "p_min": 0.1,
        "p_max": 0.2,
        "masked_quantizers": len(node_level + edge_level),
    }


def test_compiled_degree_quant_has_no_trace_of_masking(small_gcn, tmp_path):
    model, data = small_gcn
    compiled = qg_compile(model, data, policy="degree-quant", bits=4, options={"epochs": 5})
    gm = compiled.graph_module
    assert not any(n.op == "call_module" for n in gm.graph.nodes)
    assert not any(isinstance(m, (FakeQuantize, ProtectiveMask, torch.nn.Dropout)) for m in gm.modules())
    report = compiled.export_onnx(tmp_path / "dq.onnx", data)
    assert report["argmax_agreement"] == 1.0
    proto = onnx.load(str(tmp_path / "dq.onnx"))
    ops = {n.op_type for n in proto.graph.node}
    assert not ops & {"RandomUniform", "RandomUniformLike", "Bernoulli", "Dropout", "RandomNormalLike"}
    names = [n.name for n in proto.graph.node] + [t.name for t in proto.graph.initializer]
    assert "QuantizeLinear" in ops and not any(
        "degree_mask" in n or "qg_fq" in n or "dropout" in n for n in names
    )
    assert compiled.report["passes"][-4:] == ["degree-mask", "train-qat", "convert-qat", "quantize-bias"]
    assert compiled.report["qat"]["epochs_run"] == 5


def test_qat_selects_on_validation_loss_when_asked(small_gcn):
    model, data = small_gcn
    for select in ("acc", "loss"):
        options = {"epochs": 12, "seed": 0, "select": select}
        qat = qg_compile(model, data, policy="degree-quant", bits=4, options=options).report["qat"]
        best = qat["history"][qat["best_epoch"] - 1]
        key, pick = ("val_loss", min) if select == "loss" else ("val_acc", max)
        assert best[key] == pick(h[key] for h in qat["history"])
        assert qat["select"] == select
    with pytest.raises(InputError, match="select"):
        qg_compile(model, data, policy="degree-quant", bits=4, options={"epochs": 1, "select": "f1"})


def test_qat_needs_labels(small_gcn):
    model, data = small_gcn
    unlabelled = make_csbm(num_nodes=100, num_features=16, seed=1)
    unlabelled.y = None
    with pytest.raises(InputError, match="--policy minmax"):
        qg_compile(model, unlabelled, policy="degree-quant", bits=8)


def test_cli_degree_quant_onnx_matches_report(tmp_path):
    ckpt, out, rep = tmp_path / "m.pt", tmp_path / "m.onnx", tmp_path / "r.json"
    syn = "synthetic:nodes=300,seed=2"
    assert main(["train", "--arch", "gcn", "--data", syn, "--epochs", "20", "--quiet", "-o", str(ckpt)]) == 0
    rc = main(
        [
            "compile",
            str(ckpt),
            "--data",
            syn,
            "--policy",
            "degree-quant",
            "--bits",
            "4",
            "--epochs",
            "5",
            "-o",
            str(out),
            "--report",
            str(rep),
            "--quiet",
        ]
    )
    assert rc == 0
    report = json.loads(rep.read_text())
    assert report["accuracy"]["onnx"] == pytest.approx(report["accuracy"]["quantized"], abs=1e-6)
    assert report["bits"] == 4 and report["policy"] == "degree-quant"


def test_graph_level_gin_exports_for_unseen_graph_sizes(tmp_path):
    root = data_root()
    path = root / "graph_classification" / "hard_small.npz" if root else None
    if path is None or not path.exists():
        pytest.skip("shared graph-classification data not found")
    splits = load_graph_classification(path)
    torch.manual_seed(0)
    model = build_model("gin_graph", 5, 3)
    test = collate(splits["test"])
    task = {"graphs": {"train": splits["train"][:64], "val": splits["val"]}}
    from quantgraph.backends.verify import ort_session, run_onnx

    for bits in (8, 4):
        compiled = qg_compile(
            model,
            test,
            policy="degree-quant",
            bits=bits,
            calibration=[collate(splits["train"])],
            task_data=task,
            options={"epochs": 2, **HOST_EXACT},
        )
        compiled.export_onnx(tmp_path / f"g{bits}.onnx", test)
        proto = onnx.load(str(tmp_path / f"g{bits}.onnx"))
        dims = [d.dim_param for d in proto.graph.input[0].type.tensor_type.shape.dim]
        assert dims[0] == "num_nodes"
        session = ort_session(proto)
        # float rounding may flip a tie: allow one step of the output quantizer, no more
        step = next(q["scale"] for q in compiled.report["quantization"].values() if q["role"] == "output")
        sizes = set()
        for graph in splits["test"][:6] + [collate(splits["test"][:3])]:
            batch = collate([graph]) if graph.batch is None else graph
            ort = run_onnx(session, batch.inputs())
            ir = compiled.run(batch)
            assert ort.shape == ir.shape == (int(batch.batch.max()) + 1, 3)
            assert np.abs(ort.numpy() - ir.numpy()).max() <= step * 1.001 + 1e-6
            sizes.add(batch.num_nodes)
        assert len(sizes) > 3


def test_sparse_inputs_keep_their_range(small_gcn):
    """A 1% percentile tail of a 99%-zeros bag-of-words input is [0, 0]; inputs use min/max instead."""
    qconfig = get_policy("degree-quant").build_qconfig(4)
    assert qconfig[Role.INPUT].observer == "minmax" and qconfig[Role.MESSAGE].observer == "percentile"
    model, data = small_gcn
    gm, _ = _prepared(model, data)
    by_source = {f.meta["qg_source"]: gm.get_submodule(f.target) for f in fake_quant_nodes(gm)}
    roles = {n.name: n.meta.get(ROLE_KEY) for n in gm.graph.nodes}
    inputs = [name for name in by_source if roles[name] == Role.INPUT]  # x, or x row-normalised in the model
    assert len(inputs) == 1 and by_source[inputs[0]].tail == 0.0
    assert any(m.tail == 0.01 for name, m in by_source.items() if name not in inputs)
    sparse = torch.zeros(1000, 100)
    sparse.view(-1)[::150] = 1.0  # 0.7% nonzero
    cut = FakeQuantize(QuantSpec(bits=4), tail=0.01).train()
    cut(sparse)
    assert cut.hi.item() == 0.0  # what a percentile range would do to such inputs


def test_non_finite_values_do_not_poison_ranges():
    fq = FakeQuantize(QuantSpec(bits=4)).train()
    fq(torch.tensor([-1.0, 2.0]))
    fq(torch.tensor([float("inf"), float("nan"), 0.5]))
    fq(torch.tensor([float("nan")]))
    assert (fq.lo.item(), fq.hi.item()) == (-1.0, 2.0)
    assert torch.isfinite(fq.qparams().scale) and fq.qparams().zero_point.abs() <= 8


def test_degree_quant_compile_is_repeatable(small_gcn):
    """Calibration runs with dropout active; compile seeds it, so the same call gives the same bytes."""
    model, data = small_gcn
    torch.manual_seed(123)  # the caller's generator state must not matter, nor be changed
    before = torch.random.get_rng_state()
    runs = [
        qg_compile(model, data, policy="degree-quant", bits=4, options={"epochs": 3, "seed": 1}).to_onnx()
        for _ in range(2)
    ]
    assert torch.equal(torch.random.get_rng_state(), before)
    assert runs[0].SerializeToString(deterministic=True) == runs[1].SerializeToString(deterministic=True)


def test_per_channel_fake_quant_gives_each_channel_its_own_range():
    from quantgraph.ir.qspec import Granularity

    spec = QuantSpec(bits=4, symmetric=True, granularity=Granularity.PER_CHANNEL, axis=0)
    w = torch.tensor([[0.7, -0.1, 0.3], [0.01, -0.02, 0.005]])
    fq = FakeQuantize(spec).train()
    out = fq(w)
    qp = fq.qparams()
    assert qp.scale.shape == (2,)
    torch.testing.assert_close(qp.scale, torch.tensor([0.7, 0.02]) / 7)
    per_tensor = FakeQuantize(QuantSpec(bits=4, symmetric=True)).train()(w)
    # the small row keeps its values per channel; one range for the tensor rounds it all to 0
    assert torch.count_nonzero(out[1]) == 3 and torch.count_nonzero(per_tensor[1]) == 0
    assert (out - w).abs().max() <= 0.7 / 14 + 1e-6


def test_per_channel_weights_option_exports_per_channel_qdq(small_gcn, tmp_path):
    model, data = small_gcn
    options = {"epochs": 3, "per_channel_weights": True}
    compiled = qg_compile(model, data, policy="degree-quant", bits=4, options=options)
    report = compiled.export_onnx(tmp_path / "pc.onnx", data)
    assert report["argmax_agreement"] == 1.0
    proto = onnx.load(str(tmp_path / "pc.onnx"))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    scale_shapes = [inits[n.input[1]].shape for n in proto.graph.node if n.op_type == "DequantizeLinear"]
    assert any(len(s) == 1 and s[0] > 1 for s in scale_shapes)  # a weight with one scale per channel
    with pytest.raises(InputError, match="per_channel_weights"):
        qg_compile(model, data, policy="mixq", bits=4, options={"epochs": 1, "per_channel_weights": True})
    with pytest.raises(InputError, match="per_channel_weights: this policy quantizes no weights"):
        qg_compile(model, data, policy="fp32", options={"per_channel_weights": True})


def test_shared_gather_quantization_leaves_gin_messages_on_their_producers_grid(tmp_path):
    data = make_csbm(num_nodes=200, num_features=16, seed=3)
    torch.manual_seed(0)
    model = build_model("gin", 16, data.num_classes)
    train_node_classifier(model, data, epochs=10, seed=0)
    options = {"epochs": 2, "share_gather_quant": True}
    compiled = qg_compile(model, data, policy="degree-quant", bits=4, options=options)
    plain = qg_compile(model, data, policy="degree-quant", bits=4, options={"epochs": 2})
    assert compiled.report["shared_gather_points"] == 2  # one message per GIN layer
    assert compiled.report["quantization_points"] == plain.report["quantization_points"] - 2
    gathers = [n for n in compiled.graph_module.graph.nodes if n.target == GATHER]
    # each message reads a dequantized value and feeds the scatter directly (no Q/DQ of its own)
    assert all(SCATTER in {u.target for u in g.users} for g in gathers)
    assert compiled.export_onnx(tmp_path / "gin.onnx", data)["argmax_agreement"] == 1.0
    assert compiled.report["average_bits"]["elements"] == 4.0
