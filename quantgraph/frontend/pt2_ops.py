"""The ops a ``.pt2``'s own graph may call: an allow-list of the tensor math a GNN needs, checked before the
program is deserialised (on the archive's JSON) and again on the loaded graph.

A ``torch.export`` archive names its ops by string (``torch.ops.aten.from_file.default``); loading resolves
them from PyTorch's op registry, and tracing or calibrating the model runs them. Without a list, a pickle-free
``.pt2`` could read or write files (``aten.from_file``, ``aten.save``-like ops of loaded libraries), call ops of
any library that happens to be imported, or hide code in higher-order ops. Allowed: the ATen ops below (and
their in-place forms, which only write tensors the graph itself created), ``quantgraph``'s own ops and Python's
integer/comparison operators on sizes. Anything else is refused with one line naming the op. ``--trust-pickle``
(trust the whole file) skips this check.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from quantgraph.errors import InputError

#: ATen op packets (any overload) a GNN's exported graph may call
ATEN_OPS = frozenset(
    """
    abs add addmm alias amax amin any all arange argmax argmin as_strided_scatter baddbmm batch_norm bincount bmm
    cat ceil celu chunk clamp clamp_max clamp_min clone contiguous copy cos cumsum detach div dropout elu embedding
    empty empty_like eq erf exp expand expand_as expm1 fill flatten flip floor floor_divide fmod full full_like
    gather ge gelu glu group_norm gt hardsigmoid hardswish hardtanh index index_add index_copy index_fill index_put
    index_reduce index_select instance_norm isfinite isinf isnan item layer_norm le leaky_relu lift_fresh_copy
    linalg_vector_norm linear log log1p log_softmax logical_and logical_not logical_or logical_xor logsumexp lt masked_fill
    masked_scatter masked_select matmul max maximum mean min minimum mish mm mul nan_to_num narrow native_batch_norm
    native_dropout native_group_norm native_layer_norm ne neg new_empty new_full new_ones new_zeros nonzero norm
    ones ones_like permute pow prelu prod reciprocal relu relu6 remainder repeat repeat_interleave reshape round
    rsqrt rsub scalar_tensor scatter scatter_add scatter_reduce select select_scatter selu sigmoid sign silu sin
    slice slice_scatter softmax softplus sort split split_with_sizes sqrt square squeeze stack std sub sum
    sym_numel sym_size sym_storage_offset sym_stride t tanh threshold to topk transpose tril triu type_as unbind
    unflatten unique_consecutive unsqueeze var view view_as where zero zeros zeros_like _assert_scalar
    _assert_tensor_metadata _local_scalar_dense _log_softmax _native_batch_norm_legit_functional
    _native_batch_norm_legit_no_training _safe_softmax _softmax _to_copy _unsafe_index _unsafe_view
    sym_constrain_range sym_constrain_range_for_size
    """.split()
)
#: Python callables an exported graph uses for size arithmetic (serialised as ``_operator.<name>`` etc.)
PYTHON_OPS = frozenset(
    [
        f"_operator.{n}"
        for n in "add sub mul floordiv truediv mod neg pos pow eq ne lt le gt ge getitem and_ or_ not_".split()
    ]
    + [f"torch.{n}" for n in "sym_float sym_int sym_max sym_min sym_not sym_sqrt sym_ite _sym_sqrt".split()]
    + [f"math.{n}" for n in "ceil floor trunc sqrt".split()]
)
FIX = "export the model from plain PyTorch tensor ops, or pass --trust-pickle if you trust the file (it can run code)"


def allowed(target: str) -> bool:
    """True for an op a ``.pt2`` may call (``torch.ops.aten.add.Tensor``, ``_operator.add``, ...)."""
    if target in PYTHON_OPS:
        return True
    parts = target.split(".")
    if len(parts) == 5 and parts[:2] == ["torch", "ops"]:
        library, name = parts[2], parts[3]
        if library == "quantgraph":
            # smp_multiplier: an identity marker (quantgraph/ir/smp_ops.py), no side effects
            return name in (
                "gather",
                "scatter",
                "quantize",
                "dequantize",
                "requantize",
                "linear_int",
                "smp_multiplier",
            )
        if library == "aten":
            return name in ATEN_OPS or (name.endswith("_") and name[:-1] in ATEN_OPS)
    return False


def _source_line(metadata: Any) -> str:
    """The user's source line of a serialised node (the last line of its stack trace), or ''."""
    trace = metadata.get("stack_trace") if isinstance(metadata, dict) else None
    lines = [ln.strip() for ln in str(trace or "").splitlines() if ln.strip()]
    return lines[-1][:100] if lines else ""


def serialized_targets(doc: Any) -> Iterator[tuple[str, str]]:
    """``(target, source line)`` of every node in a serialised exported program (nested graphs included),
    without recursion."""
    stack = [doc]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if "target" in item and "inputs" in item and "outputs" in item:
                yield str(item["target"]), _source_line(item.get("metadata"))
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def check_targets(path: object, targets: Iterable[tuple[str, str]]) -> None:
    for target, line in targets:
        if not allowed(target):
            at = f" (at `{line}`)" if line else ""
            raise InputError(
                f"{path}: its graph calls {target[:100]!r}{at}, which is not on the allow-list of ops a GNN "
                "model may use; it was not loaded for safety",
                FIX,
            )


def check_serialized_ops(path: object, model_json: bytes) -> None:
    """Refuse a program whose serialised graph names an op outside the allow-list (before deserialising)."""
    try:
        doc = json.loads(model_json)
    except (ValueError, RecursionError) as err:
        raise InputError(
            f"{path}: its program JSON is malformed ({type(err).__name__})", "save it with torch.export.save"
        ) from None
    check_targets(path, serialized_targets(doc))


def target_name(target: Any) -> str:
    """The serialised name of a graph node's target (``torch.ops.aten.add.Tensor``, ``_operator.add``)."""
    import torch

    if isinstance(target, torch._ops.OpOverload):
        return f"torch.ops.{target.namespace}.{target._schema.name.split('::')[-1]}.{target._overloadname}"
    module, name = getattr(target, "__module__", None), getattr(target, "__name__", None)
    return f"{module}.{name}" if module and name else repr(target)


def check_loaded_ops(path: object, program: Any) -> None:
    """The same allow-list on the loaded ``ExportedProgram`` (every graph of its module tree)."""
    for module in program.graph_module.modules():
        graph = getattr(module, "graph", None)
        if graph is None:
            continue
        nodes = (n for n in graph.nodes if n.op == "call_function")
        check_targets(path, ((target_name(n.target), _source_line(n.meta)) for n in nodes))
