"""reduce_range: 7-bit weights, so that x86 CPUs without VNNI run int8 exports exactly (quantgraph.cpu)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import TensorProto, numpy_helper

import quantgraph as qg
import quantgraph.cpu as cpu
from quantgraph.backends.verify import full_range_int8_weights, ort_session, run_onnx, saturation_check
from quantgraph.data import GraphData
from quantgraph.ir.roles import Role
from quantgraph.policies import get_policy
from quantgraph.policies.base import with_reduced_weight_range

from .conftest import TwoLayer


def _graph(seed: int = 3, nodes: int = 60) -> GraphData:
    g = torch.Generator().manual_seed(seed)
    # a hub and large inputs: big u8 activations meet big weights, the case vpmaddubsw saturates on
    ei = torch.cat(
        [
            torch.randint(0, nodes, (2, 4 * nodes), generator=g),
            torch.stack(
                [torch.randint(0, nodes, (8 * nodes,), generator=g), torch.zeros(8 * nodes, dtype=torch.long)]
            ),
        ],
        1,
    )
    return GraphData(x=3 * torch.randn(nodes, 8, generator=g), edge_index=ei)


def _compile(kind: str, backend: str, **options):
    torch.manual_seed(0)
    return qg.compile(
        TwoLayer(kind).eval(), _graph(), policy="minmax", bits=8, backend=backend, options=options
    )


def _int8_weights(model) -> list[np.ndarray]:
    return [
        numpy_helper.to_array(t)
        for t in model.graph.initializer
        if t.data_type == TensorProto.INT8 and t.dims and len(t.dims) == 2
    ]


@pytest.mark.parametrize("backend", ["onnx-qdq", "onnx-int"])
def test_reduce_range_keeps_every_int8_weight_within_seven_bits(backend):
    full = _compile("gcn", backend).to_onnx()
    reduced = _compile("gcn", backend, reduce_range=True).to_onnx()
    assert full_range_int8_weights(full), "8-bit weights should use values beyond [-64, 63]"
    assert not full_range_int8_weights(reduced)
    weights = _int8_weights(reduced)
    assert weights and all(w.min() >= -64 and w.max() <= 63 for w in weights)
    assert max(int(np.abs(w).max()) for w in weights) >= 60  # the range is used, not merely clipped to zero


def test_reduce_range_narrows_only_8_bit_signed_weights():
    qconfig = get_policy("minmax").build_qconfig(8)
    reduced = with_reduced_weight_range(qconfig)
    assert reduced[Role.WEIGHT].bits == 7 and (reduced[Role.WEIGHT].qmin, reduced[Role.WEIGHT].qmax) == (
        -64,
        63,
    )
    assert all(reduced[r] == s for r, s in qconfig.items() if r != Role.WEIGHT)  # activations keep 8 bits
    four = get_policy("minmax").build_qconfig(4)
    assert with_reduced_weight_range(four) == four


def test_saturating_host_is_x86_with_avx2_and_no_vnni(monkeypatch):
    monkeypatch.setattr(cpu.platform, "machine", lambda: "x86_64")
    for flags, saturates in [
        ({"avx2", "fma"}, True),
        ({"avx2", "avx512f", "avx512bw"}, True),  # AVX-512 without VNNI saturates too
        ({"avx2", "avx512f", "avx512_vnni"}, False),
        ({"avx2", "avx_vnni"}, False),
        ({"sse4_2"}, False),  # no AVX2: onnxruntime's SSE kernels widen to int16 first
    ]:
        monkeypatch.setattr(cpu, "cpu_flags", lambda flags=flags: frozenset(flags))
        assert cpu.int8_dot_saturates() is saturates, flags
    monkeypatch.setattr(cpu.platform, "machine", lambda: "aarch64")
    assert not cpu.int8_dot_saturates()


@pytest.mark.parametrize("kind", ["gcn", "sage", "gin"])
def test_reduce_range_exports_equal_the_ir_in_onnxruntime(kind):
    compiled = _compile(kind, "onnx-qdq", reduce_range=True)
    model = compiled.to_onnx()
    graph = _graph(seed=5, nodes=80)
    ref = compiled.run(graph.inputs())
    step = min(float(d) for d in torch.unique(ref.flatten()).diff()) if ref.numel() > 1 else 0.0
    for threads in (1, 2):
        got = run_onnx(ort_session(model, threads), graph.inputs())
        assert float((got - ref).abs().max()) <= step * 1.001 + 1e-6  # one rounding tie at most
    assert "warning" not in saturation_check(model)


@pytest.mark.skipif(
    not cpu.int8_dot_saturates(), reason="this CPU has VNNI: its int8 kernels do not saturate"
)
def test_full_range_weights_saturate_here_and_the_report_says_how_to_fix_it():
    compiled = _compile("gcn", "onnx-qdq")
    model = compiled.to_onnx()
    ref = compiled.run(_graph().inputs())
    got = run_onnx(ort_session(model, 1), _graph().inputs())
    step = min(float(d) for d in torch.unique(ref.flatten()).diff())
    assert float((got - ref).abs().max()) > 2 * step  # the saturation this option exists for
    check = saturation_check(model)
    assert check["host_saturates_u8s8"] and "reduce_range=true" in check["warning"]
