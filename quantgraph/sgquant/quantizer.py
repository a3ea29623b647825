"""SGQuant's quantizer: asymmetric uniform, one range per tensor or per degree bucket, bits per bucket.

The value grid is ``scale * (q - zero_point)`` for ``2**bits`` integers ``q``, the range ``[lo, hi]``
widened to contain 0 (so integer backends keep an exact zero). This is the grid of SGQuant's unsigned
quantizer; values are stored signed (``[-2**(b-1), 2**(b-1) - 1]`` with the zero point shifted), which
gives the same grid and lets INT8/INT4 kernels run it. One bit has no signed form: ``{0, 1}``, unsigned.

Ranges start from calibration and are learned in fine-tuning (``lo``/``hi`` are parameters; the
gradient reaches them through the scale, as in LSQ, and the input gets a straight-through gradient that
is zero where the value saturated). Bits live in a buffer (one entry per group) that the bit selection
sets; ``FP32_BITS`` means "not quantized" (the pass removes such quantizers before export).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from quantgraph.errors import InputError
from quantgraph.ir.qspec import Granularity, QParams, QuantSpec
from quantgraph.ir.quantizer import Quantizer, QuantizerSettings, register_quantizer

FP32_BITS = 32


def integer_range(bits: Tensor) -> tuple[Tensor, Tensor]:
    """``(qmin, qmax)`` per entry of ``bits``: signed ``2**bits`` levels, ``{0, 1}`` for one bit."""
    bits = bits.to(torch.int64)
    half = torch.pow(2, (bits - 1).clamp(min=0))
    qmin = torch.where(bits == 1, torch.zeros_like(bits), -half)
    qmax = torch.where(bits == 1, torch.ones_like(bits), half - 1)
    return qmin, qmax


def affine_params(lo: Tensor, hi: Tensor, qmin: Tensor, qmax: Tensor) -> tuple[Tensor, Tensor]:
    """Scale (differentiable in ``lo``/``hi``) and integer zero point, as :meth:`QParams.from_range`."""
    lo = torch.minimum(lo, torch.zeros_like(lo))
    hi = torch.maximum(hi, torch.zeros_like(hi))
    eps = torch.finfo(torch.float32).eps
    scale = torch.clamp((hi - lo) / (qmax - qmin).float(), min=eps)
    zp = torch.clamp(qmin - torch.round(lo.detach() / scale.detach()), qmin, qmax)
    return scale, zp


class _RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad


def _same(a: Tensor | None, b: Tensor | None) -> bool:
    return a is b or (a is not None and b is not None and a.shape == b.shape and bool(torch.equal(a, b)))


def _rows(t: Tensor, x: Tensor) -> Tensor:
    """A per-row parameter shaped to broadcast against ``x`` (rows first)."""
    return t.view(-1, *([1] * (x.dim() - 1)))


@register_quantizer
class SGQuantizer(Quantizer):
    """Asymmetric fake quantizer with learned ``[lo, hi]`` and bits per group (SGQuant's granularities)."""

    kind = "sgquant"
    #: ``prepare-qat`` wires the spec's group index into ``forward(x, groups=...)``
    takes_groups: ClassVar[bool] = True

    def __init__(self, spec: QuantSpec, lo: Tensor, hi: Tensor) -> None:
        super().__init__()
        self.spec = spec
        self.lo = nn.Parameter(lo.float().clone())
        self.hi = nn.Parameter(hi.float().clone())
        self.register_buffer("bits", torch.full(lo.shape, int(spec.bits), dtype=torch.int64))
        self.register_buffer("initialized", torch.tensor(True))
        self._cache: tuple[tuple, tuple[Tensor, ...], Tensor] | None = None

    def freeze_range(self) -> None:
        """Keep the calibrated range (no learning): for constant data such as the input features, whose
        fake-quantized value is then computed once per (data, bits, range) and reused."""
        self.lo.requires_grad_(False)
        self.hi.requires_grad_(False)

    def _cache_key(self, x: Tensor, groups: Tensor | None) -> tuple | None:
        """Versions of what the output depends on (None: not cacheable, the range learns or x has a grad)."""
        if self.lo.requires_grad or self.hi.requires_grad or x.requires_grad:
            return None
        return tuple(
            t._version for t in (x, self.bits, self.lo, self.hi, *([groups] if groups is not None else []))
        )

    @property
    def grouped(self) -> bool:
        return self.spec.granularity == Granularity.PER_GROUP

    @classmethod
    def from_spec(cls, spec: QuantSpec, init: QParams | None, settings: QuantizerSettings) -> SGQuantizer:
        if spec.granularity not in (Granularity.PER_TENSOR, Granularity.PER_GROUP):
            raise InputError(
                f"the sgquant quantizer is per tensor or per group, not {spec.granularity.value}",
                "use per_tensor or per_group specs",
            )
        if init is None:
            raise InputError("the sgquant quantizer starts from calibrated ranges", "run 'calibrate' first")
        lo = ((init.qmin - init.zero_point) * init.scale).float()
        hi = ((init.qmax - init.zero_point) * init.scale).float()
        if spec.granularity == Granularity.PER_TENSOR:
            lo, hi = lo.min().reshape(()), hi.max().reshape(())
        return cls(spec, lo, hi)

    def set_bits(self, bits: Tensor | list[int] | int) -> None:
        """Bits per group (or one value for all); ``FP32_BITS`` leaves the value unquantized."""
        value = torch.as_tensor(bits, dtype=torch.int64).expand(self.bits.shape)
        quantized = value[value != FP32_BITS]
        if bool(((quantized < 1) | (quantized > 8)).any()):
            raise InputError(
                f"bits {value.tolist()} are outside 1-8 (or 32)", "choose bits from 1 to 8, or 32"
            )
        if bool((value == FP32_BITS).any()) and not bool((value == FP32_BITS).all()):
            raise InputError(
                "some degree buckets of one tensor are FP32 and others quantized",
                "give every bucket of a tensor 1-8 bits, or all of them 32",
            )
        self.bits.copy_(value)

    @property
    def bypassed(self) -> bool:
        return bool((self.bits == FP32_BITS).all())

    def _params(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        qmin, qmax = integer_range(self.bits)
        scale, zp = affine_params(self.lo, self.hi, qmin, qmax)
        return scale, zp, qmin, qmax

    def forward(self, x: Tensor, protect: Tensor | None = None, groups: Tensor | None = None) -> Tensor:
        if self.bypassed:
            return x
        key = self._cache_key(x, groups)
        if key is not None and self._cache is not None:  # same tensors (identity), unchanged since
            old_key, tensors, out = self._cache
            if old_key == key and tensors[0] is x and _same(tensors[1], groups):
                return out
        out = self._fake_quant(x, groups)
        self._cache = None if key is None else (key, (x, groups), out.detach())
        return out

    def _fake_quant(self, x: Tensor, groups: Tensor | None) -> Tensor:
        scale, zp, qmin, qmax = self._params()
        if self.grouped:
            if groups is None:
                raise InputError("a per-group sgquant quantizer got no group index", "wire the bucket index")
            scale, zp, qmin, qmax = (_rows(t[groups], x) for t in (scale, zp, qmin, qmax))
        q = _RoundSTE.apply(x / scale) + zp
        inside = (q >= qmin) & (q <= qmax)
        q = torch.where(inside, q, torch.clamp(q, qmin, qmax).detach())
        return (q - zp) * scale

    def qparams(self) -> QParams:
        scale, zp, qmin, qmax = (t.detach() for t in self._params())
        return QParams(
            scale=scale.float(),
            zero_point=zp.to(torch.int32),
            qmin=qmin.to(torch.int32),
            qmax=qmax.to(torch.int32),
            axis=0,
        )

    def bit_count(self) -> float:
        return float(self.bits.float().mean())

    def storage_bits(self) -> int:
        return int(self.bits.max())

    def extra_repr(self) -> str:
        return f"bits={self.bits.tolist()}, grouped={self.grouped}"
