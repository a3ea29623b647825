"""A²Q training: separate learning rates per parameter kind, Local Gradient and a feature-memory budget.

* Optimiser (Adam), as the official ``node_level_1.py``: the model's weights and biases at ``lr`` with
  ``weight_decay``; weight scales, XW scales, feature scales and feature bits at their own learning rates,
  without weight decay. Defaults are the official README's GCN-Cora command.
* Node-level tasks train full batch; graph-level tasks in mini-batches (``batch_size``) with the task
  gradient everywhere (no Local Gradient), as the official graph-level scripts.
* Local Gradient: in node-level tasks the feature quantizers (node features and XW) learn from
  ``E_i = (1/d)‖x̂_i - x_i‖₁`` instead of the task loss (:class:`~quantgraph.ir.a2q_quantizer.A2QRound`).
* Memory penalty: layer l's feature memory ``M_l = d_l · Σ_i |b̂_i|`` (unrounded bits) against its budget
  ``T_l = N_l · d_l · target_bits``: ``loss = CE + a · Σ_l N_l · ReLU(M_l / (N_l d_l) - target_bits)²``, i.e.
  every layer's average bits at most ``target_bits``, so the average over layers and the memory-weighted
  average are too. The official ``a · ReLU(M - M_target)²`` (M in KB) is this with ``a`` rescaled by
  ``(8·1024)² / (N_l d_l²)``: its pull on a node's bits grows with the graph and the width squared (on a
  300-node graph it lost to Local Gradient and bits rose; on Cora's 1433-wide input it dominated), and the
  official code scales every layer by the hidden width and its default target is never met.
* ``target_kb`` (node-level tasks) replaces the per-layer budget by one on the total feature memory in KB:
  ``a · R · ReLU((M - T) · 8 · 1024 / V)²`` (:meth:`FeatureMemory.kb_penalty`; ``R`` rows and ``V`` values of
  all layers), so the layers share the budget; the kept epoch's rounded memory is at most ``T``.
* Selection on **validation** accuracy among the epochs whose rounded bits meet the budget (ties: lower
  validation loss, then the earlier epoch); when no epoch meets it, the epoch closest to it. The test split
  is never used.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from quantgraph.a2q_report import a2q_summary, in_degree, layer_summary
from quantgraph.errors import InputError
from quantgraph.ir.a2q_quantizer import A2QBase, A2QNNSQuantizer, integer_bits
from quantgraph.ir.meta import ROLE_KEY, ROWS_KEY
from quantgraph.ir.roles import Role
from quantgraph.options import SEED, Option
from quantgraph.passes.infra import CompileContext, PassBase, PassResult
from quantgraph.passes.prepare_qat import fake_quant_nodes, require_fake_quant
from quantgraph.passes.registry import register_pass
from quantgraph.passes.train_qat import BATCH_SIZE, EPOCHS, LR, WEIGHT_DECAY, require_labelled_task
from quantgraph.training import accuracy, collate_graphs

KB = 8.0 * 1024.0  # bits per KB

A2Q_TRAIN_OPTIONS = (
    EPOCHS,
    LR,
    WEIGHT_DECAY,
    SEED,
    BATCH_SIZE,
    Option("target_bits", float, 3.0, "A²Q budget: average stored bits of each layer's node features"),
    Option(
        "target_kb",
        float,
        None,
        "A²Q budget instead: total memory (KB) of the quantized node features on the training graph(s)",
        minimum=0,
    ),
    Option("a2q_penalty", float, 2.5, "weight a of the memory penalty a·ReLU(M - M_target)²", minimum=0),
    Option("a2q_lr_bits", float, 0.1, "learning rate of the feature bits", minimum=0),
    Option("a2q_lr_feature_scale", float, 0.04, "learning rate of the feature scales", minimum=0),
    Option("a2q_lr_weight_scale", float, 0.02, "learning rate of the weight scales", minimum=0),
    Option("a2q_lr_xw_scale", float, 0.008, "learning rate of the XW scales", minimum=0),
    Option("a2q_lr_attention_scale", float, 0.005, "learning rate of the attention scales (GAT)", minimum=0),
    Option("a2q_local_gradient", bool, True, "Local Gradient for feature quantizers (node-level tasks)"),
)


@dataclass
class A2QPoint:
    """One A²Q quantizer of the prepared graph and what it quantizes."""

    name: str  # the quantizer node
    source: str  # the quantized IR node
    kind: str  # "features", "weight", "xw" or "attention"
    module: A2QBase


def a2q_points(gm: fx.GraphModule) -> list[A2QPoint]:
    points = []
    for node in fake_quant_nodes(gm):
        module = gm.get_submodule(str(node.target))
        if not isinstance(module, A2QBase):
            continue
        role = node.meta.get(ROLE_KEY)
        if module.learned_bits():
            kind = "features"
        elif role == Role.ATTENTION or (role == Role.WEIGHT and getattr(module, "axis", 0) == 1):
            kind = "attention"  # GAT's attention vectors (per head) and logits (per head)
        elif role == Role.WEIGHT:
            kind = "weight"
        else:
            kind = "xw" if node.meta.get(ROWS_KEY) == "node" else "weight"
        points.append(A2QPoint(node.name, str(node.args[0]), kind, module))
    return points


class FeatureMemory:
    """Feature memory (KB) of the learned-bit quantizers from the bits of the last forward pass."""

    def __init__(self, points: list[A2QPoint]) -> None:
        self.features = [p for p in points if p.kind == "features"]
        self.shapes: dict[str, tuple[int, int]] = {}
        self.groups: dict[str, Tensor] = {}
        for p in self.features:
            p.module.register_forward_hook(self._hook(p.name))

    def _hook(self, name: str):
        def hook(module: nn.Module, args: tuple, _out: Tensor) -> None:
            x = args[0]
            self.shapes[name] = (int(x.shape[0]), int(x[0].numel()) if x.shape[0] else 0)
            if isinstance(module, A2QNNSQuantizer):
                self.groups[name] = module.groups(x)

        return hook

    def row_bits(self, p: A2QPoint, rounded: bool) -> Tensor:
        bits = p.module.bits
        if isinstance(p.module, A2QNNSQuantizer):
            bits = bits.index_select(0, self.groups[p.name])
        return integer_bits(bits) if rounded else bits.abs()

    def per_layer(self, rounded: bool = False) -> list[tuple[Tensor, int, int]]:
        """(memory in KB, rows, width) of each feature quantizer seen in the last forward."""
        out = []
        for p in self.features:
            if p.name not in self.shapes:
                continue
            rows, width = self.shapes[p.name]
            out.append((width * self.row_bits(p, rounded).sum() / KB, rows, width))
        return out

    def penalty(self, target_bits: float) -> Tensor:
        """``Σ_l N_l · ReLU(B_l - target)²``, ``B_l = M_l / (N_l · d_l)`` layer l's average unrounded bits.

        The official ``ReLU(M - M_target)²`` in KB, rescaled per layer by ``(8 · 1024)² / (N_l · d_l²)``, so a
        node's bit gets ``2 · (B_l - target)`` per unit weight on any graph size and feature width.
        """
        terms = [
            rows * F.relu(m * KB / max(rows * width, 1) - target_bits) ** 2
            for m, rows, width in self.per_layer()
        ]
        return torch.stack(terms).sum() if terms else torch.zeros(())

    def kb_penalty(self, target_kb: float) -> Tensor:
        """``R · ReLU(B - B_T)²`` with ``B = M / V`` the memory-weighted average unrounded bits of all ``V``
        feature values, ``B_T = target_kb · 8 · 1024 / V`` and ``R`` the rows of all layers: the official
        ``ReLU(M - M_target)²`` on the total memory, scaled like :meth:`penalty`."""
        layers = self.per_layer()
        if not layers:
            return torch.zeros(())
        values = sum(rows * width for _m, rows, width in layers)
        rows = sum(r for _m, r, _w in layers)
        total = torch.stack([m for m, _r, _w in layers]).sum()
        return rows * F.relu((total - target_kb) * KB / max(values, 1)) ** 2

    def memory_kb(self) -> float:
        """Feature memory (KB) at the rounded bits."""
        return float(sum(float(m) for m, _r, _w in self.per_layer(True)))

    def overshoot(self, target_bits: float) -> float:
        """How far the rounded bits exceed the budget (max over layers of average bits - target; <= 0: met)."""
        over = [float(m) * KB / max(rows * width, 1) - target_bits for m, rows, width in self.per_layer(True)]
        return max(over) if over else 0.0


def param_groups(gm: fx.GraphModule, points: list[A2QPoint], opts: dict) -> list[dict]:
    """The official optimiser's groups: weights/biases, weight scales, XW scales, feature scales, bits."""
    lrs = {
        ("weight", "scale"): opts["a2q_lr_weight_scale"],
        ("xw", "scale"): opts["a2q_lr_xw_scale"],
        ("attention", "scale"): opts["a2q_lr_attention_scale"],
        ("features", "scale"): opts["a2q_lr_feature_scale"],
        ("features", "bits"): opts["a2q_lr_bits"],
    }
    grouped: dict[tuple[str, str], list[nn.Parameter]] = {k: [] for k in lrs}
    seen: set[int] = set()
    for p in points:
        for pname, param in p.module.named_parameters(recurse=False):
            grouped[(p.kind, pname)].append(param)
            seen.add(id(param))
    rest = [q for q in gm.parameters() if q.requires_grad and id(q) not in seen]
    groups = [{"params": rest}] if rest else []
    groups += [{"params": ps, "lr": lrs[k], "weight_decay": 0.0} for k, ps in grouped.items() if ps]
    return groups


class NodeTask:
    """Full-batch node classification: the train mask's logits; validation on the val mask."""

    def __init__(self, gm: fx.GraphModule, data) -> None:
        self.gm, self.data = gm, data

    def train_batches(self):
        d = self.data
        yield self.gm(d.x, d.edge_index)[0][d.train_mask], d.y[d.train_mask]

    def validate(self, memory: FeatureMemory) -> tuple[float, float, list[float], float]:
        d = self.data
        out = self.gm(d.x, d.edge_index)[0]
        loss = F.cross_entropy(out[d.val_mask], d.y[d.val_mask]).item()
        bits = [float(m) * KB / max(r * w, 1) for m, r, w in memory.per_layer(True)]
        return accuracy(out, d.y, d.val_mask), loss, bits, memory.memory_kb()

    def report_graph(self) -> tuple[Tensor, Tensor]:
        self.gm(self.data.x, self.data.edge_index)
        return self.data.x, self.data.edge_index


class GraphTask:
    """Mini-batch graph classification (graphs reshuffled every epoch); validation on the val graphs."""

    def __init__(self, gm: fx.GraphModule, graphs: dict, batch_size: int) -> None:
        self.gm, self.train, self.val, self.batch_size = gm, graphs["train"], graphs["val"], batch_size

    def _batches(self, graphs, order):
        for i in range(0, len(order), self.batch_size):
            yield collate_graphs([graphs[j] for j in order[i : i + self.batch_size]])

    def train_batches(self):
        for b in self._batches(self.train, torch.randperm(len(self.train)).tolist()):
            yield self.gm(b.x, b.edge_index, b.batch)[0], b.y

    def validate(self, memory: FeatureMemory) -> tuple[float, float, list[float], float]:
        correct, loss, count, bits, values = 0, 0.0, 0, None, None
        for b in self._batches(self.val, list(range(len(self.val)))):
            out = self.gm(b.x, b.edge_index, b.batch)[0]
            correct += int((out.argmax(-1) == b.y).sum())
            loss += F.cross_entropy(out, b.y, reduction="sum").item()
            count += int(b.y.numel())
            layers = memory.per_layer(True)
            batch_bits = [float(m) * KB for m, _r, _w in layers]
            batch_values = [r * w for _m, r, w in layers]
            bits = batch_bits if bits is None else [a + c for a, c in zip(bits, batch_bits, strict=True)]
            values = (
                batch_values if values is None else [a + c for a, c in zip(values, batch_values, strict=True)]
            )
        mean_bits = [b / max(v, 1) for b, v in zip(bits or [], values or [], strict=True)]
        kb = sum(bits or []) / KB / max(len(self.val), 1)  # per validation graph
        return correct / max(count, 1), loss / max(count, 1), mean_bits, kb

    def report_graph(self) -> tuple[Tensor, Tensor]:
        b = collate_graphs(self.train)
        self.gm(b.x, b.edge_index, b.batch)
        return b.x, b.edge_index


def bit_report(
    memory: FeatureMemory,
    points: list[A2QPoint],
    x: Tensor,
    edge_index: Tensor,
    input_points: frozenset[str] = frozenset({"x"}),
) -> dict:
    """:func:`~quantgraph.a2q_report.a2q_summary` of the bits of the last forward pass."""
    degree = in_degree(edge_index, int(x.shape[0]))
    layers = []
    for p in memory.features:
        if p.name not in memory.shapes:
            continue
        rows, width = memory.shapes[p.name]
        bits = memory.row_bits(p, rounded=True).detach()
        node_degree = degree if rows == degree.numel() else torch.zeros(rows, dtype=torch.long)
        layers.append(layer_summary(p.source, bits, width, not bool(p.module.seen_negative), node_degree))
    input_quantized = any(p.source in input_points for p in memory.features)
    return a2q_summary(layers, 0 if input_quantized else int(x.numel()))


@register_pass
class A2QTrainPass(PassBase):
    """Train A²Q's quantizers and the model (node or graph task), keep the best budget-meeting epoch."""

    name = "a2q-train"
    description = "A²Q training: per-kind learning rates, Local Gradient, memory budget, validation selection"
    options = A2Q_TRAIN_OPTIONS

    def requires(self, gm: fx.GraphModule, ctx: CompileContext) -> None:
        require_fake_quant(gm, self.name)
        require_labelled_task(ctx)
        per_node = [
            p for p in a2q_points(gm) if p.kind == "features" and not isinstance(p.module, A2QNNSQuantizer)
        ]
        if ctx.task_data.get("graphs") is not None and per_node:
            raise InputError(
                "per-node A²Q parameters belong to one graph, but this is a graph-classification task",
                "use --policy a2q-nns (the Nearest-Neighbour Strategy serves any graph)",
            )

    def call(self, gm: fx.GraphModule, ctx: CompileContext) -> PassResult:
        opts = {o.name: self.option(ctx, o.name) for o in A2Q_TRAIN_OPTIONS}
        epochs, target, weight = opts["epochs"], float(opts["target_bits"]), float(opts["a2q_penalty"])
        target_kb = None if opts["target_kb"] is None else float(opts["target_kb"])
        lr = float(opts["lr"] if opts["lr"] is not None else 0.01)
        wd = float(opts["weight_decay"] if opts["weight_decay"] is not None else 5e-4)
        if not (math.isfinite(target) and target >= 1.0):
            raise InputError(f"target_bits={target!r} is invalid", "use a finite target_bits >= 1")
        if target_kb is not None and not (math.isfinite(target_kb) and target_kb > 0):
            raise InputError(f"target_kb={target_kb!r} is invalid", "use a finite target_kb > 0")
        if target_kb is not None and ctx.task_data.get("graphs") is not None:
            raise InputError(
                "target_kb is a memory budget on one graph; this is a graph-classification task",
                "use target_bits (each layer's average bits) for graph tasks",
            )
        task = NodeTask(gm, ctx.task_data["node"]) if ctx.task_data.get("graphs") is None else None
        if task is None:
            task = GraphTask(gm, ctx.task_data["graphs"], int(opts["batch_size"]))
        points = a2q_points(gm)
        local = bool(opts["a2q_local_gradient"]) and isinstance(task, NodeTask)  # graph tasks: task gradient
        for p in points:
            p.module.local_gradient = local and p.kind in ("features", "xw")
        memory = FeatureMemory(points)
        optimizer = torch.optim.Adam(param_groups(gm, points, opts), lr=lr, weight_decay=wd)
        torch.manual_seed(int(opts["seed"]))
        start = time.perf_counter()
        best_key: tuple[float, float, float] | None = None  # (overshoot clipped at 0, -acc, loss)
        best_state, best_epoch, history = None, 0, []
        for epoch in range(1, epochs + 1):
            gm.train()
            task_loss, penalty = 0.0, 0.0
            for logits, y in task.train_batches():
                optimizer.zero_grad()
                loss = F.cross_entropy(logits, y)
                pen = weight * (memory.penalty(target) if target_kb is None else memory.kb_penalty(target_kb))
                (loss + pen).backward()
                optimizer.step()
                task_loss, penalty = task_loss + loss.item(), penalty + float(pen.detach())
            gm.eval()
            with torch.no_grad():
                val_acc, val_loss, mean_bits, kb = task.validate(memory)
            over = max((b - target for b in mean_bits), default=0.0) if target_kb is None else kb - target_kb
            history.append(
                {
                    "epoch": float(epoch),
                    "loss": task_loss,
                    "penalty": penalty,
                    "val_acc": val_acc,
                    "val_loss": val_loss,
                    "bits": [round(b, 4) for b in mean_bits],
                    "feature_kb": round(kb, 3),
                }
            )
            key = (max(over, 0.0), -val_acc, val_loss)
            if best_key is None or key < best_key:
                best_key, best_epoch = key, epoch
                best_state = {k: v.detach().clone() for k, v in gm.state_dict().items()}
        if best_state is not None:
            gm.load_state_dict(best_state)
        gm.eval()
        with torch.no_grad():  # the kept epoch's bits (and NNS groups) on the training graph(s)
            x, edge_index = task.report_graph()
        inputs = frozenset({"x"} | {n.name for n in gm.graph.nodes if n.meta.get(ROLE_KEY) == Role.INPUT})
        ctx.report["a2q"] = bit_report(memory, points, x, edge_index, inputs)
        ctx.report["a2q_train"] = {
            "best_epoch": best_epoch,
            "val_acc": -best_key[1] if best_key else math.nan,
            "budget_met": bool(best_key is not None and best_key[0] == 0.0),
            "target_bits": target if target_kb is None else None,
            "target_kb": target_kb,
            "penalty_weight": weight,
            "lr": lr,
            "weight_decay": wd,
            "learning_rates": {k: v for k, v in opts.items() if k.startswith("a2q_lr")},
            "local_gradient": local,
            "seconds": round(time.perf_counter() - start, 2),
            "history": history,
        }
        ctx.report["qat"] = {
            "best_epoch": best_epoch,
            "epochs_run": len(history),
            "val_acc": ctx.report["a2q_train"]["val_acc"],
            "seconds": ctx.report["a2q_train"]["seconds"],
            "history": history,
        }
        return PassResult(gm, True)
