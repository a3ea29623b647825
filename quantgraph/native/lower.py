"""Lower the integer IR (the output of ``fold-scales``) to a native program (``--backend native``).

Every IR node becomes one step of :class:`~quantgraph.native.artifact.Program`, except three patterns that
become native kernels:

* ``native.aggregate``: ``scatter(sum)`` of ``[requantize](mul(edge_weight, sub(gather(q, src), zx)))`` (any
  of the optional parts may be absent): a CSR SpMM of the int8/4/2 features ``q`` with int32 accumulation,
  the message quantizer applied per edge inside the kernel, and the ``requantize`` that follows fused in.
  Its CSR (targets as rows, integer edge weights in CSR order) is a ``native.csr`` step of the graph stage.
* ``native.linear``: ``requantize(linear_int(x, ...))``: the int8 GEMM plus requantize.
* ``native.requantize``: any other ``requantize`` of an int32 value, with the zero-point subtraction, int32
  bias add and ReLU (``clamp_min(., 0)``) before it fused in.
* ``native.quantize``: a per-tensor ``quantize`` of float32 features (inputs or intermediate values).

Steps that depend only on the graph's structure and sizes form the ``graph`` stage (edge normalisation,
quantized edge weights, CSRs): the runtime runs them once per graph. Node counts read off a feature input's
shape (``sym_size``) become ``input.size`` steps, so they do not need the features' values.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, fx

from quantgraph.errors import UnsupportedOpError
from quantgraph.ir.int_ops import LINEAR_INT, REQUANTIZE
from quantgraph.ir.meta import ACCUMULATOR_KEY, SOURCE_KEY
from quantgraph.ir.ops import GATHER, QUANTIZE, SCATTER
from quantgraph.native.artifact import Program, Step, references
from quantgraph.native.lower_mixed import match_mixed_aggregate
from quantgraph.native.opnames import OPERATOR_NAMES

DROPPED_KWARGS = ("device", "pin_memory", "layout")
SUB = torch.ops.aten.sub.Tensor
MUL = torch.ops.aten.mul.Tensor
SYM_SIZE = torch.ops.aten.sym_size.int
ADD = torch.ops.aten.add.Tensor
CLAMP_MIN = torch.ops.aten.clamp_min.default
INT8_RANGE = (-128, 127)


def storage_bits(lo: int, hi: int) -> int | None:
    """The narrowest of 2, 4 or 8 signed bits holding ``[lo, hi]``."""
    for bits in (2, 4, 8):
        if -(2 ** (bits - 1)) <= lo and hi <= 2 ** (bits - 1) - 1:
            return bits
    return None


@dataclass
class _Value:
    """What a dry run of the IR saw at a node: dtype and shape of a tensor (None for other values)."""

    dtype: torch.dtype | None
    shape: tuple[int, ...] | None


def _dry_run(gm: fx.GraphModule, inputs: list[Tensor]) -> dict[fx.Node, _Value]:
    seen: dict[fx.Node, _Value] = {}

    class _Record(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            value = super().run_node(n)
            if isinstance(value, Tensor):
                seen[n] = _Value(value.dtype, tuple(value.shape))
            else:
                seen[n] = _Value(None, None)
            return value

    with torch.no_grad():
        _Record(gm).run(*inputs)
    return seen


class _Lowering:
    def __init__(
        self,
        gm: fx.GraphModule,
        input_names: list[str],
        example: Mapping[str, Tensor],
        proven_degrees: Mapping[str, int],
    ) -> None:
        self.gm = gm
        self.proven_degrees = dict(proven_degrees)
        self.input_names = input_names
        self.values = _dry_run(gm, [example[n] for n in input_names])
        self.arrays: dict[str, np.ndarray] = {}
        self.array_of: dict[fx.Node, str] = {}
        self.steps: list[Step] = []
        self.feature: set[fx.Node] = set()
        self.input_dims: dict[str, tuple[str, int]] = {}
        self.fused: set[fx.Node] = set()
        self.groups: dict[fx.Node, Step] = {}
        self.csr_count = 0

    # ------------------------------------------------------------------------------------------ helpers
    def const(self, node: fx.Node) -> Tensor | None:
        if node.op != "get_attr":
            return None
        owner, _, name = str(node.target).rpartition(".")
        value = getattr(self.gm.get_submodule(owner) if owner else self.gm, name)
        return value.detach() if isinstance(value, Tensor) else None

    def scalar(self, arg: Any) -> int | None:
        """An integer constant (a 0-d or one-element tensor, or a Python int)."""
        if isinstance(arg, int) and not isinstance(arg, bool):
            return arg
        value = self.const(arg) if isinstance(arg, fx.Node) else None
        if value is None or value.numel() != 1 or value.is_floating_point():
            return None
        return int(value.reshape(()))

    def array_ref(self, node: fx.Node) -> dict[str, str]:
        if node not in self.array_of:
            value = self.const(node)
            if value is None:
                raise UnsupportedOpError(
                    f"get_attr {node.target} is not a tensor", "store constants as buffers"
                )
            name = re.sub(r"[^A-Za-z0-9_.-]", "_", str(node.target))
            self.arrays[name] = value.cpu().numpy()
            self.array_of[node] = name
        return {"array": self.array_of[node]}

    def encode(self, arg: Any) -> Any:
        if isinstance(arg, fx.Node):
            return self.array_ref(arg) if arg.op == "get_attr" else {"value": arg.name}
        if isinstance(arg, (list, tuple)):
            return [self.encode(a) for a in arg]
        if isinstance(arg, torch.dtype):
            return {"dtype": str(arg).removeprefix("torch.")}
        if isinstance(arg, float) and not math.isfinite(arg):
            return {"float": repr(arg)}
        if arg is None or isinstance(arg, (bool, int, float, str)):
            return arg
        raise UnsupportedOpError(f"argument {arg!r} of type {type(arg).__name__} cannot be stored", "")

    def is_feature(self, arg: Any) -> bool:
        if isinstance(arg, fx.Node):
            return arg in self.feature
        if isinstance(arg, (list, tuple)):
            return any(self.is_feature(a) for a in arg)
        return False

    def int32_matrix(self, arg: Any) -> bool:
        """Whether the dry run saw a 1-D or 2-D int32 tensor at ``arg``."""
        v = self.values.get(arg) if isinstance(arg, fx.Node) else None
        return v is not None and v.dtype == torch.int32 and v.shape is not None and len(v.shape) in (1, 2)

    def single_use(self, node: fx.Node) -> bool:
        return len(node.users) == 1 and node not in self.fused

    def qrange(self, node: fx.Node) -> tuple[int, int] | None:
        """``[qmin, qmax]`` of a quantize/requantize node with constant per-tensor bounds."""
        if node.target not in (QUANTIZE, REQUANTIZE):
            return None
        lo, hi = (self.scalar(a) for a in node.args[3:5])
        return None if lo is None or hi is None else (lo, hi)

    def requant_kwargs(self, node: fx.Node) -> dict[str, Any] | None:
        acc, mult, zp, qmin, qmax, axis = (list(node.args) + [0] * 6)[:6]
        lo, hi = self.qrange(node) or (None, None)
        zvals = self.const(zp) if isinstance(zp, fx.Node) else None
        if lo is None or hi is None or zvals is None or not INT8_RANGE[0] <= lo <= hi <= INT8_RANGE[1]:
            return None
        return {"multiplier": self.encode(mult), "zero_point": self.encode(zp), "qmin": lo, "qmax": hi,
                "axis": int(axis or 0)}  # fmt: skip

    def requant_after(self, node: fx.Node) -> tuple[fx.Node, dict[str, Any] | None, str | None]:
        """The requantize a kernel can fuse after ``node`` (its only user): (last node, params, source)."""
        (user,) = node.users if len(node.users) == 1 else (None,)
        if user is not None and user.target == REQUANTIZE and user.args[0] is node:
            requant = self.requant_kwargs(user)
            if requant is not None:
                return user, requant, user.meta.get(SOURCE_KEY, user.name)
        return node, None, None

    # ------------------------------------------------------------------------------------------ patterns
    def match_aggregate(self, scatter: fx.Node) -> tuple[Step, Step] | None:
        """The ``native.csr`` (graph stage) and ``native.aggregate`` steps of a fusable scatter."""
        src, index, num_nodes, reduce = scatter.args
        if reduce != "sum" or self.is_feature(index) or self.is_feature(num_nodes):
            return None
        chain: list[fx.Node] = []
        node, message, sub_zp = src, None, 0
        if (
            node.target == SUB
            and self.single_use(node)
            and isinstance(node.args[0], fx.Node)
            and node.args[0].target == REQUANTIZE
            and self.scalar(node.args[1]) is not None
        ):  # q_m - z_m after a message quantizer
            chain.append(node)
            sub_zp, node = self.scalar(node.args[1]), node.args[0]
        if node.target == REQUANTIZE and self.single_use(node):
            params = self.requant_kwargs(node)
            mult = self.const(node.args[1]) if isinstance(node.args[1], fx.Node) else None
            if params is None or mult is None or mult.numel() != 1 or self.scalar(node.args[2]) != sub_zp:
                return None
            message = {"multiplier": float(mult.reshape(())), "zero_point": sub_zp,
                       "qmin": params["qmin"], "qmax": params["qmax"]}  # fmt: skip
            chain.append(node)
            node = node.args[0]
        elif chain:
            return None
        weight = None
        if node.target == MUL and self.single_use(node):
            a, b = node.args
            if isinstance(a, fx.Node) and isinstance(b, fx.Node):
                edge, feat = (a, b) if not self.is_feature(a) else (b, a)
                if self.is_feature(edge) or not self.is_feature(feat):
                    return None
                ev = self.values.get(edge)
                if ev is None or ev.dtype not in (torch.int32, torch.int64) or len(ev.shape or ()) > 2:
                    return None
                weight = edge
                chain.append(node)
                node = feat
        zx = 0
        if node.target == SUB and self.single_use(node) and self.scalar(node.args[1]) is not None:
            zx = self.scalar(node.args[1])
            chain.append(node)
            node = node.args[0]
        if node.target != GATHER or not self.single_use(node):
            return None
        q, src_index = node.args
        rng = self.qrange(q) if isinstance(q, fx.Node) else None
        bits = storage_bits(*rng) if rng else None
        if bits is None or self.is_feature(src_index) or not self.is_feature(q):
            return None
        chain.append(node)
        csr_name = f"csr_{self.csr_count}"
        self.csr_count += 1
        csr_args = [self.encode(src_index), self.encode(index), self.encode(num_nodes), self.encode(weight)]
        lo, hi = rng
        safety = {
            "proven_max_in_degree": self.proven_degrees.get(scatter.meta.get(ACCUMULATOR_KEY, "")),
            "feature_bound": max(abs(lo - zx), abs(hi - zx)),
            "message_bound": None if message is None else max(abs(message["qmin"] - sub_zp),
                                                             abs(message["qmax"] - sub_zp)),
        }  # fmt: skip
        csr = Step("native.csr", csr_args, csr_name, "graph", {"overflow_check": safety})
        out, requant, source = self.requant_after(scatter)
        self.fused.update(chain)
        safety["requantized"] = requant is not None
        kwargs = {"bits": bits, "zero_point": zx, "message": message, "requant": requant}
        args = [{"value": csr_name}, {"value": q.name}]
        return csr, Step("native.aggregate", args, out.name, "feature", kwargs, source)

    def match_linear(self, node: fx.Node) -> Step | None:
        x, x_zp, w, w_zp, bias = (list(node.args) + [None] * 5)[:5]
        rng = self.qrange(x) if isinstance(x, fx.Node) else None
        weight = self.const(w) if isinstance(w, fx.Node) else None
        wz = self.const(w_zp) if isinstance(w_zp, fx.Node) else None
        zx = self.scalar(x_zp)
        if (
            rng is None
            or weight is None
            or wz is None
            or zx is None
            or weight.dim() != 2
            or not self.int32_matrix(x)
        ):
            return None
        if not (INT8_RANGE[0] <= rng[0] and rng[1] <= INT8_RANGE[1]):
            return None
        if weight.numel() and (weight.min() < -128 or weight.max() > 127):
            return None
        if isinstance(bias, fx.Node) and self.const(bias) is None:
            return None
        out, requant, source = self.requant_after(node)
        self.fused.add(node)
        weight_name = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{w.target}_int8")
        self.arrays[weight_name] = weight.to(torch.int8).cpu().numpy()  # only the kernel reads it
        kwargs = {"zero_point": zx, "weight": {"array": weight_name}, "weight_zero_point": self.encode(w_zp),
                  "bias": self.encode(bias), "requant": requant}  # fmt: skip
        return Step("native.linear", [{"value": x.name}], out.name, "feature", kwargs, source)

    # ------------------------------------------------------------------------------------------ driver
    def input_dim(self, node: fx.Node) -> tuple[str, int] | None:
        val = node.meta.get("val")
        return self.input_dims.get(str(val)) if isinstance(val, torch.SymInt) else None

    def lower(self) -> Program:
        inputs = [n.name for n in self.gm.graph.nodes if n.op == "placeholder"]
        self.mark_features()
        self.match_patterns()
        outputs: list[str] = []
        for node in self.gm.graph.nodes:
            if node.op in ("placeholder", "get_attr"):
                continue
            if node.op == "output":
                outputs = [self.encode(a)["value"] for a in _flat(node.args[0])]
            elif node.op != "call_function":
                raise UnsupportedOpError(f"node {node.name} ({node.op}) cannot be lowered", "")
            elif node in self.groups:
                self.steps.extend(self.groups.pop(node))
            elif node not in self.fused:
                self.steps.append(self.lower_node(node))
        feature_inputs = [n for n in self.gm.graph.nodes if n.op == "placeholder" and n in self.feature]
        meta = {"feature_inputs": [n.name for n in feature_inputs]}
        return Program(inputs, outputs, _live_steps(self.steps, outputs), self.arrays, meta)

    def mark_features(self) -> None:
        """Nodes that depend on a floating-point input's values; sizes read off such inputs do not."""
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                v = self.values.get(node)
                if v is not None and v.dtype is not None and v.dtype.is_floating_point:
                    self.feature.add(node)
                for axis, size in enumerate(getattr(node.meta.get("val"), "shape", ())):
                    if isinstance(size, torch.SymInt):
                        self.input_dims.setdefault(str(size), (node.name, axis))
            elif node.op == "call_function":
                if node.target == SYM_SIZE and self.input_dim(node) is not None:
                    continue
                if self.is_feature(list(node.args) + list(node.kwargs.values())):
                    self.feature.add(node)

    def match_patterns(self) -> None:
        """Find the fused kernels: aggregations first (they own their chains), then linear layers."""
        for node in self.gm.graph.nodes:
            if node.target == SCATTER and node in self.feature and (steps := self.match_aggregate(node)):
                self._place(node, list(steps))
            elif (
                node.target == SCATTER
                and node in self.feature
                and (steps := match_mixed_aggregate(self, node))
            ):
                self._place(node, list(steps))  # A²Q: per-node bitwidths (quantgraph.native.lower_mixed)
        for node in self.gm.graph.nodes:
            if node.target == LINEAR_INT and node in self.feature and node not in self.fused:
                if (step := self.match_linear(node)) is not None:
                    self._place(node, [step])
        for node in self.gm.graph.nodes:
            if node.target == REQUANTIZE and node in self.feature and node not in self.fused:
                if (step := self.match_requantize(node)) is not None:
                    self._place(node, [step])
            elif node.target == QUANTIZE and node in self.feature and (step := self.match_quantize(node)):
                self._place(node, [step])

    def match_quantize(self, node: fx.Node) -> Step | None:
        """A per-tensor quantize of float32 features (inputs or intermediate values) into at most 8 bits.

        An intermediate NaN (e.g. GAT's softmax over an all-zero 4-bit denominator) has no int8 image: the
        runtime then returns the IR op's int32 result for that run (``NativeModel._quantize``).
        """
        x, scale, zp = node.args[:3]
        if not isinstance(x, fx.Node) or x.op == "get_attr":
            return None
        v = self.values.get(x)
        s = self.const(scale) if isinstance(scale, fx.Node) else None
        rng, z = self.qrange(node), self.scalar(zp)
        if v is None or v.dtype != torch.float32 or v.shape is None or len(v.shape) not in (1, 2):
            return None
        if s is None or s.numel() != 1 or s.dtype != torch.float32 or rng is None or z is None:
            return None
        if not INT8_RANGE[0] <= rng[0] <= rng[1] <= INT8_RANGE[1]:
            return None
        kwargs = {"scale": float(s.reshape(())), "zero_point": z, "qmin": rng[0], "qmax": rng[1]}
        source = node.meta.get(SOURCE_KEY, node.name)
        return Step("native.quantize", [self.encode(x)], node.name, "feature", kwargs, source)

    def match_requantize(self, node: fx.Node) -> Step | None:
        """``requantize([relu]([add bias]([sub zero point](q))))``: one elementwise kernel."""
        params = self.requant_kwargs(node)
        if params is None:
            return None
        chain: list[fx.Node] = []
        arg = node.args[0]
        relu, bias, zin = False, None, 0
        if arg.target == CLAMP_MIN and self.single_use(arg) and arg.args[1] == 0 and not arg.kwargs:
            relu, arg = True, self._absorb(chain, arg)
        if arg.target == ADD and self.single_use(arg) and not arg.kwargs and isinstance(arg.args[1], fx.Node):
            value = self.const(arg.args[1])
            if value is not None and not value.is_floating_point() and value.dim() <= 1:
                bias, arg = self.encode(arg.args[1]), self._absorb(chain, arg)
        if arg.target == SUB and self.single_use(arg) and self.scalar(arg.args[1]) is not None:
            zin, arg = self.scalar(arg.args[1]), self._absorb(chain, arg)
        if not self.int32_matrix(arg):
            return None
        self.fused.update(chain)
        kwargs = {"requant": params, "input_zero_point": zin, "bias": bias, "relu": relu}
        source = node.meta.get(SOURCE_KEY, node.name)
        return Step("native.requantize", [self.encode(arg)], node.name, "feature", kwargs, source)

    @staticmethod
    def _absorb(chain: list[fx.Node], node: fx.Node) -> fx.Node:
        chain.append(node)
        return node.args[0]

    def lower_node(self, node: fx.Node) -> Step:
        if node.target == SYM_SIZE and (dim := self.input_dim(node)) is not None:
            return Step("input.size", list(dim), node.name, "graph")
        feature = node in self.feature
        if isinstance(node.target, torch._ops.OpOverload):
            op = str(node.target)
        elif node.target in OPERATOR_NAMES:
            op = f"operator.{OPERATOR_NAMES[node.target]}"
        else:
            raise UnsupportedOpError(
                f"op {node.target} of node {node.name} has no native lowering", "use --backend onnx-int"
            )
        kwargs = {k: self.encode(v) for k, v in node.kwargs.items() if k not in DROPPED_KWARGS}
        source = node.meta.get(SOURCE_KEY, node.name) if node.target in (QUANTIZE, REQUANTIZE) else None
        stage = "feature" if feature else "graph"
        return Step(op, self.encode(list(node.args)), node.name, stage, kwargs, source)

    def _place(self, node: fx.Node, steps: list[Step]) -> None:
        """Emit fused steps where their last node was (the requantize they absorbed, if any)."""
        last = next(n for n in self.gm.graph.nodes if n.name == steps[-1].out)
        self.fused.update((node, last))
        self.groups[last] = steps


def _live_steps(steps: list[Step], outputs: list[str]) -> list[Step]:
    """Drop steps whose values nothing reads (e.g. a dequantize that only fed a size)."""
    needed = set(outputs)
    live: list[Step] = []
    for step in reversed(steps):
        if step.out in needed:
            live.append(step)
            needed.update(references({"args": step.args, "kwargs": step.kwargs}))
    return live[::-1]


def _flat(result: Any) -> list[Any]:
    if isinstance(result, (tuple, list)):
        flat: list[Any] = []
        for item in result:
            flat.extend(_flat(item))
        return flat
    return [result]


def lower_to_native(
    gm: fx.GraphModule,
    input_names: list[str],
    example_inputs: Mapping[str, Tensor],
    meta: dict[str, Any],
    proven_degrees: Mapping[str, int] | None = None,
) -> Program:
    """The native program of an integer IR graph module (``example_inputs`` drive a dry run for dtypes).

    ``proven_degrees``: per aggregation (``fold-scales``' accumulator name), the max in-degree for which the
    int32 overflow proof holds; the runtime refuses graphs above it unless the kernel's own bound fits.
    """
    program = _Lowering(gm, input_names, example_inputs, proven_degrees or {}).lower()
    if program.inputs != list(input_names):
        raise UnsupportedOpError(f"graph inputs {program.inputs} differ from {input_names}", "")
    program.meta.update(meta)
    return program
