"""A learned-step-size quantizer (LSQ, Esser et al. 2020) as a plug-in: symmetric, one learned scale."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from quantgraph.ir.qspec import QParams, QuantSpec
from quantgraph.ir.quantizer import Quantizer, QuantizerSettings, register_quantizer


def _round_ste(x: Tensor) -> Tensor:
    return (torch.round(x) - x).detach() + x


@register_quantizer
class LSQQuantizer(Quantizer):
    """``q = clamp(round(x / s), qmin, qmax)``; ``s`` is an ``nn.Parameter`` trained by the task loss."""

    kind = "lsq"

    def __init__(self, spec: QuantSpec, scale: float) -> None:
        super().__init__()
        self.spec = spec
        self.scale = nn.Parameter(torch.tensor(float(scale)))

    @classmethod
    def from_spec(cls, spec: QuantSpec, init: QParams | None, settings: QuantizerSettings) -> LSQQuantizer:
        scale = float(init.scale.float().max()) if init is not None else 1.0
        return cls(spec, scale)

    def forward(self, x: Tensor, protect: Tensor | None = None) -> Tensor:
        s = self.scale.abs() + 1e-8
        grad_scale = 1.0 / (max(x.numel(), 1) * self.spec.qmax) ** 0.5  # LSQ's step-size gradient scale
        s = (s - s * grad_scale).detach() + s * grad_scale
        q = torch.clamp(_round_ste(x / s), self.spec.qmin, self.spec.qmax)
        return q * s

    def qparams(self) -> QParams:
        scale = (self.scale.detach().abs() + 1e-8).reshape(())
        return QParams(
            scale=scale,
            zero_point=torch.zeros((), dtype=torch.int32),
            qmin=torch.tensor(self.spec.qmin, dtype=torch.int32),
            qmax=torch.tensor(self.spec.qmax, dtype=torch.int32),
        )
