"""Acceptance on Cora: each zoo architecture compiled with minmax INT8 stays close to FP32 in onnxruntime,
and the native backend reproduces the fake-quant model's accuracy exactly.

Trains each model once (seed 0, per-arch defaults, at most ``EPOCH_CAP`` epochs) — about a minute on 2 cores in
all. The cap only shortens GAT's 1000-epoch recipe (94 s of training alone, the slowest item of the default
run); these tests check what quantization does to a trained model, and the full recipe's accuracy is measured
by ``tools/reproduce.py`` (docs/results.md).
"""

from __future__ import annotations

import pytest
import torch

from quantgraph.compiler import compile as qg_compile
from quantgraph.data import load_dataset
from quantgraph.models import TRAIN_DEFAULTS, build_model
from quantgraph.training import train_node_classifier


@pytest.fixture(scope="module")
def cora(planetoid_root):
    return load_dataset("cora", planetoid_root)


_TRAINED: dict[str, torch.nn.Module] = {}
EPOCH_CAP = 300


def _trained(arch: str, data):
    """The arch trained once per test run (seed 0): the GIN tests share one model."""
    if arch in _TRAINED:
        return _TRAINED[arch]
    torch.manual_seed(0)
    model = build_model(arch, data.num_features, data.num_classes)
    hp = TRAIN_DEFAULTS[arch]
    early = {k: hp[k] for k in ("patience", "select") if k in hp}  # the recipe's early stopping (GAT)
    train_node_classifier(
        model,
        data,
        epochs=min(hp["epochs"], EPOCH_CAP),
        lr=hp["lr"],
        weight_decay=hp["weight_decay"],
        seed=0,
        **early,
    )
    _TRAINED[arch] = model
    return model


@pytest.mark.parametrize("arch", ["gcn", "gat", "sage", "gin"])
def test_minmax_int8_and_int4_on_cora(arch, cora, tmp_path):
    model = _trained(arch, cora)
    compiled = qg_compile(model, cora, policy="minmax", bits=8)
    onnx_report = compiled.export_onnx(tmp_path / "m8.onnx", cora)
    acc = compiled.report["accuracy"]
    assert onnx_report["argmax_agreement"] >= 0.999
    assert acc["onnx"] == pytest.approx(acc["quantized"], abs=2e-3)
    if arch == "gin":
        # Sum aggregation over Cora's power-law degrees: per-tensor min/max ranges are set by hub nodes
        # and starve degree-1 nodes (see docs/results.md); percentile ranges recover the accuracy.
        assert acc["fp32"] - acc["onnx"] > 0.01
        robust = qg_compile(
            model,
            cora,
            policy="minmax",
            bits=8,
            options={"calibration": "percentile", "percentile_tail": 0.01},
        )
        robust.export_onnx(tmp_path / "p8.onnx", cora)
        assert abs(robust.report["accuracy"]["fp32"] - robust.report["accuracy"]["onnx"]) <= 0.01
    else:
        assert abs(acc["fp32"] - acc["onnx"]) <= 0.01
    native = qg_compile(model, cora, policy="minmax", bits=8, backend="native")
    native_report = native.export_native(tmp_path / "m8.qgn", cora)
    # the native kernels compute the fake-quant model's integers exactly, so the accuracy is the same
    assert native_report["integer_tensors"]["equal"] and native_report["max_abs_error"] == 0.0
    assert native.report["accuracy"]["native"] == native.report["accuracy"]["quantized"]
    four = qg_compile(model, cora, policy="minmax", bits=4)
    four_report = four.export_onnx(tmp_path / "m4.onnx", cora)
    assert four_report["argmax_agreement"] >= 0.99
    assert four.report["size_bytes"]["quantized"] < compiled.report["size_bytes"]["quantized"]


@pytest.mark.xfail(
    reason="known open gap (calibration, not export): per-tensor relative-MSE ranges leave GIN INT8 more than "
    "1 point below FP32 on this test's model, in the IR and onnxruntime alike (over 10 seeds of the previous "
    "GIN recipe: -2.09, docs/results.md); the per-bucket `ptq` policy (next test) closes the gap",
    strict=False,
)
def test_gin_relative_mse_int8_within_one_point(cora, tmp_path):
    """Per-tensor relative-MSE ranges on GIN (the earlier recommendation; the per-bucket ``ptq`` policy
    below replaced it)."""
    model = _trained("gin", cora)
    relative = qg_compile(model, cora, policy="minmax", bits=8, options={"calibration": "relative-mse"})
    report = relative.export_onnx(tmp_path / "r8.onnx", cora)
    assert report["argmax_agreement"] >= 0.999
    assert abs(relative.report["accuracy"]["fp32"] - relative.report["accuracy"]["onnx"]) <= 0.01


@pytest.mark.slow
def test_gin_ptq_int8_within_one_point(cora, tmp_path):
    """The recommended label-free PTQ (policy ``ptq``: a relative-MSE range per in-degree bucket) on GIN."""
    model = _trained("gin", cora)
    compiled = qg_compile(model, cora, policy="ptq", bits=8)
    report = compiled.export_onnx(tmp_path / "ptq8.onnx", cora)
    assert report["argmax_agreement"] >= 0.999
    acc = compiled.report["accuracy"]
    assert acc["onnx"] == pytest.approx(acc["quantized"], abs=2e-3)
    assert abs(acc["fp32"] - acc["onnx"]) <= 0.01
