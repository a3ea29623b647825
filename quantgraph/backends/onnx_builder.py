"""Graph-construction state shared by the ONNX lowerings (see ``onnx_ops`` and ``onnx_export``).

An :class:`OnnxBuilder` walks nothing by itself: ``export_onnx`` feeds it FX nodes one by one and a lowering
(a function ``fn(ctx, node) -> value``) emits ONNX nodes through :meth:`OnnxBuilder.op`. The builder tracks
the element type and rank of every ONNX value it creates, so lowerings never need ``node.meta["val"]``
(nodes inserted by passes may not have it). Names are derived from FX node names, so exporting the same
GraphModule twice gives the same bytes.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from onnx import AttributeProto, NodeProto, TensorProto, helper, numpy_helper
from torch import fx

from quantgraph.errors import UnsupportedOpError

INT64_MAX = 2**63 - 1

TORCH_TO_ONNX: dict[torch.dtype, int] = {
    torch.float32: TensorProto.FLOAT,
    torch.float64: TensorProto.DOUBLE,
    torch.float16: TensorProto.FLOAT16,
    torch.bfloat16: TensorProto.BFLOAT16,
    torch.int64: TensorProto.INT64,
    torch.int32: TensorProto.INT32,
    torch.int16: TensorProto.INT16,
    torch.int8: TensorProto.INT8,
    torch.uint8: TensorProto.UINT8,
    torch.bool: TensorProto.BOOL,
}
ONNX_TO_TORCH: dict[int, torch.dtype] = {v: k for k, v in TORCH_TO_ONNX.items()}
FLOAT_TYPES = frozenset({TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16})


#: Elementwise ops whose output rank is the largest input rank (numpy broadcasting).
#: ops whose output has the shape of their first input (``shape`` reads through them to the earliest)
SHAPE_PRESERVING = frozenset({"QuantizeLinear", "DequantizeLinear", "Cast"})
BROADCASTING_OPS = frozenset(
    "Add Sub Mul Div Pow Mod Max Min Where Equal Less LessOrEqual Greater GreaterOrEqual And Or Xor "
    "BitwiseAnd BitwiseOr BitwiseXor".split()
)


def with_subgraphs(nodes: Sequence[NodeProto]) -> list[NodeProto]:
    """``nodes`` and every node of their subgraphs (``Loop`` bodies), outer first."""
    out: list[NodeProto] = []
    for node in nodes:
        out.append(node)
        for attr in node.attribute:
            graphs = [attr.g] if attr.type == AttributeProto.GRAPH else list(attr.graphs)
            for graph in graphs:
                out.extend(with_subgraphs(list(graph.node)))
    return out


def onnx_type(dtype: torch.dtype) -> int:
    if dtype not in TORCH_TO_ONNX:
        raise UnsupportedOpError(
            f"tensors of dtype {dtype} cannot be exported to ONNX", "use float32 or int64"
        )
    return TORCH_TO_ONNX[dtype]


def torch_type(elem_type: int) -> torch.dtype:
    if elem_type not in ONNX_TO_TORCH:
        name = TensorProto.DataType.Name(elem_type)
        raise UnsupportedOpError(f"ONNX tensors of type {name} have no PyTorch dtype here", "")
    return ONNX_TO_TORCH[elem_type]


def is_float(elem_type: int) -> bool:
    return elem_type in FLOAT_TYPES


def target_name(target: Any) -> str:
    """A readable name of an FX call target: ``aten.cumsum.default``, ``operator.add``, ..."""
    if isinstance(target, torch._ops.OpOverload | torch._ops.OpOverloadPacket):
        return str(target)
    module = getattr(target, "__module__", None) or ""
    name = getattr(target, "__qualname__", None) or getattr(target, "__name__", None) or repr(target)
    if module in ("_operator", "operator"):
        module = "operator"
    return f"{module}.{name}" if module else name


_FRAME = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+)')


_TORCH_DIR = str(Path(torch.__file__).resolve().parent)


def source_line(node: fx.Node) -> str | None:
    """``file:line: code`` of the model source that produced ``node``.

    The last frame of its stack trace outside PyTorch itself (e.g. the line calling ``F.batch_norm`` rather
    than the line of ``torch/nn/modules/batchnorm.py``), else the last frame.
    """
    trace = node.meta.get("stack_trace")
    if not trace:
        return None
    lines = trace.rstrip().splitlines()
    frames = []
    for i, text in enumerate(lines):
        match = _FRAME.search(text)
        if match:
            nxt = lines[i + 1].strip() if i + 1 < len(lines) else ""
            code = "" if _FRAME.search(nxt) else nxt
            frames.append((match["file"], match["line"], code))
    if not frames:
        return None
    outside = [f for f in frames if not str(Path(f[0]).resolve()).startswith(_TORCH_DIR + os.sep)]
    file, line, code = (outside or frames)[-1]
    return f"{file}:{line}: {code}" if code else f"{file}:{line}"


def unsupported(node: fx.Node, what: str | None = None, fix: str | None = None) -> UnsupportedOpError:
    """An error naming the op, the model source line and how to get past it."""
    op = target_name(node.target) if node.op == "call_function" else f"{node.op} {node.target}"
    line = source_line(node)
    where = f"at {line}" if line else f"(node {node.name!r}; no source line recorded)"
    problem = f"cannot export {op} to ONNX {where}"
    if what:
        problem += f": {what}"
    if fix is None:
        fix = (
            "rewrite that line with supported ops (see quantgraph.backends.onnx_export.LOWERINGS), or register "
            f"a lowering: LOWERINGS[torch.ops.{op}] = fn where fn(ctx, node) emits ONNX nodes "
            "with ctx.op(...) and returns the output name"
        )
    return UnsupportedOpError(problem, fix)


class Lazy:
    """A multi-output value whose elements are built when an ``operator.getitem`` asks for them."""

    def getitem(self, ctx: OnnxBuilder, index: int) -> Any:  # pragma: no cover - interface
        raise NotImplementedError


@dataclass(frozen=True)
class QValue:
    """The integer tensor made by a quantize (``dtype`` is INT8/UINT8/INT4/UINT4); the IR sees int32."""

    name: str
    dtype: int
    rank: int
    #: the stored integers minus ``offset`` are the IR's (a signed tensor stored as uint8 has offset 128)
    offset: int = 0


@dataclass(frozen=True)
class AttrRef:
    """A ``get_attr`` tensor, turned into an initializer only when a lowering reads it as a value."""

    target: str
    tensor: torch.Tensor


class Args:
    """Arguments of an OpOverload call bound to its schema names (defaults filled in)."""

    def __init__(self, node: fx.Node) -> None:
        schema = node.target._schema
        values: dict[str, Any] = {}
        positional = list(node.args)
        for i, arg in enumerate(schema.arguments):
            if i < len(positional):
                values[arg.name] = positional[i]
            elif arg.name in node.kwargs:
                values[arg.name] = node.kwargs[arg.name]
            elif arg.has_default_value():
                values[arg.name] = arg.default_value
            else:
                values[arg.name] = None
        self.__dict__.update(values)

    def __getattr__(self, name: str) -> Any:  # only reached for names the schema lacks
        return None


class OnnxBuilder:
    """Collects ONNX nodes and initializers while the FX graph is lowered."""

    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm = gm
        self.nodes: list[NodeProto] = []
        self.initializers: dict[str, TensorProto] = {}
        self.info: dict[str, tuple[int, int]] = {}  # value name -> (ONNX element type, rank)
        self.py_scalars: dict[str, type] = {}  # values standing for python scalars (SymInt/SymBool/SymFloat)
        self.env: dict[fx.Node, Any] = {}
        self.used: set[str] = set()
        self.current: fx.Node | None = None
        self._count = 0
        self._const_cache: dict[tuple, str] = {}
        self._attr_cache: dict[str, str] = {}
        self._cast_cache: dict[tuple[str, int], str] = {}
        self._qcast_cache: dict[str, str] = {}
        #: value -> an earlier value of the same shape (a DequantizeLinear/Cast input), read by ``shape``
        self._same_shape_as: dict[str, str] = {}
        self._const_count = 0
        self.integer_storage = False  # integer backend: 2- to 4-bit values are stored in int8/uint8
        #: backend options (``onnx_aggregation``, ``graph_input``, ``onnx_target``; see ``onnx_export``)
        self.options: dict[str, Any] = {}
        #: graph preparations of the segment aggregation by structural key (see ``onnx_segment``)
        self.segment_preps: dict[tuple, Any] = {}
        #: graph_input="csr": (model input, the TopK output it replaces) per sorted index
        self.perm_inputs: list[tuple[str, str]] = []
        self._keys: dict[str, str] = {}
        self._producers: dict[str, NodeProto] = {}

    # ------------------------------------------------------------------ names and bookkeeping
    def reserve(self, name: str) -> str:
        self.used.add(name)
        return name

    def fresh(self, hint: str | None = None) -> str:
        base = self.current.name if self.current is not None else "v"
        while True:
            self._count += 1
            name = f"{base}__{hint}{self._count}" if hint else f"{base}__{self._count}"
            if name not in self.used:
                return self.reserve(name)

    def begin(self, node: fx.Node) -> int:
        self.current = node
        self._count = 0
        return len(self.nodes)

    def set_info(self, name: str, elem_type: int, rank: int) -> None:
        self.info[name] = (elem_type, rank)

    def dtype(self, name: str) -> int:
        return self.info[name][0]

    def rank(self, name: str) -> int:
        return self.info[name][1]

    def rename_output(self, old: str, new: str, start: int) -> str:
        """Give the value ``old`` (made by a node emitted at index >= ``start``) the name ``new``."""
        if new in self.used or old in self.initializers:
            return old
        producer = next((n for n in self.nodes[start:] if old in n.output), None)
        if producer is None:
            return old
        for n in with_subgraphs(self.nodes[start:]):
            for seq in (n.input, n.output):
                for i, name in enumerate(seq):
                    if name == old:
                        seq[i] = new
        self.reserve(new)
        self.info[new] = self.info.pop(old)
        if old in self.py_scalars:
            self.py_scalars[new] = self.py_scalars.pop(old)
        for cache in (self._cast_cache, self._qcast_cache):
            for key, value in list(cache.items()):
                if value == old:
                    cache[key] = new
        for key in [k for k in self._cast_cache if k[0] == old]:
            self._cast_cache[(new, key[1])] = self._cast_cache.pop(key)
        self._same_shape_as = {
            (new if k == old else k): (new if v == old else v) for k, v in self._same_shape_as.items()
        }
        return new

    def producer(self, name: str) -> NodeProto | None:
        """The node that makes ``name`` (None for inputs and initializers)."""
        if name not in self._producers:
            self._producers = {o: n for n in self.nodes for o in n.output}
        return self._producers.get(name)

    def value_key(self, name: str) -> str:
        """A digest of the expression computing ``name`` (equal for values computed the same way).

        Leaves are graph inputs (by name) and initializers (constants by content, others by name), so two
        layers that recompute the same edge index from the inputs get the same key.
        """
        if name in self._keys:
            return self._keys[name]
        tensor = self.initializers.get(name)
        node = None if tensor is not None else self.producer(name)
        if tensor is not None:
            parts = ["const", tensor.data_type, list(tensor.dims), tensor.raw_data.hex()]
            if not name.startswith("const_"):
                parts = ["init", name]
        elif node is None:
            parts = ["input", name]
        else:
            attrs = [a.SerializeToString(deterministic=True).hex() for a in node.attribute]
            inputs = [self.value_key(i) if i else "" for i in node.input]
            parts = ["node", node.op_type, node.domain, attrs, inputs, list(node.output).index(name)]
        key = hashlib.sha1(repr(parts).encode()).hexdigest()
        self._keys[name] = key
        return key

    # ------------------------------------------------------------------ emitting
    def op(
        self,
        op_type: str,
        inputs: Sequence[str],
        *,
        dtype: int | None = None,
        rank: int | None = None,
        outputs: Sequence[tuple[int, int]] | None = None,
        **attrs: Any,
    ) -> Any:
        """Emit one ONNX node; return its output name (or the list of names when ``outputs`` is given).

        ``dtype``/``rank`` of the single output default to those of the first input.
        """
        if outputs is None:
            data = inputs[1:] if op_type == "Where" else inputs  # Where: the condition is no data input
            first = next((i for i in data if i), None)
            if dtype is None or rank is None:
                if first is None:
                    raise ValueError(f"{op_type}: give dtype and rank of the output")
                dtype = self.dtype(first) if dtype is None else dtype
                if rank is None and op_type in BROADCASTING_OPS:
                    rank = max(self.rank(i) for i in inputs if i)
                rank = self.rank(first) if rank is None else rank
            types = [(dtype, rank)]
        else:
            types = list(outputs)
        names = [self.fresh() for _ in types]
        base = self.current.name if self.current is not None else "node"
        attrs = {k: v for k, v in attrs.items() if v is not None}
        node = helper.make_node(
            op_type, list(inputs), names, name=f"{base}/{op_type}_{len(self.nodes)}", **attrs
        )
        self.nodes.append(node)
        if op_type in SHAPE_PRESERVING and inputs:
            self._same_shape_as[names[0]] = self._same_shape_as.get(inputs[0], inputs[0])
        for name, (t, r) in zip(names, types, strict=True):
            self.set_info(name, t, r)
        return names if outputs is not None else names[0]

    def initializer(self, array: np.ndarray, name: str, elem_type: int | None = None) -> str:
        tensor = numpy_helper.from_array(np.array(array, order="C", copy=True), name)
        if elem_type is not None and tensor.data_type != elem_type:
            raise ValueError(f"initializer {name}: expected type {elem_type}, got {tensor.data_type}")
        self.initializers[name] = tensor
        self.reserve(name)
        self.set_info(name, tensor.data_type, array.ndim)
        return name

    def const(self, value: Any, elem_type: int, shape: Sequence[int] | None = None) -> str:
        """A constant initializer (deduplicated by type, shape and bytes)."""
        np_type = helper.tensor_dtype_to_np_dtype(elem_type)
        array = np.asarray(value).astype(np_type)
        if shape is not None:
            array = array.reshape(tuple(shape))
        key = (elem_type, array.shape, array.tobytes())
        if key not in self._const_cache:
            while True:
                name = f"const_{self._const_count}"
                self._const_count += 1
                if name not in self.used:
                    break
            self._const_cache[key] = self.initializer(array, name)
        return self._const_cache[key]

    def ints(self, values: Sequence[int]) -> str:
        return self.const(np.array(list(values), dtype=np.int64), TensorProto.INT64, [len(values)])

    def scalar(self, value: Any, elem_type: int) -> str:
        if is_float(elem_type):
            value = float(value)
        elif elem_type == TensorProto.BOOL:
            value = bool(value)
        else:
            value = int(value)
        return self.const(value, elem_type, [])

    def cast(self, name: str, elem_type: int) -> str:
        if self.dtype(name) == elem_type:
            return name
        key = (name, elem_type)
        if key not in self._cast_cache:
            self._cast_cache[key] = self.op("Cast", [name], dtype=elem_type, to=elem_type)
        return self._cast_cache[key]

    def shape(self, name: str, start: int | None = None, end: int | None = None) -> str:
        """``Shape`` of ``name``, read from the quantized tensor when ``name`` is its DequantizeLinear (or Cast).

        onnxruntime fuses Q/DQ around a linear layer into QGemm only when nothing else reads the
        DequantizeLinear output, so shapes never come from a dequantized value.
        """
        name = self._same_shape_as.get(name, name)
        return self.op("Shape", [name], dtype=TensorProto.INT64, rank=1, start=start, end=end)

    # ------------------------------------------------------------------ reading FX arguments
    def is_scalar_value(self, arg: Any) -> bool:
        """True for FX nodes standing for python scalars (SymInt, SymFloat, SymBool)."""
        if not isinstance(arg, fx.Node):
            return False
        value = self.env.get(arg)
        return isinstance(value, str) and value in self.py_scalars

    def t(self, arg: Any) -> str:
        """The ONNX value of an FX node argument (materializes get_attr tensors and quantize outputs)."""
        if not isinstance(arg, fx.Node):
            raise TypeError(f"expected an FX node, got {arg!r}")
        value = self.env[arg]
        if isinstance(value, str):
            return value
        if isinstance(value, AttrRef):
            return self.attr(value)
        if isinstance(value, QValue):
            if value.name not in self._qcast_cache:
                ints = self.op(
                    "Cast", [value.name], dtype=TensorProto.INT32, rank=value.rank, to=TensorProto.INT32
                )
                if value.offset:
                    ints = self.op("Sub", [ints, self.scalar(value.offset, TensorProto.INT32)])
                self._qcast_cache[value.name] = ints
            return self._qcast_cache[value.name]
        raise TypeError(f"FX node {arg.name} does not hold a single tensor ({type(value).__name__})")

    def attr(self, ref: AttrRef) -> str:
        if ref.target not in self._attr_cache:
            tensor = ref.tensor.detach().cpu()
            onnx_type(tensor.dtype)
            self._attr_cache[ref.target] = self.initializer(tensor.numpy(), ref.target)
        return self._attr_cache[ref.target]

    def attr_tensor(self, arg: Any) -> torch.Tensor | None:
        """The tensor of a ``get_attr`` argument, or None when the argument is computed in the graph."""
        if isinstance(arg, fx.Node) and isinstance(self.env.get(arg), AttrRef):
            return self.env[arg].tensor
        return None

    def meta_val(self, arg: Any) -> Any:
        return arg.meta.get("val") if isinstance(arg, fx.Node) else None

    def meta_shape(self, arg: Any) -> tuple | None:
        val = self.meta_val(arg)
        return tuple(val.shape) if isinstance(val, torch.Tensor) else None

    def torch_dummy(self, arg: Any) -> Any:
        """A stand-in for ``arg`` that gives PyTorch's type promotion the right answer."""
        if isinstance(arg, bool | int | float):
            return arg
        if self.is_scalar_value(arg):
            return self.py_scalars[self.env[arg]](1)
        name = self.t(arg)
        elem_type, rank = self.info[name]
        return torch.empty((1,) if rank else (), dtype=torch_type(elem_type))

    def result_type(self, *args: Any) -> int:
        """PyTorch's promoted dtype of an elementwise op on ``args`` (tensors, python or symbolic scalars)."""
        tensors = [a for a in args if a is not None]
        dummies = [self.torch_dummy(a) for a in tensors]
        result = dummies[0]
        if len(dummies) == 1:
            dtype = result.dtype if isinstance(result, torch.Tensor) else torch.tensor(result).dtype
            return onnx_type(dtype)
        dtype = torch.result_type(dummies[0], dummies[1])
        for other in dummies[2:]:
            dtype = torch.result_type(torch.empty((1,), dtype=dtype), other)
        return onnx_type(dtype)

    def operand(self, arg: Any, elem_type: int) -> str:
        """``arg`` (tensor node, SymInt node or python number) as a value of ``elem_type``."""
        if isinstance(arg, fx.Node):
            return self.cast(self.t(arg), elem_type)
        if isinstance(arg, bool | int | float):
            return self.scalar(arg, elem_type)
        raise TypeError(f"unsupported operand {arg!r}")

    def int_scalar(self, arg: Any) -> str:
        """A python int or SymInt node as a 0-d int64 value."""
        return self.operand(arg, TensorProto.INT64)

    def size_list(self, sizes: Sequence[Any], replace: dict[int, int] | None = None) -> str:
        """A 1-D int64 shape tensor from a list mixing python ints and SymInt nodes."""
        sizes = list(sizes)
        if replace:
            sizes = [replace.get(s, s) if isinstance(s, int) else s for s in sizes]
        if all(isinstance(s, int) for s in sizes):
            return self.ints(sizes)
        pieces: list[str] = []
        run: list[int] = []
        for s in sizes:
            if isinstance(s, int):
                run.append(s)
                continue
            if run:
                pieces.append(self.ints(run))
                run = []
            value = self.t(s)
            if self.rank(value) == 0:
                value = self.op("Unsqueeze", [self.cast(value, TensorProto.INT64), self.ints([0])], rank=1)
            pieces.append(self.cast(value, TensorProto.INT64))
        if run:
            pieces.append(self.ints(run))
        if len(pieces) == 1:
            return pieces[0]
        return self.op("Concat", pieces, dtype=TensorProto.INT64, rank=1, axis=0)

    def fill(self, shape: str, value: Any, elem_type: int, rank: int) -> str:
        """A tensor of ``shape`` (1-D int64 value) filled with ``value`` (python number or node)."""
        if isinstance(value, fx.Node):
            return self.op("Expand", [self.operand(value, elem_type), shape], dtype=elem_type, rank=rank)
        np_type = helper.tensor_dtype_to_np_dtype(elem_type)
        tensor = numpy_helper.from_array(np.array([value]).astype(np_type), "value")
        return self.op("ConstantOfShape", [shape], dtype=elem_type, rank=rank, value=tensor)
