"""The CLI contract: every command, the report keys, custom passes, user models, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from quantgraph.cli import main
from quantgraph.data import make_csbm

from .conftest import HOST_EXACT_ARGS
from .user_modules import Unsupported, UserGNN

SYN = "synthetic:nodes=300,seed=1"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def zoo_checkpoint(workdir) -> Path:
    path = workdir / "gcn.pt"
    assert main(["train", "--arch", "gcn", "--data", SYN, "--epochs", "30", "--quiet", "-o", str(path)]) == 0
    return path


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: ")
    return err[0]


def test_train_compile_eval_inspect(zoo_checkpoint, workdir, capsys):
    out, report = workdir / "gcn.onnx", workdir / "report.json"
    rc = main(
        [
            "compile",
            str(zoo_checkpoint),
            "--data",
            SYN,
            "--policy",
            "minmax",
            "--bits",
            "8",
            "-o",
            str(out),
            "--report",
            str(report),
            "--quiet",
            *HOST_EXACT_ARGS,
        ]
    )
    assert rc == 0
    rep = json.loads(report.read_text())
    # 7-bit weights only where this CPU's int8 kernels would saturate on 8-bit ones (quantgraph.cpu)
    assert (rep["onnx"]["int8_saturation"]["full_range_int8_weights"] == 0) == bool(HOST_EXACT_ARGS)
    for key in ("policy", "bits", "passes", "per_layer_sqnr"):
        assert key in rep
    for key in ("fp32", "quantized", "onnx"):
        assert isinstance(rep["accuracy"][key], float)
    assert rep["onnx"]["argmax_agreement"] >= 0.99 and rep["onnx"]["max_abs_error"] < 0.5
    assert rep["size_bytes"]["quantized"] < rep["size_bytes"]["fp32"]
    # the onnx-qdq backend appends quantize-bias (int32 biases, as onnxruntime rounds them; docs/security.md)
    assert rep["passes"] == [
        "canonicalize",
        "tag-roles",
        "annotate",
        "calibrate",
        "insert-qdq",
        "quantize-bias",
    ]
    model = onnx.load(str(out))
    assert model.ir_version <= 13 and {o.version for o in model.opset_import if o.domain == ""} == {21}
    assert [i.name for i in model.graph.input] == ["x", "edge_index"]
    capsys.readouterr()
    assert main(["eval", str(out), "--data", SYN]) == 0
    assert "accuracy" in capsys.readouterr().out
    assert main(["inspect", str(out)]) == 0
    assert "QuantizeLinear" in capsys.readouterr().out
    assert main(["inspect", str(zoo_checkpoint), "--policy", "minmax", "--data", SYN]) == 0
    listing = capsys.readouterr().out
    assert "quantgraph.scatter" in listing and "aggregation L0" in listing and "q8" in listing


def test_int4_and_deterministic_bytes(zoo_checkpoint, workdir):
    a, b = workdir / "a.onnx", workdir / "b.onnx"
    for path in (a, b):
        assert (
            main(["compile", str(zoo_checkpoint), "--data", SYN, "--bits", "4", "-o", str(path), "--quiet"])
            == 0
        )
    assert a.read_bytes() == b.read_bytes()
    types = {t.data_type for t in onnx.load(str(a)).graph.initializer}
    assert onnx.TensorProto.INT4 in types


def test_custom_pass_and_pipeline(zoo_checkpoint, workdir):
    report = workdir / "custom.json"
    rc = main(
        [
            "compile",
            str(zoo_checkpoint),
            "--data",
            SYN,
            "-o",
            str(workdir / "c.onnx"),
            "--quiet",
            "--pass",
            "tests.user_modules:MarkerPass@after=annotate",
            "--report",
            str(report),
        ]
    )
    assert rc == 0
    rep = json.loads(report.read_text())
    assert rep["passes"].index("marker") == rep["passes"].index("annotate") + 1
    assert rep["marker_saw_annotations"] > 0
    rc = main(
        [
            "compile",
            str(zoo_checkpoint),
            "--data",
            SYN,
            "-o",
            str(workdir / "p.onnx"),
            "--quiet",
            "--pipeline",
            "canonicalize,tag-roles",
            "--report",
            str(report),
        ]
    )
    assert rc == 0
    # --pipeline replaces the policy's passes; the backend's own (quantize-bias for onnx-qdq) still follow
    assert json.loads(report.read_text())["passes"] == ["canonicalize", "tag-roles", "quantize-bias"]


def test_user_model_saved_as_pt2_compiles_and_runs(workdir):
    data = make_csbm(num_nodes=200, num_features=16, seed=2)
    torch.manual_seed(0)
    model = UserGNN(16, 32, 4).eval()
    dims = {"x": {0: torch.export.Dim("n")}, "edge_index": {1: torch.export.Dim("e")}}
    ep = torch.export.export(model, (data.x, data.edge_index), dynamic_shapes=dims)
    path = workdir / "user.pt2"
    torch.export.save(ep, path)
    npz = workdir / "g.npz"
    np.savez(npz, x=data.x.numpy(), edge_index=data.edge_index.numpy())
    out, report = workdir / "user.onnx", workdir / "user.json"
    assert (
        main(
            ["compile", str(path), "--data", str(npz), "-o", str(out), "--report", str(report), "--quiet"]
            + HOST_EXACT_ARGS
        )
        == 0
    )
    rep = json.loads(report.read_text())
    assert rep["onnx"]["argmax_agreement"] >= 0.99
    assert rep["message_passing"]["scatters"]["max"] == 1


def test_trusted_pickle_needs_opt_in(workdir, capsys):
    path = workdir / "pickled.pt"
    torch.save(UserGNN(16, 8, 3), path)
    data = make_csbm(num_nodes=100, num_features=16, seed=3)
    npz = workdir / "g16.npz"
    np.savez(npz, x=data.x.numpy(), edge_index=data.edge_index.numpy())
    out = workdir / "pickled.onnx"
    assert main(["compile", str(path), "--data", str(npz), "-o", str(out), "--quiet"]) != 0
    assert "--trust-pickle" in _error_line(capsys)
    assert not out.exists()
    rc = main(
        [
            "compile",
            str(path),
            "--data",
            str(npz),
            "-o",
            str(out),
            "--quiet",
            "--trust-pickle",
            "--import",
            "tests.user_modules",
        ]
    )
    assert rc == 0 and out.exists()


def test_demo_runs(capsys):
    assert main(["demo", "--quiet"]) == 0


def test_passes_lists_builtins(capsys):
    assert main(["passes"]) == 0
    out = capsys.readouterr().out
    for name in ("canonicalize", "tag-roles", "annotate", "calibrate", "insert-qdq", "minmax", "fp32"):
        assert name in out


# ----- bad input: one line naming the problem and the fix, non-zero exit, no output file -----


def _bad_npz(workdir: Path, name: str, **fields) -> Path:
    path = workdir / f"{name}.npz"
    np.savez(path, **fields)
    return path


def _graph(n=30, f=16, seed=0):
    g = make_csbm(num_nodes=n if n >= 8 else 8, num_features=f, seed=seed)
    return g.x.numpy(), g.edge_index.numpy()


@pytest.fixture(scope="module")
def user16(workdir) -> Path:
    data = make_csbm(num_nodes=60, num_features=16, seed=4)
    model = UserGNN(16, 8, 3).eval()
    dims = {"x": {0: torch.export.Dim("n")}, "edge_index": {1: torch.export.Dim("e")}}
    path = workdir / "user16.pt2"
    torch.export.save(torch.export.export(model, (data.x, data.edge_index), dynamic_shapes=dims), path)
    return path


def _bad_cases(workdir: Path):
    x, ei = _graph()
    corrupt = workdir / "corrupt.pt"
    corrupt.write_bytes(b"PK\x03\x04 this is not a torch file")
    yield "missing model", ["compile", str(workdir / "nope.pt"), "--data", SYN], "does not exist"
    yield "corrupt model", ["compile", str(corrupt), "--data", SYN], "corrupt"
    yield (
        "edge dtype",
        ["--data", str(_bad_npz(workdir, "dtype", x=x, edge_index=ei.astype(np.float32)))],
        "dtype",
    )
    yield "edge shape", ["--data", str(_bad_npz(workdir, "shape", x=x, edge_index=ei[:1]))], "shape"
    neg = ei.copy()
    neg[0, 0] = -1
    yield "negative index", ["--data", str(_bad_npz(workdir, "neg", x=x, edge_index=neg))], "negative"
    big = ei.copy()
    big[1, 0] = x.shape[0]
    yield "index >= N", ["--data", str(_bad_npz(workdir, "big", x=x, edge_index=big))], str(x.shape[0])
    nan = x.copy()
    nan[3, 2] = np.nan
    yield "NaN features", ["--data", str(_bad_npz(workdir, "nan", x=nan, edge_index=ei))], "NaN"
    inf = x.copy()
    inf[1, 1] = np.inf
    yield "Inf features", ["--data", str(_bad_npz(workdir, "inf", x=inf, edge_index=ei))], "Inf"
    empty = np.zeros((0, 16), np.float32)
    yield (
        "empty graph",
        ["--data", str(_bad_npz(workdir, "empty", x=empty, edge_index=np.zeros((2, 0), np.int64)))],
        "empty",
    )
    x8, ei8 = _graph(f=8)
    yield "feature width", ["--data", str(_bad_npz(workdir, "width", x=x8, edge_index=ei8))], "16"
    yield "bits", ["--data", str(_bad_npz(workdir, "ok", x=x, edge_index=ei)), "--bits", "12"], "bits=12"
    yield "policy", ["--data", str(workdir / "ok.npz"), "--policy", "nope"], "unknown policy"
    yield "pass", ["--data", str(workdir / "ok.npz"), "--pipeline", "canonicalize,nope"], "unknown pass"
    yield "pass class", ["--data", str(workdir / "ok.npz"), "--pass", "tests.user_modules:Missing"], "Missing"


def test_bad_inputs_give_one_line_and_no_output(user16, workdir, capsys):
    for label, argv, needle in _bad_cases(workdir):
        out = workdir / f"bad_{label.replace(' ', '_')}.onnx"
        if argv[0] != "compile":
            argv = ["compile", str(user16), *argv]
        rc = main([*argv, "-o", str(out), "--quiet"])
        assert rc != 0, label
        line = _error_line(capsys)
        assert needle.lower() in line.lower(), (label, line)
        assert not out.exists(), label
        assert not list(workdir.glob(f".{out.name}*")), label


def test_unsupported_op_names_op_and_line(workdir, capsys):
    data = make_csbm(num_nodes=40, num_features=16, seed=5)
    model = Unsupported(16).eval()
    dims = {"x": {0: torch.export.Dim("n", min=4)}, "edge_index": {1: torch.export.Dim("e")}}
    path = workdir / "unsupported.pt2"
    torch.export.save(torch.export.export(model, (data.x, data.edge_index), dynamic_shapes=dims), path)
    npz = _bad_npz(workdir, "u", x=data.x.numpy(), edge_index=data.edge_index.numpy())
    out = workdir / "unsupported.onnx"
    assert (
        main(["compile", str(path), "--data", str(npz), "-o", str(out), "--policy", "fp32", "--quiet"]) != 0
    )
    line = _error_line(capsys)
    assert "linalg_det" in line and "torch.linalg.det" in line
    assert not out.exists()


def test_isolated_nodes_and_self_loops_are_valid(user16, workdir):
    x, ei = _graph(n=40)
    loops = np.stack([np.arange(5), np.arange(5)])
    ei = np.concatenate([ei[:, ei.max(axis=0) < 35], loops], axis=1)  # nodes 35..39 isolated
    npz = _bad_npz(workdir, "loops", x=x, edge_index=ei)
    out = workdir / "loops.onnx"
    assert main(["compile", str(user16), "--data", str(npz), "-o", str(out), "--quiet"]) == 0
    assert out.exists()
