"""``smp-freeze``: SMP's multipliers and BT*'s offsets become constants of the graph (before export).

* Each ``smp_multiplier`` marker (the step's ``2·η_H·λ_k``, computed from the data in every forward) is
  replaced by its value on the compile graph in evaluation mode (quantizers frozen, no dropout); the
  reductions that computed λ and s have no users left and are removed. The exported model applies these
  constants on any graph (on the compile graph it equals the model).
* A BT* quantizer's input offset ``round(skew)·s₈`` becomes an ``add`` before it (so ``convert-qat``'s
  quantize/dequantize pair is a plain 2-bit grid).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import fx

from quantgraph.errors import InputError
from quantgraph.ir.meta import QSPEC_KEY
from quantgraph.ir.qlr_quantizer import QLRQuantizer
from quantgraph.ir.smp_ops import SMP_MULTIPLIER
from quantgraph.passes.infra import CompileContext, PassBase, PassResult, add_constant
from quantgraph.passes.registry import register_pass


class _Recorder(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.seen: dict[str, torch.Tensor] = {}

    def run_node(self, n: fx.Node) -> Any:
        value = super().run_node(n)
        if n.target == SMP_MULTIPLIER:
            self.seen[n.name] = value.detach().clone()
        return value


def multiplier_values(gm: fx.GraphModule, inputs: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each marker's value in an evaluation-mode run of ``gm`` on ``inputs``."""
    was_training = gm.training
    gm.eval()
    try:
        with torch.no_grad():
            recorder = _Recorder(gm)
            recorder.run(*inputs)
    finally:
        gm.train(was_training)
    return recorder.seen


def _freeze_offsets(gm: fx.GraphModule) -> int:
    count = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_module":
            continue
        module = gm.get_submodule(node.target)
        if not isinstance(module, QLRQuantizer) or float(module.input_offset()) == 0.0:
            continue
        source = node.args[0]
        const = add_constant(gm, f"{node.target}_offset", module.input_offset().reshape(()), node)
        with gm.graph.inserting_before(node):
            shifted = gm.graph.call_function(torch.ops.aten.add.Tensor, (source, const))
        shifted.meta = {k: v for k, v in source.meta.items() if k != QSPEC_KEY}
        node.args = (shifted, *node.args[1:])
        module.skew.zero_()
        count += 1
    return count


@register_pass
class SMPFreezePass(PassBase):
    """Replace SMP's per-step multipliers by their evaluation-mode values; move BT* offsets into the graph."""

    name = "smp-freeze"
    description = "freeze SMP's multipliers (2·η_H·λ per step) as constants; BT* skew offsets as adds"

    def requires(self, gm: fx.GraphModule, ctx: CompileContext) -> None:
        if any(n.target == SMP_MULTIPLIER for n in gm.graph.nodes) and not ctx.calibration_data:
            raise InputError("smp-freeze needs the compile graph to evaluate the multipliers", "pass --data")

    def call(self, gm: fx.GraphModule, ctx: CompileContext) -> PassResult:
        markers = [n for n in gm.graph.nodes if n.target == SMP_MULTIPLIER]
        values: dict[str, torch.Tensor] = {}
        if markers:
            data = ctx.calibration_data[0]
            values = multiplier_values(gm, [data[n] for n in ctx.input_names])
        for i, node in enumerate(markers):
            const = add_constant(gm, f"smp_multiplier_{i}", values[node.name].float(), node)
            const.meta.update({k: v for k, v in node.meta.items() if k != "val"})
            node.replace_all_uses_with(const)
            gm.graph.erase_node(node)
        gm.graph.eliminate_dead_code()
        offsets = _freeze_offsets(gm)
        ctx.report.setdefault("smp", {}).update(
            {"multipliers": [round(float(v), 8) for v in values.values()], "bt_offsets": offsets}
        )
        return PassResult(gm, bool(markers) or offsets > 0)
