"""What the user sees: the compile table and its labels, inspect, stage lines, help text, and the HTML report."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from quantgraph.cli import build_parser, main
from quantgraph.errors import InputError
from quantgraph.html_report import pareto, read_report
from quantgraph.report import accuracy_note

SYN = "synthetic:nodes=300,seed=1"
REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("summary", "pipeline", "points", "kept-float", "degree", "bits-degree", "training")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("report")


@pytest.fixture(scope="module")
def checkpoint(workdir) -> Path:
    path = workdir / "gcn.pt"
    assert main(["train", "--arch", "gcn", "--data", SYN, "--epochs", "30", "--quiet", "-o", str(path)]) == 0
    return path


@pytest.fixture(scope="module")
def int_compile(checkpoint, workdir) -> dict:
    """An onnx-int compile with its table, report JSON and HTML."""
    out, rep, page = workdir / "int.onnx", workdir / "int.json", workdir / "int.html"
    args = ["compile", str(checkpoint), "--data", SYN, "--backend", "onnx-int", "-o", str(out)]
    proc = _run_cli([*args, "--report", str(rep), "--html", str(page)], cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    return {"onnx": out, "json": rep, "html": page, "stdout": proc.stdout, "stderr": proc.stderr}


def _run_cli(args: list[str], cwd: Path, isolated: bool = False) -> subprocess.CompletedProcess:
    """The CLI in a fresh interpreter, as a user runs it (``-P``: the current directory is not on sys.path)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "100"}
    flags = ["-P"] if isolated else []
    return subprocess.run(
        [sys.executable, *flags, "-m", "quantgraph.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: ")
    return err[0]


def test_integer_backend_sqnr_is_measured_and_rows_are_named_by_layer_and_role(int_compile):
    rep = json.loads(int_compile["json"].read_text())
    assert rep["per_layer_sqnr"], "every layer with a quantized activation has an SQNR row"
    assert all(isinstance(r["sqnr_db"], float) for r in rep["per_layer_sqnr"])
    # every point the policy quantized is listed (the integer IR folds most of them away)
    assert rep["quantization_points"] == len(rep["points"]) == len(rep["quantization"]) > 10
    for point in rep["points"]:
        assert re.fullmatch(r"(input|layer \d+ · [a-z ]+( #\d+)?)", point["label"]), point["label"]
        assert point["sqnr_db"] is not None or point["max_abs_error"] == 0
    table = int_compile["stdout"]
    assert "∞" not in table
    assert "SQNR layer 0 · " in table and "SQNR layer 1 · " in table
    internal = re.compile(r"\b(add|view|scatter|mul|linear|quantize)(_default)?_\d+\b")
    assert not internal.search(table), table
    kept = rep["integer"]["kept_float_points"]
    assert kept and all(k["reason"] and not internal.fullmatch(k["label"]) for k in kept)


def test_stage_lines_on_stderr_plain_and_quiet_silences(int_compile, checkpoint, workdir):
    err = int_compile["stderr"]
    for stage in ("trace", "pass calibrate", "pass fold-scales", "export onnx-int", "verify onnx-int"):
        assert re.search(rf"^quantgraph: {re.escape(stage)}\s+\d+\.\d\d s$", err, re.M), err
    assert "\x1b[" not in err  # piped: no escape codes
    proc = _run_cli(
        ["compile", str(checkpoint), "--data", SYN, "-o", str(workdir / "q.onnx"), "--quiet"], workdir
    )
    assert proc.returncode == 0 and proc.stderr == "" and proc.stdout == ""


def test_quantization_point_count_matches_report_with_a_user_pass(checkpoint, workdir, capsys):
    rep_path = workdir / "marker.json"
    args = [
        "compile",
        str(checkpoint),
        "--data",
        SYN,
        "-o",
        str(workdir / "m.onnx"),
        "--report",
        str(rep_path),
    ]
    assert main([*args, "--pass", "tests.user_modules:MarkerPass"]) == 0
    out = capsys.readouterr().out
    rep = json.loads(rep_path.read_text())
    shown = re.search(r"quantization points\s*│\s*│\s*(\d+)", out)
    assert shown, out
    assert int(shown.group(1)) == rep["quantization_points"] == len(rep["quantization"])


def test_pass_module_found_in_current_directory(checkpoint, workdir):
    pkg = workdir / "mypasses"
    pkg.mkdir(exist_ok=True)
    (pkg / "__init__.py").write_text(
        "from quantgraph.passes import PassBase, PassResult\n"
        "class Noop(PassBase):\n"
        "    name = 'noop-here'\n"
        "    def call(self, gm, ctx):\n"
        "        return PassResult(gm, False)\n"
    )
    rep = workdir / "noop.json"
    args = ["compile", str(checkpoint), "--data", SYN, "-o", str(workdir / "n.onnx"), "--report", str(rep)]
    proc = _run_cli([*args, "--pass", "mypasses:Noop", "--quiet"], cwd=workdir, isolated=True)
    assert proc.returncode == 0, proc.stderr
    assert "noop-here" in json.loads(rep.read_text())["passes"]


def _graph_npz(path: Path) -> Path:
    """A tiny graph-classification file: 12/6/6 random graphs, labels from the mean feature."""
    rng = np.random.default_rng(0)
    arrays = {}
    for prefix, count in (("tr", 12), ("val", 6), ("te", 6)):
        xs, eis, nptr, eptr, ys = [], [], [0], [0], []
        for _ in range(count):
            n = int(rng.integers(4, 9))
            x = rng.normal(size=(n, 5)).astype(np.float32)
            src = rng.integers(0, n, size=2 * n)
            dst = rng.integers(0, n, size=2 * n)
            xs.append(x)
            eis.append(np.stack([src, dst]))
            nptr.append(nptr[-1] + n)
            eptr.append(eptr[-1] + 2 * n)
            ys.append(int(x.mean() > 0))
        arrays[f"{prefix}_x"] = np.concatenate(xs)
        arrays[f"{prefix}_edge_index"] = np.concatenate(eis, axis=1).astype(np.int64)
        arrays[f"{prefix}_node_ptr"] = np.array(nptr, np.int64)
        arrays[f"{prefix}_edge_ptr"] = np.array(eptr, np.int64)
        arrays[f"{prefix}_y"] = np.array(ys, np.int64)
    np.savez(path, **arrays)
    return path


def test_graph_classification_split_labels_and_eval_split(workdir, capsys):
    npz = _graph_npz(workdir / "graphs.npz")
    ckpt, out = workdir / "gin.pt", workdir / "gin.onnx"
    assert (
        main(
            ["train", "--arch", "gin_graph", "--data", str(npz), "--epochs", "3", "--quiet", "-o", str(ckpt)]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["compile", str(ckpt), "--data", str(npz), "-o", str(out)]) == 0
    table = capsys.readouterr().out
    assert "accuracy (test graphs, IR)" in table and "(all, IR)" not in table
    lines = {}
    for split, count in (("val", 6), ("test", 6), ("train", 12), ("all", 24)):
        assert main(["eval", str(out), "--data", str(npz), "--split", split]) == 0
        line = capsys.readouterr().out
        assert f"({split} graphs, {count})" in line, line
        lines[split] = line
    assert len(set(lines.values())) == 4


def test_accuracy_note_explains_ir_vs_onnxruntime():
    same = {
        "accuracy": {"quantized": 0.5, "onnx": 0.5},
        "onnx": {"argmax_agreement": 1.0, "max_abs_error": 0},
    }
    assert accuracy_note(same) is None
    differ = {
        "accuracy": {"quantized": 0.423, "onnx": 0.385},
        "onnx": {"argmax_agreement": 0.96, "max_abs_error": 0.0123},
    }
    note = accuracy_note(differ)
    assert "4.00%" in note and "one step" in note and "0.0123" in note


def test_qat_training_summary_line(checkpoint, workdir, capsys):
    rep = workdir / "qat.json"
    args = ["compile", str(checkpoint), "--data", SYN, "--policy", "qat", "--epochs", "4", "-o"]
    assert (
        main([*args, str(workdir / "qat.onnx"), "--report", str(rep), "--html", str(workdir / "qat.html")])
        == 0
    )
    out = capsys.readouterr().out
    qat = json.loads(rep.read_text())["qat"]
    assert len(qat["history"]) == 4
    assert re.search(
        rf"QAT: kept epoch {qat['best_epoch']} of 4 \(best validation accuracy [\d.]+%\), [\d.]+ s", out
    )
    page = (workdir / "qat.html").read_text()
    assert "chosen epoch" in page and "quantization-aware training" in page


def _node_count(graph) -> int:
    """Nodes of an ONNX graph, those of its subgraphs (Loop/If bodies) included."""
    return sum(
        1 + sum(_node_count(a.g) for a in n.attribute if a.type == onnx.AttributeProto.GRAPH)
        for n in graph.node
    )


def test_inspect_onnx_is_short_and_shows_output_shapes(int_compile, capsys):
    model = onnx.load(str(int_compile["onnx"]))
    dims = [d.dim_param or d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim]
    assert dims[0] == "num_nodes" and isinstance(dims[1], int) and dims[1] > 0
    assert main(["inspect", str(int_compile["onnx"])]) == 0
    out = capsys.readouterr().out
    assert f"outputs: logits[num_nodes, {dims[1]}]" in out
    assert "initializers:" in out and "(elided below)" in out
    # the node list only (Loop bodies included; the printer wraps a long node onto a second line);
    # weights inline ran to thousands of lines
    assert len(out.splitlines()) < 2 * _node_count(model.graph) + 60
    assert not re.search(r"(-?\d+, ){50}", out), "weight values are printed"


def test_inspect_native_program(checkpoint, workdir, capsys):
    qgn = workdir / "m.qgn"
    assert (
        main(["compile", str(checkpoint), "--data", SYN, "--backend", "native", "-o", str(qgn), "--quiet"])
        == 0
    )
    assert main(["inspect", str(qgn)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("quantgraph native program: policy minmax, 8 bits")
    assert "native.linear" in out and "native.aggregate" in out and "corrupt" not in out


def test_compile_names_the_format_it_was_given(int_compile, workdir, capsys):
    assert main(["compile", str(int_compile["onnx"]), "--data", SYN, "-o", str(workdir / "x.onnx")]) == 2
    line = _error_line(capsys)
    assert "is an ONNX model" in line and "quantgraph eval" in line and "corrupt" not in line


def test_native_backend_refuses_an_onnx_name(checkpoint, workdir, capsys):
    out = workdir / "z.onnx"
    args = ["compile", str(checkpoint), "--data", SYN, "--backend", "native", "-o", str(out), "--quiet"]
    assert main(args) == 2
    line = _error_line(capsys)
    assert "z.qgn" in line and "--backend native" in line
    assert not out.exists()


def test_help_text_defaults_policy_choices_and_metavars(capsys):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        for action in p._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"
    assert main(["compile", "--help"]) == 0
    text = capsys.readouterr().out
    for policy in ("fp32", "minmax", "qat", "degree-quant", "mixq"):
        assert re.search(rf"^\s+{re.escape(policy)}: \w", text, re.M), policy
    assert "--lambda WEIGHT" in text and "(default: minmax)" in text and "(default: onnx-qdq)" in text


def test_top_level_help_does_not_import_torch():
    code = (
        "import sys\nfrom quantgraph.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('TORCH', 'torch' in sys.modules)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
    )
    assert "TORCH False" in proc.stdout, proc.stdout + proc.stderr


def test_passes_prints_every_pipeline_whole(capsys):
    from quantgraph.policies import available_policies

    assert main(["passes"]) == 0
    out = capsys.readouterr().out
    flat = re.sub(r"[│┃\s]+", " ", out)
    for pol in available_policies().values():
        for name in pol.pipeline:
            assert name in out, name
        assert "…" not in out
        assert pol.pipeline[-1] in flat


def test_html_report_sections_self_contained(int_compile, workdir, capsys):
    page = int_compile["html"].read_text()
    for sid in SECTIONS:
        assert f'<section id="{sid}">' in page, sid
    assert page.count("<svg") >= 3
    assert "<script" not in page and not re.search(r"(src|href)=\"https?:", page)
    assert "layer 0 · aggregation" in page
    # the same page from the report JSON
    again = workdir / "again.html"
    assert main(["report", str(int_compile["json"]), "-o", str(again)]) == 0
    assert again.read_text() == page
    # a second BitOPs convention (e.g. MixQ-GNN's) gets its own summary row when the report has one
    from quantgraph.html_report import render_html

    rep = json.loads(int_compile["json"].read_text())
    rep["bitops"]["mixq_convention"] = {"bitops": 1.5e9, "fp32_bitops": 3.0e10}
    row = "<td>BitOPs (MixQ-GNN: ops × mean module bits)</td><td>3e+10</td><td>1.5e+09</td>"
    assert row in render_html(rep)
    rep["bitops"]["mixq_convention"]["reduction"] = 20.0
    rep["average_bits"] = {"elements": 7.5, "a2q": 6.25, "some_new_one": 3.0}
    page = render_html(rep)
    assert "<td>1.5e+09 (÷20.0)</td>" in page
    assert "<td>average bits (A²Q: layers&#x27; node features)</td><td>32</td><td>6.25</td>" in page
    assert "<td>average bits (ours: over quantized elements)</td><td>32</td><td>7.50</td>" in page
    assert "<td>average bits (some_new_one)</td><td>32</td><td>3.00</td>" in page


def test_compare_page_and_pareto(int_compile, workdir, checkpoint):
    int4 = workdir / "int4.json"
    args = ["compile", str(checkpoint), "--data", SYN, "--bits", "4", "-o", str(workdir / "i4.onnx")]
    assert main([*args, "--report", str(int4), "--quiet"]) == 0
    out = workdir / "cmp.html"
    assert main(["compare", str(int_compile["json"]), str(int4), "-o", str(out), "--quiet"]) == 0
    page = out.read_text()
    assert '<section id="compare">' in page and '<section id="pareto">' in page and "<svg" in page
    assert "int4" in page and "Pareto front" in page
    assert pareto([(8, 0.8), (4, 0.7), (6, 0.6), (2, 0.72)]) == [3, 0]


def test_report_of_a_bad_json_is_one_line(workdir, capsys):
    bad = workdir / "bad.json"
    bad.write_text("{not json")
    assert main(["report", str(bad), "-o", str(workdir / "bad.html")]) == 2
    assert "is not JSON" in _error_line(capsys)
    with pytest.raises(InputError, match="does not exist"):
        read_report(workdir / "missing.json")


def test_html_per_group_scales_by_degree(checkpoint, workdir):
    rep, page = workdir / "pg.json", workdir / "pg.html"
    pipeline = "canonicalize,tag-roles,annotate,degree-buckets,calibrate,insert-qdq"
    args = [
        "compile",
        str(checkpoint),
        "--data",
        SYN,
        "--pipeline",
        pipeline,
        "--option",
        "degree_boundaries=2,4,8",
    ]
    assert (
        main([*args, "-o", str(workdir / "pg.onnx"), "--report", str(rep), "--html", str(page), "--quiet"])
        == 0
    )
    text = page.read_text()
    section = text[text.index('<section id="bits-degree">') :]
    section = section[: section.index("</section>")]
    assert "per-group" in section and "<svg" in section
    assert "scale, degree 0–1" in section and "scale, degree 8+" in section
    assert "layer 0 · aggregation" in section


def test_html_without_matplotlib_says_how_to_install_and_writes_nothing(
    checkpoint, workdir, capsys, monkeypatch
):
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    out = workdir / "nomp.onnx"
    args = ["compile", str(checkpoint), "--data", SYN, "-o", str(out), "--html", str(workdir / "nomp.html")]
    assert main([*args, "--quiet"]) == 2
    line = _error_line(capsys)
    assert "needs matplotlib" in line and "pip install" in line
    assert not out.exists() and not (workdir / "nomp.html").exists()


TINY = "synthetic:nodes=80,seed=3"
POLICIES = ("minmax", "qat", "degree-quant", "mixq", "a2q")
BACKENDS = ("onnx-qdq", "onnx-int", "native")
#: the cells of the policy x backend matrix in the default run (each policy and each backend at least once
#: with the fixtures above: minmax/onnx-int and qat/onnx-qdq pages are built there); the rest are slow
DEFAULT_CELLS = {
    ("mixq", "native"),
    ("degree-quant", "onnx-int"),
    ("minmax", "native"),
    ("qat", "onnx-qdq"),
    ("a2q", "onnx-qdq"),
}
MATRIX = [
    pytest.param(p, b, marks=() if (p, b) in DEFAULT_CELLS else pytest.mark.slow, id=f"{p}-{b}")
    for p in POLICIES
    for b in BACKENDS
]


@pytest.fixture(scope="module")
def tiny_checkpoint(workdir) -> Path:
    path = workdir / "tiny.pt"
    assert main(["train", "--arch", "gcn", "--data", TINY, "--epochs", "10", "--quiet", "-o", str(path)]) == 0
    return path


def _section_text(page: str, sid: str) -> str:
    text = page[page.index(f'<section id="{sid}">') :]
    return text[: text.index("</section>")]


@pytest.mark.parametrize(("policy", "backend"), MATRIX)
def test_html_report_for_every_policy_and_backend(tiny_checkpoint, workdir, policy, backend):
    name = f"{policy}-{backend}"
    out = workdir / (f"{name}.qgn" if backend == "native" else f"{name}.onnx")
    rep, page = workdir / f"{name}.json", workdir / f"{name}.html"
    args = ["compile", str(tiny_checkpoint), "--data", TINY, "--policy", policy, "--backend", backend]
    args += ["--epochs", "1", "--search-epochs", "3", "-o", str(out), "--report", str(rep)]
    assert main([*args, "--html", str(page), "--quiet"]) == 0
    text, report = page.read_text(), json.loads(rep.read_text())
    for sid in SECTIONS:
        assert f'<section id="{sid}">' in text, sid
    assert "<script" not in text and not re.search(r"(src|href)=\"https?:", text)
    runtime = "native kernels" if backend == "native" else "onnxruntime"
    assert f"<th>{runtime}</th>" in _section_text(text, "summary")
    kept = _section_text(text, "kept-float")
    assert ("nothing runs on integers" in kept) == (backend == "onnx-qdq")
    assert ("became integer requantizes" in kept) == (backend != "onnx-qdq")
    training = _section_text(text, "training")
    assert ("trains nothing" in training) == (policy == "minmax")
    assert ("quantization-aware training" in training) == (policy != "minmax")
    assert ("bit choices over the search" in training) == (policy == "mixq")
    if policy == "mixq":
        mixq = report["mixq"]
        for point in mixq["points"]:
            assert len(point["bits_by_epoch"]) == len(point["expected_bits_by_epoch"]) == 3
            assert set(point["bits_by_epoch"]) <= set(mixq["candidates"])
            low, high = min(mixq["candidates"]), max(mixq["candidates"])
            assert all(low <= b <= high for b in point["expected_bits_by_epoch"])
            assert point["bits_by_epoch"][-1] == point["bits"]  # no target: the last epoch's argmax is kept
        assert '<figure id="bit-choices"><svg' in training
        assert "most likely bits, epoch 1 → last" in training
        assert "layer 0 · aggregation" in training
    if policy == "a2q":
        assert "A²Q: learned bits per node against in-degree" in _section_text(text, "bits-degree")
        assert "bit choices over A²Q training" in training
        assert "layer 0 · " in _section_text(text, "bits-degree")  # points named by layer and role
    if policy == "mixq" and backend == "native":  # the richest page, in a real browser where there is one
        from tests.test_report_browser import _browser, _load

        dom, console = _load(_browser(), page)
        assert console == [] and '<figure id="bit-choices"><svg' in dom


def test_eval_of_a_native_model_points_to_run(checkpoint, workdir, capsys):
    qgn = workdir / "ev.qgn"
    args = ["compile", str(checkpoint), "--data", SYN, "--backend", "native", "-o", str(qgn), "--quiet"]
    assert main(args) == 0
    assert main(["eval", str(qgn), "--data", SYN, "--split", "val"]) == 2
    line = _error_line(capsys)
    assert "native model (.qgn)" in line and "quantgraph run" in line and "re-export" not in line
    assert main(["run", str(qgn), "--data", SYN, "--split", "val"]) == 0
    assert "(val nodes): accuracy" in capsys.readouterr().out
