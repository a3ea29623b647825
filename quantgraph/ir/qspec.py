"""Quantization specs (what to quantize and how) and parameters (the numbers a calibration chose)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum

import torch
from torch import Tensor

from quantgraph.errors import InputError

MIN_BITS, MAX_BITS = 2, 8


class Granularity(StrEnum):
    """How many quantization parameter sets a tensor has."""

    PER_TENSOR = "per_tensor"
    PER_CHANNEL = "per_channel"  # one set per index of ``axis`` (weights: output channels)
    PER_NODE = "per_node"  # one set per row (node); needs a fixed node count
    PER_GROUP = "per_group"  # rows pick a set through a group index tensor (e.g. a degree bucket)


def default_percentile_tail(bits: int) -> float:
    """Degree-Quant's percentile tails (fraction cut per side): 0.001 at INT8, 0.01 below."""
    return 0.001 if bits >= 8 else 0.01


def check_bits(bits: int) -> int:
    """Validate a bitwidth against the supported range."""
    if not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise InputError(
            f"bits={bits} is outside the supported range",
            f"choose an integer bitwidth from {MIN_BITS} to {MAX_BITS} (e.g. --bits 8)",
        )
    return bits


@dataclass(frozen=True)
class QuantSpec:
    """How one IR value is quantized; stored in ``node.meta[QSPEC_KEY]`` by an annotation pass."""

    bits: int = 8
    signed: bool = True
    symmetric: bool = False
    granularity: Granularity = Granularity.PER_TENSOR
    axis: int = 0
    observer: str = "minmax"  # range method: a registered observer (quantgraph.passes.observers)
    observer_args: tuple[tuple[str, float], ...] = field(default_factory=tuple)
    group_index: str | None = None  # PER_GROUP: name of the IR node holding each row's group id
    num_groups: int | None = None
    quantizer: str = "fake-quant"  # the registered Quantizer prepare-qat builds (quantgraph.ir.quantizer)

    def __post_init__(self) -> None:
        if not (self.bits == 1 and not self.signed):  # 1-bit values are unsigned {0, 1} (post-ReLU)
            check_bits(self.bits)
        object.__setattr__(self, "granularity", Granularity(self.granularity))

    @property
    def qmin(self) -> int:
        return -(1 << (self.bits - 1)) if self.signed else 0

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1

    def with_bits(self, bits: int) -> QuantSpec:
        return replace(self, bits=bits)

    def to_json(self) -> dict:
        d = asdict(self)
        d["granularity"] = self.granularity.value
        d["observer_args"] = dict(self.observer_args)
        return d


@dataclass
class QParams:
    """Calibrated parameters of one quantized value; stored in ``node.meta[QPARAMS_KEY]``.

    ``scale``/``zero_point``/``qmin``/``qmax`` are 0-d tensors (per tensor) or 1-d along ``axis``.
    """

    scale: Tensor
    zero_point: Tensor
    qmin: Tensor
    qmax: Tensor
    axis: int = 0

    @classmethod
    def from_range(cls, lo: Tensor, hi: Tensor, spec: QuantSpec) -> QParams:
        """Parameters covering [lo, hi] (always widened to contain 0), as PyTorch's observers do."""
        lo = torch.minimum(lo.float(), torch.zeros_like(lo, dtype=torch.float32))
        hi = torch.maximum(hi.float(), torch.zeros_like(hi, dtype=torch.float32))
        qmin, qmax = spec.qmin, spec.qmax
        eps = torch.finfo(torch.float32).eps
        if spec.symmetric:
            bound = torch.maximum(-lo, hi)
            # signed: [-qmax, qmax] keeps zero exact; unsigned symmetric means [0, hi]
            denom = float(qmax) if spec.signed else float(qmax - qmin)
            scale = torch.clamp(bound / denom, min=eps)
            zp = torch.zeros_like(scale, dtype=torch.int32)
        else:
            scale = torch.clamp((hi - lo) / float(qmax - qmin), min=eps)
            zp = torch.clamp(qmin - torch.round(lo / scale), qmin, qmax).to(torch.int32)
        shape = scale.shape
        return cls(
            scale=scale.to(torch.float32),
            zero_point=zp,
            qmin=torch.full(shape, qmin, dtype=torch.int32),
            qmax=torch.full(shape, qmax, dtype=torch.int32),
            axis=spec.axis,
        )

    def check(self, tensor: str) -> QParams:
        """InputError naming ``tensor`` if a scale is not a finite positive float32 or a zero point leaves
        ``[qmin, qmax]`` (a range that overflows float32, or NaN from non-finite values); else ``self``."""
        scale = self.scale.detach().double()
        bad = ~torch.isfinite(scale) | (scale <= 0) | (scale > torch.finfo(torch.float32).max)
        if bool(bad.any()):
            worst = float(scale[bad].reshape(-1)[0])
            raise InputError(
                f"tensor {tensor!r} cannot be quantized: its range gives scale {worst:g} (the values it saw "
                "overflow float32 or are not finite), so every quantized value would be wrong",
                "scale the input features to a moderate range (e.g. normalise them), or keep this tensor in "
                "float with --skip-roles",
            )
        zp, lo, hi = self.zero_point.long(), self.qmin.long(), self.qmax.long()
        if bool(((zp < lo) | (zp > hi)).any()):
            raise InputError(
                f"tensor {tensor!r} has a zero point outside its integer range [{int(lo.min())}, {int(hi.max())}]",
                "calibrate again (its range must contain 0)",
            )
        return self

    def to_json(self) -> dict:
        def short(t: Tensor) -> float | list[float]:
            return t.item() if t.dim() == 0 else [round(v, 8) for v in t.tolist()]

        return {"scale": short(self.scale), "zero_point": short(self.zero_point), "axis": self.axis}
