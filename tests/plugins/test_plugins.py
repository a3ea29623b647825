"""A quantizer, a pass with declared options, a policy and a backend, each a plug-in file outside
``quantgraph/``, registered through the public registry APIs and used by ``quantgraph compile``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from quantgraph.backends.registry import available_backends
from quantgraph.cli import main
from quantgraph.compiler import compile as qg_compile
from quantgraph.data import load_dataset
from quantgraph.errors import InputError
from quantgraph.ir.quantizer import available_quantizers
from quantgraph.models import load_checkpoint
from quantgraph.passes import available_passes
from quantgraph.policies import available_policies

from . import json_backend, lsq_policy  # noqa: F401  (registers the plug-ins)
from .lsq_quantizer import LSQQuantizer

SYN = "synthetic:nodes=300,seed=1"


def load_model(checkpoint: Path):
    return load_checkpoint(checkpoint)[0]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("plugins") / "gcn.pt"
    assert main(["train", "--arch", "gcn", "--data", SYN, "--epochs", "20", "--quiet", "-o", str(path)]) == 0
    return path


def test_plugins_are_registered():
    assert available_quantizers()["lsq"] is LSQQuantizer
    assert "count-quantize" in available_passes()
    assert "lsq-plugin" in available_policies()
    assert "qparams-json" in available_backends()


def test_compile_uses_plugin_quantizer_pass_policy_and_backend(checkpoint, tmp_path):
    out, report = tmp_path / "m.json", tmp_path / "r.json"
    argv = ["compile", str(checkpoint), "--data", SYN, "--policy", "lsq-plugin", "--bits", "4"]
    argv += ["--backend", "qparams-json", "--option", "count_label=lsq", "--option", "epochs=3"]
    assert main([*argv, "-o", str(out), "--report", str(report), "--quiet"]) == 0
    rep = json.loads(report.read_text())
    artifact = json.loads(out.read_text())
    assert rep["policy"] == "lsq-plugin"
    assert rep["passes"][-1] == "count-quantize"
    assert rep["plugin_counts"]["lsq"] == len(artifact["points"]) > 0  # the pass read its option
    assert rep["qat"]["epochs"] == 3
    assert {q["quantizer"] for q in rep["quantization"].values()} == {"lsq"}
    assert all(
        p["zero_point"] == [0] and p["qmax"] == [7] for p in artifact["points"].values()
    )  # 4-bit symmetric
    assert rep["qparams_json"]["positive_scales"] is True
    assert rep["accuracy"]["qparams_json"] == rep["accuracy"]["quantized"]


def test_lsq_scale_is_learned(checkpoint):
    data, model = load_dataset(SYN), load_model(checkpoint)
    untrained = [n for n in lsq_policy.LSQ.pipeline if n != "train-qat"]
    calibrated = qg_compile(model, data, policy="lsq-plugin", bits=4, pipeline=untrained)
    trained = qg_compile(model, data, policy="lsq-plugin", bits=4, options={"epochs": 5})
    before = {k: v["scale"] for k, v in calibrated.report["quantization"].items()}
    after = {k: v["scale"] for k, v in trained.report["quantization"].items()}
    assert before.keys() == after.keys()
    assert any(abs(before[k] - after[k]) > 1e-7 for k in before)


def test_unknown_option_is_rejected_with_valid_names(checkpoint, tmp_path, capsys):
    argv = ["compile", str(checkpoint), "--data", SYN, "--policy", "lsq-plugin", "--backend", "qparams-json"]
    rc = main([*argv, "--option", "count_lable=x", "-o", str(tmp_path / "unused.json"), "--quiet"])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert "unknown option 'count_lable'" in err
    assert "count_label" in err and "count_minimum" in err and "epochs" in err
    assert not (tmp_path / "unused.json").exists()
    with pytest.raises(InputError, match="int_overflow"):
        qg_compile(load_model(checkpoint), load_dataset(SYN), backend="onnx-int", options={"int_overfow": 1})


def test_declared_option_types_are_checked(checkpoint):
    with pytest.raises(InputError, match="count_minimum"):
        qg_compile(
            load_model(checkpoint),
            load_dataset(SYN),
            policy="lsq-plugin",
            options={"count_minimum": "many"},
        )


def test_passes_lists_declared_options(capsys):
    assert main(["passes", "--options", "count-quantize"]) == 0
    out = capsys.readouterr().out
    assert "count_label" in out and "quantize_nodes" in out and "count_minimum" in out
