"""``--backend native`` (issue 5): the .qgn artifact, its runtime and ``quantgraph run``.

The runtime's integers must equal the integer IR's at every materialised quantize point, and its logits
must equal the IR's exactly, on graphs other than the calibration graph too.
"""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
import torch

import quantgraph as qg
from quantgraph.cli import main
from quantgraph.data import GraphData, make_csbm
from quantgraph.errors import InputError
from quantgraph.native.artifact import load_program, program_bytes, program_digest
from quantgraph.native.runtime import NativeModel

from .conftest import TwoLayer


def _power_law(num_nodes: int, seed: int, features: int = 8) -> GraphData:
    """Zipf-like targets: a few hubs with high in-degree, many nodes with none."""
    g = torch.Generator().manual_seed(seed)
    weights = 1.0 / torch.arange(1, num_nodes + 1, dtype=torch.float64)
    dst = torch.multinomial(weights, num_nodes * 5, replacement=True, generator=g)
    src = torch.randint(0, num_nodes, (num_nodes * 5,), generator=g)
    x = torch.randn(num_nodes, features, generator=g)
    return GraphData(x=x, edge_index=torch.stack([src, dst]), name="power-law")


def _compile(kind: str, bits: int = 8, skip: tuple[str, ...] = (), data: GraphData | None = None):
    torch.manual_seed(0)
    model = TwoLayer(kind).eval()
    data = data if data is not None else _power_law(300, seed=0)
    options = {"skip_roles": list(skip)} if skip else None
    return qg.compile(model, data, policy="minmax", bits=bits, backend="native", options=options), data


def _assert_matches_ir(compiled, native: NativeModel, data: GraphData) -> None:
    inputs = data.inputs()
    got = native.integer_values(inputs)
    expected = compiled.integer_values(inputs)
    assert got, "no integer tensors were captured"
    for key, value in got.items():
        assert torch.equal(value.long(), expected[key].long()), key
    assert torch.equal(native.run(inputs), compiled.run(inputs))


@pytest.mark.parametrize("kind", ["gcn", "gin", "sage", "gat"])
@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("skip", [(), ("message",)], ids=["message-quant", "int-aggregation"])
def test_native_runtime_equals_integer_ir(kind, bits, skip, tmp_path):
    compiled, _ = _compile(kind, bits, skip)
    path = tmp_path / "m.qgn"
    report = compiled.export_native(path)
    assert report["integer_tensors"]["equal"] and report["max_abs_error"] == 0.0
    native = NativeModel.load(path, threads=1)
    kernels = report["kernels"]
    if kind != "gat":  # GAT's softmax-weighted aggregation stays an ATen scatter
        assert kernels["native.aggregate"] == 2 and kernels["native.csr"] == 2
    assert kernels["native.linear"] >= 2
    for seed, n in ((1, 200), (2, 50)):  # other graphs than the calibration graph
        _assert_matches_ir(compiled, native, _power_law(n, seed))


def test_message_quantizer_is_fused_into_the_aggregation():
    compiled, data = _compile("gcn")
    program = compiled.to_native().program
    aggregates = [s for s in program.steps if s.op == "native.aggregate"]
    assert all(s.kwargs["message"] is not None for s in aggregates)
    assert all(s.kwargs["requant"] is not None for s in aggregates)  # the aggregation quantizer, fused
    # without message quantizers (MixQ's integer aggregation) the kernel is a plain SpMM of q_e * q_x
    plain, _ = _compile("gcn", skip=("message",))
    steps = [s for s in plain.to_native().program.steps if s.op == "native.aggregate"]
    assert all(s.kwargs["message"] is None for s in steps)
    assert "message" not in {q["role"] for q in plain.report["quantization"].values()}


def test_graph_stage_runs_once_and_prepared_graph_is_checked():
    compiled, data = _compile("gcn")
    native = compiled.to_native()
    graph_ops = {s.op for s in native.program.steps if s.stage == "graph"}
    assert "native.csr" in graph_ops and "quantgraph.quantize.default" in graph_ops  # edge weights
    prepared = native.prepare(data.inputs())
    first = native.run(data.inputs(), prepared)
    assert torch.equal(first, native.run(data.inputs(), prepared))
    other = _power_law(120, seed=3)
    with pytest.raises(InputError, match="prepared for"):
        native.run(other.inputs(), prepared)


def test_artifact_is_deterministic_zip_of_arrays_and_json(tmp_path):
    a, _ = _compile("sage")
    b, _ = _compile("sage")
    bytes_a, bytes_b = program_bytes(a.to_native().program), program_bytes(b.to_native().program)
    assert bytes_a == bytes_b
    with zipfile.ZipFile(io.BytesIO(bytes_a)) as zf:
        names = zf.namelist()
        assert names[0] == "program.json"
        assert all(n == "program.json" or (n.startswith("arrays/") and n.endswith(".npy")) for n in names)
        doc = json.loads(zf.read("program.json"))
    assert doc["format"] == "quantgraph-native" and doc["version"] == 1
    assert doc["meta"]["feature_inputs"] == ["x"]
    linear_weights = [s["kwargs"]["weight"]["array"] for s in doc["steps"] if s["op"] == "native.linear"]
    program = a.to_native().program
    assert all(program.arrays[w].dtype == np.int8 for w in linear_weights)


def _rewrite(src, dst, change) -> None:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            zout.writestr(item.filename, change(item.filename, zin.read(item.filename)))


def test_bad_artifacts_are_refused_with_one_line(tmp_path):
    compiled, _ = _compile("gcn")
    good = tmp_path / "m.qgn"
    compiled.export_native(good)
    (tmp_path / "junk.qgn").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="not a quantgraph native model"):
        load_program(tmp_path / "junk.qgn")
    with pytest.raises(InputError, match="does not exist"):
        load_program(tmp_path / "missing.qgn")

    def pickled_array(name: str, payload: bytes) -> bytes:
        if not name.startswith("arrays/"):
            return payload
        buf = io.BytesIO()
        np.save(buf, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
        return buf.getvalue()

    _rewrite(good, tmp_path / "pickle.qgn", pickled_array)
    with pytest.raises(InputError, match="not a quantgraph native model"):
        load_program(tmp_path / "pickle.qgn")

    with zipfile.ZipFile(good) as zf:
        stored = {
            n.removeprefix("arrays/").removesuffix(".npy"): np.load(io.BytesIO(zf.read(n)))
            for n in zf.namelist()
            if n.startswith("arrays/")
        }

    def unknown_op(name: str, payload: bytes) -> bytes:
        if name != "program.json":
            return payload
        doc = json.loads(payload)
        doc["steps"][0]["op"] = "builtins.eval"
        doc["sha256"] = program_digest(json.loads(json.dumps(doc)), stored)  # resealed, as an attacker would
        return json.dumps(doc).encode()

    _rewrite(good, tmp_path / "op.qgn", unknown_op)
    with pytest.raises(InputError, match="does not know"):
        NativeModel.load(tmp_path / "op.qgn")

    def future_version(name: str, payload: bytes) -> bytes:
        return payload.replace(b'"version": 1', b'"version": 99') if name == "program.json" else payload

    _rewrite(good, tmp_path / "v.qgn", future_version)
    with pytest.raises(InputError, match="version 99"):
        load_program(tmp_path / "v.qgn")


def test_in_degree_above_the_overflow_proof_is_refused():
    """An unfused int32 aggregation is only proven safe up to the calibration graph's max in-degree."""
    calibration = GraphData(
        x=torch.randn(40, 8, generator=torch.Generator().manual_seed(0)),
        edge_index=torch.stack([torch.arange(40), torch.arange(40).roll(1)]),  # a ring: in-degree 1
        name="ring",
    )
    compiled, _ = _compile("gin", skip=("message", "aggregation"), data=calibration)
    native = compiled.to_native()
    hub = torch.stack([torch.arange(1, 40), torch.zeros(39, dtype=torch.long)])  # node 0: in-degree 39
    star = GraphData(x=calibration.x, edge_index=hub, name="star")
    with pytest.raises(InputError, match="in-degree 39"):
        native.prepare(star.inputs())


def test_unknown_skip_role_is_an_error():
    with pytest.raises(InputError, match="unknown role 'messages'"):
        _compile("gcn", skip=("messages",))


def test_cli_compile_native_and_run(tmp_path, capsys):
    data_spec = "synthetic:nodes=300,seed=1"
    ckpt, qgn, report = tmp_path / "gcn.pt", tmp_path / "gcn.qgn", tmp_path / "r.json"
    assert (
        main(["train", "--arch", "gcn", "--data", data_spec, "--epochs", "30", "--quiet", "-o", str(ckpt)])
        == 0
    )
    args = ["compile", str(ckpt), "--data", data_spec, "--backend", "native", "--skip-role", "message"]
    assert main([*args, "-o", str(qgn), "--report", str(report), "--quiet"]) == 0
    rep = json.loads(report.read_text())
    assert rep["native"]["integer_tensors"]["equal"]
    assert rep["accuracy"]["native"] == rep["accuracy"]["quantized"]
    capsys.readouterr()
    logits_path = tmp_path / "logits.npy"
    assert main(["run", str(qgn), "--data", data_spec, "--threads", "1", "-o", str(logits_path)]) == 0
    out = capsys.readouterr().out
    assert f"accuracy {100 * rep['accuracy']['native']:.2f}%" in out
    logits = np.load(logits_path, allow_pickle=False)
    data = make_csbm(num_nodes=300, seed=1)
    assert logits.shape == (data.num_nodes, data.num_classes)
    assert main(["run", str(ckpt), "--data", data_spec]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a quantgraph native model" in err[0]


def test_edge_weights_spanning_256_values_are_stored_as_int8():
    from quantgraph.native.runtime import narrow_weights

    w = np.arange(0, 256, dtype=np.int32)  # GCN's normalisation: q - z with z = -128
    stored, zero = narrow_weights(w, "csr")
    assert stored.dtype == np.int8 and np.array_equal(stored.astype(np.int32) - zero, w)
    stored, zero = narrow_weights(np.array([-5, 100], dtype=np.int32), "csr")
    assert stored.dtype == np.int8 and zero == 0
    stored, _ = narrow_weights(np.array([-300, 300], dtype=np.int32), "csr")
    assert stored.dtype == np.int16
    with pytest.raises(InputError, match="exceed int16"):
        narrow_weights(np.array([0, 70000], dtype=np.int32), "csr")
    compiled, data = _compile("gcn")
    prepared = compiled.to_native().prepare(data.inputs())
    csrs = [v for v in prepared.values.values() if hasattr(v, "weight_zero_point")]
    assert csrs and all(c.csr.edge_weights.dtype == np.int8 for c in csrs)
