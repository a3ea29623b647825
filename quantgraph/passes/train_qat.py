"""Quantization-aware training inside ``compile``: fine-tune the prepared IR on the labelled data.

The checkpoint (weights and fake-quant ranges) with the best validation accuracy is kept (``select=loss``:
the lowest validation loss); test accuracy is never used for selection. Options: ``EPOCHS``, ``SELECT``,
``LR``, ``WEIGHT_DECAY``, ``SEED``, ``BATCH_SIZE``
(declared here; ``search-bits`` shares them), and ``KEEP_INITIAL``: the calibrated starting state competes
as epoch 0 (on by default for ``sgquant``, whose 1-2-bit points can fall apart in fine-tuning).

Defaults depend on the task. Node classification: lr 0.005, weight decay 5e-4 (Degree-Quant's). Graph
classification: lr 0.001 without weight decay; the node defaults wreck a graph-level GIN trained at lr
0.002 without weight decay (hard_small degree-quant INT8: validation 72.4% against 89.7%).
"""

from __future__ import annotations

from torch import fx

from quantgraph.errors import InputError
from quantgraph.options import SEED, Option
from quantgraph.passes.infra import CompileContext, PassBase, PassResult
from quantgraph.passes.prepare_qat import require_fake_quant
from quantgraph.passes.registry import register_pass
from quantgraph.training import SELECT_ON, train_graph_classifier, train_node_classifier

NODE_TASK_DEFAULTS = {"lr": 0.005, "weight_decay": 5e-4}
GRAPH_TASK_DEFAULTS = {"lr": 0.001, "weight_decay": 0.0}

EPOCHS = Option("epochs", int, 100, "fine-tuning epochs (the best-validation epoch is kept)")
LR = Option("lr", float, None, "learning rate (unset: 0.005 for node tasks, 0.001 for graph tasks)")
WEIGHT_DECAY = Option(
    "weight_decay", float, None, "weight decay (unset: 5e-4 for node tasks, 0 for graph tasks)"
)
BATCH_SIZE = Option("batch_size", int, 32, "graphs per mini-batch (graph classification)")
SELECT = Option(
    "select",
    str,
    "acc",
    "checkpoint selection on validation: acc (best accuracy, ties on loss) or loss (lowest loss)",
    choices=SELECT_ON,
)
KEEP_INITIAL = Option(
    "keep_initial",
    bool,
    False,
    "the calibrated starting state is a candidate checkpoint too (epoch 0): fine-tuning cannot end below it",
)
TRAINING_OPTIONS = (LR, WEIGHT_DECAY, SEED, BATCH_SIZE)


def training_hyperparameters(ctx: CompileContext, epochs: int) -> dict:
    """epochs, lr, weight decay and seed for a training pass: given options, else the task's defaults."""
    opts = ctx.options
    defaults = GRAPH_TASK_DEFAULTS if ctx.task_data.get("graphs") is not None else NODE_TASK_DEFAULTS
    lr, weight_decay = LR.read(opts), WEIGHT_DECAY.read(opts)
    return {
        "epochs": epochs,
        "lr": float(lr or defaults["lr"]),
        "weight_decay": float(weight_decay if weight_decay is not None else defaults["weight_decay"]),
        "seed": int(SEED.read(opts)),
        "progress": ctx.progress,
    }


NO_LABELS_FIX = (
    "QAT needs labels with train/validation splits; use --policy minmax for post-training quantization"
)


def require_labelled_task(ctx: CompileContext) -> None:
    """Training passes need labels with train/validation splits (node masks, or graph splits)."""
    task = ctx.task_data
    if task.get("graphs") is None and task.get("node") is None:
        raise InputError("no labelled training data was given", NO_LABELS_FIX)
    data = task.get("node")
    if data is not None and (data.y is None or data.train_mask is None or data.val_mask is None):
        raise InputError(f"dataset {data.name} has no labels or no train/validation masks", NO_LABELS_FIX)


@register_pass
class TrainQATPass(PassBase):
    """Fine-tune the fake-quantized graph (full batch for nodes, mini-batches for graph classification)."""

    name = "train-qat"
    description = "quantization-aware fine-tuning with best-validation checkpoint selection"
    options = (EPOCHS, SELECT, KEEP_INITIAL, *TRAINING_OPTIONS)

    def requires(self, gm: fx.GraphModule, ctx: CompileContext) -> None:
        require_fake_quant(gm, self.name)
        require_labelled_task(ctx)

    def call(self, gm: fx.GraphModule, ctx: CompileContext) -> PassResult:
        hp = training_hyperparameters(ctx, self.option(ctx, "epochs"))
        hp["select"] = self.option(ctx, "select")
        hp["keep_initial"] = self.option(ctx, "keep_initial")
        graphs = ctx.task_data.get("graphs")
        if graphs is not None:
            train, val = graphs["train"], graphs["val"]
            result = train_graph_classifier(
                gm,
                train,
                val,
                (),
                forward=lambda x, ei, b: gm(x, ei, b)[0],
                batch_size=self.option(ctx, "batch_size"),
                **hp,
            )
        else:
            result = train_node_classifier(
                gm, ctx.task_data["node"], forward=lambda x, ei: gm(x, ei)[0], **hp
            )
        gm.eval()
        ctx.report["qat"] = {
            "best_epoch": result.best_epoch,
            "epochs_run": result.epochs_run,
            "val_acc": result.val_acc,
            "seconds": round(result.seconds, 2),
            **{k: v for k, v in hp.items() if k != "progress"},
            "history": result.history,
        }
        return PassResult(gm, True)
