"""Observers: collect value statistics during calibration and turn them into ``QParams``."""

from __future__ import annotations

import math

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

    def _percentiles(self, values: Tensor) -> tuple[Tensor, Tensor]:
        tail = dict(self.spec.observer_args).get("tail", default_percentile_tail(self.spec.bits))
        lo, hi = torch.quantile(strided_sample(values.flatten()), torch.tensor([tail, 1.0 - tail]))
        return lo, hi

    def batch_bounds(self, x: Tensor) -> tuple[Tensor, Tensor]:
        dims = self._reduce_dims(x)
        if len(dims) != x.dim():
            raise InputError(
                "the percentile observer supports per-tensor and per-group ranges only",
                "use observer='minmax'",
            )
        return self._percentiles(x)

    def group_bounds(self, x: Tensor, groups: Tensor) -> tuple[Tensor, Tensor]:
        """PER_GROUP: the percentile range of each group's rows (empty groups: +inf/-inf)."""
        count = int(self.spec.num_groups or 0)
        lo, hi = torch.full((count,), float("inf")), torch.full((count,), float("-inf"))
        for group in torch.unique(groups).tolist():
            lo[group], hi[group] = self._percentiles(x[groups == group])
        return lo, hi


#: Samples kept per calibration batch by the MSE observer (a deterministic strided sample).
MSE_SAMPLE = 1 << 18
#: Candidate clip ranges the MSE observer tries: ``alpha * [min, max]`` for alpha in (0, 1], this many.
MSE_GRID = 128


def quantization_mse(
    values: Tensor, lo: Tensor, hi: Tensor, spec: QuantSpec, weight: Tensor | None = None
) -> Tensor:
    """(Weighted) mean squared error of quantize-dequantize of ``values`` with the range [lo, hi]."""
    qp = QParams.from_range(lo, hi, spec)
    q = torch.clamp(torch.round(values / qp.scale) + qp.zero_point, spec.qmin, spec.qmax)
    err = ((q - qp.zero_point) * qp.scale - values).square()
    return (err if weight is None else err * weight).mean()


def relative_weight(values: Tensor) -> Tensor:
    """``1 / (|x| + mean|x|)``: weights each squared error by the size of the value it perturbs, so the
    many small values (GIN's low-degree nodes) count as much as the few large ones (its hubs)."""
    magnitude = values.abs()
    return 1.0 / (magnitude + magnitude.mean().clamp(min=torch.finfo(torch.float32).tiny))


def mse_optimal_range(
    values: Tensor,
    lo: Tensor,
    hi: Tensor,
    spec: QuantSpec,
    grid: int = MSE_GRID,
    weight: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The clip range ``alpha * [lo, hi]`` (alpha on a grid in (0, 1]) with the least (weighted) quantization
    MSE on ``values``; on a tie the wider range. Needs no labels: only the calibration values."""
    best_alpha, best_err = 1.0, quantization_mse(values, lo, hi, spec, weight)
    for k in range(grid - 1, 0, -1):  # widest first, so a tie keeps the wider range
        alpha = k / grid
        err = quantization_mse(values, lo * alpha, hi * alpha, spec, weight)
        if err < best_err:
            best_alpha, best_err = alpha, err
    return lo * best_alpha, hi * best_alpha


class MSEObserver(Observer):
    """Range minimising the quantization MSE on the calibration values (clip search), per tensor or per group.

    Like onnxruntime's and TensorRT's calibrators, it keeps a sample of every calibration batch, then
    tries ``alpha * [min, max]`` for ``grid`` values of alpha in (0, 1] and keeps the range whose
    quantize-dequantize error is smallest. Heavy tails (GIN's sums over hub nodes) get clipped; a tensor
    whose min/max range is already optimal keeps it. ``observer_args``: ``grid`` (default 128).
    A ``PER_GROUP`` spec (e.g. in-degree buckets, the ``degree-buckets`` pass) keeps a sample per group
    and searches each group's range on its own rows, against that group's min/max.
    """

    relative = False

    def __init__(self, spec: QuantSpec) -> None:
        super().__init__(spec)
        self.samples: list[Tensor] = []
        self.group_samples: dict[int, list[Tensor]] = {}

    def update(self, x: Tensor, groups: Tensor | None = None) -> None:
        if self.spec.granularity not in (Granularity.PER_TENSOR, Granularity.PER_GROUP):
            raise InputError(
                f"the {self.spec.observer} observer supports per-tensor and per-group ranges only",
                "use observer='minmax'",
            )
        super().update(x, groups)
        if not x.numel():
            return
        x = x.detach().float()
        if groups is None or self.spec.granularity != Granularity.PER_GROUP:
            self.samples.append(strided_sample(x.flatten(), MSE_SAMPLE))
            return
        rows = x.reshape(x.shape[0], -1)
        for group in torch.unique(groups).tolist():
            sample = strided_sample(rows[groups == group].flatten(), MSE_SAMPLE)
            self.group_samples.setdefault(int(group), []).append(sample)

    def choose_range(self, values: Tensor, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        """The clipped range of one tensor (or one group) from its sampled values and min/max."""
        grid = int(dict(self.spec.observer_args).get("grid", MSE_GRID))
        weight = relative_weight(values) if self.relative else None
        return mse_optimal_range(values, lo, hi, self.spec, grid, weight)

    def qparams(self) -> QParams:
        if self.lo is None or self.hi is None:
            return super().qparams()
        if self.spec.granularity != Granularity.PER_GROUP:
            lo, hi = self.choose_range(torch.cat(self.samples), self.lo, self.hi)
            return QParams.from_range(lo, hi, self.spec)
        finite = torch.isfinite(self.lo) & torch.isfinite(self.hi)  # a group no row fell in: [0, 0]
        lo = torch.where(finite, self.lo, 0.0)
        hi = torch.where(finite, self.hi, 0.0)
        for group, parts in sorted(self.group_samples.items()):
            lo[group], hi[group] = self.choose_range(torch.cat(parts), lo[group], hi[group])
        return QParams.from_range(lo, hi, self.spec)


class RelativeMSEObserver(MSEObserver):
    """:class:`MSEObserver` with each squared error weighted by :func:`relative_weight` (relative error).

    Plain MSE is dominated by the largest values, so on GIN's sums it keeps the hub nodes' range and
    leaves low-degree nodes with a coarse step; weighting by ``1 / (|x| + mean|x|)`` clips the hubs instead.
    """

    relative = True


#: Histogram bins of the entropy observer (TensorRT's calibrator uses 2048).
ENTROPY_BINS = 2048


def entropy_optimal_bound(magnitudes: Tensor, bits: int, bins: int = ENTROPY_BINS) -> float:
    """TensorRT's KL-divergence threshold on a histogram of ``|x|``: the bound ``t`` whose clipped
    distribution, re-binned into ``2**(bits-1)`` levels, diverges least from the unclipped one."""
    top = float(magnitudes.max())
    if top <= 0.0:
        return top
    hist = torch.histc(magnitudes, bins=bins, min=0.0, max=top).double()
    levels = 1 << (bits - 1)
    if bins <= levels:
        return top
    best_i, best_kl = bins, math.inf
    for i in range(levels, bins + 1):
        p = hist[:i].clone()
        p[i - 1] += hist[i:].sum()  # outliers clip into the last bin
        nonzero = p > 0
        # q: p re-binned into `levels` equal groups, spread evenly over each group's non-empty bins
        group = torch.div(torch.arange(i) * levels, i, rounding_mode="floor")
        mass = torch.zeros(levels, dtype=torch.float64).index_add_(0, group, hist[:i])
        count = torch.zeros(levels, dtype=torch.float64).index_add_(0, group, nonzero.double())
        q = torch.where(nonzero, mass[group] / count[group].clamp(min=1), torch.zeros_like(p))
        q[i - 1] += hist[i:].sum() * nonzero[i - 1]
        ps, qs = p / p.sum(), q / q.sum()
        mask = nonzero & (qs > 0)
        kl = float((ps[mask] * (ps[mask] / qs[mask]).log()).sum())
        if kl < best_kl:
            best_i, best_kl = i, kl
    return top * best_i / bins


class EntropyObserver(MSEObserver):
    """Per-tensor range from the KL-divergence (entropy) calibration of TensorRT / onnxruntime.

    INT8 only (TensorRT's method; with fewer levels the threshold collapses). Keeps the same calibration
    sample as :class:`MSEObserver`; the bound ``t`` from
    :func:`entropy_optimal_bound` on ``|x|`` clips the min/max range to ``[max(min, -t), min(max, t)]``.
    """

    def qparams(self) -> QParams:
        if self.spec.bits != 8:
            raise InputError(
                f"entropy calibration is defined for 8 bits, not {self.spec.bits}",
                "use --calibration relative-mse (or mse) below 8 bits",
            )
        return super().qparams()

    def choose_range(self, values: Tensor, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        bins = int(dict(self.spec.observer_args).get("bins", ENTROPY_BINS))
        t = torch.tensor(entropy_optimal_bound(values.abs(), self.spec.bits, bins), dtype=torch.float32)
        return torch.maximum(lo, -t), torch.minimum(hi, t)


#: Range methods by name (``QuantSpec.observer``); add one with :func:`register_observer` or the
#: entry-point group ``quantgraph.observers``.
def _adapt(name: str, obj: object) -> tuple[str, type[Observer]] | None:
    return (name, obj) if isinstance(obj, type) and issubclass(obj, Observer) else None


REGISTRY: Registry[type[Observer]] = Registry("observer", "quantgraph.observers", _adapt)
REGISTRY.add("minmax", MinMaxObserver)
REGISTRY.add("percentile", PercentileObserver)
REGISTRY.add("mse", MSEObserver)
REGISTRY.add("relative-mse", RelativeMSEObserver)
REGISTRY.add("entropy", EntropyObserver)
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
