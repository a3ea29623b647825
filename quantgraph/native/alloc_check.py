"""Allocation caps of a native program: a step whose output would be enormous is refused before it runs.

A ``.qgn`` file is untrusted: a step such as ``aten.zeros([2**31 - 1, 2**31 - 1])``, ``aten.repeat`` by a
huge factor or ``quantgraph.scatter`` into 2**31 rows would allocate (or lazily map) far more memory than a
GNN needs and take the machine down. :func:`literal_elements` bounds the sizes written in the program (checked
at load); :func:`output_elements` bounds a step's output from its decoded arguments just before it runs (sizes
computed from the input, broadcasting). Both are compared with :data:`MAX_STEP_ELEMENTS`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

#: the most elements one step may produce (2**31: the kernels' int32 index limit, 8 GiB of float32)
MAX_STEP_ELEMENTS = 1 << 31

#: argument names that give an output's shape
SIZE_ARGS = ("size", "sizes", "shape")
GROWING = ("repeat", "expand", "arange", "zeros", "ones", "full", "new_zeros", "new_ones", "new_full")


def _prod(values: Sequence[int]) -> int:
    return math.prod(abs(int(v)) for v in values)


def literal_elements(op: str, args: list[Any], kwargs: dict[str, Any], schema: Any) -> int:
    """The element count that the program's literal size arguments of a generic step ask for (0: none)."""
    names = [a.name for a in schema.arguments]
    bound = dict(zip(names, args, strict=False)) | kwargs
    worst = 0
    for name in (*SIZE_ARGS, "repeats"):
        value = bound.get(name)
        if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
            worst = max(worst, _prod(value))
    if op.startswith("aten.arange"):
        numbers = [v for v in (bound.get("start"), bound.get("end"), bound.get("step")) if v is not None]
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in numbers) and numbers:
            worst = max(worst, _arange_count(bound))
    if op == "quantgraph.scatter.default" and isinstance(bound.get("num_nodes"), int):
        worst = max(worst, abs(bound["num_nodes"]))
    return worst


def _arange_count(bound: dict[str, Any]) -> int:
    start, end, step = bound.get("start", 0), bound.get("end"), bound.get("step", 1)
    if end is None or not isinstance(end, int | float) or not step:
        return 0
    try:
        return max(0, math.ceil((float(end) - float(start)) / float(step)))
    except (TypeError, ValueError, OverflowError):
        return MAX_STEP_ELEMENTS + 1


def _expanded(shape: Sequence[int], sizes: list[int]) -> list[int]:
    """``expand``'s sizes with each -1 replaced by the input's size on that axis (aligned from the right)."""
    offset = len(sizes) - len(shape)
    return [shape[i - offset] if v == -1 and i >= offset else v for i, v in enumerate(sizes)]


def output_elements(op: str, args: list[Any], kwargs: dict[str, Any], schema: Any) -> int:
    """An upper bound of the elements a generic step produces, from its decoded arguments (0: not growing).

    Covers the ops whose output can be larger than their inputs: creation and expansion ops, broadcasting of
    several tensors, matrix products and ``quantgraph.scatter``; every other allowed op's output is at most as
    large as its inputs.
    """
    names = [a.name for a in schema.arguments]
    bound = dict(zip(names, args, strict=False)) | kwargs
    name = op.split(".")[1]
    tensors = [v for v in bound.values() if isinstance(v, torch.Tensor)]
    if name in GROWING or any(k in bound for k in SIZE_ARGS):
        worst = 0
        for key in (*SIZE_ARGS, "repeats"):
            value = bound.get(key)
            if isinstance(value, list | tuple) and all(isinstance(v, int) for v in value):
                if name == "expand" and isinstance(bound.get("self"), torch.Tensor):
                    value = _expanded(bound["self"].shape, list(value))
                count = _prod(value)
                if key == "repeats" and isinstance(bound.get("self"), torch.Tensor):
                    count *= max(bound["self"].numel(), 1)
                worst = max(worst, count)
        if name == "arange":
            worst = max(worst, _arange_count(bound))
        return worst
    if op == "quantgraph.scatter.default":
        src = bound.get("src")
        width = _prod(src.shape[1:]) if isinstance(src, torch.Tensor) else 1
        return abs(int(bound.get("num_nodes", 0))) * width
    if name in ("mm", "matmul", "addmm", "linear") and len(tensors) >= 2:
        a, b = (bound.get("mat1"), bound.get("mat2")) if name == "addmm" else (tensors[0], tensors[1])
        if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dim() and b.dim():
            cols = b.shape[0] if name == "linear" else b.shape[-1]
            return max(a.numel() // max(a.shape[-1], 1), 1) * cols
        return 0
    if len(tensors) >= 2:
        try:
            return _prod(torch.broadcast_shapes(*(t.shape for t in tensors)))
        except RuntimeError:
            return 0  # not a broadcasting op (cat, index, ...): bounded by its inputs
    return 0
