"""ABS, SGQuant's automatic bit selection: search bits per (layer, component, degree bucket) under a budget.

Each candidate configuration is evaluated with the fake-quant model on the **validation** nodes (test data
is never read); its memory is counted exactly (:mod:`quantgraph.sgquant.memory`). A ridge-regression
surrogate over the configuration's features (log2 bits per dimension and their squares) predicts validation
accuracy; each round samples random configurations and mutations of the Pareto points, keeps those that
satisfy the budget, and evaluates the ones the surrogate ranks best. The result is every evaluation, the
Pareto front (memory vs validation accuracy) and the chosen point:

* ``memory_target = R``: the best validation accuracy among configurations with memory <= FP32 / R
  (ties: less memory);
* ``accuracy_tolerance = t``: the least memory among configurations within ``t`` of FP32 validation accuracy;
* both: the best validation accuracy within the memory budget, and ``met`` says whether it is within ``t``.

``met`` is False when no evaluated configuration meets the budget's accuracy side (the most accurate one is
then chosen); a memory target no configuration of the candidates can reach is an error before any evaluation.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from quantgraph.errors import InputError
from quantgraph.sgquant.quantizer import FP32_BITS

Dim = tuple[int, str, int | None]  # (layer, component, bucket or None)
Config = tuple[int, ...]  # bits per dimension, in the order of ``SearchSpace.dims``


@dataclass(frozen=True)
class SearchSpace:
    """The dimensions searched and the candidate bits of each (32 only for dimensions without buckets)."""

    dims: tuple[Dim, ...]
    candidates: tuple[int, ...]

    def choices(self, dim: Dim) -> tuple[int, ...]:
        return tuple(c for c in self.candidates if dim[2] is None or c != FP32_BITS)

    def uniform(self, bits: int) -> Config:
        return tuple(bits if bits in self.choices(d) else max(self.choices(d)) for d in self.dims)

    def random(self, rng: random.Random) -> Config:
        return tuple(rng.choice(self.choices(d)) for d in self.dims)

    def mutate(self, config: Config, rng: random.Random, changes: int = 1) -> Config:
        out = list(config)
        for i in rng.sample(range(len(self.dims)), min(changes, len(self.dims))):
            out[i] = rng.choice(self.choices(self.dims[i]))
        return tuple(out)

    def to_text(self, config: Config) -> str:
        parts = []
        for (layer, comp, bucket), bits in zip(self.dims, config, strict=True):
            parts.append(f"{layer}.{comp}" + ("" if bucket is None else f".b{bucket}") + f"={bits}")
        return ",".join(parts)


def features(config: Config) -> list[float]:
    logs = [math.log2(b) for b in config]
    return [1.0, *logs, *(v * v for v in logs)]


class RidgeSurrogate:
    """Ridge regression of validation accuracy on :func:`features` (closed form, float64)."""

    def __init__(self, alpha: float = 1e-2) -> None:
        self.alpha = alpha
        self.coef: torch.Tensor | None = None

    def fit(self, configs: Sequence[Config], scores: Sequence[float]) -> None:
        x = torch.tensor([features(c) for c in configs], dtype=torch.float64)
        y = torch.tensor(scores, dtype=torch.float64)
        eye = torch.eye(x.shape[1], dtype=torch.float64)
        eye[0, 0] = 0.0  # no penalty on the intercept
        self.coef = torch.linalg.solve(x.T @ x + self.alpha * eye, x.T @ y)

    def predict(self, configs: Sequence[Config]) -> list[float]:
        if self.coef is None:
            return [0.0] * len(configs)
        x = torch.tensor([features(c) for c in configs], dtype=torch.float64)
        return (x @ self.coef).tolist()


@dataclass
class Evaluation:
    config: Config
    memory_bits: int
    val_acc: float
    round: int
    predicted: float | None = None
    screen_acc: float | None = None  # the calibrated-range score, when ``val_acc`` is after a fine-tune


def pareto_front(evals: Sequence[Evaluation]) -> list[Evaluation]:
    """Evaluations no other beats on both memory (lower) and validation accuracy (higher), by memory."""
    front: list[Evaluation] = []
    for e in sorted(evals, key=lambda e: (e.memory_bits, -e.val_acc)):
        if not front or e.val_acc > front[-1].val_acc:
            front.append(e)
    return front


def run_abs(
    space: SearchSpace,
    evaluate: Callable[[Config], float],
    memory: Callable[[Config], int],
    fp32_memory: int,
    fp32_val_acc: float,
    *,
    memory_target: float | None = None,
    accuracy_tolerance: float | None = None,
    evaluations: int = 48,
    batch: int = 4,
    pool: int = 512,
    seed: int = 0,
    refine: Callable[[Config], float] | None = None,
    refine_top: int = 0,
) -> dict[str, Any]:
    """Search ``space`` within ``evaluations`` validation evaluations; returns the history, front and choice.

    With ``refine`` (e.g. a short fine-tune then validation) and ``refine_top = K``, ``evaluate`` screens
    the candidates cheaply and the K Pareto points within the memory budget (most accurate first) are
    scored again by ``refine``; the choice is then made among the refined points only.
    """
    if memory_target is None and accuracy_tolerance is None:
        raise InputError(
            "ABS needs a budget", "give memory_target (reduction factor) and/or accuracy_tolerance"
        )
    if evaluations < 1:
        raise InputError(f"abs_evaluations={evaluations} is too small", "give at least 1 evaluation")
    limit = fp32_memory / memory_target if memory_target is not None else math.inf
    smallest = min((space.uniform(c) for c in space.candidates), key=memory)
    if memory(smallest) > limit:
        best = fp32_memory / memory(smallest)
        raise InputError(
            f"memory target {memory_target}x is out of reach: the fewest candidate bits give {best:.2f}x",
            f"give --memory-target <= {best:.2f} or add smaller bits to sgquant_candidates",
        )
    threshold = fp32_val_acc - accuracy_tolerance if accuracy_tolerance is not None else -math.inf
    rng = random.Random(seed)
    evaluated: dict[Config, Evaluation] = {}
    surrogate = RidgeSurrogate()

    def run(config: Config, rnd: int, predicted: float | None = None) -> None:
        if config in evaluated or len(evaluated) >= evaluations:
            return
        evaluated[config] = Evaluation(config, memory(config), float(evaluate(config)), rnd, predicted)

    # round 0: every uniform configuration that fits, then random ones that fit
    for bits in sorted(space.candidates, reverse=True):
        config = space.uniform(bits)
        if memory(config) <= limit:
            run(config, 0)
    tries = 0
    while len(evaluated) < min(evaluations, len(space.candidates) + 2 * batch) and tries < 50 * pool:
        tries += 1
        config = space.random(rng)
        if memory(config) <= limit:
            run(config, 0)
    rnd = 0
    while len(evaluated) < evaluations:
        rnd += 1
        surrogate.fit([e.config for e in evaluated.values()], [e.val_acc for e in evaluated.values()])
        front = pareto_front(list(evaluated.values()))
        pool_configs: set[Config] = set()
        for _ in range(pool):
            if front and rng.random() < 0.6:
                parent = rng.choice(front).config
                pool_configs.add(space.mutate(parent, rng, rng.choice((1, 1, 2, 3))))
            else:
                pool_configs.add(space.random(rng))
        fresh = [c for c in pool_configs if c not in evaluated and memory(c) <= limit]
        if not fresh:
            break
        predictions = surrogate.predict(fresh)
        if memory_target is None:  # least memory among those predicted within the tolerance
            ranked = sorted(
                zip(fresh, predictions, strict=True),
                key=lambda cp: (cp[1] < threshold, memory(cp[0]), -cp[1]),
            )
        else:  # best predicted accuracy within the memory budget
            ranked = sorted(zip(fresh, predictions, strict=True), key=lambda cp: (-cp[1], memory(cp[0])))
        for config, predicted in ranked[:batch]:
            run(config, rnd, predicted)
    evals = list(evaluated.values())
    refined: list[Evaluation] = []
    if refine is not None and refine_top > 0:
        front = [e for e in pareto_front(evals) if e.memory_bits <= limit]
        for e in sorted(front, key=lambda e: (-e.val_acc, e.memory_bits))[:refine_top]:
            e.screen_acc, e.val_acc = e.val_acc, float(refine(e.config))
            refined.append(e)
    pool_evals = refined or evals  # the choice is made among fine-tuned scores when there are any
    if memory_target is not None:
        feasible = [e for e in pool_evals if e.memory_bits <= limit]
        chosen = max(feasible, key=lambda e: (e.val_acc, -e.memory_bits))
        met = chosen.val_acc >= threshold
    else:
        feasible = [e for e in pool_evals if e.val_acc >= threshold]
        met = bool(feasible)
        chosen = (
            min(feasible, key=lambda e: (e.memory_bits, -e.val_acc))
            if feasible
            else max(pool_evals, key=lambda e: (e.val_acc, -e.memory_bits))
        )

    def row(e: Evaluation) -> dict[str, Any]:
        return {
            "config": space.to_text(e.config),
            "memory_bits": e.memory_bits,
            "reduction": round(fp32_memory / e.memory_bits, 4),
            "val_acc": e.val_acc,
            "round": e.round,
            "refined": e.screen_acc is not None,
            **({"predicted_val_acc": round(e.predicted, 4)} if e.predicted is not None else {}),
            **({"screen_val_acc": e.screen_acc} if e.screen_acc is not None else {}),
        }

    return {
        "budget": {
            "memory_target": memory_target,
            "accuracy_tolerance": accuracy_tolerance,
            "memory_limit_bits": None if math.isinf(limit) else int(limit),
            "evaluations": evaluations,
        },
        "fp32": {"memory_bits": fp32_memory, "val_acc": fp32_val_acc},
        "evaluated": len(evals),
        "rounds": rnd,
        "met": met,
        "val_drop": round(fp32_val_acc - chosen.val_acc, 6),
        "chosen": row(chosen),
        "chosen_config": chosen.config,
        "refined": len(refined),
        "pareto_front": [row(e) for e in pareto_front(evals)],
        "history": [row(e) for e in evals],
    }
