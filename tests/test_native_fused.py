"""Fused native kernels (epilogues, input quantize in the GEMM, renumbering) equal the unfused steps."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from quantgraph.native import kernels as K
from quantgraph.native.runtime import NativeModel

pytestmark = pytest.mark.skipif(not __import__("quantgraph.native.build", fromlist=["x"]).available(),
                                reason="no C compiler")  # fmt: skip


def _graph(rng: np.random.Generator, n: int, e: int, weighted: bool) -> K.CSR:
    ei = np.stack([rng.integers(0, n, e), rng.integers(0, n, e)])
    w = rng.integers(-128, 128, e).astype(np.int8) if weighted else None
    return K.CSR.from_edge_index(ei, n, w)


def _chain(rng: np.random.Generator, rows: int, cols: int, last: tuple[int, int]) -> list[K.Stage]:
    """Three requantize stages: per-row multiplier, bias + per-column, relu into the last range."""
    return [
        K.Stage(rng.uniform(1e-3, 2e-2, rows), rng.integers(-3, 3, rows), -128, 127, axis=0),
        K.Stage(
            rng.uniform(0.3, 0.9, cols),
            2,
            -128,
            127,
            axis=1,
            input_zero_point=1,
            bias=rng.integers(-40, 40, cols).astype(np.int32),
        ),  # fmt: skip
        K.Stage(0.37, -1, last[0], last[1], input_zero_point=2, relu_in=True, relu=True),
    ]


def _unfused(acc: np.ndarray, stages: list[K.Stage]) -> np.ndarray:
    t = acc
    for st in stages:
        t = K.requantize_affine(
            t, st.multiplier, st.zero_point, st.qmin, st.qmax, st.axis if st.axis is not None else -1,
            input_zero_point=st.input_zero_point, bias=st.bias, relu=st.relu_in, out_dtype=np.int32,
        ) if (st.input_zero_point or st.bias is not None or st.relu_in) else K.requantize(
            t, st.multiplier, st.zero_point, st.qmin, st.qmax, st.axis if st.axis is not None else -1,
            relu=st.relu, out_dtype=np.int32,
        )  # fmt: skip
    return t


@pytest.mark.parametrize("bits", [8, 4, 2])
@pytest.mark.parametrize("features", [7, 16, 64, 130])
@pytest.mark.parametrize("weighted", [False, True])
def test_spmm_epilogue_equals_unfused_chain(bits: int, features: int, weighted: bool) -> None:
    rng = np.random.default_rng(bits * 1000 + features + weighted)
    n = 300
    csr = _graph(rng, n, 4000, weighted)
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    q = rng.integers(lo, hi + 1, (n, features)).astype(np.int8)
    x = q if bits == 8 else K.pack(q, bits)
    acc = K.spmm(csr, x, bits, 1, num_features=features)
    for out_bits in (8, 4, 2):
        r = (-(2 ** (out_bits - 1)), 2 ** (out_bits - 1) - 1)
        stages = _chain(rng, n, features, r)
        want = _unfused(acc, stages)
        got = K.spmm_epilogue(csr, x, bits, 1, stages, out_bits=out_bits, num_features=features, threads=2)
        got = got if out_bits == 8 else K.unpack(got, out_bits, features)
        np.testing.assert_array_equal(got, want)
    stages = _chain(rng, n, features, (-128, 127))
    want = ((_unfused(acc, stages) - 3).astype(np.float32) * np.float32(0.0123)).astype(np.float32)
    got = K.spmm_epilogue(csr, x, bits, 1, stages, dequantize=(0.0123, 3), num_features=features)
    np.testing.assert_array_equal(got, want)


def test_spmm_epilogue_with_message_quantizer() -> None:
    rng = np.random.default_rng(5)
    csr = _graph(rng, 200, 3000, True)
    q = rng.integers(-128, 128, (200, 24)).astype(np.int8)
    msg = K.MessageQuant(0.01, 2, -128, 127)
    acc = K.spmm(csr, q, 8, 0, message=msg)
    stages = _chain(rng, 200, 24, (-8, 7))
    got = K.unpack(K.spmm_epilogue(csr, q, 8, 0, stages, out_bits=4, message=msg), 4, 24)
    np.testing.assert_array_equal(got, _unfused(acc, stages))


@pytest.mark.parametrize("out_bits", [8, 4, 2])
def test_gemm_epilogue_with_input_quantize_and_row_index(out_bits: int) -> None:
    rng = np.random.default_rng(out_bits)
    m, k, n = 301, 130, 37
    x = (rng.standard_normal((m, k)) * 3).astype(np.float32)
    w = rng.integers(-128, 128, (k, n)).astype(np.int8)
    pw = K.pack_weight(w)
    zb = rng.integers(-3, 3, n).astype(np.int32)
    bias = rng.integers(-1000, 1000, n).astype(np.int32)
    perm = rng.permutation(m).astype(np.int64)
    lo, hi = -(2 ** (out_bits - 1)), 2 ** (out_bits - 1) - 1
    stages = [K.Stage(rng.uniform(1e-4, 1e-3, n), rng.integers(-2, 2, n), lo, hi, axis=1)]
    qx = K.quantize(x, 0.05, 1, -128, 127)
    want = _unfused(K.gemm_i8(qx[perm].copy(), pw, 1, zb, bias), stages)
    got = K.gemm_epilogue(x, pw, 1, zb, bias, stages, out_bits=out_bits, input_quant=(0.05, 1, -128, 127),
                          row_index=perm, threads=2)  # fmt: skip
    got = got if out_bits == 8 else K.unpack(got, out_bits, n)
    np.testing.assert_array_equal(got, want)
    got8 = K.gemm_epilogue(qx, pw, 1, zb, bias, stages, out_bits=out_bits)
    got8 = got8 if out_bits == 8 else K.unpack(got8, out_bits, n)
    np.testing.assert_array_equal(got8, _unfused(K.gemm_i8(qx, pw, 1, zb, bias), stages))


def test_rows_epilogue_equals_requantize_affine() -> None:
    rng = np.random.default_rng(3)
    x = rng.integers(-128, 128, (50, 33)).astype(np.int8)
    stages = _chain(rng, 50, 33, (-2, 1))
    got = K.unpack(K.rows_epilogue(x, stages, out_bits=2), 2, 33)
    np.testing.assert_array_equal(got, _unfused(x.astype(np.int32), stages))


def test_epilogue_refuses_a_range_wider_than_the_packed_output() -> None:
    rng = np.random.default_rng(0)
    stages = [K.Stage(0.1, 0, -128, 127)]
    with pytest.raises(Exception, match="rows_epilogue failed"):
        K.rows_epilogue(rng.integers(-5, 5, (4, 4)).astype(np.int8), stages, out_bits=4)


# ------------------------------------------------------------------------------------------ runtime: plan, order


@functools.cache
def _gcn(bits: int, skip: tuple[str, ...] = ("message",)):
    """A compiled GCN and its native model (cached: compiling dominates these tests)."""
    import torch

    import quantgraph as qg
    from quantgraph.models import build_model

    from .test_native_backend import _power_law

    torch.manual_seed(0)
    data = _power_law(400, seed=1, features=24)
    model = build_model("gcn", 24, 5, hidden=16, normalize_features=False).eval()  # the plain layer pair
    options = {"skip_roles": list(skip)} if skip else None
    compiled = qg.compile(model, data, policy="minmax", bits=bits, backend="native", options=options)
    return compiled, compiled.to_native(data, threads=2), data


@pytest.mark.parametrize("bits", [8, 4, 2])
@pytest.mark.parametrize("skip", [("message",), ()], ids=["int-aggregation", "message-quant"])
def test_fused_plan_of_gcn_folds_every_elementwise_step(bits: int, skip: tuple[str, ...]) -> None:
    from quantgraph.native.fusion import FusedStep

    _, native, _ = _gcn(bits, skip)
    plan = native._plan
    assert all(isinstance(p, FusedStep) for p in plan), [getattr(p, "op", "fused") for p in plan]
    quantize_linear, layer1, linear2, layer2 = plan
    assert quantize_linear.input_quantize is not None and quantize_linear.head.op == "native.linear"
    assert layer1.head.op == "native.aggregate" and [s.op for s in layer1.stages] == ["native.requantize"] * 2
    assert layer2.dequantize is not None and layer2.out in native.program.outputs
    packed = 8 if bits == 8 else bits
    assert quantize_linear.out_bits == linear2.out_bits == packed


@pytest.mark.parametrize("bits", [8, 4, 2])
@pytest.mark.parametrize("order", ["none", "degree", "rcm"])
@pytest.mark.parametrize("narrow_rows", [16, 0], ids=["narrow-int8", "all-packed"])
def test_fused_and_renumbered_runs_equal_the_ir(bits: int, order: str, narrow_rows: int) -> None:
    """Also with the narrow 4/2-bit rows (hidden 16, 5 classes) aggregated from int8 storage or packed."""
    import torch

    compiled, cached, _ = _gcn(bits)
    native = NativeModel(cached.program, threads=2, narrow_rows=narrow_rows)
    from .test_native_backend import _power_law

    other = _power_law(700, seed=7, features=24)  # not the calibration graph
    inputs = other.inputs()
    prepared = native.prepare(inputs, order=order)
    assert prepared.order == order and (prepared.perm is None) == (order == "none")
    if prepared.perm is not None:
        assert sorted(prepared.perm.tolist()) == list(range(700))
        assert not np.array_equal(prepared.perm, np.arange(700))
    ir = compiled.run(inputs)
    assert torch.equal(native.run(inputs, prepared), ir)
    got = native.integer_values(inputs, prepared)  # compared in the input order
    expected = compiled.integer_values(inputs)
    assert got and all(torch.equal(v.long(), expected[k].long()) for k, v in got.items())


def test_renumbering_keeps_the_order_of_graphs_it_cannot_renumber() -> None:
    compiled, native, data = _gcn(8)
    inputs = data.inputs()
    n = inputs["x"].shape[0]
    square = {"x": inputs["x"], "edge_index": inputs["edge_index"][:, :n]}  # E == N: edge or node rows?
    assert native.prepare(square, order="degree").perm is None
    with pytest.raises(Exception, match="unknown node order"):
        native.prepare(inputs, order="metis")


def test_node_orders_are_permutations_that_group_the_gathered_rows() -> None:
    from quantgraph.native.order import inverse, node_order

    rng = np.random.default_rng(0)
    ei = np.stack([rng.zipf(2.0, 5000) % 300, rng.integers(0, 300, 5000)])
    perm = node_order(ei, 300, "degree")
    np.testing.assert_array_equal(np.sort(perm), np.arange(300))
    out_degree = np.bincount(ei[0], minlength=300)[perm]
    assert np.all(np.diff(out_degree) <= 0)  # most gathered rows first
    np.testing.assert_array_equal(inverse(perm)[perm], np.arange(300))
    rcm = node_order(ei, 300, "rcm")
    np.testing.assert_array_equal(np.sort(rcm), np.arange(300))
    assert node_order(ei, 300, "none") is None


# ------------------------------------------------------------------------------------------ ISA levels


def _cpu_has(flag: str) -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            return any(line.startswith("flags") and f" {flag}" in line for line in fh)
    except OSError:
        return False


def _kernel_outputs() -> list[np.ndarray]:
    """Aggregations (short and wide rows, every width, weighted or not), epilogues and the fused GEMM."""
    rng = np.random.default_rng(11)
    n = 500
    outs = []
    for weighted in (False, True):
        csr = _graph(rng, n, 6000, weighted)
        for bits in (8, 4, 2):
            for f in (7, 16, 64):
                lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
                q = rng.integers(lo, hi + 1, (n, f)).astype(np.int8)
                x = q if bits == 8 else K.pack(q, bits)
                outs.append(K.spmm(csr, x, bits, 1, num_features=f))
                stages = _chain(rng, n, f, (-8, 7))
                outs.append(K.spmm_epilogue(csr, x, bits, 1, stages, out_bits=4, num_features=f))
        q = rng.integers(-128, 128, (n, 24)).astype(np.int8)
        outs.append(K.spmm(csr, q, 8, 0, message=K.MessageQuant(0.01, 1, -128, 127)))
    x = (rng.standard_normal((n, 40)) * 2).astype(np.float32)
    pw = K.pack_weight(rng.integers(-128, 128, (40, 19)).astype(np.int8))
    st = [K.Stage(rng.uniform(1e-4, 1e-3, 19), 1, -2, 1, axis=1)]
    outs.append(K.gemm_epilogue(x, pw, 2, 1, None, st, out_bits=2, input_quant=(0.1, 2, -128, 127)))
    return outs


@pytest.mark.parametrize("level", ["avx2", "portable"])
def test_avx2_and_portable_builds_equal_the_native_build(level: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from quantgraph.native import build

    if level == "avx2" and not _cpu_has("avx2"):
        pytest.skip("no AVX2 on this CPU")
    native = build.load()
    want = _kernel_outputs()
    monkeypatch.setenv("QUANTGRAPH_NATIVE_ISA", level)
    other = build.load()
    assert other.path != native.path
    if level == "portable":
        assert not other.vnni
    got = _kernel_outputs()
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)


def test_unknown_isa_level_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from quantgraph.errors import InputError
    from quantgraph.native import build

    monkeypatch.setenv("QUANTGRAPH_NATIVE_ISA", "avx9000")
    with pytest.raises(InputError, match="QUANTGRAPH_NATIVE_ISA='avx9000' is not an ISA level"):
        build.load()


# ------------------------------------------------------------------------------------------ sparse GEMM input rows


def _sparse_rows(rng: np.random.Generator, m: int, k: int, zero: float, dense_rows: list[int]) -> np.ndarray:
    """Rows with a handful of entries != ``zero`` (at most k / 16), except ``dense_rows``; some entries tiny."""
    x = np.full((m, k), zero, dtype=np.float32)
    for i in range(m):
        nnz = k if i in dense_rows else int(rng.integers(0, max(1, k // 16) + 1))
        cols = rng.choice(k, nnz, replace=False)
        x[i, cols] = rng.uniform(-4, 4, nnz).astype(np.float32)
    x[rng.integers(0, m, 20), rng.integers(0, k, 20)] = 1e-4  # nonzero, but quantizes to the zero point
    return x


@pytest.mark.parametrize("k, n", [(301, 37), (1433, 64), (64, 7), (130, 130)])
def test_gemm_sparse_input_rows_equal_the_dense_sum(k: int, n: int) -> None:
    """Rows that are mostly the zero point (bag-of-words inputs) are summed from the weight rows of their other
    entries: the same integers as the dense GEMM, for sparse, dense and mixed 48-row tasks, odd widths, a zero
    point != 0, per-column weight zero points, any thread count; float inputs quantized in the GEMM or int8."""
    rng = np.random.default_rng(k + n)
    m = 150
    w = rng.integers(-128, 128, (k, n)).astype(np.int8)
    w[0, :] = -128
    pw = K.pack_weight(w)
    zb = rng.integers(-128, 128, n).astype(np.int32)
    bias = rng.integers(-(2**20), 2**20, n).astype(np.int32)
    stages = [K.Stage(rng.uniform(1e-5, 1e-4, n), rng.integers(-2, 2, n), -128, 127, axis=1)]
    for zp, dense_rows in ((3, []), (3, [0, 49, 50, 51, 149]), (-128, [10, 97]), (0, list(range(48, 96)))):
        x = _sparse_rows(rng, m, k, 0.0, dense_rows)
        x[5, :4] = [1e9, -1e9, 0.02, -0.0]  # clamped both ways, and -0.0
        quant = (0.05, zp, -128, 127)
        qx = K.quantize(x, *quant)
        ref = (qx.astype(np.int64) - zp) @ (w.astype(np.int64) - zb[None, :]) + bias
        assert np.abs(ref).max() < 2**31
        want = _unfused(ref.astype(np.int32), stages)
        for threads in (1, 2, 3):
            got = K.gemm_epilogue(x, pw, zp, zb, bias, stages, input_quant=quant, threads=threads)
            np.testing.assert_array_equal(
                got, want, err_msg=f"zp {zp}, dense rows {dense_rows}, {threads} threads"
            )
            np.testing.assert_array_equal(K.gemm_i8(qx, pw, zp, zb, bias, threads=threads), ref)
        # the GEMM's zero point differs from the quantizer's: zero entries count, the dense path is exact
        other = (qx.astype(np.int64) - (zp + 1)) @ (w.astype(np.int64) - zb[None, :]) + bias
        got = K.gemm_epilogue(x, pw, zp + 1, zb, bias, stages, input_quant=quant)
        np.testing.assert_array_equal(got, _unfused(other.astype(np.int32), stages))
    # int8 rows far from a zero point outside int8 (|a - za| > 255: 32-bit products)
    qa = np.full((60, k), 127, dtype=np.int8)
    qa[::2, : k // 2] = -128
    ref = (qa.astype(np.int64) - 200) @ (w.astype(np.int64) - 1)
    np.testing.assert_array_equal(K.gemm_i8(qa, pw, 200, 1), ref)
    qa = np.full((60, k), -7, dtype=np.int8)
    qa[rng.integers(0, 60, 30), rng.integers(0, k, 30)] = 127
    ref = (qa.astype(np.int64) + 7) @ (w.astype(np.int64) - zb[None, :])
    np.testing.assert_array_equal(K.gemm_i8(qa, pw, -7, zb, threads=2), ref)


def test_prepared_epilogue_is_reused_and_checked() -> None:
    rng = np.random.default_rng(8)
    x = rng.integers(-128, 128, (40, 9)).astype(np.int8)
    stages = _chain(rng, 40, 9, (-8, 7))
    epi = K.prepare_epilogue(40, 9, stages, out_bits=4)
    want = K.rows_epilogue(x, stages, out_bits=4)
    for _ in range(2):
        np.testing.assert_array_equal(K.rows_epilogue(x, epi, out_bits=4), want)
    with pytest.raises(Exception, match="prepared for"):
        K.rows_epilogue(x[:20], epi, out_bits=4)
    with pytest.raises(Exception, match="differ from"):
        K.rows_epilogue(x, epi, out_bits=8)


def test_gcn_on_bag_of_words_inputs_equals_the_ir() -> None:
    """Cora-like inputs (wide, row-normalised, ~1 % nonzero, a few dense rows): the fused run, whose first GEMM
    takes the sparse-row path, gives the IR's logits, on the calibration graph and on another graph."""
    import torch

    import quantgraph as qg
    from quantgraph.data.graph import GraphData
    from quantgraph.models import build_model

    from .test_native_backend import _power_law

    def bag_of_words(seed: int, n: int) -> GraphData:
        g = _power_law(n, seed=seed)
        gen = torch.Generator().manual_seed(seed)
        x = (torch.rand(n, 500, generator=gen) < 0.012).float()
        x[:3] = torch.rand(3, 500, generator=gen)  # dense rows
        x = x / x.sum(1, keepdim=True).clamp(min=1)
        return GraphData(x=x, edge_index=g.edge_index, name="bag-of-words")

    torch.manual_seed(0)
    data = bag_of_words(1, 300)
    model = build_model("gcn", 500, 5, hidden=16, normalize_features=False).eval()
    compiled = qg.compile(
        model, data, policy="minmax", bits=8, backend="native", options={"skip_roles": ["message"]}
    )
    native = compiled.to_native(data, threads=2)
    for graph in (data, bag_of_words(2, 450)):
        inputs = graph.inputs()
        assert torch.equal(native.run(inputs), compiled.run(inputs))
        assert torch.equal(native.run(inputs, native.prepare(inputs, order="degree")), compiled.run(inputs))


def test_narrow_packed_rows_are_stored_int8_unless_messages_are_quantized() -> None:
    from quantgraph.native.fusion import FusedStep

    _, native, _ = _gcn(4)
    packed_step = next(f for f in native._plan if isinstance(f, FusedStep) and f.out_bits == 4)
    assert native._out_bits(packed_step, 16) == 8 and native._out_bits(packed_step, 17) == 4
    assert NativeModel(native.program, narrow_rows=0)._out_bits(packed_step, 16) == 4
    _, with_messages, _ = _gcn(4, ())
    steps = [f for f in with_messages._plan if isinstance(f, FusedStep) and f.out_bits == 4]
    assert steps and all(f.reader_message and with_messages._out_bits(f, 7) == 4 for f in steps)
