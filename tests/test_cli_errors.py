"""Issue 10's named CLI failures: each is one line on stderr, the right exit code, and no output left behind."""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from quantgraph.cli import main
from quantgraph.data import load_dataset

from .conftest import REPO, data_root

SYN = "synthetic:nodes=200,seed=1"


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli_errors")


@pytest.fixture(scope="module")
def ckpt(work) -> Path:
    path = work / "gcn.pt"
    assert main(["train", "--arch", "gcn", "--data", SYN, "--epochs", "5", "--quiet", "-o", str(path)]) == 0
    return path


@pytest.fixture(scope="module")
def onnx_model(work, ckpt) -> Path:
    path = work / "gcn.onnx"
    assert main(["compile", str(ckpt), "--data", SYN, "-o", str(path), "--quiet"]) == 0
    return path


@pytest.fixture(scope="module")
def qgn_model(work, ckpt) -> Path:
    path = work / "gcn.qgn"
    assert main(["compile", str(ckpt), "--data", SYN, "--backend", "native", "-o", str(path), "--quiet"]) == 0
    return path


def _fails(argv: list[str], capsys, code: int = 2, needle: str = "") -> str:
    """Run the CLI; assert the exit code and exactly one 'error:' line on stderr; return that line."""
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == code, (rc, err)
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert "Traceback" not in err[0]
    assert needle.lower() in err[0].lower(), err[0]
    return err[0]


def _listing(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


# ----- data and models the commands could not handle -----


def test_eval_on_data_of_another_feature_width(work, onnx_model, capsys):
    g = load_dataset("synthetic:nodes=50,features=8,seed=0")
    npz = work / "w8.npz"
    np.savez(npz, x=g.x.numpy(), edge_index=g.edge_index.numpy())
    line = _fails(["eval", str(onnx_model), "--data", str(npz)], capsys, needle="features")
    assert "32" in line and "8" in line and "ONNXRuntimeError" not in line


def test_truncated_and_non_zip_graph_classification_files(work, onnx_model, capsys):
    src = data_root() / "graph_classification" / "hard_small.npz" if data_root() else None
    payload = src.read_bytes()[:5000] if src and src.exists() else b"PK\x03\x04" + bytes(5000)
    (work / "trunc.npz").write_bytes(payload)
    (work / "notzip.npz").write_bytes(b"hello world, not a zip")
    for name in ("trunc.npz", "notzip.npz"):
        _fails(["eval", str(onnx_model), "--data", str(work / name)], capsys, needle=name)


def _graph_classification(path: Path, drop: str | None = None) -> Path:
    rng = np.random.default_rng(0)
    arrays = {}
    for prefix in ("tr", "val", "te"):
        if prefix == drop:
            continue
        arrays |= {
            f"{prefix}_x": rng.normal(size=(12, 4)).astype(np.float32),
            f"{prefix}_edge_index": np.array([[0, 1, 0, 1], [1, 0, 1, 0]]),  # local ids
            f"{prefix}_node_ptr": np.array([0, 6, 12]),
            f"{prefix}_edge_ptr": np.array([0, 2, 4]),
            f"{prefix}_y": np.array([0, 1]),
        }
    np.savez(path, **arrays)
    return path


def test_graph_classification_file_without_a_split(work, capsys):
    path = _graph_classification(work / "noval.npz", drop="val")
    out = work / "noval.pt"
    _fails(
        ["train", "--arch", "gin_graph", "--data", str(path), "-o", str(out), "--quiet"], capsys, needle="val"
    )
    assert not out.exists()


def test_graph_classification_labels_are_validated(work, capsys):
    """Found by the fuzz suite: negative labels reached the loss as an IndexError (exit 3)."""
    for label, y in (
        ("negative", np.array([0, -1])),
        ("float", np.array([0.0, 1.5])),
        ("huge", np.array([0, 2**40])),
    ):
        path = _graph_classification(work / f"y_{label}.npz")
        arrays = dict(np.load(path))
        arrays["tr_y"] = y
        np.savez(path, **arrays)
        out = work / f"y_{label}.pt"
        argv = [
            "train",
            "--arch",
            "gin_graph",
            "--data",
            str(path),
            "--epochs",
            "1",
            "-o",
            str(out),
            "--quiet",
        ]
        _fails(argv, capsys, needle="labels y")
        assert not out.exists()


def test_deeply_nested_json(work, onnx_model, capsys):
    path = work / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    _fails(["eval", str(onnx_model), "--data", str(path)], capsys, needle="nested too deeply")


def test_uint64_edge_index_is_valid(work, onnx_model, capsys):
    g = load_dataset(SYN)
    path = work / "u64.npz"
    np.savez(path, x=g.x.numpy(), edge_index=g.edge_index.numpy().astype(np.uint64), y=g.y.numpy())
    assert main(["eval", str(onnx_model), "--data", str(path), "--split", "all", "--quiet"]) == 0


def test_sparse_and_quantized_tensors_in_pt_data(work, onnx_model, capsys):
    g = load_dataset(SYN)
    for label, x in (
        ("sparse", g.x.to_sparse()),
        ("quantized", torch.quantize_per_tensor(g.x, 0.1, 0, torch.qint8)),
    ):
        path = work / f"{label}.pt"
        torch.save({"x": x, "edge_index": g.edge_index}, path)
        rc = main(["eval", str(onnx_model), "--data", str(path)])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and "Traceback" not in err[0], (label, err)


def test_malformed_qgn_programs(work, qgn_model, capsys):
    archive = zipfile.ZipFile(qgn_model)
    program = json.loads(archive.read("program.json"))
    mutations = {
        "no steps": lambda p: p.pop("steps"),
        "steps not a list": lambda p: p.__setitem__("steps", 5),
        "step without op": lambda p: p["steps"][0].pop("op"),
        "args a dict": lambda p: p["steps"][0].__setitem__("args", {"a": [1, 2]}),
        "inputs a number": lambda p: p.__setitem__("inputs", 7),
    }
    for label, mutate in mutations.items():
        bad = json.loads(json.dumps(program))
        mutate(bad)
        path = work / f"bad_{label.replace(' ', '_')}.qgn"
        with zipfile.ZipFile(path, "w") as out:
            for name in archive.namelist():
                out.writestr(name, json.dumps(bad) if name == "program.json" else archive.read(name))
        line = _fails(["run", str(path), "--data", SYN], capsys)
        assert path.name in line or "native model" in line, line


def test_pt2_error_has_no_logged_torch_traceback(work, capsys):
    from .user_modules import UserGNN

    g = load_dataset("synthetic:nodes=60,features=16,seed=4")
    dims = {"x": {0: torch.export.Dim("n")}, "edge_index": {1: torch.export.Dim("e")}}
    good = work / "u.pt2"
    torch.export.save(
        torch.export.export(UserGNN(16, 8, 3).eval(), (g.x, g.edge_index), dynamic_shapes=dims), good
    )
    bad = work / "broken_weight.pt2"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w") as out:
        for name in src.namelist():
            out.writestr(name, b"garbage{" if name.endswith("weights/weight_0") else src.read(name))
    out = work / "never.onnx"
    cmd = [sys.executable, "-m", "quantgraph.cli", "compile", str(bad), "--data", SYN, "-o", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    err = res.stderr.strip().splitlines()  # torch's logger writes to the process's stderr: run it apart
    assert res.returncode == 2 and len(err) == 1 and bad.name in err[0], err[:5]
    assert not out.exists()


def test_eval_of_an_onnx_model_with_an_infinite_loop_stops(work, capsys):
    import onnx
    from onnx import TensorProto
    from onnx import helper as h

    body = h.make_graph(
        [h.make_node("Identity", ["c"], ["c_out"]), h.make_node("Identity", ["v"], ["v_out"])],
        "body",
        [
            h.make_tensor_value_info("i", TensorProto.INT64, []),
            h.make_tensor_value_info("c", TensorProto.BOOL, []),
            h.make_tensor_value_info("v", TensorProto.FLOAT, None),
        ],
        [
            h.make_tensor_value_info("c_out", TensorProto.BOOL, []),
            h.make_tensor_value_info("v_out", TensorProto.FLOAT, None),
        ],
    )
    graph = h.make_graph(
        [
            h.make_node("Constant", [], ["t"], value=h.make_tensor("t", TensorProto.BOOL, [], [True])),
            h.make_node("Loop", ["", "t", "x"], ["y"], body=body),
        ],
        "forever",
        [h.make_tensor_value_info("x", TensorProto.FLOAT, ["n", "f"])],
        [h.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "f"])],
    )
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    model.ir_version = 9
    path = work / "forever.onnx"
    onnx.save(model, path)
    _fails(["eval", str(path), "--data", SYN, "--timeout", "1"], capsys, needle="--timeout")


def test_run_with_100000_threads_is_refused_not_a_segfault(qgn_model):
    base = [sys.executable, "-m", "quantgraph.cli", "run", str(qgn_model), "--data", SYN]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for cmd, extra in (([*base, "--threads", "100000"], {}), (base, {"QUANTGRAPH_THREADS": "100000"})):
        res = subprocess.run(cmd, capture_output=True, text=True, env={**env, **extra}, timeout=300)
        err = res.stderr.strip().splitlines()
        assert res.returncode == 2 and len(err) == 1 and "threads" in err[0], (res.returncode, err)


# ----- flags -----


def test_bad_flags_are_refused_with_one_line(work, ckpt, qgn_model, capsys):
    out = work / "flag.onnx"
    compile_ = ["compile", str(ckpt), "--data", SYN, "-o", str(out), "--quiet"]
    cases = [
        (["compile", str(ckpt), "--data", SYN, "-o", str(ckpt)], "input file"),
        (["run", str(qgn_model), "--data", SYN, "--threads", "0"], "--threads"),
        (["train", "--arch", "gcn", "--data", SYN, "--hidden", "0", "-o", str(out)], "--hidden"),
        ([*compile_, "--policy", "qat", "--lr", "inf"], "--lr"),
        ([*compile_, "--bits", "1", "--policy", "fp32"], "--bits"),
        ([*compile_, "--bits", "8", "--policy", "fp32"], "no effect"),
        ([*compile_, "--pipeline", "insert-qdq"], "insert-qdq"),
        ([*compile_, "--pass", "mod:Cls@"], "placement"),
        ([*compile_, "--pass", "tests.user_modules:MarkerPass@"], "placement"),
        ([*compile_, "--bits", "x"], "invalid int"),
        ([*compile_, "--report", str(out)], "both name"),
    ]
    before = ckpt.read_bytes()
    for argv, needle in cases:
        _fails(argv, capsys, needle=needle)
        assert not out.exists(), argv
    assert ckpt.read_bytes() == before


# ----- outputs: together or not at all, no stale temporaries, the user's permissions -----


def test_report_failure_leaves_no_model(work, ckpt, capsys, monkeypatch):
    import quantgraph.fileio as fileio

    folder = work / "together"
    folder.mkdir()
    real = fileio.atomic_write_json

    def disk_full(path, obj):
        with fileio.atomic_file(path) as fh:
            fh.write(b"{")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(fileio, "atomic_write_json", disk_full)
    argv = [
        "compile",
        str(ckpt),
        "--data",
        SYN,
        "-o",
        str(folder / "m.onnx"),
        "--report",
        str(folder / "r.json"),
    ]
    _fails([*argv, "--quiet"], capsys, code=1, needle="no space left")
    assert _listing(folder) == set()
    monkeypatch.setattr(fileio, "atomic_write_json", real)
    assert main([*argv, "--quiet"]) == 0
    assert _listing(folder) == {"m.onnx", "r.json"}


def test_write_failures_are_environment_errors(work, ckpt, capsys):
    blocker = work / "a_file"
    blocker.write_text("x")
    base = ["compile", str(ckpt), "--data", SYN, "--quiet"]
    _fails([*base, "-o", str(work)], capsys, code=1, needle="folder")
    _fails([*base, "-o", str(blocker / "m.onnx")], capsys, code=1, needle="not a folder")
    _fails([*base, "-o", str(work / "ok.onnx"), "--report", str(blocker / "r.json")], capsys, code=1)
    assert not (work / "ok.onnx").exists()


def test_unwritable_native_cache_is_one_line(work, qgn_model):
    blocker = work / "cache_is_a_file"
    blocker.write_text("x")
    env = {**os.environ, "PYTHONPATH": str(REPO), "QUANTGRAPH_CACHE": str(blocker / "cache")}
    cmd = [sys.executable, "-m", "quantgraph.cli", "run", str(qgn_model), "--data", SYN]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    err = res.stderr.strip().splitlines()
    assert res.returncode == 1 and len(err) == 1 and "Traceback" not in res.stderr, (res.returncode, err)


def test_sigkill_during_the_final_write_leaves_no_temporary(work):
    folder = work / "killed"
    folder.mkdir()
    script = textwrap.dedent(
        f"""
        import os, signal
        from quantgraph.fileio import atomic_file
        with atomic_file({str(folder / "big.bin")!r}) as fh:
            fh.write(b"x" * (8 << 20))
            fh.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    res = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(REPO)})
    assert res.returncode == -9
    assert _listing(folder) == set()


def test_stale_temporaries_of_dead_writers_are_cleaned(work):
    from quantgraph.fileio import atomic_write_bytes

    folder = work / "stale"
    folder.mkdir()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    stale = folder / f".m.onnx.{int(dead.stdout)}.0123abcd.qgtmp"
    stale.write_bytes(b"left by a killed run")
    foreign = folder / ".m.onnx.tmp"  # not ours: left alone
    foreign.write_bytes(b"x")
    atomic_write_bytes(folder / "m.onnx", b"new")
    assert _listing(folder) == {"m.onnx", foreign.name}


def test_outputs_get_the_users_permissions(work, ckpt, qgn_model, capsys):
    old = os.umask(0o022)
    try:
        folder = work / "perms"
        args = ["compile", str(ckpt), "--data", SYN, "--quiet"]
        assert (
            main(
                [
                    *args,
                    "--backend",
                    "native",
                    "-o",
                    str(folder / "m.qgn"),
                    "--report",
                    str(folder / "r.json"),
                ]
            )
            == 0
        )
        assert main(["run", str(qgn_model), "--data", SYN, "-o", str(folder / "logits.npy"), "--quiet"]) == 0
        assert (
            main(
                [
                    "train",
                    "--arch",
                    "gcn",
                    "--data",
                    SYN,
                    "--epochs",
                    "1",
                    "-o",
                    str(folder / "c.pt"),
                    "--quiet",
                ]
            )
            == 0
        )
        for name in ("m.qgn", "r.json", "logits.npy", "c.pt"):
            assert stat.S_IMODE((folder / name).stat().st_mode) == 0o644, name
    finally:
        os.umask(old)


def test_device_output_is_refused(ckpt, capsys):
    if not os.path.exists("/dev/null"):
        pytest.skip("no /dev/null")
    _fails(["compile", str(ckpt), "--data", SYN, "-o", "/dev/null", "--quiet"], capsys, needle="regular file")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


# ----- the one place that turns errors into exit codes -----


def test_internal_errors_are_one_line_and_debug_shows_the_traceback(monkeypatch, capsys):
    import quantgraph.cli as cli

    def broken(args):
        raise TypeError("a bug")

    monkeypatch.setattr(cli, "cmd_passes", broken)
    parser = cli.build_parser
    monkeypatch.setattr(cli, "build_parser", lambda: _with_func(parser(), "passes", broken))
    _fails(["passes"], capsys, code=3, needle="internal error")
    with pytest.raises(TypeError):
        main(["--debug", "passes"])


def _with_func(parser, command, func):
    parser.parse_args([command])  # resolves the sub-parser
    for action in parser._subparsers._group_actions:
        action.choices[command].set_defaults(func=func)
    return parser


class _Renamed(torch.nn.Module):
    """A GNN whose forward arguments are not named after the data's fields."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(32, 4)

    def forward(self, arg_0: torch.Tensor, arg_1: torch.Tensor) -> torch.Tensor:
        h = self.lin(arg_0)
        return torch.zeros_like(h).index_add(0, arg_1[1], h[arg_1[0]])


def test_pt2_with_inputs_the_data_lacks(work, capsys):
    """Found by the fuzz suite (a flipped byte renamed an input of a .pt2): a KeyError, exit 3."""
    g = load_dataset(SYN)
    dims = {"arg_0": {0: torch.export.Dim("n")}, "arg_1": {1: torch.export.Dim("e")}}
    path = work / "renamed.pt2"
    torch.export.save(torch.export.export(_Renamed().eval(), (g.x, g.edge_index), dynamic_shapes=dims), path)
    out = work / "renamed.onnx"
    _fails(
        ["compile", str(path), "--data", SYN, "--policy", "fp32", "-o", str(out), "--quiet"],
        capsys,
        needle="arg_0",
    )
    assert not out.exists()
