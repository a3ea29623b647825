"""Differentiable bitwidth choice (MixQ-GNN style): a softmax mixture of fake quantizers.

``MixedPrecisionFakeQuantize`` holds one :class:`FakeQuantize` per candidate bitwidth and learnable logits
``alpha`` (one per candidate, initialised to 0). Its output is ``sum_b softmax(alpha)_b * fq_b(x)`` in
training and in evaluation, so the task loss and a cost on :meth:`expected_bits` both reach ``alpha``.

Ranges: every candidate tracks **its own** range (they all start from the same calibrated range). A
percentile quantizer cuts a wider tail at low bits (Degree-Quant's 0.01 below INT8, 0.001 at INT8), so
sharing one range would give 2-bit candidates an 8-bit clipping point. After the search the chosen
candidate is itself a ready ``FakeQuantize`` with the range it learned.

Logits are used as ``logit_scale * alpha``: the shared Adam optimiser moves every parameter by about
``lr`` per step, so the scale lets the bit choice move ``logit_scale`` times faster than the weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from quantgraph.errors import InputError
from quantgraph.ir.fake_quant import FakeQuantize
from quantgraph.ir.qspec import QParams, QuantSpec, check_bits
from quantgraph.ir.quantizer import Quantizer, QuantizerSettings, register_quantizer

DEFAULT_CANDIDATES = (2, 4, 8)


def check_candidates(bits: Sequence[int]) -> tuple[int, ...]:
    """Sorted, distinct candidate bitwidths, each within the supported range."""
    if isinstance(bits, (str, bytes)) or not bits:
        raise InputError(f"bit candidates {bits!r} are not a list of bitwidths", "give e.g. (2, 4, 8)")
    return tuple(sorted({check_bits(b) for b in bits}))


def argmax_prefer_last(values: Tensor) -> int:
    """Index of the largest value; ties go to the last (candidates ascend, so: the wider bitwidth)."""
    flipped = torch.flip(values.detach(), dims=(0,))
    return values.numel() - 1 - int(torch.argmax(flipped))


@register_quantizer
class MixedPrecisionFakeQuantize(Quantizer):
    """A softmax(alpha)-weighted sum of per-bitwidth fake quantizers; ``protect`` reaches every candidate."""

    kind = "mixq"

    def __init__(
        self,
        spec: QuantSpec,
        init: QParams | None = None,
        *,
        bits: Sequence[int] = DEFAULT_CANDIDATES,
        tails: dict[int, float] | None = None,
        momentum: float | None = None,
        clip_grad: bool = True,
        logit_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.bits = check_candidates(bits)
        if not logit_scale > 0:
            raise InputError(f"logit_scale={logit_scale!r} is invalid", "use a positive scale")
        self.logit_scale = float(logit_scale)
        tails = tails or {}
        self.candidates = nn.ModuleList(
            FakeQuantize(
                spec.with_bits(b), init, tail=tails.get(b, 0.0), momentum=momentum, clip_grad=clip_grad
            )
            for b in self.bits
        )
        self.alpha = nn.Parameter(torch.zeros(len(self.bits)))
        #: True: the mixture weights are constants to autograd (the task loss then trains no logits)
        self.detach_alpha = False

    @classmethod
    def from_fake_quant(
        cls,
        fq: FakeQuantize,
        bits: Sequence[int] = DEFAULT_CANDIDATES,
        *,
        tails: dict[int, float] | None = None,
        logit_scale: float = 1.0,
    ) -> MixedPrecisionFakeQuantize:
        """Candidates with ``fq``'s spec, STE and range statistics (its current range as the start)."""
        mixed = cls(
            fq.spec,
            bits=bits,
            tails=tails,
            momentum=fq.momentum,
            clip_grad=fq.clip_grad,
            logit_scale=logit_scale,
        )
        for cand in mixed.candidates:
            cand.lo.copy_(fq.lo)
            cand.hi.copy_(fq.hi)
            cand.initialized.copy_(fq.initialized)
        return mixed.train(fq.training)

    @classmethod
    def from_spec(
        cls, spec: QuantSpec, init: QParams | None, settings: QuantizerSettings
    ) -> MixedPrecisionFakeQuantize:
        """The default candidates, each a ``fake-quant`` with ``settings`` (the same tail at every bitwidth)."""
        tails = dict.fromkeys(DEFAULT_CANDIDATES, settings.tail)
        return cls(spec, init, tails=tails, momentum=settings.momentum, clip_grad=settings.clip_grad)

    def qparams(self) -> QParams:
        """The chosen candidate's parameters (the search fixes a single bitwidth per point)."""
        return self.candidates[self.chosen_index()].qparams()

    def bit_count(self) -> Tensor:
        return self.expected_bits()

    def storage_bits(self) -> int:
        return self.chosen_bits()

    def probabilities(self) -> Tensor:
        """softmax(logit_scale * alpha), one weight per candidate (differentiable)."""
        alpha = self.alpha.detach() if self.detach_alpha else self.alpha
        return torch.softmax(self.logit_scale * alpha, dim=0)

    def expected_bits(self) -> Tensor:
        """``sum_b softmax(alpha)_b * b`` (always differentiable in ``alpha``)."""
        probs = torch.softmax(self.logit_scale * self.alpha, dim=0)
        return (probs * torch.tensor(self.bits, dtype=torch.float32)).sum()

    def chosen_index(self) -> int:
        """Index of the most likely candidate; ties go to the wider bitwidth (zero logits: the widest)."""
        return argmax_prefer_last(self.alpha)

    def chosen_bits(self) -> int:
        return self.bits[self.chosen_index()]

    def candidate(self, bits: int) -> FakeQuantize:
        """The fake quantizer of one candidate bitwidth."""
        if bits not in self.bits:
            raise InputError(f"{bits} bits is not a candidate", f"choose one of {self.bits}")
        return self.candidates[self.bits.index(bits)]

    def forward(self, x: Tensor, protect: Tensor | None = None) -> Tensor:
        """Mixture of the candidates' fake-quantized ``x`` (protected rows pass through each candidate)."""
        weights = self.probabilities().to(x.dtype)
        out = weights[0] * self.candidates[0](x, protect)
        for w, cand in zip(weights[1:], self.candidates[1:], strict=True):
            out = out + w * cand(x, protect)
        return out

    def extra_repr(self) -> str:
        return f"bits={self.bits}, logit_scale={self.logit_scale}"
