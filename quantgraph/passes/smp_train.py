"""``smp-train``: SMP's quantization-aware training (the official ``main.py`` recipe).

Adam with two groups: every QLR α at ``smp_alpha_lr`` (1e-4, weight decay ``smp_alpha_weight_decay``
1e-5) and the rest at ``lr`` (0.01, weight decay 1e-5), the latter multiplied by ``smp_lr_decay`` (0.7)
every ``smp_lr_step`` (50) epochs; ``epochs`` 200; dropout ``smp_dropout`` (unset: 0.8 at INT8, 0.5 at
INT4/INT2, the official commands). Full batch on the train mask; the state (weights, α, frozen ranges) of
the epoch with the best validation accuracy (ties: lower validation loss) is kept; test is never used.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import fx, nn

from quantgraph.ir.qlr_quantizer import QLRQuantizer
from quantgraph.options import Option
from quantgraph.passes.infra import CompileContext, PassBase, PassResult
from quantgraph.passes.prepare_qat import require_fake_quant
from quantgraph.passes.registry import register_pass
from quantgraph.passes.train_qat import (
    EPOCHS,
    TRAINING_OPTIONS,
    require_labelled_task,
    training_hyperparameters,
)
from quantgraph.training import accuracy

SMP_OPTIONS = (
    Option("smp_alpha_lr", float, 1e-4, "learning rate of the QLR range multipliers α", minimum=0.0),
    Option("smp_alpha_weight_decay", float, 1e-5, "weight decay of the α group", minimum=0.0),
    Option(
        "smp_lr_decay", float, 0.7, "factor applied to the weights' learning rate every smp_lr_step epochs"
    ),
    Option("smp_lr_step", int, 50, "epochs between learning-rate decays", minimum=1),
    Option(
        "smp_dropout", float, None, "dropout while training (unset: 0.8 at 8 bits, 0.5 below)", minimum=0.0
    ),
)


def dropout_for(bits: int) -> float:
    """The official commands' dropout: 0.8 (FP32, INT8), 0.5 (INT4, INT2)."""
    return 0.8 if bits >= 8 else 0.5


def optimizer_groups(gm: fx.GraphModule, alpha_lr: float, alpha_wd: float) -> list[dict]:
    """[α of every QLR quantizer, everything else trainable] as Adam parameter groups."""
    alphas = [m.alpha for m in gm.modules() if isinstance(m, QLRQuantizer)]
    seen = {id(a) for a in alphas}
    rest = [p for p in gm.parameters() if p.requires_grad and id(p) not in seen]
    groups = [{"params": rest}] if rest else []
    return groups + ([{"params": alphas, "lr": alpha_lr, "weight_decay": alpha_wd}] if alphas else [])


@register_pass
class SMPTrainPass(PassBase):
    """Train SMP's QLR-quantized graph with the paper's optimiser, schedule and dropout."""

    name = "smp-train"
    description = "SMP QAT: Adam (α at 1e-4, weights at lr ×0.7 every 50 epochs), best-validation epoch kept"
    options = (EPOCHS, *TRAINING_OPTIONS, *SMP_OPTIONS)

    def requires(self, gm: fx.GraphModule, ctx: CompileContext) -> None:
        require_fake_quant(gm, self.name)
        require_labelled_task(ctx)

    def call(self, gm: fx.GraphModule, ctx: CompileContext) -> PassResult:
        hp = training_hyperparameters(ctx, self.option(ctx, "epochs"))
        data = ctx.task_data["node"]
        p = self.option(ctx, "smp_dropout")
        p = dropout_for(ctx.bits) if p is None else p
        for module in gm.modules():
            if isinstance(module, nn.Dropout):
                module.p = p
        torch.manual_seed(hp["seed"])
        groups = optimizer_groups(
            gm, self.option(ctx, "smp_alpha_lr"), self.option(ctx, "smp_alpha_weight_decay")
        )
        optimizer = torch.optim.Adam(groups, lr=hp["lr"], weight_decay=hp["weight_decay"])
        decay, step = self.option(ctx, "smp_lr_decay"), self.option(ctx, "smp_lr_step")
        x, ei, y = data.x, data.edge_index, data.y
        best = (-math.inf, math.inf, 0, {k: v.detach().clone() for k, v in gm.state_dict().items()})
        history, start = [], time.perf_counter()
        for epoch in range(1, hp["epochs"] + 1):
            gm.train()
            optimizer.zero_grad()
            logits = gm(x, ei)[0]
            loss = F.cross_entropy(logits[data.train_mask], y[data.train_mask])
            loss.backward()
            optimizer.step()
            gm.eval()
            with torch.no_grad():
                logits = gm(x, ei)[0]
            val_acc = accuracy(logits, y, data.val_mask)
            val_loss = F.cross_entropy(logits[data.val_mask], y[data.val_mask]).item()
            history.append(
                {"epoch": float(epoch), "loss": loss.item(), "val_acc": val_acc, "val_loss": val_loss}
            )
            if val_acc > best[0] or (val_acc == best[0] and val_loss < best[1]):
                best = (val_acc, val_loss, epoch, {k: v.detach().clone() for k, v in gm.state_dict().items()})
            if epoch % step == 0:
                optimizer.param_groups[0]["lr"] *= decay
        gm.load_state_dict(best[3])
        gm.eval()
        ctx.report["qat"] = {
            "best_epoch": best[2],
            "epochs_run": len(history),
            "val_acc": best[0],
            "seconds": round(time.perf_counter() - start, 2),
            "dropout": p,
            **{k: v for k, v in hp.items() if k != "progress"},
            "history": history,
        }
        return PassResult(gm, True)
