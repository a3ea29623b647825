"""Run a native program (``.qgn``): integer kernels for the hot ops, PyTorch's ATen ops for the rest.

>>> model = NativeModel.load("gcn.qgn")
>>> graph = model.prepare({"edge_index": edge_index, "x": x})   # graph stage: once per graph
>>> logits = model.run({"x": x, "edge_index": edge_index}, graph)

* ``native.csr`` (graph stage) builds an aggregation's CSR with its integer edge weights.
* ``native.aggregate``: ``spmm``/``spmm_requantize`` on int8 or packed 4/2-bit features (with the per-edge
  message quantizer when the program has one); ``native.linear``: ``gemm_i8`` on a weight packed once at load,
  plus ``requantize``; ``native.requantize``: ``requantize_affine``; ``native.quantize``: ``quantize``. Their outputs are int8 (the IR's int32 values,
  stored narrow) and are widened to int32 where an ATen op reads them, so every op sees the IR's dtypes.
* Every other step is the ATen (or ``quantgraph``) op it names, resolved by name from PyTorch's op registry;
  no code is loaded from the file. Unknown ops are refused when the program is loaded.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

import quantgraph.ir.int_ops  # noqa: F401  (registers quantgraph::linear_int / requantize)
import quantgraph.ir.ops  # noqa: F401  (registers quantgraph::gather / scatter / quantize / dequantize)
from quantgraph.errors import InputError
from quantgraph.ir.int_ops import INT32_MAX
from quantgraph.native import kernels, mixed_bits
from quantgraph.native.alloc_check import MAX_STEP_ELEMENTS, output_elements
from quantgraph.native.artifact import Program, Step, load_program, references, save_program
from quantgraph.native.fusion import FusedStep, plan
from quantgraph.native.opnames import OPERATORS
from quantgraph.native.order import ORDERS, inverse, node_order
from quantgraph.native.program_check import NATIVE_STEPS as NATIVE_OPS
from quantgraph.native.program_check import check_program, resolve_allowed

LIBRARIES = ("aten", "quantgraph")


def resolve_op(op: str) -> Callable[..., Any] | None:
    """The callable of a generic step's op name, or None for the native ones."""
    if op in NATIVE_OPS:
        return None
    library, _, rest = op.partition(".")
    if library == "operator" and rest in OPERATORS:
        return OPERATORS[rest]
    return resolve_allowed(op)  # only allow-listed ATen/quantgraph ops (see native.program_check)


@dataclass
class PreparedGraph:
    """The graph stage's values for one graph (CSRs, quantized edge weights, sizes)."""

    values: dict[str, Any]
    shapes: dict[str, tuple[int, ...]]
    seconds: float = 0.0
    perm: np.ndarray | None = None  # renumbered: new node id -> input id (None: the input order)
    inv: np.ndarray | None = None  # input id -> new id
    order: str = "none"


@dataclass
class StepTime:
    """Time spent in one step of the last profiled run."""

    op: str
    out: str
    seconds: float


@dataclass
class NativeModel:
    """A loaded native program, ready to prepare graphs and run them."""

    program: Program
    threads: int | None = None
    profile: list[StepTime] = field(default_factory=list)
    order: str = "none"  # node order of prepare: none, degree or rcm (see NativeModel.prepare)
    fuse: bool = True  # run the fusion plan (False: one kernel call per program step, e.g. to measure it)
    narrow_rows: int = 16  # 4/2-bit rows of at most this many features are aggregated from int8 (0: never)

    def __post_init__(self) -> None:
        check_program(self.program)  # allow-listed ops, argument kinds, arrays: before anything runs
        self._ops = {s.out: resolve_op(s.op) for s in self.program.steps}
        self._tensors = {k: torch.from_numpy(np.array(v)) for k, v in self.program.arrays.items()}
        self._narrow: set[str] = {  # int8 outputs of native steps whose IR value is int32
            s.out
            for s in self.program.steps
            if s.op in ("native.requantize", "native.quantize")
            or (s.op.startswith("native.") and s.kwargs.get("requant"))
        }
        self._weights = {
            s.out: kernels.pack_weight(self.array(s.kwargs["weight"]).astype(np.int8))
            for s in self.program.steps
            if s.op == "native.linear"
        }
        self._feature_reads = {  # graph-stage values kept after prepare: read later, or integers to check
            name
            for s in self.program.steps
            if s.stage == "feature"
            for name in references({"args": s.args, "kwargs": s.kwargs})
        } | {s.out for s in self.program.steps if s.stage == "graph" and s.source is not None}
        self.feature_inputs = [
            n for n in self.program.meta.get("feature_inputs", []) if n in self.program.inputs
        ]
        self._plan = plan(self.program)
        self._quantized_in_gemm = {  # feature inputs read only by a GEMM that quantizes them itself
            f.input_quantize.args[0]["value"]
            for f in self._plan
            if isinstance(f, FusedStep) and f.input_quantize is not None
        }
        self._stage_params = {  # decoded once: multipliers, zero points and biases of every fused stage
            id(f): self._stages(f) for f in self._plan if isinstance(f, FusedStep)
        }
        self._epilogues: dict[tuple[int, int, int], kernels.Epilogue] = {}  # see _epilogue
        self._linear_params = {  # int32 bias and weight zero points of every GEMM, converted once
            s.out: (
                None
                if s.kwargs["bias"] is None
                else self.array(s.kwargs["bias"]).astype(np.int32).reshape(-1),
                np.ascontiguousarray(self.array(s.kwargs["weight_zero_point"]), dtype=np.int32).reshape(-1),
            )
            for s in self.program.steps
            if s.op == "native.linear"
        }

    # ---------------------------------------------------------------------------------------------- files
    @classmethod
    def load(cls, path: str | Path, threads: int | None = None) -> NativeModel:
        return cls(load_program(path), threads)

    def save(self, path: str | Path) -> int:
        return save_program(self.program, path)

    @property
    def input_names(self) -> list[str]:
        return list(self.program.inputs)

    @property
    def meta(self) -> dict[str, Any]:
        return self.program.meta

    # ---------------------------------------------------------------------------------------------- running
    def prepare(self, inputs: Mapping[str, Any], order: str | None = None) -> PreparedGraph:
        """Run the graph stage on a graph's structure inputs (feature inputs give only their shapes).

        ``order`` (default: the model's ``order``) renumbers the nodes for locality first (see
        ``native.order``): every kernel then runs in that order and ``run`` maps its outputs back, so results
        do not change (docs/benchmarks.md measures the orders; ``none`` is the default). Programs whose inputs are not node features plus ``[2, E]`` edge indices keep the input order.
        """
        start = time.perf_counter()
        shapes = {n: tuple(np.shape(self._input(inputs, n))) for n in self.feature_inputs}
        values: dict[str, Any] = {
            n: torch.as_tensor(self._input(inputs, n)) for n in self.program.inputs if n not in shapes
        }
        order = self.order if order is None else order
        num_nodes = self._renumberable(values, shapes)
        perm = inv = None
        if order not in ORDERS:
            node_order(np.zeros((2, 0), dtype=np.int64), 0, order)  # refuses an unknown order
        if num_nodes is not None and order != "none":
            edges = [n for n in values if values[n].dim() == 2]
            perm = node_order(values[edges[0]].numpy(), num_nodes, order)
            inv = inverse(perm)
            inv_t = torch.from_numpy(inv)
            for n in edges:
                values[n] = inv_t[values[n].long()].to(values[n].dtype)
        self._csr_memo: list[tuple[np.ndarray, np.ndarray, int, np.ndarray | None, GraphCSR]] = []
        for step in self._steps("graph"):
            if step.op == "input.size":
                name, axis = step.args
                values[step.out] = int(shapes[name][axis])
            else:
                values[step.out] = self._execute(step, values)
        self._csr_memo = []
        kept = {n: v for n, v in values.items() if n in self._feature_reads}  # drop intermediates
        used = order if perm is not None else "none"
        return PreparedGraph(kept, shapes, time.perf_counter() - start, perm, inv, used)

    def _renumberable(self, structure: dict[str, Any], shapes: dict[str, tuple[int, ...]]) -> int | None:
        """The node count when nodes may be renumbered: every feature input is [N, ...], every other input an
        integer [2, E] edge index with E != N; else None."""
        sizes = {shape[0] for shape in shapes.values() if shape}
        if len(sizes) != 1 or len(shapes) != len(self.feature_inputs) or not shapes:
            return None
        (n,) = sizes
        for v in structure.values():
            if not (isinstance(v, Tensor) and v.dim() == 2 and v.shape[0] == 2 and not v.is_floating_point()):
                return None
            if v.shape[1] == n:
                return None
        return n if structure else None

    def run_all(
        self,
        inputs: Mapping[str, Any],
        prepared: PreparedGraph | None = None,
        capture: dict[str, Tensor] | None = None,
        profile: bool = False,
    ) -> list[Any]:
        """All outputs; ``capture`` (a dict) receives the integers of every quantize/requantize step."""
        if prepared is None:
            prepared = self.prepare(inputs, order="none" if capture is not None else None)
        elif capture is not None and prepared.perm is not None:
            prepared = self.prepare(inputs, order="none")  # integers are compared in the input order
        values = dict(prepared.values)
        perm = prepared.perm
        for name in self.feature_inputs:
            x = torch.as_tensor(self._input(inputs, name))
            if tuple(x.shape) != prepared.shapes[name]:
                raise InputError(
                    f"input {name} has shape {tuple(x.shape)}, the graph was prepared for {prepared.shapes[name]}",
                    "prepare the graph again for these inputs",
                )
            if perm is not None and name not in self._quantized_in_gemm:
                x = x[torch.from_numpy(perm)]  # the GEMM that quantizes x reads its rows through perm itself
            values[name] = x
        self.profile = []
        fused = self.fuse and capture is None
        steps: list[Step | FusedStep] = self._plan if fused else self._steps("feature")
        for step in steps:
            start = time.perf_counter() if profile else 0.0
            if isinstance(step, FusedStep):
                values[step.out] = self._fused(step, values, perm)
            else:
                values[step.out] = self._execute(step, values)
            if profile:
                op = "+".join(s.op for s in step.steps) if isinstance(step, FusedStep) else step.op
                self.profile.append(StepTime(op, step.out, time.perf_counter() - start))
            if capture is not None and step.source is not None:
                capture[step.source] = self._widen(step.out, values[step.out])
        if capture is not None:
            for step in self._steps("graph"):
                if step.source is not None:
                    capture[step.source] = values[step.out]
        outs = [values[n] for n in self.program.outputs]
        if perm is not None:  # back to the input order
            inv = torch.from_numpy(prepared.inv)
            outs = [
                o[inv] if isinstance(o, Tensor) and o.dim() and o.shape[0] == len(inv) else o for o in outs
            ]
        return outs

    def run(self, inputs: Mapping[str, Any], prepared: PreparedGraph | None = None) -> Tensor:
        """The first output (the logits)."""
        return self.run_all(inputs, prepared)[0]

    def integer_values(
        self, inputs: Mapping[str, Any], prepared: PreparedGraph | None = None
    ) -> dict[str, Tensor]:
        """Integers of every materialised quantize/requantize, keyed like ``CompiledModel.integer_values``."""
        captured: dict[str, Tensor] = {}
        self.run_all(inputs, prepared, capture=captured)
        return captured

    # ---------------------------------------------------------------------------------------------- internals
    def _steps(self, stage: str) -> list[Step]:
        return [s for s in self.program.steps if s.stage == stage]

    @staticmethod
    def _input(inputs: Mapping[str, Any], name: str) -> Any:
        if name not in inputs:
            raise InputError(
                f"missing input {name!r}", f"pass {name} (the model's inputs: x, edge_index, ...)"
            )
        return inputs[name]

    def array(self, ref: Any) -> np.ndarray:
        return self.program.arrays[ref["array"]]

    def _widen(self, name: str, value: Any) -> Any:
        return value.to(torch.int32) if name in self._narrow and isinstance(value, Tensor) else value

    def _decode(self, arg: Any, values: dict[str, Any]) -> Any:
        if isinstance(arg, dict):
            if "value" in arg:
                return self._widen(arg["value"], values[arg["value"]])
            if "array" in arg:
                return self._tensors[arg["array"]]
            if "dtype" in arg:
                return getattr(torch, arg["dtype"])
            if "float" in arg:
                return float(arg["float"])
            raise InputError(f"malformed argument {arg}", "re-create the native model")
        if isinstance(arg, list):
            return [self._decode(a, values) for a in arg]
        return arg

    def _numpy(self, arg: Any, values: dict[str, Any]) -> np.ndarray:
        """A value or constant as NumPy, without widening native outputs."""
        if isinstance(arg, dict) and "value" in arg:
            value = values[arg["value"]]
        else:
            value = self._decode(arg, values)
        return value.numpy() if isinstance(value, Tensor) else np.asarray(value)

    def _execute(self, step: Step, values: dict[str, Any]) -> Any:
        fn = self._ops[step.out]
        if fn is not None:
            args = [self._decode(a, values) for a in step.args]
            kwargs = {k: self._decode(v, values) for k, v in step.kwargs.items()}
            schema = getattr(fn, "_schema", None)
            if schema is not None and output_elements(step.op, args, kwargs, schema) > MAX_STEP_ELEMENTS:
                raise InputError(
                    f"step {step.out} ({step.op}) of the native model would produce more than "
                    f"{MAX_STEP_ELEMENTS} elements on these inputs",
                    "check that the data matches the model, or re-compile it",
                )
            try:
                return fn(*args, **kwargs)
            except (RuntimeError, ValueError, IndexError, TypeError, MemoryError) as err:
                detail = " ".join(str(err).split())[:160]
                raise InputError(
                    f"step {step.out} ({step.op}) of the native model failed on these inputs ({detail})",
                    "check that the data matches the model (feature width, edge_index), or re-compile it",
                ) from None
        native = {
            "native.csr": self._csr,
            "native.aggregate": self._aggregate,
            "native.linear": self._linear,
            "native.requantize": self._requantize,
            "native.quantize": self._quantize,
            "native.mixed_csr": self._mixed_csr,
            "native.mixed_pack": self._mixed_pack,
            "native.mixed_aggregate": self._mixed_aggregate,
        }[step.op]
        return native(step, values)

    def _csr(self, step: Step, values: dict[str, Any]) -> GraphCSR:
        src_arg, dst_arg, rows_arg, weight_arg = step.args
        src, dst = self._numpy(src_arg, values), self._numpy(dst_arg, values)
        rows = int(self._decode(rows_arg, values))
        weights, zero = None, 0
        if weight_arg is not None:
            weights, zero = narrow_weights(self._numpy(weight_arg, values).reshape(-1), step.out)
        graph_csr = self._shared_csr(src, dst, rows, weights)
        if graph_csr is None:
            index_dtype = np.int32 if rows < 2**31 else np.int64
            csr = kernels.CSR.from_edge_index(np.stack([src, dst]), rows, weights, index_dtype=index_dtype)
            graph_csr = GraphCSR(csr, zero)
            getattr(self, "_csr_memo", []).append((src, dst, rows, weights, graph_csr))
        check_accumulator(step, graph_csr)
        return graph_csr

    def _shared_csr(
        self, src: np.ndarray, dst: np.ndarray, rows: int, weights: np.ndarray | None
    ) -> GraphCSR | None:
        """The CSR an earlier step of this ``prepare`` built from equal edges and weights (e.g. SMP's K
        propagations over one graph), so it is sorted once; None when there is none."""
        for s, d, r, w, graph_csr in getattr(self, "_csr_memo", []):
            same_w = (w is None and weights is None) or (
                w is not None
                and weights is not None
                and w.dtype == weights.dtype
                and np.array_equal(w, weights)
            )
            if r == rows and same_w and np.array_equal(s, src) and np.array_equal(d, dst):
                return graph_csr
        return None

    def _requant_args(self, requant: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
        return {
            "multiplier": self._numpy(requant["multiplier"], values).astype(np.float64),
            "zero_point": self._numpy(requant["zero_point"], values),
            "qmin": int(requant["qmin"]),
            "qmax": int(requant["qmax"]),
            "axis": int(requant["axis"]),
        }

    def _int8(self, arg: Any, values: dict[str, Any]) -> np.ndarray:
        """A kernel's int8 operand; a wider value outside int8 is refused (the cast would wrap it)."""
        value = self._numpy(arg, values)
        if value.dtype != np.int8 and value.size and (value.min() < -128 or value.max() > 127):
            raise InputError(
                f"the native model feeds values in [{value.min()}, {value.max()}] to an int8 kernel "
                f"({str(arg)[:60]}); they would wrap",
                "re-create the model with `quantgraph compile --backend native`",
            )
        return np.ascontiguousarray(value, dtype=np.int8)

    def _aggregate_input(self, step: Step, values: dict[str, Any]) -> tuple[np.ndarray, int, int]:
        """The aggregation's features as the kernel reads them, their width and the bits of their storage.

        4/2-bit features are packed, except narrow rows (``_narrow_int8``): the int8 kernels then sum the same
        values, so the integers are those of the packed aggregation.
        """
        value = values[step.args[1]["value"]]
        if isinstance(value, PackedRows):  # packed by the kernel that produced them
            return value.data, value.num_features, value.bits
        q = self._int8(step.args[1], values)
        bits = int(step.kwargs["bits"])
        if bits == 8 or self._narrow_int8(q.shape[1] if q.ndim == 2 else 0, step.kwargs.get("message")):
            return q, q.shape[1], 8
        return kernels.pack(q, bits, check=False, threads=self.threads), q.shape[1], bits

    def _narrow_int8(self, width: int, message: Any) -> bool:
        """Whether 4/2-bit rows of ``width`` features are aggregated from int8 storage: rows of at most
        ``narrow_rows`` features fit a cache line either way, and the byte kernels skip unpacking every edge
        (docs/benchmarks.md measures both); aggregations with a message quantizer keep their packed kernels."""
        return 0 < width <= self.narrow_rows and message is None

    def _out_bits(self, f: FusedStep, cols: int) -> int:
        """The storage bits of a fused step's output of ``cols`` features (see ``_narrow_int8``)."""
        if f.out_bits != 8 and self._narrow_int8(cols, True if f.reader_message else None):
            return 8
        return f.out_bits

    @staticmethod
    def _message(step: Step) -> kernels.MessageQuant | None:
        message = step.kwargs.get("message")
        if message is None:
            return None
        return kernels.MessageQuant(
            float(message["multiplier"]),
            int(message["zero_point"]),
            int(message["qmin"]),
            int(message["qmax"]),
        )

    def _aggregate(self, step: Step, values: dict[str, Any]) -> Tensor:
        graph_csr: GraphCSR = values[step.args[0]["value"]]
        csr, wz = graph_csr.csr, graph_csr.weight_zero_point
        kw = step.kwargs
        zx = int(kw["zero_point"])
        feats, num_features, bits = self._aggregate_input(step, values)
        message = self._message(step)
        if kw["requant"] is None:
            out = kernels.spmm(
                csr, feats, bits, zx, threads=self.threads, num_features=num_features, message=message,
                weight_zero_point=wz,
            )  # fmt: skip
            return torch.from_numpy(out)
        rq = self._requant_args(kw["requant"], values)
        out = kernels.spmm_requantize(
            csr, feats, bits, zx, rq["multiplier"], rq["zero_point"], rq["qmin"], rq["qmax"],
            axis=rq["axis"], num_features=num_features, threads=self.threads, message=message,
            weight_zero_point=wz,
        )  # fmt: skip
        return torch.from_numpy(out)

    def _linear(self, step: Step, values: dict[str, Any]) -> Tensor:
        kw = step.kwargs
        x = self._int8(step.args[0], values)
        bias = None if kw["bias"] is None else self.array(kw["bias"]).astype(np.int32).reshape(-1)
        acc = kernels.gemm_i8(
            x, self._weights[step.out], int(kw["zero_point"]), self.array(kw["weight_zero_point"]), bias,
            threads=self.threads,
        )  # fmt: skip
        if kw["requant"] is None:
            return torch.from_numpy(acc)
        rq = self._requant_args(kw["requant"], values)
        return torch.from_numpy(kernels.requantize(acc, rq.pop("multiplier"), **rq, threads=self.threads))

    def _requantize(self, step: Step, values: dict[str, Any]) -> Tensor:
        kw = step.kwargs
        x = self._numpy(step.args[0], values)
        if x.dtype not in (np.int8, np.int32):
            x = x.astype(np.int32)
        bias = None if kw.get("bias") is None else self.array(kw["bias"])
        rq = self._requant_args(kw["requant"], values)
        out = kernels.requantize_affine(
            np.ascontiguousarray(x), rq.pop("multiplier"), **rq, input_zero_point=int(kw.get("input_zero_point", 0)),
            bias=bias, relu=bool(kw.get("relu")), threads=self.threads,
        )  # fmt: skip
        return torch.from_numpy(out)

    # ---------------------------------------------------------------------------------------------- fused
    def _stage(self, step: Step) -> kernels.Stage:
        """The epilogue stage of a requantize (of a kernel's own ``requant`` or a ``native.requantize`` step)."""
        kw = step.kwargs
        rq = self._requant_args(kw["requant"], {})
        if step.op != "native.requantize":
            return kernels.Stage(rq["multiplier"], rq["zero_point"], rq["qmin"], rq["qmax"], rq["axis"])
        bias = None if kw.get("bias") is None else self.array(kw["bias"]).astype(np.int32)
        return kernels.Stage(
            rq["multiplier"], rq["zero_point"], rq["qmin"], rq["qmax"], rq["axis"],
            int(kw.get("input_zero_point", 0)), bias, bool(kw.get("relu")),
        )  # fmt: skip

    def _stages(self, f: FusedStep) -> tuple[list[kernels.Stage], tuple[float, int] | None]:
        stages = [self._stage(s) for s in (f.head, *f.stages)]
        dq = None
        if f.dequantize is not None:
            scale, zero = (self.array(a).reshape(-1)[0] for a in f.dequantize.args[1:3])
            dq = (float(np.float32(scale)), int(zero))
        return stages, dq

    def _epilogue(self, f: FusedStep, rows: int, cols: int, out_bits: int) -> kernels.Epilogue:
        """``f``'s epilogue for ``[rows, cols]`` results, checked and laid out once per shape."""
        key = (id(f), rows, cols, out_bits)
        epi = self._epilogues.get(key)
        if epi is None:
            stages, dq = self._stage_params[id(f)]
            if len(self._epilogues) > 64:  # many graph sizes: keep the memory bounded
                self._epilogues.clear()
            epi = self._epilogues[key] = kernels.prepare_epilogue(rows, cols, stages, out_bits, dq)
        return epi

    def _fused(self, f: FusedStep, values: dict[str, Any], perm: np.ndarray | None) -> Any:
        dq = self._stage_params[id(f)][1]
        out_kw: dict[str, Any] = {"dequantize": dq, "threads": self.threads}
        head, kw = f.head, f.head.kwargs
        if head.op == "native.linear":
            bias, zb = self._linear_params[head.out]
            weight = self._weights[head.out]
            cols = weight.out_features
            out_kw["out_bits"] = out_bits = self._out_bits(f, cols)
            if f.input_quantize is not None:
                q = f.input_quantize.kwargs
                name = f.input_quantize.args[0]["value"]
                x = np.ascontiguousarray(self._numpy(f.input_quantize.args[0], values), dtype=np.float32)
                xq = (q["scale"], q["zero_point"], q["qmin"], q["qmax"])
                row_index = perm if name in self._quantized_in_gemm else None
                rows = x.shape[0] if row_index is None or x.ndim != 2 else len(row_index)
                epi = self._epilogue(f, rows, cols, out_bits)
                out = kernels.gemm_epilogue(
                    x, weight, int(kw["zero_point"]), zb, bias, epi, input_quant=xq, row_index=row_index,
                    **out_kw,
                )  # fmt: skip
            else:
                x = self._int8(head.args[0], values)
                epi = self._epilogue(f, x.shape[0], cols, out_bits)
                out = kernels.gemm_epilogue(x, weight, int(kw["zero_point"]), zb, bias, epi, **out_kw)
        elif head.op == "native.aggregate":
            graph_csr: GraphCSR = values[head.args[0]["value"]]
            feats, num_features, bits = self._aggregate_input(head, values)
            cols = num_features
            out_kw["out_bits"] = out_bits = self._out_bits(f, cols)
            out = kernels.spmm_epilogue(
                graph_csr.csr, feats, bits, int(kw["zero_point"]),
                self._epilogue(f, graph_csr.csr.num_rows, cols, out_bits),
                weight_zero_point=graph_csr.weight_zero_point, num_features=num_features,
                message=self._message(head), **out_kw,
            )  # fmt: skip
        else:
            x = self._numpy(head.args[0], values)
            x = np.ascontiguousarray(x if x.dtype in (np.int8, np.int32) else x.astype(np.int32))
            if x.ndim != 2:
                return self._unfused(f, values)
            cols = x.shape[1]
            out_kw["out_bits"] = out_bits = self._out_bits(f, cols)
            out = kernels.rows_epilogue(x, self._epilogue(f, x.shape[0], cols, out_bits), **out_kw)
        if out_bits != 8 and dq is None:
            return PackedRows(out, out_bits, int(cols))
        return torch.from_numpy(out)

    def _unfused(self, f: FusedStep, values: dict[str, Any]) -> Any:
        """``f``'s steps one by one (inputs the fused kernels do not take, e.g. 1-D values)."""
        local = dict(values)
        for step in f.steps:
            local[step.out] = self._execute(step, local)
        out = local[f.out]
        if f.out_bits != 8 and f.dequantize is None:
            q = np.ascontiguousarray(out.numpy(), dtype=np.int8)
            return PackedRows(
                kernels.pack(q, f.out_bits, check=False, threads=self.threads), f.out_bits, q.shape[1]
            )
        return out

    # A²Q's per-node bitwidths (quantgraph.native.lower_mixed, quantgraph.native.mixed_bits)
    def _mixed_csr(self, step: Step, values: dict[str, Any]) -> mixed_bits.MixedCSR:
        src, dst, rows, weight = step.args
        w = None if weight is None else self._numpy(weight, values)
        return mixed_bits.mixed_csr(
            self._numpy(src, values), self._numpy(dst, values), int(self._decode(rows, values)), w
        )

    def _mixed_pack(self, step: Step, values: dict[str, Any]) -> mixed_bits.BitGroupedRows:
        q, scale, qmax = (self._numpy(a, values) for a in step.args)
        return mixed_bits.mixed_pack(q, scale, qmax)

    def _mixed_aggregate(self, step: Step, values: dict[str, Any]) -> Tensor:
        graph = values[step.args[0]["value"]]
        rows = values[step.args[1]["value"]]
        return torch.from_numpy(mixed_bits.spmm_mixed(graph.csr, rows, graph.weights, threads=self.threads))

    def _quantize(self, step: Step, values: dict[str, Any]) -> Tensor:
        """int8 per-tensor quantize; on a NaN, the IR op's int32 result (NaN becomes -2**31 there), so the
        steps after it see what they would see in the IR."""
        kw = step.kwargs
        x = np.ascontiguousarray(self._numpy(step.args[0], values), dtype=np.float32)
        try:
            q = kernels.quantize(
                x, kw["scale"], kw["zero_point"], kw["qmin"], kw["qmax"], threads=self.threads
            )
        except kernels.NaNInput:
            params = (torch.tensor(kw["scale"], dtype=torch.float32), torch.tensor(kw["zero_point"]))
            bounds = (torch.tensor(kw["qmin"]), torch.tensor(kw["qmax"]))
            return torch.ops.quantgraph.quantize(torch.from_numpy(x), *params, *bounds, 0)
        return torch.from_numpy(q)


@dataclass(frozen=True)
class PackedRows:
    """A fused kernel's 4/2-bit output, packed for the aggregation that reads it (``kernels.pack`` layout)."""

    data: np.ndarray
    bits: int
    num_features: int


@dataclass(frozen=True)
class GraphCSR:
    """An aggregation's CSR and the zero point of its stored edge weights (weight = stored - zero point)."""

    csr: kernels.CSR
    weight_zero_point: int = 0


def narrow_weights(w: np.ndarray, name: str) -> tuple[np.ndarray, int]:
    """Integer edge weights as int8 (shifted by a zero point when their range spans at most 256 values).

    GCN's normalisation quantized to [-128, 127] minus its zero point -128 is [0, 255]: stored as int8 with
    zero point -128, so the kernels take their int8-weight paths.
    """
    if not w.size:
        return w.astype(np.int8), 0
    lo, hi = int(w.min()), int(w.max())
    if -128 <= lo and hi <= 127:
        return w.astype(np.int8), 0
    if hi - lo <= 255:
        zero = -128 - lo  # stored = w + zero in [-128, 127]; weight = stored - zero
        return (w.astype(np.int32) + zero).astype(np.int8), zero
    if -(2**15) <= lo and hi < 2**15:
        return w.astype(np.int16), 0
    raise InputError(f"edge weights of {name} exceed int16", "quantize edge weights to <= 8 bits")


def check_accumulator(step: Step, graph_csr: GraphCSR) -> None:
    """Refuse a graph whose in-degrees break the int32 overflow proof of an aggregation.

    Safe when the max in-degree is at most the one the compile-time proof covered, or, for an aggregation
    whose requantize is fused (its int32 sum feeds nothing else), when in-degree x the largest term fits int32.
    """
    check = step.kwargs.get("overflow_check")
    csr = graph_csr.csr
    if not check or csr.num_rows == 0:
        return
    degree = int(np.diff(csr.indptr).max())
    proven = check.get("proven_max_in_degree")
    if proven is not None and degree <= proven:
        return
    term = check["message_bound"]
    if term is None:
        w = csr.edge_weights
        wz = graph_csr.weight_zero_point
        largest = int(np.abs(w.astype(np.int64) - wz).max()) if w is not None and w.size else 1
        term = check["feature_bound"] * largest
    if check.get("requantized") and degree * term <= INT32_MAX:
        return
    raise InputError(
        f"a node of this graph has in-degree {degree}, above the {proven} that the int32 overflow proof of "
        f"aggregation {step.out} covers",
        "compile with a calibration graph (--data) that has such in-degrees",
    )
