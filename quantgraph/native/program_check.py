"""What a native program (``.qgn``) may do: an allow-list of ops, each step's arguments checked against the op's
schema, and every constant array checked, before anything runs.

A ``.qgn`` file is untrusted input. The runtime resolves a generic step's op by name, so without this list a
program could name ``aten.from_file`` (reads any file) or an in-place op such as ``aten.fill_`` on a
``shared=True`` tensor (writes it). Only the pure, functional ops the lowering emits for quantgraph's models are
allowed; ops that mutate an argument are refused even if listed. Arguments must have the kind the op's schema
declares (tensor references for tensors, JSON integers for ints, a known dtype name for dtypes; no devices or
layouts), integer literals are bounded, and constant arrays must be finite numbers of a plain numeric dtype.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from quantgraph.errors import InputError
from quantgraph.native.alloc_check import MAX_STEP_ELEMENTS, literal_elements

#: Generic ops a program may name (the lowering's output for the zoo models and plain PyTorch GNNs).
ALLOWED_OPS = frozenset(
    {
        *(
            f"aten.{name}"
            for name in (
                "add.Tensor", "add.Scalar", "sub.Tensor", "sub.Scalar", "mul.Tensor", "mul.Scalar",
                "div.Tensor", "div.Scalar", "div.Tensor_mode", "neg.default", "abs.default", "exp.default",
                "log.default", "sqrt.default", "rsqrt.default", "pow.Tensor_Scalar", "pow.Tensor_Tensor",
                "relu.default", "elu.default", "leaky_relu.default", "sigmoid.default", "tanh.default",
                "gelu.default", "clamp.default", "clamp_min.default", "clamp_max.default", "maximum.default",
                "minimum.default", "where.self", "eq.Scalar", "eq.Tensor", "ne.Scalar", "ne.Tensor",
                "lt.Scalar", "lt.Tensor", "le.Scalar", "le.Tensor", "gt.Scalar", "gt.Tensor", "ge.Scalar",
                "ge.Tensor", "logical_not.default", "logical_and.default", "masked_fill.Scalar",
                "arange.start", "arange.default", "ones.default", "ones_like.default", "zeros.default",
                "zeros_like.default", "full.default", "new_zeros.default", "new_ones.default",
                "expand.default", "repeat.default", "view.default", "reshape.default", "unsqueeze.default",
                "squeeze.dim", "squeeze.dims", "permute.default", "t.default", "transpose.int",
                "select.int", "slice.Tensor", "index.Tensor", "index_select.default", "cat.default",
                "stack.default", "sum.dim_IntList", "sum.default", "mean.dim", "mean.default", "max.default",
                "max.dim", "amax.default", "min.default", "softmax.int", "_softmax.default",
                "log_softmax.int", "_log_softmax.default", "mm.default", "addmm.default", "matmul.default",
                "linear.default", "scatter_add.default", "scatter_reduce.two", "item.default",
                "sym_size.int", "_to_copy.default", "to.dtype", "clone.default", "alias.default",
                "round.default", "floor.default", "detach.default", "linalg_vector_norm.default",
                "argmin.default",  # A²Q's NNS group choice
            )
        ),
        "quantgraph.gather.default",
        "quantgraph.scatter.default",
        "quantgraph.quantize.default",
        "quantgraph.dequantize.default",
        "quantgraph.requantize.default",
        "quantgraph.linear_int.default",
    }
)  # fmt: skip
DTYPES = frozenset({"float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool"})
ARRAY_DTYPES = frozenset(np.dtype(d) for d in DTYPES)
MAX_LITERAL = 2**31 - 1
FIX = "re-create the model with `quantgraph compile --backend native`"


def refuse(problem: str) -> InputError:
    return InputError(f"the native model is refused: {problem}", FIX)


def check_arrays(arrays: dict[str, np.ndarray], max_bytes: int) -> None:
    """Plain numeric dtypes, finite floats, total size within ``max_bytes``."""
    total = 0
    for name, arr in arrays.items():
        if arr.dtype not in ARRAY_DTYPES:
            raise refuse(f"array {name!r} has dtype {arr.dtype}, not one of {', '.join(sorted(DTYPES))}")
        total += arr.nbytes
        if total > max_bytes:
            raise refuse(f"its arrays exceed {max_bytes >> 20} MiB")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise refuse(f"array {name!r} holds NaN or infinite values")


def resolve_allowed(op: str) -> Any:
    """The OpOverload of an allowed generic op; InputError for any other name."""
    if op not in ALLOWED_OPS:
        raise refuse(f"op {op!r} is not on the native runtime's allow-list (this runtime does not know it)")
    library, name, overload = op.split(".")
    try:
        overload_fn = getattr(getattr(getattr(torch.ops, library), name), overload)
    except (AttributeError, RuntimeError):
        raise refuse(f"op {op!r} is not known to this PyTorch") from None
    if any(a.alias_info is not None and a.alias_info.is_write for a in overload_fn._schema.arguments):
        raise refuse(f"op {op!r} writes to its arguments")
    return overload_fn


def check_generic_step(
    op: str, fn: Any, args: list[Any], kwargs: dict[str, Any], names: set[str], arrays: set[str]
) -> None:
    """Each argument of a generic step has the kind its schema declares; references exist."""
    schema = fn._schema.arguments
    positional = [a for a in schema if not a.kwarg_only]
    if len(args) > len(positional):
        raise refuse(f"step {op} has {len(args)} positional arguments, its schema takes {len(positional)}")
    by_name = {a.name: a for a in schema}
    pairs = list(zip(positional, args, strict=False))
    for key, value in kwargs.items():
        if key not in by_name:
            raise refuse(f"step {op} has an unknown keyword argument {key!r}")
        pairs.append((by_name[key], value))
    for arg, value in pairs:
        _check_kind(op, arg.name, str(arg.type), value, names, arrays)


def _check_kind(op: str, arg: str, kind: str, value: Any, names: set[str], arrays: set[str]) -> None:
    where = f"argument {arg!r} of {op}"
    if kind.startswith("Optional[") and value is None:
        return
    kind = kind.removeprefix("Optional[").removesuffix("]") if kind.startswith("Optional[") else kind
    if kind.startswith("List["):
        if not isinstance(value, list):
            raise refuse(f"{where} must be a list")
        inner = kind[len("List[") : -1]
        for item in value:
            _check_kind(op, arg, inner, item, names, arrays)
        return
    if arg == "dtype" or kind == "ScalarType":
        if not (isinstance(value, dict) and value.get("dtype") in DTYPES):
            raise refuse(f"{where} must name a dtype in {sorted(DTYPES)}")
    elif kind == "Tensor":
        if isinstance(value, (int, float)) and not isinstance(value, bool):  # a scalar operand
            _check_kind(op, arg, "number", value, names, arrays)
        elif isinstance(value, dict) and "float" in value:
            _check_float(where, value)
        else:
            _check_ref(where, value, names, arrays, tensor=True)
    elif kind in ("int", "SymInt"):
        if isinstance(value, dict):
            _check_ref(where, value, names, arrays, tensor=False)
        elif isinstance(value, bool) or not isinstance(value, int) or abs(value) > MAX_LITERAL:
            raise refuse(f"{where} must be an integer within ±{MAX_LITERAL}")
    elif kind in ("float", "number", "Scalar"):
        if isinstance(value, dict):
            if "float" in value:
                _check_float(where, value)
            else:
                _check_ref(where, value, names, arrays, tensor=False)
        elif not isinstance(value, (int, float)) or (isinstance(value, int) and abs(value) > 2**53):
            raise refuse(f"{where} must be a number")
    elif kind == "bool":
        if not isinstance(value, bool):
            raise refuse(f"{where} must be true or false")
    elif kind == "str":
        if not isinstance(value, str) or len(value) > 64:
            raise refuse(f"{where} must be a short string")
    else:  # Device, Layout, MemoryFormat, Generator, ...: never stored by the lowering
        raise refuse(f"{where} has kind {kind}, which native programs may not set")


def _check_float(where: str, value: dict[str, Any]) -> None:
    text = value.get("float")
    try:
        number = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise refuse(f"{where} is not a float") from None
    if not math.isinf(number) and not math.isnan(number):
        raise refuse(f"{where} stores a finite float as a non-finite one")


def _check_ref(where: str, value: Any, names: set[str], arrays: set[str], tensor: bool) -> None:
    if isinstance(value, dict) and set(value) == {"value"} and isinstance(value["value"], str):
        if value["value"] not in names:
            raise refuse(f"{where} reads {value['value']!r} before it is computed")
        return
    if tensor and isinstance(value, dict) and set(value) == {"array"} and isinstance(value["array"], str):
        if value["array"] not in arrays:
            raise refuse(f"{where} reads a missing array {value['array']!r}")
        return
    raise refuse(f"{where} must reference a {'tensor' if tensor else 'value'}")


INT8 = (-128, 127)


def _int(where: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise refuse(f"{where} must be an integer in [{lo}, {hi}], got {str(value)[:40]}")
    return value


def _array(
    where: str, ref: Any, arrays: dict[str, np.ndarray], kinds: str, lo: float, hi: float
) -> np.ndarray:
    if isinstance(ref, dict) and set(ref) == {"value"} and isinstance(ref["value"], str):
        return np.zeros(0, dtype=np.int8 if "i" in kinds else np.float64)  # computed: its reads are checked
    if not (isinstance(ref, dict) and set(ref) == {"array"} and ref["array"] in arrays):
        raise refuse(f"{where} must reference one of the model's arrays")
    arr = arrays[ref["array"]]
    if arr.dtype.kind not in kinds:
        raise refuse(f"{where} has dtype {arr.dtype}")
    if arr.size and (arr.min() < lo or arr.max() > hi):
        raise refuse(f"{where} holds values outside [{lo}, {hi}]")
    return arr


def _requant(where: str, rq: Any, arrays: dict[str, np.ndarray]) -> None:
    if not isinstance(rq, dict):
        raise refuse(f"{where} must be an object")
    _array(f"{where}.multiplier", rq.get("multiplier"), arrays, "f", 0.0, 2.0**31)
    lo = _int(f"{where}.qmin", rq.get("qmin"), *INT8)
    hi = _int(f"{where}.qmax", rq.get("qmax"), lo, INT8[1])
    _array(f"{where}.zero_point", rq.get("zero_point"), arrays, "iu", lo, hi)
    _int(f"{where}.axis", rq.get("axis"), 0, 1)


def check_native_step(step: Any, arrays: dict[str, np.ndarray]) -> None:
    """Types and ranges of a ``native.*`` step's arguments (the kernels trust them)."""
    kw, where = step.kwargs, f"step {step.out} ({step.op})"
    if not isinstance(kw, dict):
        raise refuse(f"{where} has malformed keyword arguments")
    if step.op == "native.quantize":
        scale = kw.get("scale")
        if not isinstance(scale, float) or not math.isfinite(scale) or scale <= 0:
            raise refuse(f"{where}: scale must be a finite positive float")
        lo = _int(f"{where}.qmin", kw.get("qmin"), *INT8)
        hi = _int(f"{where}.qmax", kw.get("qmax"), lo, INT8[1])
        _int(f"{where}.zero_point", kw.get("zero_point"), lo, hi)
    elif step.op == "native.linear":
        weight = _array(f"{where}.weight", kw.get("weight"), arrays, "i", *INT8)
        if weight.dtype != np.int8 or weight.ndim != 2:
            raise refuse(f"{where}: weight must be a 2-D int8 array, got {weight.dtype} {list(weight.shape)}")
        _int(f"{where}.zero_point", kw.get("zero_point"), *INT8)
        wz = _array(f"{where}.weight_zero_point", kw.get("weight_zero_point"), arrays, "iu", *INT8)
        if wz.size not in (1, weight.shape[1]):
            raise refuse(f"{where}: {wz.size} weight zero points for {weight.shape[1]} output channels")
        if kw.get("bias") is not None:
            bias = _array(f"{where}.bias", kw["bias"], arrays, "i", -(2**31), 2**31 - 1)
            if bias.size != weight.shape[1]:
                raise refuse(f"{where}: bias has {bias.size} values for {weight.shape[1]} output channels")
        if kw.get("requant") is not None:
            _requant(f"{where}.requant", kw["requant"], arrays)
    elif step.op == "native.aggregate":
        if kw.get("bits") not in (2, 4, 8):
            raise refuse(f"{where}: bits must be 2, 4 or 8")
        _int(f"{where}.zero_point", kw.get("zero_point"), *INT8)
        message = kw.get("message")
        if message is not None:
            mult = message.get("multiplier") if isinstance(message, dict) else None
            if not isinstance(mult, float) or not math.isfinite(mult) or mult < 0:
                raise refuse(f"{where}: the message multiplier must be a finite non-negative float")
            lo = _int(f"{where}.message.qmin", message.get("qmin"), *INT8)
            hi = _int(f"{where}.message.qmax", message.get("qmax"), lo, INT8[1])
            _int(f"{where}.message.zero_point", message.get("zero_point"), lo, hi)
        if kw.get("requant") is not None:
            _requant(f"{where}.requant", kw["requant"], arrays)
    elif step.op == "native.requantize":
        _requant(f"{where}.requant", kw.get("requant"), arrays)
        _int(f"{where}.input_zero_point", kw.get("input_zero_point", 0), *INT8)
        if kw.get("bias") is not None:
            _array(f"{where}.bias", kw["bias"], arrays, "i", -(2**31), 2**31 - 1)
    elif step.op == "native.csr":
        check = kw.get("overflow_check")
        if check is not None and not isinstance(check, dict):
            raise refuse(f"{where}: overflow_check must be an object")
        if not isinstance(step.args, list) or len(step.args) != 4:
            raise refuse(f"{where} must have 4 arguments")
    elif step.op in ("native.mixed_csr", "native.mixed_pack", "native.mixed_aggregate"):  # A²Q
        count = {"native.mixed_csr": 4, "native.mixed_pack": 3, "native.mixed_aggregate": 2}[step.op]
        if not isinstance(step.args, list) or len(step.args) != count or kw:
            raise refuse(f"{where} must have {count} arguments and no keyword arguments")
    elif step.op == "input.size":
        if not (isinstance(step.args, list) and len(step.args) == 2 and isinstance(step.args[0], str)):
            raise refuse(f"{where} must name an input and an axis")
        _int(f"{where} axis", step.args[1], 0, 8)


INT32 = (-(2**31), 2**31 - 1)
#: array arguments of the generic quantgraph ops: (position, what it is) for scales, integers and weights
_QUANT_ARGS = {
    "quantgraph.quantize.default": ((1, "scale"), (2, "int"), (3, "int"), (4, "int")),
    "quantgraph.dequantize.default": ((1, "scale"), (2, "int")),
    "quantgraph.requantize.default": ((1, "multiplier"), (2, "int"), (3, "int"), (4, "int")),
    "quantgraph.linear_int.default": ((1, "int"), (2, "int"), (3, "int"), (4, "int")),
}


def check_quant_step(step: Any, arrays: dict[str, np.ndarray]) -> None:
    """Stored parameters of a generic quantgraph op: scales finite and positive, multipliers finite and
    non-negative, zero points, ranges, integer weights and biases integers within int32, ``qmin <= qmax``,
    and per-axis parameters of one length."""
    spec = _QUANT_ARGS.get(step.op)
    if spec is None:
        return
    where = f"step {step.out} ({step.op})"
    lengths: set[int] = set()
    stored: dict[int, np.ndarray] = {}
    for position, kind in spec:
        ref = step.args[position] if position < len(step.args) else None
        if not (isinstance(ref, dict) and set(ref) == {"array"} and ref["array"] in arrays):
            continue  # computed in the program (its producer is checked) or absent (an optional bias)
        arr = arrays[ref["array"]]
        stored[position] = arr
        if kind == "scale":
            _array(f"{where} scale", ref, arrays, "f", np.finfo(np.float32).tiny, np.finfo(np.float32).max)
        elif kind == "multiplier":
            _array(f"{where} multiplier", ref, arrays, "f", 0.0, 2.0**31)
        else:
            _array(f"{where} argument {position}", ref, arrays, "iub", *INT32)
        if step.op != "quantgraph.linear_int.default" and arr.size != 1:
            lengths.add(arr.size)
    if len(lengths) > 1:
        raise refuse(f"{where} has per-axis parameters of different lengths {sorted(lengths)}")
    if step.op in ("quantgraph.quantize.default", "quantgraph.requantize.default") and {3, 4} <= set(stored):
        lo, hi = stored[3].astype(np.int64), stored[4].astype(np.int64)
        if lo.shape == hi.shape and (lo > hi).any() or lo.size == 1 and (lo.reshape(-1)[0] > hi).any():
            raise refuse(f"{where} has qmin above qmax")
    if step.op == "quantgraph.linear_int.default" and 2 in stored:
        weight = stored[2]
        if weight.ndim != 2:
            raise refuse(f"{where}: the integer weight must be 2-D, got {list(weight.shape)}")
        for position, what in ((3, "weight zero points"), (4, "bias values")):
            arr = stored.get(position)
            if arr is not None and arr.size not in (
                (1, weight.shape[1]) if position == 3 else (weight.shape[1],)
            ):
                raise refuse(f"{where}: {arr.size} {what} for {weight.shape[1]} output columns")


NATIVE_STEPS = (
    "native.csr",
    "native.aggregate",
    "native.linear",
    "native.requantize",
    "native.quantize",
    "native.mixed_csr",
    "native.mixed_pack",
    "native.mixed_aggregate",
    "input.size",
)
OPERATOR_STEPS = ("operator.add", "operator.sub", "operator.mul", "operator.floordiv")


def check_program(program: Any) -> None:
    """Every step of ``program``: an allowed op with well-formed arguments reading values computed before it."""
    check_arrays(program.arrays, max_bytes=1 << 40)
    names = {n for n in program.inputs if isinstance(n, str)}
    arrays = set(program.arrays)
    for step in program.steps:
        if not isinstance(step.op, str) or not isinstance(step.out, str):
            raise refuse("a step has a non-string op or output name")
        if not isinstance(step.args, list) or not isinstance(step.kwargs, dict):
            raise refuse(f"step {step.out} has malformed arguments")
        if step.op in NATIVE_STEPS:
            check_native_step(step, program.arrays)
            if step.op != "input.size":
                _check_reads(step, names, arrays)
        elif step.op in OPERATOR_STEPS:
            if len(step.args) != 2 or step.kwargs:
                raise refuse(f"step {step.out} ({step.op}) must have two arguments")
            for i, a in enumerate(step.args):
                _check_kind(step.op, str(i), "int", a, names, arrays)
        else:
            fn = resolve_allowed(step.op)
            check_generic_step(step.op, fn, step.args, step.kwargs, names, arrays)
            check_quant_step(step, program.arrays)
            if literal_elements(step.op, step.args, step.kwargs, fn._schema) > MAX_STEP_ELEMENTS:
                raise refuse(f"step {step.out} ({step.op}) asks for more than {MAX_STEP_ELEMENTS} elements")
        names.add(step.out)
    missing = [o for o in program.outputs if o not in names]
    if missing:
        raise refuse(f"output {missing[0]!r} is never computed")


def _check_reads(step: Any, names: set[str], arrays: set[str]) -> None:
    from quantgraph.native.artifact import references

    for name in references({"args": step.args, "kwargs": step.kwargs}):
        if name not in names:
            raise refuse(f"step {step.out} ({step.op}) reads {name!r} before it is computed")
