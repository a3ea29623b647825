"""The ``.qgn`` artifact of ``--backend native``: a zip of NumPy arrays and a JSON program, no pickle.

Layout (every member stored in sorted order with a fixed timestamp, so the same program gives the same bytes):

* ``program.json``: ``{"format": "quantgraph-native", "version": 1, "inputs": [...], "outputs": [...],
  "steps": [...], "meta": {...}}``.
* ``arrays/<name>.npy``: the constants, written with ``np.save(allow_pickle=False)``.
* ``program.json`` also declares every array (``"arrays": {name: {"dtype", "shape"}}``) and records the
  ``sha256`` of the rest of the program and of every array's bytes (:mod:`quantgraph.checksum`). On load the
  arrays must be exactly the declared ones, of the declared dtype and shape, and the checksum must match (a
  changed byte is refused). Files written before the checksum existed load with a warning.

A step is ``{"op", "args", "kwargs", "out", "stage", "source"}``:

* ``op``: ``aten.<name>.<overload>`` or ``quantgraph.<name>.<overload>`` (an op of that library, resolved by
  name), ``operator.<name>`` (integer arithmetic on sizes), or ``native.<kernel>`` (see ``runtime``).
* ``args``/``kwargs``: JSON values where ``{"value": n}`` is an input or an earlier step's output,
  ``{"array": n}`` a constant, ``{"dtype": "float32"}`` a tensor dtype and ``{"float": "inf"}`` a non-finite
  float; lists nest.
* ``stage``: ``graph`` (depends only on the graph structure and sizes: run once per graph) or ``feature``.
* ``source``: the IR node whose value the step computes (integer checks are keyed by it), or ``null``.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from quantgraph.checksum import CHECKSUM_KEY, content_digest, json_bytes, warn_unverified
from quantgraph.errors import InputError
from quantgraph.fileio import atomic_write_bytes
from quantgraph.native.program_check import check_arrays, check_program
from quantgraph.safe_zip import GiB, MiB, ZipLimits, inspect_zip

FORMAT = "quantgraph-native"
VERSION = 1
STAGES = ("graph", "feature")
_PROGRAM = "program.json"
_ARRAYS = "arrays/"
_DATE = (1980, 1, 1, 0, 0, 0)
MAX_ARRAY_BYTES = 4 * GiB
MAX_PROGRAM_BYTES = 64 * MiB
#: a model's arrays are weights and quantization parameters: they do not compress 200-fold beyond 4 MiB
QGN_LIMITS = ZipLimits(max_total=MAX_ARRAY_BYTES + MAX_PROGRAM_BYTES, max_member=MAX_ARRAY_BYTES)


@dataclass
class Step:
    """One operation of a native program."""

    op: str
    args: list[Any]
    out: str
    stage: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    source: str | None = None


@dataclass
class Program:
    """A native program: inputs, steps in execution order, outputs, constants and metadata."""

    inputs: list[str]
    outputs: list[str]
    steps: list[Step]
    arrays: dict[str, np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "inputs": self.inputs,
            "outputs": self.outputs,
            "steps": [asdict(s) for s in self.steps],
            "meta": self.meta,
        }


def _member(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_DATE)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    return info


def program_bytes(program: Program) -> bytes:
    """The ``.qgn`` bytes of ``program`` (deterministic)."""
    arrays = {name: np.ascontiguousarray(program.arrays[name]) for name in sorted(program.arrays)}
    for name, arr in arrays.items():
        if arr.dtype.hasobject:
            raise InputError(f"constant {name} holds Python objects", "store numeric arrays only")
    doc = program.to_json()
    doc["arrays"] = {
        name: {"dtype": arr.dtype.name, "shape": list(arr.shape)} for name, arr in arrays.items()
    }
    doc = json.loads(json.dumps(doc))  # the checksum covers what a reader will parse
    doc[CHECKSUM_KEY] = program_digest(doc, arrays)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        text = json.dumps(doc, indent=1, sort_keys=True)
        zf.writestr(_member(_PROGRAM), text.encode())
        for name, arr in arrays.items():
            npy = io.BytesIO()
            np.save(npy, arr, allow_pickle=False)
            zf.writestr(_member(f"{_ARRAYS}{name}.npy"), npy.getvalue())
    return buf.getvalue()


def program_digest(doc: dict[str, Any], arrays: dict[str, np.ndarray]) -> str:
    """The SHA-256 of a program document (all but its ``sha256``) and its arrays' bytes."""
    return content_digest({k: v for k, v in doc.items() if k != CHECKSUM_KEY}, arrays)


def check_manifest(doc: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """The stored arrays are exactly the declared ones, with the declared dtype and shape; the checksum
    matches. A program without a checksum (an older file) is accepted with a warning."""
    declared = doc.get("arrays")
    recorded = doc.get(CHECKSUM_KEY)
    if declared is None and recorded is None:
        warn_unverified("the native model", "re-compile it with this quantgraph to add one")
        return
    if not isinstance(declared, dict) or not isinstance(recorded, str):
        raise InputError("its array declarations or checksum are malformed", "re-create the model")
    if set(declared) != set(arrays):
        extra = sorted(set(arrays) ^ set(declared))
        raise InputError(
            f"array {extra[0]!r} is {'stored but not declared' if extra[0] in arrays else 'declared but missing'}",
            "re-create the model",
        )
    for name, arr in arrays.items():
        want = declared[name]
        if (
            not isinstance(want, dict)
            or want.get("dtype") != arr.dtype.name
            or want.get("shape") != list(arr.shape)
        ):
            raise InputError(
                f"array {name!r} is {arr.dtype.name} {list(arr.shape)}, the program declares "
                f"{json_bytes(want).decode()[:80]}",
                "re-create the model",
            )
    if program_digest(doc, arrays) != recorded:
        raise InputError(
            "its content does not match the SHA-256 recorded when it was written (a changed byte)",
            "re-create it with `quantgraph compile --backend native`, or copy it again from its source",
        )


def save_program(program: Program, path: str | Path) -> int:
    """Write ``program`` to ``path`` atomically; returns the number of bytes written."""
    payload = program_bytes(program)
    atomic_write_bytes(path, payload)
    return len(payload)


def load_program(path: str | Path) -> Program:
    """Read a ``.qgn`` file (arrays are loaded with ``allow_pickle=False``)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(
            f"native model {path} does not exist", "create one with `quantgraph compile --backend native`"
        )
    infos = inspect_zip(path, "quantgraph native model (.qgn)", QGN_LIMITS)
    sizes = {i.filename: i.file_size for i in infos}
    if sizes.get(_PROGRAM, 0) > MAX_PROGRAM_BYTES:
        raise InputError(
            f"{path}: {_PROGRAM} is larger than {MAX_PROGRAM_BYTES >> 20} MiB", "re-create the model"
        )
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            if _PROGRAM not in names:
                raise InputError(
                    f"{path} is not a quantgraph native model (no {_PROGRAM})",
                    "pass a .qgn file from `quantgraph compile --backend native`",
                )
            doc = json.loads(zf.read(_PROGRAM))
            arrays = {
                n[len(_ARRAYS) : -len(".npy")]: np.load(io.BytesIO(zf.read(n)), allow_pickle=False)
                for n in sorted(names)
                if n.startswith(_ARRAYS) and n.endswith(".npy")
            }
    except (zipfile.BadZipFile, json.JSONDecodeError, ValueError, OSError, RecursionError, EOFError) as err:
        raise InputError(
            f"{path} is not a quantgraph native model ({str(err).splitlines()[0][:100]})",
            "re-create it with `quantgraph compile --backend native`",
        ) from err
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise InputError(f"{path} is not a quantgraph native model", "pass a .qgn file written by quantgraph")
    if doc.get("version") != VERSION:
        raise InputError(
            f"{path} has native format version {doc.get('version')}, this quantgraph reads {VERSION}",
            "re-compile the model with this version of quantgraph",
        )
    try:
        check_manifest(doc, arrays)
    except InputError as err:
        raise InputError(f"{path}: {err.problem}", err.fix) from None
    try:
        steps = [Step(**s) for s in doc["steps"]]
        program = Program(list(doc["inputs"]), list(doc["outputs"]), steps, arrays, dict(doc.get("meta", {})))
        if not all(isinstance(n, str) for n in program.inputs + program.outputs):
            raise TypeError("input and output names must be strings")
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise InputError(
            f"{path} has a malformed program ({err})", "re-create it with `quantgraph compile`"
        ) from err
    try:
        check_arrays(program.arrays, MAX_ARRAY_BYTES)
        check_program(program)
    except InputError as err:
        raise InputError(f"{path}: {err.problem}", err.fix) from None
    for step in program.steps:
        if step.stage not in STAGES:
            raise InputError(f"{path}: step {step.out} has stage {step.stage!r}", "re-create the model")
    return program


def references(arg: Any) -> list[str]:
    """Names of the values (``{"value": name}``) an encoded argument reads."""
    if isinstance(arg, dict):
        if "value" in arg and isinstance(arg["value"], str):
            return [arg["value"]]
        return [r for v in arg.values() for r in references(v)]
    if isinstance(arg, list):
        return [r for a in arg for r in references(a)]
    return []
