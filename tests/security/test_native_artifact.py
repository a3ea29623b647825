"""`.qgn` programs run only allow-listed ops with checked arguments, and their arrays are validated (issue 10)."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import quantgraph as qg
from quantgraph.errors import InputError
from quantgraph.native.artifact import program_digest
from quantgraph.native.runtime import NativeModel

from ..conftest import TwoLayer
from ..test_native_backend import _power_law


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    data = _power_law(120, seed=0)
    compiled = qg.compile(TwoLayer("gcn").eval(), data, policy="minmax", bits=8, backend="native")
    path = tmp_path_factory.mktemp("qgn") / "gcn.qgn"
    compiled.export_native(path)
    return path


def _edit(
    src: Path, dst: Path, program=None, arrays: dict[str, np.ndarray] | None = None, reseal: bool = True
) -> None:
    """Copy ``src`` with ``program(doc)`` applied to program.json and arrays replaced.

    ``reseal``: declare the arrays as stored and recompute the checksum, as a hostile author would (so the
    checks behind the checksum are what is tested); False leaves the recorded checksum as it was.
    """
    with zipfile.ZipFile(src) as zin:
        doc = json.loads(zin.read("program.json"))
        stored = {
            n.removeprefix("arrays/").removesuffix(".npy"): np.load(io.BytesIO(zin.read(n)))
            for n in zin.namelist()
            if n.startswith("arrays/")
        }
    if program is not None:
        program(doc)
    stored.update(arrays or {})
    if reseal:
        doc["arrays"] = {k: {"dtype": v.dtype.name, "shape": list(v.shape)} for k, v in stored.items()}
        doc["sha256"] = program_digest(json.loads(json.dumps(doc)), stored)
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        zout.writestr("program.json", json.dumps(doc).encode())
        for key, value in sorted(stored.items()):
            buf = io.BytesIO()
            np.save(buf, value, allow_pickle=False)
            zout.writestr(f"arrays/{key}.npy", buf.getvalue())


def _first(doc, op: str) -> dict:
    return next(s for s in doc["steps"] if s["op"] == op)


def test_from_file_step_is_refused(artifact, tmp_path):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"\1" * 64)

    def add_from_file(doc):
        doc["steps"].insert(
            0,
            {"op": "aten.from_file.default", "args": [str(secret), True, 64], "kwargs": {}, "out": "leak",
             "stage": "graph", "source": None},
        )  # fmt: skip

    evil = tmp_path / "from_file.qgn"
    _edit(artifact, evil, add_from_file)
    with pytest.raises(InputError, match="aten.from_file.default.*allow-list"):
        NativeModel.load(evil)


def test_in_place_fill_is_refused(artifact, tmp_path):
    def add_fill(doc):
        doc["steps"].insert(
            0,
            {"op": "aten.fill_.Scalar", "args": [{"value": doc["inputs"][0]}, 0], "kwargs": {}, "out": "f",
             "stage": "feature", "source": None},
        )  # fmt: skip

    evil = tmp_path / "fill.qgn"
    _edit(artifact, evil, add_fill)
    with pytest.raises(InputError, match="fill_"):
        NativeModel.load(evil)


def _linear_weight_name(artifact: Path) -> str:
    with zipfile.ZipFile(artifact) as z:
        doc = json.loads(z.read("program.json"))
    return _first(doc, "native.linear")["kwargs"]["weight"]["array"]


def test_int64_weight_that_would_wrap_is_refused(artifact, tmp_path):
    name = _linear_weight_name(artifact)
    with zipfile.ZipFile(artifact) as z:
        weight = np.load(io.BytesIO(z.read(f"arrays/{name}.npy")))
    evil = tmp_path / "wide.qgn"
    _edit(artifact, evil, arrays={name: weight.astype(np.int64) + 256})  # wraps back to itself as int8
    with pytest.raises(InputError, match="weight"):
        NativeModel.load(evil)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_multiplier_is_refused(artifact, tmp_path, bad):
    with zipfile.ZipFile(artifact) as z:
        doc = json.loads(z.read("program.json"))
    name = _first(doc, "native.linear")["kwargs"]["requant"]["multiplier"]["array"]
    evil = tmp_path / "nan.qgn"
    _edit(artifact, evil, arrays={name: np.array([bad], dtype=np.float64)})
    with pytest.raises(InputError, match="NaN or infinite"):
        NativeModel.load(evil)


def test_huge_zero_point_is_refused(artifact, tmp_path):
    evil = tmp_path / "zp.qgn"
    _edit(artifact, evil, lambda doc: _first(doc, "native.linear")["kwargs"].update(zero_point=2**40))
    with pytest.raises(InputError, match="zero_point"):
        NativeModel.load(evil)


def test_decompression_bomb_is_refused_before_reading(artifact, tmp_path):
    evil = tmp_path / "bomb.qgn"
    with zipfile.ZipFile(artifact) as zin, zipfile.ZipFile(evil, "w", zipfile.ZIP_DEFLATED) as zout:
        for name in zin.namelist():
            zout.writestr(name, zin.read(name))
        zout.writestr("arrays/bomb.npy", b"\0" * (400 << 20))
    assert evil.stat().st_size < 1 << 20
    with pytest.raises(InputError, match="decompression bomb"):
        NativeModel.load(evil)


def test_deeply_nested_program_is_one_error(artifact, tmp_path):
    evil = tmp_path / "deep.qgn"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("program.json", "[" * 100_000 + "]" * 100_000)
    with pytest.raises(InputError, match="not a quantgraph native model"):
        NativeModel.load(evil)


def test_step_reading_an_unknown_value_is_refused(artifact, tmp_path):
    evil = tmp_path / "ref.qgn"
    _edit(artifact, evil, lambda doc: _first(doc, "native.linear").update(args=[{"value": "nowhere"}]))
    with pytest.raises(InputError, match="nowhere"):
        NativeModel.load(evil)


def test_clean_artifact_still_runs(artifact):
    model = NativeModel.load(artifact)
    data = _power_law(50, seed=3)
    assert model.run(data.inputs()).shape == (50, 4)


def _arrays(artifact: Path) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(artifact) as z:
        return {
            n.removeprefix("arrays/").removesuffix(".npy"): np.load(io.BytesIO(z.read(n)))
            for n in z.namelist()
            if n.startswith("arrays/")
        }


def test_changed_weight_fails_the_checksum(artifact, tmp_path):
    """An in-range change to one weight (a valid zip, CRCs recomputed) is caught by the recorded SHA-256."""
    name = _linear_weight_name(artifact)
    weight = _arrays(artifact)[name].copy()
    weight.flat[0] = 1 if weight.flat[0] != 1 else 2
    evil = tmp_path / "flipped.qgn"
    _edit(artifact, evil, arrays={name: weight}, reseal=False)
    with pytest.raises(InputError, match="does not match the SHA-256"):
        NativeModel.load(evil)


def test_flipped_byte_in_the_file_is_one_error(artifact, tmp_path, capsys):
    evil = tmp_path / "byte.qgn"
    raw = bytearray(artifact.read_bytes())
    raw[len(raw) // 3] ^= 0x10
    evil.write_bytes(bytes(raw))
    from quantgraph.cli import main

    assert main(["run", str(evil), "--data", "synthetic", "--quiet"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_array_of_another_shape_than_declared_is_refused(artifact, tmp_path):
    name = _linear_weight_name(artifact)
    weight = _arrays(artifact)[name]
    evil = tmp_path / "shape.qgn"
    _edit(artifact, evil, arrays={name: weight[:, :-1]}, reseal=False)
    with pytest.raises(InputError, match="the program declares"):
        NativeModel.load(evil)


def test_undeclared_array_is_refused(artifact, tmp_path):
    evil = tmp_path / "extra.qgn"
    _edit(artifact, evil, arrays={"extra": np.zeros(3, np.int8)}, reseal=False)
    with pytest.raises(InputError, match="'extra' is stored but not declared"):
        NativeModel.load(evil)


def test_artifact_without_checksum_loads_with_a_warning(artifact, tmp_path):
    """Files written before checksums existed: accepted, with a warning that they were not verified."""
    from quantgraph.checksum import UnverifiedFileWarning

    old = tmp_path / "old.qgn"
    _edit(artifact, old, lambda doc: (doc.pop("arrays"), doc.pop("sha256")), reseal=False)
    with pytest.warns(UnverifiedFileWarning, match="no content checksum"):
        model = NativeModel.load(old)
    assert model.run(_power_law(30, seed=1).inputs()).shape == (30, 4)


def test_enormous_literal_allocation_is_refused_at_load(artifact, tmp_path):
    def add_zeros(doc):
        doc["steps"].insert(
            0,
            {"op": "aten.zeros.default", "args": [[2**31 - 1, 2**31 - 1]], "kwargs": {}, "out": "big",
             "stage": "graph", "source": None},
        )  # fmt: skip

    evil = tmp_path / "zeros.qgn"
    _edit(artifact, evil, add_zeros)
    with pytest.raises(InputError, match="big.*more than 2147483648 elements"):
        NativeModel.load(evil)


def test_enormous_computed_allocation_is_refused_at_run_time(artifact, tmp_path):
    """A size read from the input (rows x 2**30) is only known when the step runs: refused then."""

    def add_new_zeros(doc):
        x = doc["meta"]["feature_inputs"][0]
        doc["steps"].insert(
            0,
            {
                "op": "input.size",
                "args": [x, 0],
                "kwargs": {},
                "out": "rows",
                "stage": "graph",
                "source": None,
            },
        )
        doc["steps"].insert(
            1,
            {"op": "aten.new_zeros.default", "args": [{"value": x}, [{"value": "rows"}, 2**30]], "kwargs": {},
             "out": "big", "stage": "feature", "source": None},
        )  # fmt: skip
        doc["outputs"].append("big")

    evil = tmp_path / "new_zeros.qgn"
    _edit(artifact, evil, add_new_zeros)
    model = NativeModel.load(evil)
    with pytest.raises(InputError, match="big.*more than 2147483648 elements"):
        model.run(_power_law(50, seed=3).inputs())


def test_huge_zero_point_of_a_generic_quantize_is_refused(artifact, tmp_path):
    """Generic quantgraph ops are checked too: a zero point of 2**40 in an int64 array."""

    def add_quantize(doc):
        x = doc["meta"]["feature_inputs"][0]
        doc["steps"].insert(
            0,
            {"op": "quantgraph.quantize.default",
             "args": [{"value": x}, {"array": "s"}, {"array": "zp"}, {"array": "lo"}, {"array": "hi"}, 0],
             "kwargs": {}, "out": "q", "stage": "feature", "source": None},
        )  # fmt: skip

    extra = {
        "s": np.array(0.1, np.float32),
        "zp": np.array(2**40, np.int64),
        "lo": np.array(-128, np.int32),
        "hi": np.array(127, np.int32),
    }
    evil = tmp_path / "generic_zp.qgn"
    _edit(artifact, evil, add_quantize, arrays=extra)
    with pytest.raises(InputError, match="quantgraph.quantize.default.*outside"):
        NativeModel.load(evil)
    extra.update(zp=np.array(0, np.int64), s=np.array(0.0, np.float32))
    _edit(artifact, evil, add_quantize, arrays=extra)
    with pytest.raises(InputError, match="scale"):
        NativeModel.load(evil)


def test_bias_of_the_wrong_length_is_refused(artifact, tmp_path):
    """Declared and checksummed (a hostile author reseals it), but a bias needs one value per output column: a
    kernel's bias is checked at load (native.linear) or, where the width is only known then, before it runs."""
    with zipfile.ZipFile(artifact) as z:
        doc = json.loads(z.read("program.json"))
    step = next(s for s in doc["steps"] if s["op"].startswith("native.") and s["kwargs"].get("bias"))
    name = step["kwargs"]["bias"]["array"]
    evil = tmp_path / "bias.qgn"
    _edit(artifact, evil, arrays={name: _arrays(artifact)[name][:-1]})
    with pytest.raises(InputError, match="bias has .* values for"):
        NativeModel.load(evil).run(_power_law(50, seed=3).inputs())
