"""The quantizer interface and registry: what ``prepare-qat`` inserts, ``convert-qat`` freezes and reports count.

A :class:`Quantizer` is an ``nn.Module`` placed after a quantized IR value. It owns

* its parameters (scale, zero point, bits: fixed, calibrated or learned ``nn.Parameter``\\ s);
* its range method (how it tracks or learns the range while training);
* its forward: the fake-quantized value (``protect`` rows, when given, bypass quantization);
* what it exports: :meth:`qparams` (per tensor, per channel, per node or per group ``QParams``; per-row
  bits are per-row ``qmin``/``qmax``), and :meth:`storage_bits`, the integer bits a backend stores;
* its bit count for reports and BitOPs: :meth:`bit_count` (a float, or a differentiable tensor for a
  learned bitwidth).

Implementations register by name (``register_quantizer``, or the entry-point group
``quantgraph.quantizers``); a :class:`~quantgraph.ir.qspec.QuantSpec` names its implementation in
``spec.quantizer`` and ``prepare-qat`` builds it with :meth:`Quantizer.from_spec`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor, nn

from quantgraph.ir.qspec import QParams, QuantSpec
from quantgraph.registry import Registry


@dataclass(frozen=True)
class QuantizerSettings:
    """Training settings ``prepare-qat`` passes to every quantizer it builds (from declared options)."""

    tail: float = 0.0  # percentile range methods: fraction cut per side (0: min/max)
    momentum: float | None = None  # range tracking: None = running min/max, else EMA momentum
    clip_grad: bool = True  # straight-through gradient zeroed where the value saturated


class Quantizer(nn.Module):
    """Base class of fake quantizers. Subclasses set ``kind`` and implement the four methods below."""

    kind: ClassVar[str] = ""
    spec: QuantSpec

    @classmethod
    def from_spec(cls, spec: QuantSpec, init: QParams | None, settings: QuantizerSettings) -> Quantizer:
        """Build for ``spec``; ``init`` is the calibrated range when ``calibrate`` ran before."""
        raise NotImplementedError

    def forward(self, x: Tensor, protect: Tensor | None = None) -> Tensor:
        raise NotImplementedError

    def qparams(self) -> QParams:
        """The frozen parameters the backends export (called by ``convert-qat``)."""
        raise NotImplementedError

    def bit_count(self) -> float | Tensor:
        """Bits per value for reports and BitOPs (mean over rows/groups when bits vary)."""
        return float(self.spec.bits)

    def storage_bits(self) -> int:
        """The integer bits a backend needs to store this quantizer's values (the widest row)."""
        return int(self.spec.bits)


def _builtin_quantizers() -> None:
    import quantgraph.ir.a2q_quantizer  # noqa: F401
    import quantgraph.ir.fake_quant  # noqa: F401  (registers the built-in quantizers)
    import quantgraph.ir.mixed_fake_quant  # noqa: F401
    import quantgraph.ir.qlr_quantizer  # noqa: F401
    import quantgraph.sgquant.quantizer  # noqa: F401


def _adapt(name: str, obj: object) -> tuple[str, type[Quantizer]] | None:
    if isinstance(obj, type) and issubclass(obj, Quantizer):
        return obj.kind or name, obj
    return None


QUANTIZERS: Registry[type[Quantizer]] = Registry(
    "quantizer", "quantgraph.quantizers", _adapt, _builtin_quantizers
)


def register_quantizer(cls: type[Quantizer]) -> type[Quantizer]:
    """Class decorator: make a quantizer available by its ``kind`` (``QuantSpec(quantizer=kind)``)."""
    if not cls.kind:
        raise ValueError(f"{cls.__name__} needs a non-empty `kind` to be registered")
    return QUANTIZERS.add(cls.kind, cls)


def available_quantizers() -> dict[str, type[Quantizer]]:
    return QUANTIZERS.available()


def get_quantizer(kind: str) -> type[Quantizer]:
    return QUANTIZERS.get(kind)


def is_quantizer(module: nn.Module) -> bool:
    return isinstance(module, Quantizer)
