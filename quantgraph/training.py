"""Training loops for zoo models: full-batch node classification and mini-batch graph classification.

Both loops use Adam and cross-entropy, evaluate on the validation split after every epoch, keep the
``state_dict`` of the epoch with the best validation accuracy (ties: lower validation loss, then the earlier
epoch; the test split is never used for selection) and load it back into the model at the end.

The loops train any ``nn.Module`` with trainable parameters. By default the logits are ``model(x, edge_index)``
(``model(x, edge_index, batch)`` for graphs); a caller such as quantization-aware training may pass
``forward=`` to compute logits differently (e.g. through fake-quantized ops). The optimiser updates
``model.parameters()`` and the selected/restored state is ``model.state_dict()`` either way, so anything
trainable must be registered on ``model``.

Seeding: ``torch.manual_seed(seed)`` is called once when a loop starts (dropout and shuffling draw from it).
Models are initialised when they are built; seed before :func:`quantgraph.models.build_model` too for a fully
reproducible run.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from quantgraph.errors import InputError

__all__ = [
    "GraphBatch",
    "NodeData",
    "TrainResult",
    "accuracy",
    "collate_graphs",
    "evaluate",
    "evaluate_graphs",
    "train_graph_classifier",
    "train_node_classifier",
]

NodeForward = Callable[[Tensor, Tensor], Tensor]
GraphForward = Callable[[Tensor, Tensor, Tensor], Tensor]
Penalty = Callable[[], Tensor]


class NodeData(Protocol):
    """What the node-classification loop reads (``quantgraph.data.GraphData`` and PyG ``Data`` both fit)."""

    x: Tensor
    edge_index: Tensor
    y: Tensor | None
    train_mask: Tensor | None
    val_mask: Tensor | None
    test_mask: Tensor | None


@dataclass
class GraphBatch:
    """Several graphs merged into one disjoint graph (what :func:`collate_graphs` returns)."""

    x: Tensor  # float32 [N, F]
    edge_index: Tensor  # int64 [2, E], node ids offset per graph
    batch: Tensor  # int64 [N], graph id of each node
    y: Tensor  # int64 [G]
    num_graphs: int


@dataclass
class TrainResult:
    """Outcome of a training run; the model holds the weights of ``best_epoch`` (1-based)."""

    best_epoch: int
    train_acc: float
    val_acc: float
    test_acc: float  # NaN when the data has no test split
    val_loss: float
    epochs_run: int
    seconds: float
    #: one entry per epoch: {"epoch", "loss" (training loss of the step), "train_acc", "val_acc", "val_loss"}
    history: list[dict[str, float]] = field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        """Plain floats for a checkpoint's ``metrics`` field."""
        return {
            "best_epoch": float(self.best_epoch),
            "train_acc": self.train_acc,
            "val_acc": self.val_acc,
            "test_acc": self.test_acc,
            "val_loss": self.val_loss,
        }

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def accuracy(logits: Tensor, y: Tensor, mask: Tensor | None = None) -> float:
    """Fraction of rows whose argmax equals the label, over ``mask`` (all rows if None); NaN if empty."""
    pred = logits.argmax(dim=-1)
    if mask is not None:
        pred, y = pred[mask], y[mask]
    if y.numel() == 0:
        return math.nan
    return (pred == y).float().mean().item()


def _check_node_data(data: Any) -> None:
    for name in ("x", "edge_index", "y", "train_mask", "val_mask"):
        if getattr(data, name, None) is None:
            raise InputError(
                f"the dataset has no {name!r}, which node-classification training needs",
                "use a labelled dataset with train/validation masks (e.g. a Planetoid public split)",
            )
    if int(data.train_mask.sum()) == 0 or int(data.val_mask.sum()) == 0:
        raise InputError(
            "the dataset's train or validation mask selects no nodes",
            "use a split with at least one training and one validation node",
        )


def _snapshot(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _progress(enabled: bool, what: str):
    """A transient one-bar rich progress display on stderr (a terminal only), or a no-op."""
    if not enabled or not sys.stderr.isatty():
        return nullcontext(None)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn(f"[bold]{what}[/bold]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )


class _Bar:
    """Wraps the optional progress display: ``update(epoch, val_acc, best_val_acc)``."""

    def __init__(self, progress: Any, total: int) -> None:
        self.progress = progress
        self.task = progress.add_task("train", total=total, status="") if progress is not None else None

    def update(self, epoch: int, val_acc: float, best: float) -> None:
        if self.progress is not None:
            self.progress.update(
                self.task, completed=epoch, status=f"epoch {epoch}  val acc {val_acc:.4f}  best {best:.4f}"
            )


#: What the best-validation selection (and ``patience``) looks at: accuracy first, or loss first.
SELECT_ON = ("acc", "loss")


def _is_better(
    val_acc: float, val_loss: float, best_acc: float, best_loss: float, select: str = "acc"
) -> bool:
    """``select="acc"``: higher validation accuracy wins, on a tie the lower validation loss.
    ``select="loss"``: lower validation loss wins, on a tie the higher accuracy. Otherwise the earlier epoch."""
    if select == "loss":
        if val_loss != best_loss:
            return val_loss < best_loss
        return val_acc > best_acc
    if val_acc != best_acc:
        return val_acc > best_acc
    return val_loss < best_loss


def _check_hparams(epochs: int, lr: float, patience: int | None, select: str = "acc") -> None:
    if select not in SELECT_ON:
        raise InputError(f"select={select!r} is invalid", f"use one of {', '.join(SELECT_ON)}")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise InputError(f"epochs={epochs!r} is invalid", "use an integer >= 1")
    if not lr > 0:
        raise InputError(f"lr={lr!r} is invalid", "use a positive learning rate")
    if patience is not None and (not isinstance(patience, int) or patience < 1):
        raise InputError(f"patience={patience!r} is invalid", "use an integer >= 1 or leave it unset")


def _trainable(model: nn.Module) -> list[nn.Parameter]:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise InputError(
            "the model has no trainable parameters", "pass a model whose parameters require grad"
        )
    return params


@torch.no_grad()
def _node_eval(model: nn.Module, fwd: NodeForward, data: Any) -> tuple[Tensor, float, float]:
    """Logits in eval mode, validation accuracy and validation loss."""
    model.eval()
    logits = fwd(data.x, data.edge_index)
    val_acc = accuracy(logits, data.y, data.val_mask)
    val_loss = F.cross_entropy(logits[data.val_mask], data.y[data.val_mask]).item()
    return logits, val_acc, val_loss


def train_node_classifier(
    model: nn.Module,
    data: NodeData,
    *,
    epochs: int = 200,
    lr: float = 0.01,
    weight_decay: float = 5e-4,
    seed: int = 0,
    progress: bool = False,
    patience: int | None = None,
    forward: NodeForward | None = None,
    penalty: Penalty | None = None,
    restore_best: bool = True,
    select: str = "acc",
    on_epoch: Callable[[int], None] | None = None,
    keep_initial: bool = False,
) -> TrainResult:
    """Full-batch node classification: Adam, cross-entropy on ``train_mask``, best-validation selection.

    ``patience``: stop after this many epochs without a new best (None: run all ``epochs``).
    ``select``: "acc" (best validation accuracy, ties on loss) or "loss" (lowest validation loss, ties on
    accuracy; GAT's early stopping); ``patience`` counts epochs without a new best by the same rule.
    ``forward``: computes logits from ``(x, edge_index)`` instead of ``model``; see the module docs.
    ``penalty``: a differentiable term added to the loss at every step (e.g. a bit-cost regulariser).
    ``restore_best``: False keeps the last epoch's state (e.g. for a search whose goal is not accuracy).
    ``on_epoch(epoch)``: called after each epoch's evaluation (e.g. to record a search's choices).
    ``keep_initial``: the starting state is a candidate too (epoch 0), so fine-tuning that only lowers
    validation returns the model it was given.
    Returns a :class:`TrainResult`; the model is left in eval mode holding the best epoch's weights.
    """
    _check_node_data(data)
    _check_hparams(epochs, lr, patience, select)
    fwd: NodeForward = forward if forward is not None else model
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(_trainable(model), lr=lr, weight_decay=weight_decay)
    x, edge_index, y, train_mask = data.x, data.edge_index, data.y, data.train_mask

    start = time.perf_counter()
    best_acc, best_loss, best_epoch, best_state = -math.inf, math.inf, 0, _snapshot(model)
    if keep_initial:
        _, best_acc, best_loss = _node_eval(model, fwd, data)
    history: list[dict[str, float]] = []
    with _progress(progress, "training") as prog:
        bar = _Bar(prog, epochs)
        for epoch in range(1, epochs + 1):
            model.train()
            optimizer.zero_grad()
            logits = fwd(x, edge_index)
            loss = F.cross_entropy(logits[train_mask], y[train_mask])
            if penalty is not None:
                loss = loss + penalty()
            loss.backward()
            optimizer.step()

            eval_logits, val_acc, val_loss = _node_eval(model, fwd, data)
            train_acc = accuracy(eval_logits, y, train_mask)
            history.append(
                {
                    "epoch": float(epoch),
                    "loss": loss.item(),
                    "train_acc": train_acc,
                    "val_acc": val_acc,
                    "val_loss": val_loss,
                }
            )
            if _is_better(val_acc, val_loss, best_acc, best_loss, select):
                best_acc, best_loss, best_epoch, best_state = val_acc, val_loss, epoch, _snapshot(model)
            bar.update(epoch, val_acc, best_acc)
            if on_epoch is not None:
                on_epoch(epoch)
            if patience is not None and epoch - best_epoch >= patience:
                break

    if restore_best:
        model.load_state_dict(best_state)
    scores = evaluate(model, data, forward=forward)
    return TrainResult(
        best_epoch=best_epoch,
        train_acc=scores["train"],
        val_acc=scores["val"],
        test_acc=scores["test"],
        val_loss=best_loss,
        epochs_run=len(history),
        seconds=time.perf_counter() - start,
        history=history,
    )


@torch.no_grad()
def evaluate(model: nn.Module, data: NodeData, *, forward: NodeForward | None = None) -> dict[str, float]:
    """Accuracy on the train/val/test masks (NaN for a missing mask); leaves the model in eval mode."""
    if getattr(data, "y", None) is None:
        raise InputError("the dataset has no labels (y)", "use a labelled dataset")
    model.eval()
    logits = (forward if forward is not None else model)(data.x, data.edge_index)
    out = {}
    for split in ("train", "val", "test"):
        mask = getattr(data, f"{split}_mask", None)
        out[split] = accuracy(logits, data.y, mask) if mask is not None else math.nan
    return out


# --------------------------------------------------------------------------------------------------------------
# Graph classification


def collate_graphs(graphs: Sequence[Any]) -> GraphBatch:
    """Merge graphs (objects with ``x``, ``edge_index`` and a graph label ``y``) into one :class:`GraphBatch`."""
    if len(graphs) == 0:
        raise InputError("cannot batch an empty list of graphs", "pass at least one graph")
    xs, edges, batch, ys, offset = [], [], [], [], 0
    for i, g in enumerate(graphs):
        n = g.x.shape[0]
        xs.append(g.x)
        edges.append(g.edge_index + offset)
        batch.append(torch.full((n,), i, dtype=torch.long))
        ys.append(torch.as_tensor(g.y, dtype=torch.long).reshape(-1)[:1])
        offset += n
    return GraphBatch(
        x=torch.cat(xs),
        edge_index=torch.cat(edges, dim=1),
        batch=torch.cat(batch),
        y=torch.cat(ys),
        num_graphs=len(graphs),
    )


def _batches(graphs: Sequence[Any], batch_size: int, order: Sequence[int] | None = None):
    idx = list(range(len(graphs))) if order is None else list(order)
    for i in range(0, len(idx), batch_size):
        yield [graphs[j] for j in idx[i : i + batch_size]]


@torch.no_grad()
def evaluate_graphs(
    model: nn.Module,
    graphs: Sequence[Any],
    *,
    collate: Callable[[Sequence[Any]], Any] = collate_graphs,
    batch_size: int = 64,
    forward: GraphForward | None = None,
) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of a graph classifier over ``graphs``; (NaN, NaN) if there are none."""
    if len(graphs) == 0:
        return math.nan, math.nan
    model.eval()
    fwd = forward if forward is not None else model
    correct, loss_sum, count = 0, 0.0, 0
    for chunk in _batches(graphs, batch_size):
        b = collate(chunk)
        logits = fwd(b.x, b.edge_index, b.batch)
        correct += int((logits.argmax(-1) == b.y).sum())
        loss_sum += F.cross_entropy(logits, b.y, reduction="sum").item()
        count += b.y.numel()
    return correct / count, loss_sum / count


def train_graph_classifier(
    model: nn.Module,
    train_graphs: Sequence[Any],
    val_graphs: Sequence[Any],
    test_graphs: Sequence[Any] = (),
    *,
    collate: Callable[[Sequence[Any]], Any] = collate_graphs,
    epochs: int = 100,
    lr: float = 0.005,
    weight_decay: float = 0.0,
    batch_size: int = 32,
    seed: int = 0,
    progress: bool = False,
    patience: int | None = None,
    forward: GraphForward | None = None,
    penalty: Penalty | None = None,
    restore_best: bool = True,
    on_epoch: Callable[[int], None] | None = None,
    select: str = "acc",
    keep_initial: bool = False,
) -> TrainResult:
    """Mini-batch graph classification with Adam and best-validation selection.

    ``collate(list_of_graphs)`` must return an object with ``x``, ``edge_index``, ``batch`` and ``y`` (one
    label per graph); the default :func:`collate_graphs` works for any graph objects with ``x``,
    ``edge_index`` and ``y``. Training graphs are reshuffled every epoch (from the seeded global RNG).
    ``penalty`` (added to every batch's loss), ``restore_best``, ``on_epoch``, ``select`` and
    ``keep_initial`` work as in
    :func:`train_node_classifier`.
    """
    _check_hparams(epochs, lr, patience, select)
    if len(train_graphs) == 0 or len(val_graphs) == 0:
        raise InputError(
            "graph-classification training needs training and validation graphs",
            "pass non-empty train and validation splits",
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size={batch_size!r} is invalid", "use an integer >= 1")
    fwd: GraphForward = forward if forward is not None else model
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(_trainable(model), lr=lr, weight_decay=weight_decay)

    def score(graphs: Sequence[Any]) -> tuple[float, float]:
        return evaluate_graphs(
            model, graphs, collate=collate, batch_size=max(batch_size, 64), forward=forward
        )

    start = time.perf_counter()
    best_acc, best_loss, best_epoch, best_state = -math.inf, math.inf, 0, _snapshot(model)
    if keep_initial:
        best_acc, best_loss = score(val_graphs)
    history: list[dict[str, float]] = []
    with _progress(progress, "training") as prog:
        bar = _Bar(prog, epochs)
        for epoch in range(1, epochs + 1):
            model.train()
            order = torch.randperm(len(train_graphs)).tolist()
            loss_sum, count = 0.0, 0
            for chunk in _batches(train_graphs, batch_size, order):
                b = collate(chunk)
                optimizer.zero_grad()
                loss = F.cross_entropy(fwd(b.x, b.edge_index, b.batch), b.y)
                if penalty is not None:
                    loss = loss + penalty()
                loss.backward()
                optimizer.step()
                loss_sum += loss.item() * b.y.numel()
                count += b.y.numel()
            train_acc, _ = score(train_graphs)
            val_acc, val_loss = score(val_graphs)
            history.append(
                {
                    "epoch": float(epoch),
                    "loss": loss_sum / count,
                    "train_acc": train_acc,
                    "val_acc": val_acc,
                    "val_loss": val_loss,
                }
            )
            if _is_better(val_acc, val_loss, best_acc, best_loss, select):
                best_acc, best_loss, best_epoch, best_state = val_acc, val_loss, epoch, _snapshot(model)
            bar.update(epoch, val_acc, best_acc)
            if on_epoch is not None:
                on_epoch(epoch)
            if patience is not None and epoch - best_epoch >= patience:
                break

    if restore_best:
        model.load_state_dict(best_state)
    train_acc, _ = score(train_graphs)
    val_acc, val_loss = score(val_graphs)
    test_acc, _ = score(test_graphs)
    model.eval()
    return TrainResult(
        best_epoch=best_epoch,
        train_acc=train_acc,
        val_acc=val_acc,
        test_acc=test_acc,
        val_loss=val_loss,
        epochs_run=len(history),
        seconds=time.perf_counter() - start,
        history=history,
    )
