"""The papers' bit conventions beside ours (quantgraph.bitops), against hand counts on a 4-node graph."""

from __future__ import annotations

import pytest
import torch

from quantgraph.bitops import average_bits_a2q, bit_conventions, bitops_mixq, memory_bits_sgquant
from quantgraph.compiler import compile as qg_compile
from quantgraph.data import GraphData
from quantgraph.models import build_model

# 4 nodes, 6 directed edges; GCN adds 4 self loops: E = 10 messages per layer. GCN 3 -> 4 -> 2.
# MixQ op counts: linear N·F_in·F_out; aggregation 2·E·F (scatter-add) + E (edge-weight multiply);
# ReLU 2·numel. The modules in graph order: linear, aggregation, linear_1, aggregation_1, then the ReLU.
OPS = [4 * 3 * 4, 2 * 10 * 4 + 10, 4 * 4 * 2, 2 * 10 * 2 + 10, 2 * 4 * 4]
# every stored float tensor: x 12, weights 12 + 8, biases 4 + 2, linear 16, edge weight 10, aggregation 16,
# bias add 16, ReLU 16, linear_1 8, edge weight 10, aggregation_1 8, output 8 (gathers, messages excluded)
ELEMENTS = 12 + 12 + 8 + 4 + 2 + 16 + 10 + 16 + 16 + 16 + 8 + 10 + 8 + 8
BIASES = 4 + 2


@pytest.fixture(scope="module")
def tiny():
    edge_index = torch.tensor([[0, 1, 1, 2, 2, 3], [1, 0, 2, 1, 3, 2]])
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 0, 1])
    mask = torch.ones(4, dtype=torch.bool)
    data = GraphData(x=x, edge_index=edge_index, y=y, train_mask=mask, val_mask=mask, test_mask=mask)
    torch.manual_seed(0)
    return build_model("gcn", 3, 2, hidden=4, normalize_features=False).eval(), data


def test_mixq_bitops_of_an_all_8_bit_gcn_match_a_hand_count(tiny):
    model, data = tiny
    compiled = qg_compile(model, data, policy="minmax", bits=8)
    mixq = bitops_mixq(compiled.graph_module, compiled.input_names, data.inputs())
    assert [r["ops"] for r in mixq["per_module"]] == OPS and mixq["ops"] == sum(OPS) == 252
    assert [r["kind"] for r in mixq["per_module"]] == ["linear", "aggregation"] * 2 + ["activation"]
    assert mixq["bitops"] == 252 * 8 and mixq["fp32_bitops"] == 252 * 32
    assert mixq["reduction"] == pytest.approx(4.0)
    report = compiled.report
    assert report["bitops"]["mixq_convention"]["bitops"] == 252 * 8
    assert report["average_bits"] == {"elements": 8.0, "a2q": 8.0, "sgquant": pytest.approx(1312 / 146),
                                      "points": 8.0}  # fmt: skip
    memory = report["sgquant_memory"]
    assert memory["elements"] == ELEMENTS == 146
    assert memory["bits"] == (ELEMENTS - BIASES) * 8 + BIASES * 32  # biases stay FP32 in Q/DQ


def test_a_module_point_left_in_fp32_counts_32_bits(tiny):
    model, data = tiny
    compiled = qg_compile(model, data, policy="minmax", bits=4, options={"skip_roles": ["aggregation"]})
    mixq = bitops_mixq(compiled.graph_module, compiled.input_names, data.inputs())
    means = [r["mean_bits"] for r in mixq["per_module"]]
    # aggregations: mean(gathered features 4, unquantized output 32) = 18; the ReLU reads the 4-bit bias add
    assert means == [4.0, 18.0, 4.0, 18.0, 4.0]
    assert mixq["bitops"] == 48 * 4 + 90 * 18 + 32 * 4 + 50 * 18 + 32 * 4
    memory = memory_bits_sgquant(compiled.graph_module, compiled.input_names, data.inputs())
    unquantized = BIASES + 16 + 8  # biases and the two aggregation outputs
    assert memory["bits"] == (ELEMENTS - unquantized) * 4 + unquantized * 32
    assert memory["average_bits"] == pytest.approx(memory["bits"] / ELEMENTS)
    assert memory["reduction"] == pytest.approx(ELEMENTS * 32 / memory["bits"])


def test_average_bits_over_elements_weights_each_point_by_its_size(tiny):
    model, data = tiny
    compiled = qg_compile(model, data, policy="minmax", bits=8, options={"skip_roles": ["message"]})
    # lower the two weights (12 and 8 elements) to 4 bits by hand: qmin/qmax are the IR's constants
    gm = compiled.graph_module
    for node in gm.graph.nodes:
        if node.op == "get_attr" and "lin_weight_q" in node.target:
            value = getattr(gm, node.target)
            setattr(gm, node.target, torch.full_like(value, -8 if node.target.endswith("qmin") else 7))
    conv = bit_conventions(gm, compiled.input_names, data.inputs())
    # points: x 12, w 12 (4 bit), w 8 (4 bit), linear 16, edge weight 10, aggregation 16, bias add 16,
    # ReLU 16, linear_1 8, edge weight 10, aggregation_1 8, output 8
    quantized = 12 + 16 + 10 + 16 + 16 + 16 + 8 + 10 + 8 + 8
    assert conv["average_bits"]["elements"] == pytest.approx((quantized * 8 + 20 * 4) / (quantized + 20))
    assert conv["average_bits"]["points"] == pytest.approx((10 * 8 + 2 * 4) / 12)
    linear = [r for r in conv["mixq"]["per_module"] if r["kind"] == "linear"]
    assert [r["bits"] for r in linear] == [[8.0, 4.0, 8.0]] * 2


def test_a2q_average_bits_drop_the_sign_bit_of_post_relu_features_on_a_signed_grid(tiny):
    assert average_bits_a2q([8.0, torch.tensor([2.0, 4.0]), 4.0], [False, False, True]) == pytest.approx(
        (8 + 3 + 3) / 3
    )
    assert average_bits_a2q([]) == 32.0
    from tests.plugins import lsq_policy  # noqa: F401  (symmetric signed quantizers at every role)

    model, data = tiny
    compiled = qg_compile(model, data, policy="lsq-plugin", bits=4, options={"epochs": 1})
    conv = bit_conventions(compiled.graph_module, compiled.input_names, data.inputs())
    # layer 0 reads the raw input (4 bits); layer 1 the ReLU output on a symmetric signed grid (3 bits used)
    assert conv["average_bits"]["a2q"] == pytest.approx((4 + 3) / 2)
    affine = qg_compile(model, data, policy="minmax", bits=4)  # affine: the zero-point uses every level
    assert affine.report["average_bits"]["a2q"] == 4.0
