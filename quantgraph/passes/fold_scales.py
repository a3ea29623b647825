"""Fold scales so linear layers and aggregations run on integers (MixQ-GNN's integer-aggregation theorem).

Each quantize whose input has an integer form (see :mod:`quantgraph.passes.int_forms`) becomes
``requantize(integer accumulator, s_in / s_out, zero_point, qmin, qmax)``: the sum runs in int32 and one
float64 multiplier per tensor (or per column, or per target row for mean) requantizes it. Quantizes
without an integer form (inputs from float ops) stay as they are, so every model still runs.

Overflow proof: every int32 accumulator gets a bound from the integer ranges and the graph. For an
aggregation ``|sum| <= max in-degree * max|q_e - z_e| * max|q_x - z_x|`` (max in-degree measured on the
calibration graphs); for a linear layer ``|acc| <= in_width * max|q_x - z_x| * max|q_w - z_w| + max|bias|``.
A bound above 2**31 - 1 is an error naming the node and the fix; with option ``int_overflow="float"``
that quantize keeps its float input instead. Bounds are recorded in ``ctx.report["integer"]``.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, fx

from quantgraph.errors import InputError
from quantgraph.ir.int_ops import INT32_MAX, REQUANTIZE
from quantgraph.ir.meta import INTEGER_KEY
from quantgraph.ir.ops import QUANTIZE, SCATTER
from quantgraph.ir.reference import float64_reference, integer_values
from quantgraph.options import Option
from quantgraph.passes.infra import CompileContext, PassBase, PassResult, add_constant
from quantgraph.passes.int_forms import IntForm, IntFormBuilder
from quantgraph.passes.qdq_params import quantize_params
from quantgraph.passes.registry import register_pass

aten = torch.ops.aten


def max_in_degrees(
    gm: fx.GraphModule, calibration: list[dict[str, Tensor]], names: list[str]
) -> dict[str, int]:
    """Largest number of rows any scatter reduces into one target row, over the calibration graphs."""
    degrees: dict[str, int] = {}

    class _Degrees(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            value = super().run_node(n)
            if n.target == SCATTER:
                index = self.env[n.args[1]] if isinstance(n.args[1], fx.Node) else None
                if isinstance(index, Tensor) and index.numel():
                    degree = int(torch.bincount(index.reshape(-1).long()).max())
                    degrees[n.name] = max(degrees.get(n.name, 0), degree)
            return value

    with torch.no_grad():
        for inputs in calibration:
            _Degrees(gm).run(*[inputs[n] for n in names])
    return degrees


def reference_check(reference: fx.GraphModule, gm: fx.GraphModule, ctx: CompileContext) -> dict[str, Any]:
    """Compare the integers at every quantize point with the float64 Q/DQ reference on the first graph."""
    inputs = [ctx.calibration_data[0][n] for n in ctx.input_names]
    expected, actual = integer_values(reference, inputs), integer_values(gm, inputs)
    shared = sorted(set(expected) & set(actual))
    mismatched = {
        k: int((expected[k] != actual[k]).sum()) for k in shared if not torch.equal(expected[k], actual[k])
    }
    return {"points": len(shared), "equal": not mismatched, "mismatched_values": mismatched}


def _multiplier(form: IntForm, out_scale: Tensor) -> Tensor | None:
    """``s_in / s_out`` as float64: 0-d, or 1-d along the last axis; None when the shapes do not combine."""
    if out_scale.numel() > 1 and not form.column:
        return None
    if out_scale.numel() > 1 and out_scale.shape != form.scale.shape:
        return None
    return form.scale / out_scale


@register_pass
class FoldScalesPass(PassBase):
    """Rewrite Q/DQ regions into integer linear layers and aggregations followed by one requantize."""

    name = "fold-scales"
    options = (
        Option(
            "int_overflow",
            str,
            "error",
            "when an int32 accumulator could overflow: fail, or keep that op in float",
            choices=("error", "float"),
        ),
    )
    description = (
        "integer linear/aggregation with int32 accumulators and a float64 requantize; proves no overflow"
    )

    def requires(self, gm: fx.GraphModule, ctx: CompileContext) -> None:
        if not any(n.target == QUANTIZE for n in gm.graph.nodes):
            raise InputError(
                "the graph has no quantize nodes", "run fold-scales after insert-qdq or convert-qat"
            )
        if not ctx.calibration_data:
            raise InputError("fold-scales needs a graph to measure in-degrees", "pass calibration data")

    def call(self, gm: fx.GraphModule, ctx: CompileContext) -> PassResult:
        overflow = self.option(ctx, "int_overflow")
        degrees = max_in_degrees(gm, ctx.degree_data or ctx.calibration_data, ctx.input_names)
        reference = float64_reference(gm)
        ctx.qdq_module = copy.deepcopy(gm)
        builder = IntFormBuilder(gm, lambda node: degrees.get(node.name, 0))
        folded, kept, overflowed = [], [], []
        for node in list(gm.graph.nodes):
            if node.target != QUANTIZE or (
                isinstance(node.args[0], fx.Node) and node.args[0].op == "get_attr"
            ):
                continue
            params = quantize_params(gm, node)
            first_bound = len(builder.accumulators)
            form = builder.form(node.args[0])
            mult = _multiplier(form, params.scale) if form is not None and params is not None else None
            if form is None or mult is None or (form.divisor is not None and form.column):
                kept.append(node.name)
                continue
            new_bounds = [b for b in builder.accumulators[first_bound:] if b.bound > INT32_MAX]
            if form.bound > INT32_MAX or new_bounds:
                worst = new_bounds[0] if new_bounds else None
                if overflow == "error":
                    raise InputError(_overflow_problem(node, form, worst), _OVERFLOW_FIX)
                overflowed.append(node.name)
                kept.append(node.name)
                continue
            self._replace(gm, node, form, mult, builder)
            folded.append(node.name)
        gm.graph.eliminate_dead_code()
        gm.graph.lint()
        gm.recompile()
        seen: set[str] = set()
        bounds = []
        for b in builder.accumulators:
            if b.node not in seen:
                seen.add(b.node)
                bounds.append(b.to_json())
        ctx.report["integer"] = {
            "folded": folded,
            "kept_float": kept,
            "overflow_kept_float": overflowed,
            "accumulators": bounds,
            "max_accumulator_bound": max((b["bound"] for b in bounds), default=0),
            "reference_check": reference_check(reference, gm, ctx),
        }
        return PassResult(gm, bool(folded))

    @staticmethod
    def _replace(
        gm: fx.GraphModule, node: fx.Node, form: IntForm, mult: Tensor, builder: IntFormBuilder
    ) -> None:
        acc = builder.integers(form, node)
        _x, _scale, zp, qmin, qmax, _axis = node.args
        rank = node.meta["val"].dim() if isinstance(node.meta.get("val"), Tensor) else 2
        axis = rank - 1 if mult.numel() > 1 else 0
        mult_node = add_constant(gm, f"qg_{node.name}_multiplier", mult.to(torch.float64), node)
        if form.divisor is not None:  # mean: the per-target-row divisor joins the multiplier
            with gm.graph.inserting_before(node):
                mult_node = gm.graph.call_function(aten.div.Tensor, (mult_node, form.divisor))
            axis = 0
        with gm.graph.inserting_before(node):
            requant = gm.graph.call_function(REQUANTIZE, (acc, mult_node, zp, qmin, qmax, axis))
        requant.meta.update({k: v for k, v in node.meta.items() if k != "val"})
        requant.meta[INTEGER_KEY] = True
        node.replace_all_uses_with(requant)
        gm.graph.erase_node(node)


_OVERFLOW_FIX = (
    "use fewer bits for the edge weights or features (e.g. --bits 4), or compile with option "
    "int_overflow='float' to keep that aggregation in float"
)


def _overflow_problem(node: fx.Node, form: IntForm, worst: Any) -> str:
    if worst is not None and worst.kind == "aggregation":
        return (
            f"int32 overflow possible at aggregation {worst.node} (layer {worst.layer}): |sum| <= "
            f"{worst.terms} (max in-degree) * {worst.term_bound} (per message) = {worst.bound} > 2**31-1"
        )
    if worst is not None:
        return (
            f"int32 overflow possible at linear {worst.node} (layer {worst.layer}): |acc| <= "
            f"{worst.terms} (input width) * {worst.term_bound} = {worst.bound} > 2**31-1"
        )
    return f"int32 overflow possible before {node.name}: |integer| <= {form.bound} > 2**31-1"
