"""SGQuant's budget after fine-tuning: the QAT model's validation accuracy against FP32, and whether the
``accuracy_tolerance`` holds for the model that is exported (ABS checks it on the candidates; QAT moves it).

Runs after ``train-qat``. It reads the FP32 validation accuracy ``sgquant-bits`` measured on the same IR
(every quantizer bypassed) and the best-validation QAT epoch's accuracy; test data is not read. The result
is the report's ``sgquant.final``; the compile prints it.
"""

from __future__ import annotations

from torch import fx

from quantgraph.passes.infra import CompileContext, PassBase, PassResult
from quantgraph.passes.registry import register_pass
from quantgraph.passes.sgquant_bits import ACCURACY_TOLERANCE


@register_pass
class SGQuantBudgetPass(PassBase):
    """Record the fine-tuned model's validation drop vs FP32 and whether the accuracy tolerance is met."""

    name = "sgquant-budget"
    description = "SGQuant: the fine-tuned model's validation accuracy vs FP32 and the accuracy tolerance"
    options = (ACCURACY_TOLERANCE,)

    def call(self, gm: fx.GraphModule, ctx: CompileContext) -> PassResult:
        info = ctx.report.get("sgquant") or {}
        qat, fp32 = ctx.report.get("qat"), info.get("fp32_val_acc")
        if qat is None or fp32 is None:
            return PassResult(gm, False)
        tolerance = self.option(ctx, "accuracy_tolerance")
        drop = fp32 - float(qat["val_acc"])
        info["final"] = {
            "val_acc": float(qat["val_acc"]),
            "fp32_val_acc": fp32,
            "val_drop": round(drop, 6),
            "accuracy_tolerance": tolerance,
            "tolerance_met": None if tolerance is None else bool(drop <= tolerance + 1e-12),
        }
        return PassResult(gm, False)
