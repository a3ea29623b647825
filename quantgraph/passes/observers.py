"""Observers: collect value statistics during calibration and turn them into ``QParams``."""

from __future__ import annotations

import torch
from torch import Tensor

from quantgraph.errors import InputError
from quantgraph.ir.fake_quant import strided_sample
from quantgraph.ir.qspec import Granularity, QParams, QuantSpec, default_percentile_tail


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

    def update(self, x: Tensor) -> None:
        x = x.detach().float()
        if x.numel() == 0:
            return
        lo, hi = self.batch_bounds(x)
        self.lo = lo if self.lo is None else torch.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else torch.maximum(self.hi, hi)

    def qparams(self) -> QParams:
        if self.lo is None or self.hi is None:
            zero = torch.zeros(())
            return QParams.from_range(zero, zero, self.spec)
        return QParams.from_range(self.lo, self.hi, self.spec)


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


OBSERVERS: dict[str, type[Observer]] = {"minmax": MinMaxObserver, "percentile": PercentileObserver}


def make_observer(spec: QuantSpec) -> Observer:
    if spec.observer not in OBSERVERS:
        raise InputError(f"unknown observer '{spec.observer}'", f"use one of {', '.join(OBSERVERS)}")
    return OBSERVERS[spec.observer](spec)
