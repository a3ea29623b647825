"""Observers: collect value statistics during calibration and turn them into ``QParams``."""

from __future__ import annotations

import torch
from torch import Tensor

from quantgraph.errors import InputError
from quantgraph.ir.fake_quant import strided_sample
from quantgraph.ir.qspec import Granularity, QParams, QuantSpec, default_percentile_tail
from quantgraph.registry import Registry


class Observer:
    """Base observer: subclasses implement ``update`` and ``bounds``."""

    def __init__(self, spec: QuantSpec) -> None:
        self.spec = spec
        self.lo: Tensor | None = None
        self.hi: Tensor | None = None

    def _reduce_dims(self, x: Tensor) -> list[int]:
        if self.spec.granularity in (Granularity.PER_CHANNEL, Granularity.PER_NODE):
            axis = self.spec.axis % x.dim()
            return [d for d in range(x.dim()) if d != axis]
        return list(range(x.dim()))

    def batch_bounds(self, x: Tensor) -> tuple[Tensor, Tensor]:
        dims = self._reduce_dims(x)
        if not dims:
            return x, x
        return x.amin(dim=dims), x.amax(dim=dims)

    def group_bounds(self, x: Tensor, groups: Tensor) -> tuple[Tensor, Tensor]:
        """PER_GROUP: the range of the rows of each group (empty groups: +inf/-inf, i.e. no range yet)."""
        count = int(self.spec.num_groups or 0)
        rows = x.reshape(x.shape[0], -1)
        lo = torch.full((count,), float("inf")).scatter_reduce(0, groups.long(), rows.amin(1), "amin")
        hi = torch.full((count,), float("-inf")).scatter_reduce(0, groups.long(), rows.amax(1), "amax")
        return lo, hi

    def update(self, x: Tensor, groups: Tensor | None = None) -> None:
        x = x.detach().float()
        if x.numel() == 0:
            return
        if self.spec.granularity == Granularity.PER_GROUP:
            if groups is None:
                raise InputError(
                    "a per-group observer got no group index", "calibrate with the graph's groups"
                )
            lo, hi = self.group_bounds(x, groups)
        else:
            lo, hi = self.batch_bounds(x)
        self.lo = lo if self.lo is None else torch.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else torch.maximum(self.hi, hi)

    def qparams(self) -> QParams:
        if self.lo is None or self.hi is None:
            zero = torch.zeros(())
            return QParams.from_range(zero, zero, self.spec)
        lo, hi = self.lo, self.hi
        if self.spec.granularity == Granularity.PER_GROUP:  # a group no row fell in: the range [0, 0]
            lo, hi = torch.where(torch.isfinite(lo), lo, 0.0), torch.where(torch.isfinite(hi), hi, 0.0)
        return QParams.from_range(lo, hi, self.spec)


class MinMaxObserver(Observer):
    """Running minimum and maximum over all calibration batches."""


class PercentileObserver(Observer):
    """Per-batch percentile range (tails cut), combined across batches by running min/max.

    The default tail follows Degree-Quant: 0.001 per side at 8 bits, 0.01 below.
    """

    def batch_bounds(self, x: Tensor) -> tuple[Tensor, Tensor]:
        tail = dict(self.spec.observer_args).get("tail", default_percentile_tail(self.spec.bits))
        dims = self._reduce_dims(x)
        if len(dims) != x.dim():
            raise InputError(
                "the percentile observer supports per-tensor ranges only", "use observer='minmax'"
            )
        flat = strided_sample(x.flatten())
        q = torch.tensor([tail, 1.0 - tail])
        lo, hi = torch.quantile(flat, q)
        return lo, hi


#: Range methods by name (``QuantSpec.observer``); add one with :func:`register_observer` or the
#: entry-point group ``quantgraph.observers``.
def _adapt(name: str, obj: object) -> tuple[str, type[Observer]] | None:
    return (name, obj) if isinstance(obj, type) and issubclass(obj, Observer) else None


REGISTRY: Registry[type[Observer]] = Registry("observer", "quantgraph.observers", _adapt)
REGISTRY.add("minmax", MinMaxObserver)
REGISTRY.add("percentile", PercentileObserver)
OBSERVERS = REGISTRY.entries  # name -> class (the registry's own table)


def register_observer(name: str, cls: type[Observer]) -> type[Observer]:
    """Make ``cls`` the range method called ``name`` (an :class:`Observer` subclass)."""
    if not (isinstance(cls, type) and issubclass(cls, Observer)):
        raise TypeError(f"{cls!r} is not an Observer subclass")
    return REGISTRY.add(name, cls)


def available_observers() -> dict[str, type[Observer]]:
    return REGISTRY.available()


def make_observer(spec: QuantSpec) -> Observer:
    return REGISTRY.get(spec.observer)(spec)
