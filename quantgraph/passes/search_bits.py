"""MixQ-style bitwidth search: learn one bitwidth per quantization point, then fix it for QAT.

Every ``FakeQuantize`` becomes a :class:`MixedPrecisionFakeQuantize` over the candidate bitwidths and the
model trains for ``search_epochs`` with ``task loss + lambda * cost``. The cost is the expected BitOPs
normalised by the FP32 BitOPs (``cost="bitops"``, see :mod:`quantgraph.bitops`: each MAC's bit product
uses the expected bits of its two operands) or the mean expected bits over points divided by 32
(``cost="bits"``; BitOPs leave points that feed no MAC, such as aggregation outputs, to the task loss).

Which task loss trains the bit logits (``search_on``):

* ``"val"`` (default; first-order DARTS): the weights train on the training loss with the mixture
  weights held constant, and the logits on the validation loss (weights held constant) plus the cost.
  On Cora the training loss of 140 well-fitted nodes pulls some logits towards 2 bits even at
  ``lambda = 0``; the validation loss does not.
* ``"train"``: MixQ's joint objective, weights and logits on the training loss.

Each point's report entry records, per search epoch, its most likely bitwidth (``bits_by_epoch``) and its
expected bitwidth (``expected_bits_by_epoch``), for the HTML report's plot of the bit choices.

The search keeps its last epoch (a best-validation pick would favour the widest bits). Each point then
gets its most likely bitwidth (ties: the wider): the chosen candidate, a plain ``FakeQuantize`` with the
range it learned, replaces the mixture, and the source node's ``qg_qspec`` gets that bitwidth, so
``train-qat`` and ``convert-qat`` fine-tune and freeze it as usual.

``target_bits``: start from the argmax and greedily lower (while the mean bits over points is above the
target) or raise (while the mean stays at most the target) one point by one candidate step, each time
the step that gives up the least logit (smallest ``alpha_now - alpha_next``).

Options: ``lambda``, ``bit_candidates``, ``search_epochs``, ``target_bits``, ``cost``, ``search_on``,
``logit_scale`` and ``train-qat``'s training options; their defaults are declared below
(``quantgraph passes --options search-bits``).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx

from quantgraph.bitops import FP32_BITS, mac_terms, node_shapes, point_bits, term_bitops
from quantgraph.errors import InputError
from quantgraph.ir.fake_quant import FakeQuantize
from quantgraph.ir.meta import LAYER_KEY, QSPEC_KEY, ROLE_KEY, SOURCE_KEY
from quantgraph.ir.mixed_fake_quant import (
    DEFAULT_CANDIDATES,
    MixedPrecisionFakeQuantize,
    argmax_prefer_last,
    check_candidates,
)
from quantgraph.ir.qspec import default_percentile_tail
from quantgraph.options import PERCENTILE_TAIL, Option
from quantgraph.passes.infra import CompileContext, PassBase, PassResult
from quantgraph.passes.prepare_qat import fake_quant_nodes, require_fake_quant
from quantgraph.passes.registry import register_pass
from quantgraph.passes.train_qat import (
    BATCH_SIZE,
    TRAINING_OPTIONS,
    require_labelled_task,
    training_hyperparameters,
)
from quantgraph.training import collate_graphs, train_graph_classifier, train_node_classifier

COSTS = ("bitops", "bits")
SEARCH_SPLITS = ("val", "train")


def parse_candidates(value: Any) -> tuple[int, ...]:
    """Candidate bitwidths from a sequence of ints or a comma-separated string such as "2,4,8"."""
    if value is None:
        return DEFAULT_CANDIDATES
    if isinstance(value, str):
        try:
            value = [int(v) for v in value.split(",") if v.strip()]
        except ValueError as err:
            raise InputError(f"bit candidates '{value}' are not integers", "write e.g. 2,4,8") from err
    return check_candidates(list(value))


LAMBDA = Option(
    "lambda", float, 0.1, "weight of the cost penalty (expected BitOPs / FP32 BitOPs)", minimum=0.0
)
SEARCH_EPOCHS = Option("search_epochs", int, 40, "epochs of the bitwidth search", minimum=1)
LOGIT_SCALE = Option("logit_scale", float, 20.0, "bit logits are used as logit_scale * alpha", minimum=1e-6)
COST = Option("cost", str, "bitops", "penalty: expected BitOPs, or mean expected bits", choices=COSTS)
SEARCH_ON = Option("search_on", str, "val", "loss that trains the bit logits", choices=SEARCH_SPLITS)
BIT_CANDIDATES = Option(
    "bit_candidates", parse_candidates, DEFAULT_CANDIDATES, "candidate bitwidths, e.g. 2,4,8"
)
TARGET_BITS = Option(
    "target_bits", float, None, "fit the chosen bits to this mean bitwidth (at most); unset: argmax"
)


def choose_bits(logits: Sequence[Tensor], bits: Sequence[int], target: float | None = None) -> list[int]:
    """Index of the chosen candidate per point: argmax (ties: wider), then the greedy ``target`` fit."""
    choice = [argmax_prefer_last(a) for a in logits]
    if target is None or not logits:
        return choice
    total, limit = sum(bits[c] for c in choice), target * len(choice)

    def step_cost(i: int, step: int) -> float:
        a = logits[i].detach()
        return float(a[choice[i]] - a[choice[i] + step])

    while total > limit + 1e-9:
        i = min((j for j in range(len(choice)) if choice[j] > 0), key=lambda j: step_cost(j, -1))
        total -= bits[choice[i]] - bits[choice[i] - 1]
        choice[i] -= 1
    while True:
        fits = [
            j
            for j in range(len(choice))
            if choice[j] < len(bits) - 1 and total + bits[choice[j] + 1] - bits[choice[j]] <= limit + 1e-9
        ]
        if not fits:
            return choice
        i = min(fits, key=lambda j: step_cost(j, 1))
        total += bits[choice[i] + 1] - bits[choice[i]]
        choice[i] += 1


def _cost_fn(
    gm: fx.GraphModule, shapes: dict, mixed: list[MixedPrecisionFakeQuantize], kind: str
) -> Callable[[], Tensor]:
    """The differentiable cost: expected BitOPs / FP32 BitOPs, or mean expected bits / 32."""
    if kind == "bits":
        return lambda: torch.stack([m.expected_bits() for m in mixed]).mean() / FP32_BITS
    terms = mac_terms(gm, shapes)
    fp32 = sum(term_bitops(t, lambda _p: float(FP32_BITS))[1] for t in terms)
    if not fp32:
        raise InputError("the graph has no linear layer or aggregation to count BitOPs on", "use cost='bits'")

    def cost() -> Tensor:
        total = sum(term_bitops(t, lambda p: point_bits(gm, p))[0] for t in terms)
        return torch.as_tensor(total, dtype=torch.float32) / fp32

    return cost


def _val_loss(
    gm: fx.GraphModule, ctx: CompileContext, mixed: list[MixedPrecisionFakeQuantize]
) -> Callable[[], Tensor]:
    """Validation cross-entropy of the mixture in eval mode, differentiable in the bit logits only.

    Node tasks use the whole graph's validation nodes; graph tasks cycle through validation mini-batches.
    """
    graphs = ctx.task_data.get("graphs")
    if graphs is None:
        data = ctx.task_data["node"]
        batches = [((data.x, data.edge_index), data.y, data.val_mask)]
    else:
        size = BATCH_SIZE.read(ctx.options)
        val = list(graphs["val"])
        batches = []
        for i in range(0, len(val), size):
            b = collate_graphs(val[i : i + size])
            batches.append(((b.x, b.edge_index, b.batch), b.y, None))
    cycle = itertools.cycle(batches)
    alphas = {id(m.alpha) for m in mixed}

    def loss() -> Tensor:
        args, y, mask = next(cycle)
        frozen = {n: p.detach() for n, p in gm.named_parameters() if id(p) not in alphas}
        was_training = gm.training
        gm.eval()  # no dropout, no range updates
        for m in mixed:
            m.detach_alpha = False
        try:
            logits = torch.func.functional_call(gm, frozen, args)[0]
        finally:
            gm.train(was_training)
            for m in mixed:
                m.detach_alpha = True
        return F.cross_entropy(logits if mask is None else logits[mask], y if mask is None else y[mask])

    return loss


@register_pass
class SearchBitsPass(PassBase):
    """Differentiable per-point bitwidth search (softmax over candidates, BitOPs penalty); fixes the bits."""

    name = "search-bits"
    description = "MixQ mixed precision: learn a bitwidth per quantization point under a BitOPs penalty"
    options = (
        LAMBDA,
        SEARCH_EPOCHS,
        LOGIT_SCALE,
        COST,
        SEARCH_ON,
        BIT_CANDIDATES,
        TARGET_BITS,
        PERCENTILE_TAIL,
        *TRAINING_OPTIONS,
    )

    def requires(self, gm: fx.GraphModule, ctx: CompileContext) -> None:
        require_fake_quant(gm, self.name)
        require_labelled_task(ctx)
        if not ctx.calibration_data:
            raise InputError("no calibration graph was given", "pass --data with a graph to count BitOPs on")

    def call(self, gm: fx.GraphModule, ctx: CompileContext) -> PassResult:
        lam, epochs = self.option(ctx, "lambda"), self.option(ctx, "search_epochs")
        scale, bits = self.option(ctx, "logit_scale"), self.option(ctx, "bit_candidates")
        kind, split = self.option(ctx, "cost"), self.option(ctx, "search_on")
        target = self.option(ctx, "target_bits")
        if target is not None and not (math.isfinite(target) and target >= bits[0]):
            raise InputError(f"target_bits={target!r} is invalid", f"use a finite target_bits >= {bits[0]}")
        tail = self.option(ctx, "percentile_tail")

        nodes = fake_quant_nodes(gm)
        mixed: list[MixedPrecisionFakeQuantize] = []
        for fq in nodes:
            module = gm.get_submodule(fq.target)
            if not isinstance(module, FakeQuantize):
                raise InputError(
                    f"search-bits needs fake-quant quantizers; {fq.meta[SOURCE_KEY]} has '{module.kind}'",
                    "annotate with QuantSpec(quantizer='fake-quant') before the search",
                )
            tails = {b: tail or default_percentile_tail(b) for b in bits} if module.tail > 0 else None
            mix = MixedPrecisionFakeQuantize.from_fake_quant(module, bits, tails=tails, logit_scale=scale)
            gm.add_submodule(fq.target, mix)
            mixed.append(mix)
        gm.recompile()
        shapes = node_shapes(gm, [ctx.calibration_data[0][n] for n in ctx.input_names])
        cost = _cost_fn(gm, shapes, mixed, kind)
        val_loss = _val_loss(gm, ctx, mixed) if split == "val" else None

        def penalty() -> Tensor:
            return lam * cost() if val_loss is None else val_loss() + lam * cost()

        for m in mixed:
            m.detach_alpha = val_loss is not None  # the training loss then trains only the weights

        chosen_by_epoch: list[list[int]] = []  # per epoch: each point's most likely bitwidth
        expected_by_epoch: list[list[float]] = []  # per epoch: each point's expected bitwidth

        def record(_epoch: int) -> None:
            with torch.no_grad():
                chosen_by_epoch.append([int(m.bits[m.chosen_index()]) for m in mixed])
                expected_by_epoch.append([round(float(m.expected_bits()), 4) for m in mixed])

        start = time.perf_counter()
        result = self._train(gm, ctx, epochs, penalty, record)
        seconds = time.perf_counter() - start
        with torch.no_grad():
            final_cost = float(cost())
        choice = choose_bits([m.alpha for m in mixed], bits, target)

        points = []
        for i, (fq, mix, index) in enumerate(zip(nodes, mixed, choice, strict=True)):
            chosen = mix.candidates[index]
            gm.add_submodule(fq.target, chosen)
            source = next(n for n in gm.graph.nodes if n.name == fq.meta[SOURCE_KEY])
            source.meta[QSPEC_KEY] = chosen.spec
            role = fq.meta.get(ROLE_KEY)
            points.append(
                {
                    "node": source.name,
                    "role": role.value if role is not None else None,
                    "layer": fq.meta.get(LAYER_KEY),
                    "bits": chosen.spec.bits,
                    "probabilities": [round(p, 4) for p in mix.probabilities().tolist()],
                    "elements": math.prod(shapes.get(fq.name, ())),
                    "bits_by_epoch": [row[i] for row in chosen_by_epoch],
                    "expected_bits_by_epoch": [row[i] for row in expected_by_epoch],
                }
            )
        gm.eval()
        elements = sum(p["elements"] for p in points)
        ctx.report["mixq"] = {
            "points": points,
            "average_bits": sum(p["bits"] for p in points) / max(len(points), 1),
            "weighted_average_bits": sum(p["bits"] * p["elements"] for p in points) / max(elements, 1),
            "average_bits_note": "average_bits: plain mean over points; weighted_: by element count",
            "lambda": lam,
            "candidates": list(bits),
            "cost": kind,
            "search_on": split,
            "final_expected_cost": round(final_cost, 6),
            "target_bits": target,
            "search_epochs": epochs,
            "logit_scale": scale,
            "search_val_acc": result.val_acc,
            "search_seconds": round(seconds, 2),
            "search_history": result.history,
        }
        return PassResult(gm, True)

    def _train(
        self,
        gm: fx.GraphModule,
        ctx: CompileContext,
        epochs: int,
        penalty: Callable[[], Tensor],
        on_epoch: Callable[[int], None],
    ):
        hp = {
            **training_hyperparameters(ctx, epochs),
            "penalty": penalty,
            "restore_best": False,
            "on_epoch": on_epoch,
        }
        graphs = ctx.task_data.get("graphs")
        if graphs is not None:
            return train_graph_classifier(
                gm,
                graphs["train"],
                graphs["val"],
                (),
                forward=lambda x, ei, b: gm(x, ei, b)[0],
                batch_size=self.option(ctx, "batch_size"),
                **hp,
            )
        return train_node_classifier(gm, ctx.task_data["node"], forward=lambda x, ei: gm(x, ei)[0], **hp)
