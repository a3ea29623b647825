"""MixQ mixed precision: the softmax mixture, the bit search, fixed bits in specs and ONNX, and BitOPs."""

from __future__ import annotations

import json

import onnx
import pytest
import torch
from onnx import numpy_helper

from quantgraph.bitops import count_bitops
from quantgraph.cli import main
from quantgraph.compiler import compile as qg_compile
from quantgraph.data import GraphData, collate, load_dataset, load_graph_classification
from quantgraph.errors import InputError
from quantgraph.ir.fake_quant import FakeQuantize
from quantgraph.ir.mixed_fake_quant import MixedPrecisionFakeQuantize
from quantgraph.ir.ops import QUANTIZE
from quantgraph.ir.qspec import QuantSpec
from quantgraph.models import build_model
from quantgraph.passes.search_bits import choose_bits, parse_candidates
from quantgraph.training import train_node_classifier

from .conftest import data_root

SYN = "synthetic:nodes=200,features=16,seed=3"
FAST = {"search_epochs": 15, "epochs": 5}


@pytest.fixture(scope="module")
def small_gcn():
    data = load_dataset(SYN)
    torch.manual_seed(0)
    model = build_model("gcn", data.num_features, data.num_classes, hidden=16)
    train_node_classifier(model, data, epochs=30, seed=0)
    return model, data


def _mixed(alpha: list[float]) -> MixedPrecisionFakeQuantize:
    mixed = MixedPrecisionFakeQuantize(QuantSpec(bits=8), bits=(2, 4, 8))
    for cand in mixed.candidates:
        cand.lo.fill_(-1.0)
        cand.hi.fill_(1.0)
        cand.initialized.fill_(True)
    with torch.no_grad():
        mixed.alpha.copy_(torch.tensor(alpha))
    return mixed.eval()


def test_mixture_equals_the_single_candidate_when_one_logit_dominates():
    x = torch.linspace(-1.2, 1.2, 50).reshape(10, 5)
    for index, bits in enumerate((2, 4, 8)):
        alpha = [0.0, 0.0, 0.0]
        alpha[index] = 100.0
        mixed = _mixed(alpha)
        torch.testing.assert_close(mixed(x), mixed.candidate(bits)(x))
        assert mixed.chosen_bits() == bits
        assert mixed.expected_bits().item() == pytest.approx(bits)
    even = _mixed([0.0, 0.0, 0.0])
    assert even.chosen_bits() == 8  # a tie goes to the wider bitwidth
    assert even.expected_bits().item() == pytest.approx(14 / 3)
    expected = sum(even.candidate(b)(x) for b in (2, 4, 8)) / 3
    torch.testing.assert_close(even(x), expected)
    assert not torch.allclose(even(x), even.candidate(8)(x))


def test_mixture_gradients_reach_logits_and_protected_rows_bypass():
    mixed = _mixed([0.0, 0.0, 0.0]).train()
    x = torch.linspace(-1, 1, 40).reshape(10, 4)
    protect = torch.zeros(10, dtype=torch.bool)
    protect[[1, 6]] = True
    out = mixed(x, protect)
    torch.testing.assert_close(out[protect], x[protect])  # every candidate lets protected rows through
    ((out - x) ** 2).sum().backward()
    assert mixed.alpha.grad is not None and mixed.alpha.grad.abs().sum() > 0
    mixed.alpha.grad = None
    mixed.expected_bits().backward()
    assert mixed.alpha.grad[0] < 0 < mixed.alpha.grad[2]  # more bits cost more


def test_choose_bits_argmax_and_target_fit():
    logits = [torch.tensor([0.0, 0.0, 1.0]), torch.tensor([0.0, 0.9, 1.0]), torch.tensor([1.0, 0.0, 0.0])]
    assert choose_bits(logits, (2, 4, 8)) == [2, 2, 0]
    # from mean 6 to at most 4: point 1 gives up the least logit (0.1, then 0.9) and goes 8 -> 4 -> 2
    assert choose_bits(logits, (2, 4, 8), target=4.0) == [2, 0, 0]
    raised = choose_bits([torch.tensor([1.0, 0.0, 0.0])] * 3, (2, 4, 8), target=5.0)
    assert sum((2, 4, 8)[c] for c in raised) == 14  # 2+4+8 = 14 <= 15; another step would exceed 15
    assert parse_candidates("8, 2,4") == (2, 4, 8)
    for bad in ("2,x", "1,4", [9]):
        with pytest.raises(InputError):
            parse_candidates(bad)


def test_large_lambda_drives_bits_down(small_gcn):
    model, data = small_gcn
    low = qg_compile(model, data, policy="mixq", options={**FAST, "lambda": 0.0})
    high = qg_compile(model, data, policy="mixq", options={**FAST, "lambda": 1000.0})
    bits_low = low.report["mixq"]["average_bits"]
    bits_high = high.report["mixq"]["average_bits"]
    assert bits_high < bits_low - 1.0
    assert high.report["bitops"]["reduction"] > 2 * low.report["bitops"]["reduction"]
    assert high.report["bitops"]["bitops"] < low.report["bitops"]["bitops"]


def test_chosen_bits_reach_specs_ir_and_onnx(small_gcn, tmp_path):
    model, data = small_gcn
    # unfused messages: every quantize point's DequantizeLinear is a top-level node this test can count
    options = {**FAST, "lambda": 1000.0, "message_fusion": "off"}
    compiled = qg_compile(model, data, policy="mixq", options=options)
    points = compiled.report["mixq"]["points"]
    assert {p["bits"] for p in points} >= {2, 8}  # a mixed assignment
    gm = compiled.graph_module
    assert not any(isinstance(m, (FakeQuantize, MixedPrecisionFakeQuantize)) for m in gm.modules())
    nodes = {n.name: n for n in gm.graph.nodes}
    quantizers = {n.meta["qg_source"]: n for n in gm.graph.nodes if n.target == QUANTIZE}
    for point in points:
        assert nodes[point["node"]].meta["qg_qspec"].bits == point["bits"]
        assert compiled.report["quantization"][point["node"]]["bits"] == point["bits"]
        q = quantizers[point["node"]]
        qmin, qmax = (int(getattr(gm, a.target)) for a in q.args[3:5])
        assert (qmin, qmax) == (-(2 ** (point["bits"] - 1)), 2 ** (point["bits"] - 1) - 1)
    report = compiled.export_onnx(tmp_path / "mixq.onnx", data)
    assert report["argmax_agreement"] == 1.0
    proto = onnx.load(str(tmp_path / "mixq.onnx"))
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    types = {t.name: t.data_type for t in proto.graph.initializer}
    producer = {out: n for n in proto.graph.node for out in n.output}
    dequantize = [n for n in proto.graph.node if n.op_type == "DequantizeLinear"]
    # one INT4 tensor per <= 4-bit point (a tensor read by two consumers may have two DequantizeLinear);
    # quantize-bias's int32 biases are stored narrower where their integers fit, and are not points
    int4 = {n.input[0] for n in dequantize if types[n.input[2]] == onnx.TensorProto.INT4}
    assert len({t for t in int4 if "_bias_int" not in t}) == sum(p["bits"] <= 4 for p in points)
    # a 2-bit activation is clamped to 4 levels before QuantizeLinear: (high - low) / scale == 3
    steps = []
    for n in proto.graph.node:
        clip = producer.get(n.input[0])
        if n.op_type == "QuantizeLinear" and clip is not None and clip.op_type == "Min":
            low = inits[producer[clip.input[0]].input[1]].item()
            steps.append(round((inits[clip.input[1]].item() - low) / inits[n.input[1]].item()))
    weights = [p for p in points if p["role"] == "weight"]
    assert steps.count(3) == sum(p["bits"] == 2 for p in points) - sum(p["bits"] == 2 for p in weights)
    for p in weights:  # weights are stored quantized: their integers fit the chosen bits
        q = inits[f"{nodes[p['node']].target}.quantized"].astype(int)
        assert q.min() >= -(2 ** (p["bits"] - 1)) and q.max() <= 2 ** (p["bits"] - 1) - 1


def test_bitops_of_an_all_8_bit_gcn_match_a_hand_count():
    # 4 nodes, 6 directed edges without self loops; GCN adds 4 self loops: 10 messages per layer
    edge_index = torch.tensor([[0, 1, 1, 2, 2, 3], [1, 0, 2, 1, 3, 2]])
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 0, 1])
    data = GraphData(x=x, edge_index=edge_index, y=y, test_mask=torch.ones(4, dtype=torch.bool))
    torch.manual_seed(0)
    model = build_model("gcn", 3, 2, hidden=4).eval()
    compiled = qg_compile(model, data, policy="minmax", bits=8)
    bitops = compiled.report["bitops"]
    macs = {"linear": 4 * 3 * 4, "aggregation_0": 10 * 4, "linear_1": 4 * 4 * 2, "aggregation_1": 10 * 2}
    total = sum(macs.values())
    assert bitops["macs"] == total == 140
    assert bitops["bitops"] == total * 8 * 8
    assert bitops["fp32_bitops"] == total * 32 * 32
    assert bitops["reduction"] == pytest.approx(16.0)
    assert bitops["average_bits"] == 8.0
    rows = bitops["per_op"]
    assert [(r["kind"], r["macs"]) for r in rows] == [
        ("linear", 48),
        ("aggregation", 40),
        ("linear", 32),
        ("aggregation", 20),
    ]
    assert all(r["bits"] == [8.0, 8.0] for r in rows)
    fp32 = qg_compile(model, data, policy="fp32")
    assert "bitops" not in fp32.report
    unquantized = count_bitops(fp32.graph_module, fp32.input_names, data.inputs())
    assert unquantized["bitops"] == unquantized["fp32_bitops"] == total * 32 * 32


def test_mixq_composes_with_degree_quant_masks(small_gcn, tmp_path):
    model, data = small_gcn
    pipeline = (
        "canonicalize,tag-roles,dropout-to-module,annotate,calibrate,prepare-qat,degree-mask,"
        "search-bits,train-qat,convert-qat"
    ).split(",")
    compiled = qg_compile(
        model, data, policy="mixq", pipeline=pipeline, options={**FAST, "lambda": 1.0, "p_max": 0.3}
    )
    assert compiled.report["degree_mask"]["masked_quantizers"] > 0
    assert compiled.report["passes"][-5:] == [
        "degree-mask", "search-bits", "train-qat", "convert-qat", "quantize-bias"
    ]  # fmt: skip
    assert not any(n.op == "call_module" for n in compiled.graph_module.graph.nodes)
    assert compiled.export_onnx(tmp_path / "dq_mixq.onnx", data)["argmax_agreement"] == 1.0


def test_search_needs_fake_quantizers(small_gcn):
    model, data = small_gcn
    with pytest.raises(InputError, match="prepare-qat"):
        qg_compile(model, data, policy="mixq", pipeline=["canonicalize", "tag-roles", "search-bits"])
    with pytest.raises(InputError, match="lambda"):
        qg_compile(model, data, policy="mixq", options={**FAST, "lambda": -1.0})


def test_cli_compile_mixq(tmp_path):
    ckpt, out, rep = tmp_path / "m.pt", tmp_path / "m.onnx", tmp_path / "r.json"
    syn = "synthetic:nodes=200,seed=2"
    assert main(["train", "--arch", "gcn", "--data", syn, "--epochs", "10", "--quiet", "-o", str(ckpt)]) == 0
    args = ["compile", str(ckpt), "--data", syn, "--policy", "mixq", "-o", str(out), "--report", str(rep)]
    flags = ["--lambda", "5", "--bit-candidates", "2,4", "--search-epochs", "4", "--target-bits", "3"]
    assert main([*args, *flags, "--epochs", "2", "--quiet"]) == 0
    report = json.loads(rep.read_text())
    mixq = report["mixq"]
    assert mixq["lambda"] == 5.0 and mixq["candidates"] == [2, 4] and mixq["search_epochs"] == 4
    assert mixq["average_bits"] <= 3.0 and {p["bits"] for p in mixq["points"]} <= {2, 4}
    assert report["bitops"]["reduction"] > 16.0
    assert report["accuracy"]["onnx"] == pytest.approx(report["accuracy"]["quantized"], abs=1e-6)


def test_mixq_searches_graph_classification_on_validation_batches(tmp_path):
    root = data_root()
    path = root / "graph_classification" / "hard_small.npz" if root else None
    if path is None or not path.exists():
        pytest.skip("shared graph-classification data not found")
    splits = load_graph_classification(path)
    torch.manual_seed(0)
    model = build_model("gin_graph", 5, 3)
    test = collate(splits["test"])
    compiled = qg_compile(
        model,
        test,
        policy="mixq",
        calibration=[collate(splits["train"][:64])],
        task_data={"graphs": {"train": splits["train"][:64], "val": splits["val"][:80]}},
        options={"search_epochs": 2, "epochs": 1, "lambda": 10.0, "batch_size": 32},
    )
    mixq = compiled.report["mixq"]
    assert mixq["search_on"] == "val" and len(mixq["points"]) == compiled.report["quantization_points"]
    assert compiled.report["bitops"]["reduction"] > 16.0
    assert compiled.export_onnx(tmp_path / "gin.onnx", test)["argmax_agreement"] == 1.0
