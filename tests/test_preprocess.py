"""Input preprocessing inside the traced model (the zoo's row normalisation): no quantization point of its
own, the input point on its result, exports that take raw features and equal the IR, QAT that stays finite."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from quantgraph.compiler import compile as qg_compile
from quantgraph.data import GraphData, load_dataset
from quantgraph.ir.meta import QSPEC_KEY, ROLE_KEY
from quantgraph.ir.ops import QUANTIZE
from quantgraph.ir.roles import Role
from quantgraph.models import build_model
from quantgraph.models.zoo import row_normalize
from quantgraph.training import train_node_classifier

from .conftest import HOST_EXACT

SYN = "synthetic:nodes=300,seed=1"


@pytest.fixture(scope="module")
def bag_of_words() -> GraphData:
    """The synthetic graph with 0/1 features (row sums above 1, so the normalisation changes them)."""
    data = load_dataset(SYN)
    return GraphData(
        x=(data.x > 0.5).float(),
        edge_index=data.edge_index,
        y=data.y,
        train_mask=data.train_mask,
        val_mask=data.val_mask,
        test_mask=data.test_mask,
        name="bag-of-words",
    )


@pytest.fixture(scope="module")
def normalised_gcn(bag_of_words):
    torch.manual_seed(0)
    model = build_model("gcn", bag_of_words.num_features, bag_of_words.num_classes, normalize_features=True)
    train_node_classifier(model, bag_of_words, epochs=20, seed=0)
    return model.eval()


class Standardize(nn.Module):
    """A user's preprocessing module: declaring ``qg_preprocess`` is all tag-roles needs."""

    qg_preprocess = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - x.mean(dim=0)) / (x.std(dim=0) + 1.0)


class UserModel(nn.Module):
    def __init__(self, fin: int, classes: int) -> None:
        super().__init__()
        self.pre, self.lin = Standardize(), nn.Linear(fin, classes)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        return self.lin(self.pre(x))


def _input_points(gm) -> list:
    return [n for n in gm.graph.nodes if QSPEC_KEY in n.meta and n.meta[ROLE_KEY] == Role.INPUT]


def test_gcn_gat_and_sage_normalise_by_default_gin_does_not():
    assert build_model("gcn", 4, 2).feature_norm is not None
    assert build_model("gat", 4, 2).feature_norm is not None
    assert build_model("sage", 4, 2).feature_norm is not None
    assert build_model("gin", 4, 2).feature_norm is None
    plain = build_model("gcn", 4, 2, normalize_features=False)
    assert plain.feature_norm is None
    assert plain.state_dict().keys() == build_model("gcn", 4, 2).state_dict().keys()  # no parameters


def test_normalisation_nodes_carry_no_quantization_point(normalised_gcn, bag_of_words):
    compiled = qg_compile(normalised_gcn, bag_of_words, policy="minmax", bits=8)
    gm = compiled.graph_module
    pre = [n for n in gm.graph.nodes if n.meta.get(ROLE_KEY) == Role.PREPROCESS]
    assert {n.target for n in pre if n.op == "call_function"} == {
        torch.ops.aten.sum.dim_IntList,
        torch.ops.aten.clamp.default,
    }
    assert not any(QSPEC_KEY in n.meta for n in pre)
    x = next(n for n in gm.graph.nodes if n.op == "placeholder" and n.name == "x")
    assert x.meta[ROLE_KEY] == Role.PREPROCESS and not any(u.target == QUANTIZE for u in x.users)
    # one input point, on the normalised features (the division's result, entering the first layer)
    (point,) = _input_points(gm)
    assert point.target == torch.ops.aten.div.Tensor
    quantized = compiled.report["quantization"]
    assert "preprocess" not in {q["role"] for q in quantized.values()}
    assert quantized[point.name]["role"] == "input" and quantized[point.name]["layer"] is None


def test_a_users_preprocessing_module_is_not_quantized(bag_of_words):
    torch.manual_seed(0)
    model = UserModel(bag_of_words.num_features, bag_of_words.num_classes).eval()
    compiled = qg_compile(model, bag_of_words, policy="minmax", bits=8)
    (point,) = _input_points(compiled.graph_module)
    assert point.target == torch.ops.aten.div.Tensor
    assert "preprocess" not in {q["role"] for q in compiled.report["quantization"].values()}
    x = next(n for n in compiled.graph_module.graph.nodes if n.op == "placeholder" and n.name == "x")
    assert x.meta[ROLE_KEY] == Role.PREPROCESS


@pytest.mark.parametrize("backend", ["onnx-qdq", "onnx-int", "native"])
def test_a_normalised_models_exports_take_raw_features_and_equal_the_ir(
    normalised_gcn, bag_of_words, backend, tmp_path
):
    compiled = qg_compile(
        normalised_gcn, bag_of_words, policy="minmax", bits=8, backend=backend, options=HOST_EXACT
    )
    checks = compiled.export(tmp_path / f"m{'.qgn' if backend == 'native' else '.onnx'}")
    assert checks["max_abs_error"] == 0.0 and checks["argmax_agreement"] == 1.0
    # the check ran the artifact and the IR on the raw features; both normalise them inside
    assert not torch.allclose(row_normalize(bag_of_words.x), bag_of_words.x)


def test_the_fp32_onnx_of_a_normalised_model_equals_the_model_on_raw_features(
    normalised_gcn, bag_of_words, tmp_path
):
    compiled = qg_compile(normalised_gcn, bag_of_words, policy="fp32")
    compiled.export(tmp_path / "fp32.onnx")
    session = ort.InferenceSession(str(tmp_path / "fp32.onnx"), providers=["CPUExecutionProvider"])
    feeds = {"x": bag_of_words.x.numpy(), "edge_index": bag_of_words.edge_index.numpy()}
    (onnx_logits,) = session.run(None, feeds)
    with torch.no_grad():
        expected = normalised_gcn(bag_of_words.x, bag_of_words.edge_index).numpy()
    np.testing.assert_allclose(onnx_logits, expected, atol=1e-5)


@pytest.mark.parametrize("policy", ["lsq-plugin", "qat", "degree-quant"])
def test_qat_on_a_normalised_model_stays_finite(normalised_gcn, bag_of_words, policy):
    from tests.plugins import lsq_policy  # noqa: F401  (learned step sizes: the policy that went NaN)

    compiled = qg_compile(normalised_gcn, bag_of_words, policy=policy, bits=4, options={"epochs": 3})
    assert torch.isfinite(compiled.run(bag_of_words)).all()
    scales = [q["scale"] for q in compiled.report["quantization"].values()]
    assert all(np.isfinite(np.asarray(s, dtype=float)).all() for s in scales)
    assert not np.isnan(compiled.report["accuracy"]["quantized"])
