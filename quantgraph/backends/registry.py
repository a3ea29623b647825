"""Backend interface and registry: what ``compile`` appends after the policy and how a model is written.

A :class:`Backend` has a ``name``, the ``passes`` it needs after the policy's pipeline, the options it
declares, and four steps: ``lower`` (compiled IR -> artifact), ``verify`` (artifact against the IR on a
graph: a report section with ``accuracy``), ``save`` (artifact -> file, atomically; returns its bytes)
and ``suffix`` (the artifact's file ending). :meth:`Backend.export` runs them in that order and fills
the report under ``report_key``. Built-ins: ``onnx-qdq``, ``onnx-int``, ``native``. Others register
with :func:`register_backend` or the entry-point group ``quantgraph.backends``.

This module imports no exporter at import time (the CLI lists the backends from it).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from quantgraph.options import Option
from quantgraph.registry import Registry

if TYPE_CHECKING:
    from quantgraph.compiler import CompiledModel
    from quantgraph.data import GraphData

INTEGER_PASSES = ("quantize-bias", "fold-scales")


class Backend:
    """One export target. Subclasses set the class attributes and implement ``lower``/``verify``/``save``."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    suffix: ClassVar[str] = ""
    #: passes appended after the policy's pipeline (unless it already has them)
    passes: ClassVar[tuple[str, ...]] = ()
    options: ClassVar[tuple[Option, ...]] = ()
    #: where ``export`` puts the verification in the report (``report[key]``, ``accuracy[key]``)
    report_key: ClassVar[str] = ""
    #: True: its passes rewrite the IR into the integer IR (it then needs a quantizing policy)
    integer_ir: ClassVar[bool] = False

    def lower(self, compiled: CompiledModel, data: GraphData) -> Any:
        raise NotImplementedError

    def verify(self, artifact: Any, compiled: CompiledModel, data: GraphData) -> dict[str, Any]:
        """Compare the artifact with the IR on ``data``; the dict has ``accuracy`` (test accuracy or None)."""
        raise NotImplementedError

    def save(self, artifact: Any, path: str | Path) -> int:
        """Write the artifact to ``path`` (atomically) and return its size in bytes."""
        raise NotImplementedError

    def export(self, compiled: CompiledModel, path: str | Path, data: GraphData) -> dict[str, Any]:
        """Lower, verify (nothing is written if it fails), save; the report gets the checks and sizes."""
        from quantgraph.progress import stage

        with stage(f"export {self.name}"):
            artifact = self.lower(compiled, data)
        with stage(f"verify {self.name}"):
            checks = self.verify(artifact, compiled, data)
        key = self.report_key or self.name
        compiled.report.setdefault("accuracy", {})[key] = checks.pop("accuracy", None)
        compiled.report[key] = checks
        size = self.save(artifact, path)
        compiled.report["size_bytes"] = {"fp32": _fp32_onnx_size(compiled), "quantized": size}
        return checks


def _fp32_onnx_size(compiled: CompiledModel) -> int:
    return len(compiled.to_onnx(quantized=False).SerializeToString())


#: ONNX export options (``--option onnx_aggregation=scatter``, ``--graph-input csr``, ``--onnx-target ort``)
ONNX_OPTIONS = (
    Option(
        "onnx_aggregation",
        str,
        "segment",
        "segment: destination-sorted segment sums/max (race-free, fast); scatter: element-wise ScatterElements",
        choices=("segment", "scatter"),
    ),
    Option(
        "graph_input",
        str,
        "edges",
        "edges: the model takes x, edge_index and sorts inside; csr: it also takes graph_perm_<i> "
        "(the destination-sorted edge order, `quantgraph prepare-graph`)",
        choices=("edges", "csr"),
    ),
    Option(
        "onnx_target",
        str,
        "onnx",
        "onnx: standard ONNX ops only; ort: onnxruntime's com.microsoft ops allowed",
        choices=("onnx", "ort"),
    ),
    Option(
        "message_fusion",
        str,
        "on",
        "on: per-edge messages are computed inside the segment reduction (no [E, F] tensor); off: "
        "materialised first (segment aggregation only)",
        choices=("off", "on"),
    ),
)


class OnnxQDQBackend(Backend):
    name = "onnx-qdq"
    description = "ONNX QuantizeLinear/DequantizeLinear around float ops, checked in onnxruntime"
    suffix = ".onnx"
    report_key = "onnx"
    #: int32 biases at s_x * s_w in the IR itself: onnxruntime's WeightBiasQuantization (a basic-level graph
    #: optimisation) rounds a float Gemm bias that way, so a float bias in the IR would differ from onnxruntime
    #: by up to half an accumulator step (GIN on Cora: one output step on 0.4% of the logits; docs/security.md)
    passes: ClassVar[tuple[str, ...]] = ("quantize-bias",)
    options = ONNX_OPTIONS
    #: also compare onnxruntime's integers with the IR's at every quantize point
    compare_integers = False

    def lower(self, compiled: CompiledModel, data: GraphData) -> Any:
        return compiled.to_onnx()  # Q/DQ, or integer ONNX when the model's IR is the integer IR

    def verify(self, artifact: Any, compiled: CompiledModel, data: GraphData) -> dict[str, Any]:
        from quantgraph.backends.verify import compare_integers, verify_onnx

        checks = verify_onnx(artifact, compiled, data)
        if self.compare_integers:
            checks = {"integer_tensors": compare_integers(artifact, compiled, data.inputs()), **checks}
        return checks

    def save(self, artifact: Any, path: str | Path) -> int:
        from quantgraph.backends.onnx_export import save_onnx

        save_onnx(artifact, path)
        return len(artifact.SerializeToString())


class OnnxIntBackend(OnnxQDQBackend):
    name = "onnx-int"
    description = "integer ONNX: MatMulInteger linear layers, int32 aggregations, requantize in float64"
    passes = INTEGER_PASSES
    #: message fusion on by default as for onnx-qdq (measured faster for both, docs/onnx_benchmarks.md)
    options = ONNX_OPTIONS
    integer_ir = True
    compare_integers = True


class NativeBackend(Backend):
    name = "native"
    description = "quantgraph's C kernels on the integer IR: a .qgn artifact run by `quantgraph run`"
    suffix = ".qgn"
    passes = INTEGER_PASSES
    report_key = "native"
    integer_ir = True

    def lower(self, compiled: CompiledModel, data: GraphData) -> Any:
        return compiled.to_native(data)

    def verify(self, artifact: Any, compiled: CompiledModel, data: GraphData) -> dict[str, Any]:
        from quantgraph.native.verify import verify_native

        return verify_native(artifact, compiled, data)

    def save(self, artifact: Any, path: str | Path) -> int:
        return artifact.save(path)


def _adapt(name: str, obj: object) -> tuple[str, Backend] | None:
    instance = obj() if isinstance(obj, type) and issubclass(obj, Backend) else obj
    return (instance.name or name, instance) if isinstance(instance, Backend) else None


BACKENDS: Registry[Backend] = Registry("backend", "quantgraph.backends", _adapt)


def register_backend(backend: type[Backend] | Backend) -> type[Backend] | Backend:
    """Make a backend (class or instance) available by its ``name`` (``compile(backend=name)``, ``--backend``)."""
    instance = backend() if isinstance(backend, type) else backend
    if not isinstance(instance, Backend) or not instance.name:
        raise ValueError(f"{backend!r} is not a named quantgraph Backend")
    BACKENDS.add(instance.name, instance)
    return backend


for _builtin in (OnnxQDQBackend, OnnxIntBackend, NativeBackend):
    register_backend(_builtin)


def available_backends() -> dict[str, Backend]:
    return BACKENDS.available()


def get_backend(name: str) -> Backend:
    return BACKENDS.get(name)
