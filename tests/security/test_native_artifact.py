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


def _edit(src: Path, dst: Path, program=None, arrays: dict[str, np.ndarray] | None = None) -> None:
    """Copy ``src`` with ``program(doc)`` applied to program.json and arrays replaced."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for name in zin.namelist():
            data = zin.read(name)
            if name == "program.json" and program is not None:
                doc = json.loads(data)
                program(doc)
                data = json.dumps(doc).encode()
            key = name.removeprefix("arrays/").removesuffix(".npy")
            if arrays and key in arrays:
                buf = io.BytesIO()
                np.save(buf, arrays[key], allow_pickle=False)
                data = buf.getvalue()
            zout.writestr(name, data)


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
