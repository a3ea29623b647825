"""SMP's QLR quantizer (Wang et al., CIKM 2023): a learned range multiplier α per tensor.

Range ``[α·min(x), α·max(x)]`` of the current batch in training (the batch bounds are frozen at evaluation
and export), widened to contain 0; asymmetric with ``qmin = 0``, ``qmax = 2^b − 1`` (stored signed, the
zero point shifted by ``2^(b−1)``: the same grid, so INT8/INT4/INT2 kernels run it).

* Initialisation (first forward): α from a grid ``{step, 2·step, ..., 1}`` (step 0.1 at 2 bits, 0.02 at 4
  and 8 bits) minimising ``mean|x̂ − x|``, then raised by 0.1 when below 0.1 (BT*: below 0.5), as the
  official ``initial_alpha_range``.
* Gradient (:class:`QLRFunction`): straight-through for ``x`` inside the range, 0 where it is clipped; for α
  ``Σ g·[1(x<lo)·min + 1(x>hi)·max + 1(in)·(round(v) − v)·s/α]`` (min/max: the grid's ends ÷ α, i.e. the
  batch bounds up to the zero point's rounding): the official formula with ``v = x/s``
  from the *input* (their backward used the saved dequantized output, where ``round(v) − v = 0``) and the
  in-range term in value units (``∂s/∂α = s/α``), i.e. the exact derivative of ``x̂`` with ``round``'s
  derivative taken as 1. One α per quantizer.
* ``qlr-bt`` (BT) quantizes at 8 bits and keeps ``round(q/85)·85``: 4 levels, a 2-bit grid of step
  ``85·s₈``. ``qlr-sbt`` (BT*) adds ``round(skewness(x))`` (of the initialisation batch) to ``q`` first.
  ``round(round(y)/85) = round(y/85)`` for any ``y`` (85 is odd), so both are one affine 2-bit quantizer
  with scale ``85·s₈``; BT*'s skew is an input offset of ``skew·s₈``. Unlike the official code, the 8-bit
  zero point is snapped to a multiple of 85 so the 2-bit grid has an integer zero point (exportable as
  QDQ; the official grid's zero point ``zp₈/85`` is fractional). ``smp-freeze`` moves BT*'s offset into
  the graph (an ``add`` before the quantizer) so the exported QDQ equals the IR.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from quantgraph.errors import InputError
from quantgraph.ir.qspec import Granularity, QParams, QuantSpec
from quantgraph.ir.quantizer import Quantizer, QuantizerSettings, register_quantizer

BT_LEVELS = 85  # BT's snap: round(q / 85) * 85 turns 256 levels into 4


def grid(bits: int) -> tuple[float, int]:
    """(step, count) of the α initialisation grid: 0.1 × 10 at 2 bits, 0.02 × 50 at 4 and 8 bits."""
    return (0.1, 10) if bits <= 2 else (0.02, 50)


def skewness(x: Tensor) -> float:
    """Fisher–Pearson skewness ``m3 / m2^1.5`` of all values (scipy's ``skew``, biased); 0 for constants."""
    v = x.detach().double().reshape(-1)
    d = v - v.mean()
    m2 = (d * d).mean()
    return 0.0 if float(m2) == 0.0 else float((d**3).mean() / m2**1.5)


def affine(lo: Tensor, hi: Tensor, alpha: Tensor, levels: int, snap: int = 1) -> tuple[Tensor, Tensor]:
    """(scale, unsigned zero point) for ``α·[lo, hi]`` widened to contain 0, ``levels − 1`` steps; ``snap``
    > 1 (BT) makes the step ``snap`` 8-bit steps and the zero point that of the snapped grid."""
    a_lo = torch.minimum(alpha * lo, torch.zeros_like(lo))
    a_hi = torch.maximum(alpha * hi, torch.zeros_like(hi))
    eps = torch.finfo(torch.float32).eps
    fine_levels = (levels - 1) * snap + 1
    fine = torch.clamp((a_hi - a_lo) / float(fine_levels - 1), min=eps)
    zp_fine = torch.clamp(-torch.round(a_lo.detach() / fine.detach()), 0, fine_levels - 1)
    zp = torch.round(zp_fine / snap) if snap > 1 else zp_fine
    return (fine * snap).float(), zp


class QLRFunction(torch.autograd.Function):
    """``x̂ = s·(clamp(round((x + offset)/s) + z, 0, qmax) − z)`` with the QLR gradients (module docs).

    ``scale`` and ``offset`` are proportional to α (given as tensors computed from it without grad);
    ``zero_point`` does not depend on α."""

    @staticmethod
    def forward(
        ctx, x: Tensor, alpha: Tensor, scale: Tensor, zero_point: Tensor, qmax: int, offset: Tensor
    ) -> Tensor:  # noqa: E501
        q = torch.round((x + offset) / scale) + zero_point
        inside = (q >= 0) & (q <= qmax)
        out = (torch.clamp(q, 0, qmax) - zero_point) * scale
        ctx.save_for_backward(x, out, inside, alpha)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, out, inside, alpha = ctx.saved_tensors
        grad_x = grad * inside.to(grad.dtype)
        # clipped: x̂ = α·bound → ∂/∂α = bound; inside: x̂ − x = s·(round(v) − v) (+ BT*'s offset) → /α
        per_value = torch.where(inside, out - x, out) / alpha
        return grad_x, (grad * per_value).sum().reshape(alpha.shape), None, None, None, None


@register_quantizer
class QLRQuantizer(Quantizer):
    """Per-tensor QLR fake quantizer (learned α, batch range frozen at evaluation)."""

    kind = "qlr"
    snap: ClassVar[int] = 1  # BT: 85
    skewed: ClassVar[bool] = False  # BT*: add round(skewness)

    def __init__(self, spec: QuantSpec, lo: Tensor, hi: Tensor) -> None:
        super().__init__()
        self.spec = spec
        self.alpha = nn.Parameter(torch.tensor(1.0))
        self.register_buffer("lo", lo.float().reshape(()).clone())
        self.register_buffer("hi", hi.float().reshape(()).clone())
        self.register_buffer("skew", torch.tensor(0.0))
        self.register_buffer("initialized", torch.tensor(False))

    @classmethod
    def from_spec(cls, spec: QuantSpec, init: QParams | None, settings: QuantizerSettings) -> QLRQuantizer:
        if spec.granularity != Granularity.PER_TENSOR:
            raise InputError(
                f"the {cls.kind} quantizer is per tensor, not {spec.granularity.value}",
                "use per_tensor specs",
            )
        if cls.snap > 1 and spec.bits != 2:
            raise InputError(f"{cls.kind} (BT) is a 2-bit quantizer, not {spec.bits}-bit", "use --bits 2")
        if init is None:
            lo, hi = torch.tensor(0.0), torch.tensor(0.0)
        else:  # calibrated bounds until the first training batch replaces them
            lo = ((init.qmin - init.zero_point) * init.scale).float().min()
            hi = ((init.qmax - init.zero_point) * init.scale).float().max()
        return cls(spec, lo, hi)

    @property
    def levels(self) -> int:
        return 1 << self.spec.bits

    def _params(self, alpha: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        scale, zp = affine(self.lo, self.hi, alpha, self.levels, self.snap)
        offset = self.skew * scale / self.snap  # BT*: skew 8-bit steps
        return scale, zp, offset

    def quantize_with(self, x: Tensor, alpha: float | Tensor) -> Tensor:
        """``x̂`` at a given α (no gradient): what the grid search compares."""
        a = torch.as_tensor(alpha, dtype=torch.float32)
        scale, zp, offset = self._params(a)
        q = torch.clamp(torch.round((x + offset) / scale) + zp, 0, self.levels - 1)
        return (q - zp) * scale

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Grid-search α (mean |x̂ − x|) on ``x``; BT* also fixes its skew here."""
        if self.skewed:
            self.skew.fill_(round(skewness(x)))
        step, count = grid(self.spec.bits)
        best, best_err = 1.0, float("inf")
        for i in range(count):
            a = (i + 1) * step
            err = float((self.quantize_with(x, a) - x).abs().mean())
            if err < best_err:
                best, best_err = a, err
        floor = 0.5 if self.skewed else 0.1
        if best < floor:
            best += 0.1
        self.alpha.fill_(best)
        self.initialized.fill_(True)

    def forward(self, x: Tensor, protect: Tensor | None = None) -> Tensor:
        if self.training:  # the batch range; frozen (the last training batch's) at evaluation
            with torch.no_grad():
                self.lo.copy_(x.detach().min())
                self.hi.copy_(x.detach().max())
        if not bool(self.initialized):
            self.initialize(x.detach())
        with torch.no_grad():
            scale, zp, offset = self._params(self.alpha.detach())
        return QLRFunction.apply(x, self.alpha, scale, zp, self.levels - 1, offset)

    def qparams(self) -> QParams:
        """The frozen grid, stored signed: zero point and bounds shifted by ``2^(b−1)``."""
        scale, zp, offset = (t.detach() for t in self._params(self.alpha.detach()))
        if float(offset) != 0.0:
            raise InputError(
                f"a {self.kind} quantizer still holds its input offset (BT* skew)",
                "run 'smp-freeze' before 'convert-qat' (it moves the offset into the graph)",
            )
        half = self.levels // 2
        return QParams(
            scale=scale.float().reshape(()),
            zero_point=(zp - half).to(torch.int32).reshape(()),
            qmin=torch.tensor(-half, dtype=torch.int32),
            qmax=torch.tensor(half - 1, dtype=torch.int32),
            axis=0,
        )

    def input_offset(self) -> Tensor:
        """BT*'s offset ``skew·s₈`` (0 otherwise) at the current α."""
        return self._params(self.alpha.detach())[2].detach()

    def extra_repr(self) -> str:
        return f"bits={self.spec.bits}, alpha={float(self.alpha):.4f}, snap={self.snap}, skew={float(self.skew):g}"


@register_quantizer
class QLRBTQuantizer(QLRQuantizer):
    """BT: quantize at 8 bits, keep ``round(q/85)·85`` (a 2-bit grid)."""

    kind = "qlr-bt"
    snap = BT_LEVELS


@register_quantizer
class QLRSkewBTQuantizer(QLRQuantizer):
    """BT*: BT after adding ``round(skewness(x))`` to the 8-bit integers."""

    kind = "qlr-sbt"
    snap = BT_LEVELS
    skewed = True
