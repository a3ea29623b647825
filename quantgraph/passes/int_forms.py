"""Integer forms of Q/DQ values: ``real = scale * integer`` where the integer is built from int32 IR ops.

This is the bookkeeping behind MixQ-GNN's integer-aggregation theorem. A value has an integer form when
it is a dequantize, or an op over values with integer forms whose scale factor can move out of the op:

| op | integer op | scale of the result | when the scale can move out |
|---|---|---|---|
| dequantize(q, s, z) | ``q - z`` | ``s`` | always |
| gather(y, index) | gather of the integers | ``s_y`` | per tensor or per column; a per-node (row) scale becomes per edge and could not leave a later sum |
| mul(a, b) | ``a_int * b_int`` | ``s_a * s_b`` | per tensor, or one operand per column |
| scatter sum/max | int32 scatter | ``s`` | per tensor or per column (the sum runs over rows) |
| scatter mean | int32 scatter sum | ``s / in_degree`` | as sum; the per-target-row divisor moves into the requantize multiplier |
| linear(x, w, b) | ``linear_int`` (int32 accumulator) | ``s_x * s_w`` | ``s_x`` per tensor, ``s_w`` per tensor or per output channel (the sum runs over input channels) |
| add(a, b) | ``a_int + b_int`` | ``s`` | identical scales (an int32 bias made by ``quantize-bias``) |
| relu(a) | ``max(a_int, 0)`` | ``s`` | always (``s > 0``) |
| view/reshape/unsqueeze/squeeze | same op | ``s`` | per tensor |

Every integer form carries a bound on ``|integer|`` so the fold pass can prove the int32 accumulators
cannot overflow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, fx

from quantgraph.ir.int_ops import LINEAR_INT
from quantgraph.ir.meta import ACCUMULATOR_KEY, INTEGER_KEY, LAYER_KEY, ROLE_KEY, ROWS_KEY
from quantgraph.ir.ops import DEQUANTIZE, GATHER, QUANTIZE, SCATTER
from quantgraph.passes.infra import add_constant
from quantgraph.passes.qdq_params import const, dequantize_params

aten = torch.ops.aten
SHAPE_OPS = {
    aten.view.default,
    aten.reshape.default,
    aten.unsqueeze.default,
    aten.squeeze.dim,
    aten.squeeze.default,
}


@dataclass
class IntForm:
    """``real == scale * (node - zero)`` with ``|node - zero| <= bound``; ``divisor`` divides per row."""

    node: fx.Node
    scale: Tensor  # float64; 0-d (per tensor) or 1-d along the last axis (per column)
    bound: int
    zero: Tensor | None = None  # int64, broadcastable; None when the zero point is 0
    divisor: fx.Node | None = None  # float64 [rows]: mean aggregation's clamped in-degree
    column: bool = field(init=False)

    def __post_init__(self) -> None:
        self.column = self.scale.numel() > 1


@dataclass
class AccumulatorBound:
    """One int32 accumulator and the bound that proves it fits (or not)."""

    node: str
    kind: str  # "aggregation" or "linear"
    layer: int | None
    bound: int
    terms: int  # max in-degree (aggregation) or input width (linear)
    term_bound: int

    def to_json(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "kind": self.kind,
            "layer": self.layer,
            "bound": self.bound,
            "int32_max": 2**31 - 1,
            "fits_int32": self.bound <= 2**31 - 1,
            ("max_in_degree" if self.kind == "aggregation" else "input_width"): self.terms,
            "per_term_bound": self.term_bound,
            **(
                {"max_safe_in_degree": (2**31 - 1) // max(self.term_bound, 1)}
                if self.kind == "aggregation"
                else {}
            ),
        }


class IntFormBuilder:
    """Builds integer forms in front of a node, memoised per FX node."""

    def __init__(self, gm: fx.GraphModule, in_degree: Callable[[fx.Node], int]) -> None:
        self.gm = gm
        self.in_degree = in_degree
        self.accumulators: list[AccumulatorBound] = []
        self._memo: dict[fx.Node, IntForm | None] = {}
        self._count = 0

    # ------------------------------------------------------------------ graph building helpers
    def _const(self, name: str, value: Tensor, before: fx.Node) -> fx.Node:
        self._count += 1
        return add_constant(self.gm, f"qg_int_{name}_{self._count}", value, before)

    def _call(self, target: Any, args: tuple, before: fx.Node, like: fx.Node | None = None) -> fx.Node:
        with self.gm.graph.inserting_before(before):
            node = self.gm.graph.call_function(target, args)
        if like is not None:
            for key in (ROLE_KEY, LAYER_KEY, ROWS_KEY):
                if key in like.meta:
                    node.meta[key] = like.meta[key]
        node.meta[INTEGER_KEY] = True
        return node

    def integers(self, form: IntForm, before: fx.Node) -> fx.Node:
        """``node - zero`` as an int32 node (the node itself when the zero point is 0)."""
        if form.zero is None:
            return form.node
        zero = self._const("zero_point", form.zero.to(torch.int32), before)
        return self._call(aten.sub.Tensor, (form.node, zero), before, form.node)

    # ------------------------------------------------------------------ the integer forms
    def form(self, node: Any) -> IntForm | None:
        if not isinstance(node, fx.Node):
            return None
        if node not in self._memo:
            self._memo[node] = self._build(node)
        return self._memo[node]

    def _build(self, node: fx.Node) -> IntForm | None:
        target = node.target
        if target == DEQUANTIZE:
            return self._dequantize(node)
        if target == GATHER:
            return self._gather(node)
        if target == SCATTER:
            return self._scatter(node)
        if target in (aten.mul.Tensor, aten.mul.Scalar):
            return self._mul(node)
        if target == aten.linear.default:
            return self._linear(node)
        if target == aten.add.Tensor:
            return self._add(node)
        if target == aten.relu.default:
            return self._relu(node)
        if target in SHAPE_OPS:
            return self._shape(node)
        return None

    def _dequantize(self, node: fx.Node) -> IntForm | None:
        p = dequantize_params(self.gm, node)
        if p is None:
            return None
        stored = const(self.gm, node.args[0])
        rank = stored.dim() if stored is not None else _rank(node)
        if not p.per_tensor and (rank is None or p.axis % rank != rank - 1):
            return None  # a per-row (per-node) scale cannot leave a sum over rows or columns
        zero = p.zero_point if bool((p.zero_point != 0).any()) else None
        return IntForm(node.args[0], p.scale, p.bound(), zero)

    def _gather(self, node: fx.Node) -> IntForm | None:
        src = self.form(node.args[0])
        if src is None or src.divisor is not None:
            return None
        new = self._call(GATHER, (src.node, node.args[1]), node, node)
        return IntForm(new, src.scale, src.bound, src.zero)

    def _shape(self, node: fx.Node) -> IntForm | None:
        src = self.form(node.args[0])
        if src is None or src.column or src.divisor is not None:
            return None
        new = self._call(node.target, (self.integers(src, node), *node.args[1:]), node, node)
        return IntForm(new, src.scale, src.bound)

    def _mul(self, node: fx.Node) -> IntForm | None:
        for i in (0, 1):  # a positive constant factor only changes the scale (GIN's (1 + eps) * x)
            factor = self._static(node.args[1 - i])
            if factor is not None and factor > 0:
                src = self.form(node.args[i])
                if src is None:
                    return None
                return IntForm(src.node, src.scale * float(factor), src.bound, src.zero, src.divisor)
        a, b = (self.form(arg) for arg in node.args[:2])
        if a is None or b is None or a.divisor is not None or b.divisor is not None:
            return None
        if a.column and b.column:
            return None
        new = self._call(aten.mul.Tensor, (self.integers(a, node), self.integers(b, node)), node, node)
        return IntForm(new, a.scale * b.scale, a.bound * b.bound)

    def _static(self, arg: Any) -> float | None:
        """A scalar the graph computes from constants only (e.g. ``1 + eps`` of a fixed-eps GIN), or None."""
        if isinstance(arg, int | float) and not isinstance(arg, bool):
            return float(arg)
        if not isinstance(arg, fx.Node):
            return None
        if arg.op == "get_attr":
            value = const(self.gm, arg)
            return (
                float(value)
                if value is not None and value.numel() == 1 and value.is_floating_point()
                else None
            )
        if arg.op != "call_function" or arg.target not in (aten.add.Tensor, aten.mul.Tensor, aten.add.Scalar):
            return None
        operands = [self._static(a) for a in arg.args[:2]]
        if any(v is None for v in operands):
            return None
        alpha = float(arg.kwargs.get("alpha", 1.0))
        return (
            operands[0] + alpha * operands[1] if arg.target != aten.mul.Tensor else operands[0] * operands[1]
        )

    def _scatter(self, node: fx.Node) -> IntForm | None:
        src_arg, index, num_nodes, reduce = (list(node.args) + [None] * 4)[:4]
        src = self.form(src_arg)
        if src is None or src.divisor is not None or reduce not in ("sum", "mean", "max"):
            return None
        ints = self.integers(src, node)
        if reduce == "max":
            new = self._call(SCATTER, (ints, index, num_nodes, "max"), node, node)
            return IntForm(new, src.scale, src.bound)
        new = self._call(SCATTER, (ints, index, num_nodes, "sum"), node, node)
        new.meta[ACCUMULATOR_KEY] = node.name  # the key of its AccumulatorBound
        degree = self.in_degree(node)
        bound = src.bound * degree
        self.accumulators.append(
            AccumulatorBound(node.name, "aggregation", node.meta.get(LAYER_KEY), bound, degree, src.bound)
        )
        form = IntForm(new, src.scale, bound)
        if reduce == "mean":
            ones = self._call(aten.ones_like.default, (index,), node)
            ones.kwargs = {"dtype": torch.float64}
            count = self._call(SCATTER, (ones, index, num_nodes, "sum"), node)
            form.divisor = self._call(aten.clamp_min.default, (count, 1.0), node)
        return form

    def _linear(self, node: fx.Node) -> IntForm | None:
        x_arg, w_arg = node.args[:2]
        bias_arg = node.args[2] if len(node.args) > 2 else None
        x = self.form(x_arg)
        w_dq = w_arg if isinstance(w_arg, fx.Node) and w_arg.target == DEQUANTIZE else None
        if x is None or x.column or x.divisor is not None or w_dq is None:
            return None
        w_params = dequantize_params(self.gm, w_dq)
        w_q = w_dq.args[0]
        weight = const(self.gm, w_q.args[0]) if isinstance(w_q, fx.Node) and w_q.target == QUANTIZE else None
        if w_params is None or weight is None or weight.dim() != 2:
            return None
        if not w_params.per_tensor and w_params.axis % 2 != 0:
            return None  # a per-input-channel weight scale cannot leave the sum over input channels
        with torch.no_grad():
            w_int = torch.ops.quantgraph.quantize(
                weight.float(),
                const(self.gm, w_q.args[1]),
                const(self.gm, w_q.args[2]),
                const(self.gm, w_q.args[3]),
                const(self.gm, w_q.args[4]),
                w_q.args[5],
            )
        scale = x.scale * w_params.scale
        bias = None
        bias_bound = 0
        if bias_arg is not None:
            b = self.form(bias_arg)
            if b is None or b.zero is not None or b.node.op != "get_attr":
                return None
            if not torch.equal(torch.broadcast_to(b.scale, scale.shape), scale) and not torch.equal(
                b.scale, torch.broadcast_to(scale, b.scale.shape)
            ):
                return None
            bias = b.node
            bias_bound = b.bound
        w_t = self._const("weight_t", w_int.t().contiguous(), node)
        w_zero = self._const("weight_zero_point", w_params.zero_point.to(torch.int32).reshape(-1), node)
        x_zero = self._const(
            "x_zero_point",
            (x.zero if x.zero is not None else torch.zeros((), dtype=torch.int64)).to(torch.int32),
            node,
        )
        new = self._call(LINEAR_INT, (x.node, x_zero, w_t, w_zero, bias), node, node)
        width = int(weight.shape[1])
        term = x.bound * w_params.bound()
        bound = width * term + bias_bound
        self.accumulators.append(
            AccumulatorBound(node.name, "linear", node.meta.get(LAYER_KEY), bound, width, term)
        )
        return IntForm(new, scale if scale.numel() > 1 else scale.reshape(()), bound)

    def _add(self, node: fx.Node) -> IntForm | None:
        a, b = (self.form(arg) for arg in node.args[:2])
        if a is None or b is None or a.divisor is not None or b.divisor is not None:
            return None
        if a.scale.shape != b.scale.shape or not torch.equal(a.scale, b.scale):
            return None
        new = self._call(aten.add.Tensor, (self.integers(a, node), self.integers(b, node)), node, node)
        return IntForm(new, a.scale, a.bound + b.bound)

    def _relu(self, node: fx.Node) -> IntForm | None:
        a = self.form(node.args[0])
        if a is None:
            return None
        new = self._call(aten.clamp_min.default, (self.integers(a, node), 0), node, node)
        return IntForm(new, a.scale, a.bound, divisor=a.divisor)


def _rank(node: fx.Node) -> int | None:
    val = node.meta.get("val")
    return val.dim() if isinstance(val, Tensor) else None
