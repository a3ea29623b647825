"""Trainable fake quantization for QAT (Degree-Quant style): an ``nn.Module`` the QAT passes insert.

Forward: ``dequantize(quantize(x))`` with the current range (affine, always containing 0). While
training, the range tracks each batch's percentile (or min/max) range, combined across batches by
running min/max or by an EMA; rows that a protective mask marks stay FP32 and do not update the
range. Backward: straight-through; in the "GC" variant (default) the gradient is zeroed where the
value saturated. A ``PER_GROUP`` spec (the ``degree-buckets`` pass) keeps one range per group (in-degree
bucket): each batch's range is taken over the rows of that group only.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from quantgraph.errors import InputError
from quantgraph.ir.qspec import Granularity, QParams, QuantSpec
from quantgraph.ir.quantizer import Quantizer, QuantizerSettings, register_quantizer

#: Percentiles are estimated on at most this many values (a deterministic strided sample).
PERCENTILE_SAMPLE = 1 << 20


def strided_sample(flat: Tensor, limit: int = PERCENTILE_SAMPLE) -> Tensor:
    """Every k-th value so that at most ``limit`` remain (deterministic; keeps percentile estimates cheap)."""
    return flat if flat.numel() <= limit else flat[:: -(-flat.numel() // limit)]


class _RoundSTE(torch.autograd.Function):
    """Fake-quantize with a straight-through gradient, optionally zeroed outside [lo, hi]."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: Tensor, zp: Tensor, qmin: int, qmax: int, clip_grad: bool) -> Tensor:
        q = torch.clamp(torch.round(x / scale) + zp, qmin, qmax)
        if clip_grad:
            lo, hi = (qmin - zp) * scale, (qmax - zp) * scale
            ctx.save_for_backward((x >= lo) & (x <= hi))
        ctx.clip_grad = clip_grad
        return (q - zp) * scale

    @staticmethod
    def backward(ctx, grad: Tensor):
        if ctx.clip_grad:
            (inside,) = ctx.saved_tensors
            grad = grad * inside
        return grad, None, None, None, None, None


@register_quantizer
class FakeQuantize(Quantizer):
    """Affine fake quantizer with percentile/min-max range tracking and mask bypass.

    The built-in ``fake-quant`` quantizer: min/max ranges (``tail`` 0) or percentile ranges (Degree-Quant).
    Per tensor, or per channel along ``spec.axis`` when the spec says so (weights, as PyTorch's
    ``FakeQuantize`` with a per-channel observer): the range then holds one entry per channel.
    """

    kind = "fake-quant"
    #: ``prepare-qat`` wires a per-group spec's group index into ``forward(x, groups=...)``
    takes_groups: ClassVar[bool] = True

    def __init__(
        self,
        spec: QuantSpec,
        init: QParams | None = None,
        *,
        tail: float = 0.0,
        momentum: float | None = None,
        clip_grad: bool = True,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.tail = float(tail)
        self.momentum = momentum  # None: running min/max; else EMA with this momentum
        self.clip_grad = clip_grad
        self.per_channel = spec.granularity == Granularity.PER_CHANNEL
        self.grouped = spec.granularity == Granularity.PER_GROUP
        if self.grouped and not spec.num_groups:
            raise InputError("a per-group fake-quant spec has no group count", "set num_groups in the spec")
        shape = (int(spec.num_groups),) if self.grouped else ()
        lo, hi = (torch.zeros(shape), torch.zeros(shape))
        if init is not None:  # recover the range the calibration chose
            lo = ((init.qmin - init.zero_point) * init.scale).float()
            hi = ((init.qmax - init.zero_point) * init.scale).float()
            if not self.per_channel and not self.grouped:
                lo, hi = lo.min().reshape(()), hi.max().reshape(())
        self.register_buffer("lo", lo)
        self.register_buffer("hi", hi)
        self.register_buffer("initialized", torch.tensor(init is not None))
        # per group: which groups have a range yet (all of them when calibration gave one)
        self.register_buffer("group_seen", torch.full(shape, init is not None, dtype=torch.bool))

    @classmethod
    def from_spec(cls, spec: QuantSpec, init: QParams | None, settings: QuantizerSettings) -> FakeQuantize:
        return cls(spec, init, tail=settings.tail, momentum=settings.momentum, clip_grad=settings.clip_grad)

    def _channel_rows(self, x: Tensor) -> Tensor:
        """``x`` as one row per channel (along ``spec.axis``)."""
        return x.detach().float().movedim(self.spec.axis % x.dim(), 0).reshape(x.shape[self.spec.axis], -1)

    def _channel_range(self, x: Tensor) -> tuple[Tensor, Tensor]:
        rows = self._channel_rows(x)
        rows = torch.where(torch.isfinite(rows), rows, torch.zeros_like(rows))
        if self.tail > 0 and rows.shape[1] > 1:
            return torch.quantile(rows, self.tail, dim=1), torch.quantile(rows, 1.0 - self.tail, dim=1)
        return rows.amin(dim=1), rows.amax(dim=1)

    def _batch_range(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.per_channel:
            return self._channel_range(x)
        return self._tensor_range(x)

    def _tensor_range(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """One range over all of ``x``: percentile (``tail`` > 0) or min/max, ignoring non-finite values."""
        flat = x.detach().flatten().float()
        flat = flat[torch.isfinite(flat)]  # a diverging step (e.g. x / 0) must not poison the range
        if self.tail > 0 and flat.numel() > 1:
            flat = strided_sample(flat)
            k_lo = max(1, int(self.tail * flat.numel()))
            k_hi = max(1, flat.numel() - k_lo + 1)
            return flat.kthvalue(k_lo).values, flat.kthvalue(k_hi).values
        if flat.numel() == 0:
            return flat, flat
        return flat.min(), flat.max()

    def _group_range(self, x: Tensor, groups: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per group: the batch range of that group's rows, and which groups had rows."""
        lo, hi = self.lo.clone(), self.hi.clone()
        present = torch.zeros_like(self.group_seen)
        for group in torch.unique(groups).tolist():
            g_lo, g_hi = self._tensor_range(x[groups == group])
            if g_lo.numel() and bool(torch.isfinite(g_lo) & torch.isfinite(g_hi)):
                lo[group], hi[group], present[group] = g_lo, g_hi, True
        return lo, hi, present

    def _observe_groups(self, x: Tensor, groups: Tensor) -> None:
        lo, hi, present = self._group_range(x, groups)
        fresh, seen = present & ~self.group_seen, present & self.group_seen
        merged_lo, merged_hi = self._merged(lo, hi)
        self.lo.copy_(torch.where(fresh, lo, torch.where(seen, merged_lo, self.lo)))
        self.hi.copy_(torch.where(fresh, hi, torch.where(seen, merged_hi, self.hi)))
        self.group_seen |= present
        self.initialized.fill_(bool(self.group_seen.any()))

    def _merged(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        """The tracked range combined with a batch's: running min/max, or an EMA with ``momentum``."""
        if self.momentum is None:
            return torch.minimum(self.lo, lo), torch.maximum(self.hi, hi)
        keep = 1 - self.momentum
        return self.lo * keep + self.momentum * lo, self.hi * keep + self.momentum * hi

    def _observe(self, x: Tensor, groups: Tensor | None = None) -> None:
        if x.numel() == 0:
            return
        if self.grouped:
            self._observe_groups(x, self._require_groups(groups))
            return
        lo, hi = self._batch_range(x)
        if lo.numel() == 0 or not bool((torch.isfinite(lo) & torch.isfinite(hi)).all()):
            return
        if not bool(self.initialized):
            self.lo = lo.clone()  # a per-channel range replaces the 0-d placeholder
            self.hi = hi.clone()
            self.initialized.fill_(True)
        else:
            merged_lo, merged_hi = self._merged(lo, hi)
            self.lo.copy_(merged_lo)
            self.hi.copy_(merged_hi)

    def qparams(self) -> QParams:
        return QParams.from_range(self.lo.clone(), self.hi.clone(), self.spec)

    def _require_groups(self, groups: Tensor | None) -> Tensor:
        if groups is None:
            raise InputError(
                "a per-group fake-quant quantizer got no group index", "run 'prepare-qat' to wire the groups"
            )
        return groups

    def forward(self, x: Tensor, protect: Tensor | None = None, groups: Tensor | None = None) -> Tensor:
        """Fake-quantize ``x``; in training, rows with ``protect[row]`` True bypass quantization.

        ``groups`` (per-group specs only): each row's group, which picks its range."""
        protect = protect if self.training else None
        if self.training:
            if protect is None:
                self._observe(x, groups)
            else:
                self._observe(x[~protect], None if groups is None else groups[~protect])
        qp = self.qparams()
        scale, zp = qp.scale, qp.zero_point.float()
        if self.grouped:  # each row takes its group's parameters
            index = self._require_groups(groups)
            shape = [-1] + [1] * (x.dim() - 1)
            scale, zp = scale[index].view(shape), zp[index].view(shape)
        elif self.per_channel and scale.dim() == 1:  # broadcast one entry per channel along the axis
            shape = [1] * x.dim()
            shape[self.spec.axis % x.dim()] = -1
            scale, zp = scale.view(shape), zp.view(shape)
        out = _RoundSTE.apply(x, scale, zp, self.spec.qmin, self.spec.qmax, self.clip_grad)
        if protect is None:
            return out
        keep = protect.view(-1, *([1] * (x.dim() - 1)))
        return torch.where(keep, x, out)

    def extra_repr(self) -> str:
        return (
            f"bits={self.spec.bits}, per_channel={self.per_channel}, grouped={self.grouped}, tail={self.tail}, "
            f"momentum={self.momentum}, clip_grad={self.clip_grad}"
        )
