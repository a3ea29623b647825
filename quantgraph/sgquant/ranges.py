"""Range initialisation per bitwidth: the clipping range that minimises the quantization MSE at each bits.

Calibrated min/max ranges suit 8 bits; at 1-2 bits one outlier leaves most values in one level (GCN's
layer-0 messages at 1 bit: every candidate scored 12-16 % on Cora's validation nodes). For each SGQuant
point (and degree bucket) and each candidate bitwidth, the range ``alpha * [min, max]`` with the lowest
mean squared error over the calibration graph's values is kept (``alpha`` on a grid in (0, 1]). ABS sets
a candidate's ranges from this table with its bits, and the chosen configuration starts fine-tuning from
it. Ranges that are frozen (the input features) keep their calibrated min/max, and so do points at more
than ``MSE_MAX_BITS`` bits: min/max is close to optimal there (8 bits: 255 levels), and on GAT's softmax
coefficients a clipped 8-bit range put values within float rounding of a level boundary, where
onnxruntime's softmax and the IR's differ by one integer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, fx

from quantgraph.sgquant.quantizer import FP32_BITS, SGQuantizer, affine_params, integer_range

ALPHAS = tuple(1.0 - 0.98 * i / 39 for i in range(40))  # 1.0 down to 0.02
MSE_MAX_BITS = 4  # bits up to which the MSE range replaces the calibrated min/max
MAX_VALUES = 200_000  # values per tensor (or bucket) the MSE is computed on (an even subsample)


def record_values(
    gm: fx.GraphModule, quantizers: Mapping[str, tuple[fx.Node, SGQuantizer]], inputs: Sequence[Tensor]
) -> dict[str, tuple[Tensor, Tensor | None]]:
    """Each quantizer's FP32 input (and group index) on ``inputs``, with every quantizer bypassed."""
    seen: dict[str, tuple[Tensor, Tensor | None]] = {}
    saved = {name: module.bits.clone() for name, (_n, module) in quantizers.items()}
    hooks = []
    for name, (_node, module) in quantizers.items():
        module.bits.fill_(FP32_BITS)

        def hook(mod, args, kwargs, _name=name):
            groups = kwargs.get("groups")
            seen[_name] = (args[0].detach(), None if groups is None else groups.detach())

        hooks.append(module.register_forward_pre_hook(hook, with_kwargs=True))
    was_training = gm.training
    gm.eval()
    try:
        with torch.no_grad():
            gm(*inputs)
    finally:
        gm.train(was_training)
        for h in hooks:
            h.remove()
        for name, (_n, module) in quantizers.items():
            module.bits.copy_(saved[name])
    return seen


def _subsample(v: Tensor) -> Tensor:
    v = v.reshape(-1).float()
    if v.numel() > MAX_VALUES:
        v = v[:: (v.numel() + MAX_VALUES - 1) // MAX_VALUES]
    return v


def mse_range(values: Tensor, bits: int) -> tuple[float, float]:
    """``(lo, hi)`` among ``alpha * [min(v, 0), max(v, 0)]`` with the least quantization MSE at ``bits``."""
    v = _subsample(values)
    if v.numel() == 0:
        return 0.0, 0.0
    lo0, hi0 = min(float(v.min()), 0.0), max(float(v.max()), 0.0)
    b = torch.tensor(bits)
    qmin, qmax = integer_range(b)
    best, best_err = (lo0, hi0), float("inf")
    for alpha in ALPHAS:
        lo, hi = torch.tensor(alpha * lo0), torch.tensor(alpha * hi0)
        scale, zp = affine_params(lo, hi, qmin, qmax)
        q = torch.clamp(torch.round(v / scale) + zp, qmin, qmax)
        err = float(((q - zp) * scale - v).pow(2).mean())
        if err < best_err:
            best, best_err = (float(lo), float(hi)), err
    return best


class RangeTable:
    """MSE-optimal ``(lo, hi)`` per quantizer, bitwidth and group, computed lazily and cached."""

    def __init__(self, values: Mapping[str, tuple[Tensor, Tensor | None]]) -> None:
        self.values = values
        self._table: dict[tuple[str, int, int | None], tuple[float, float]] = {}

    def get(self, name: str, bits: int, group: int | None = None) -> tuple[float, float]:
        key = (name, bits, group)
        if key not in self._table:
            v, index = self.values[name]
            if group is not None and index is not None:
                v = v[index.reshape(-1) == group]
            self._table[key] = mse_range(v, bits)
        return self._table[key]

    def apply(self, name: str, module: SGQuantizer) -> None:
        """Set ``module``'s range for its current bits (per group when grouped); frozen ranges stay."""
        if name not in self.values or module.bypassed or not module.lo.requires_grad:
            return
        with torch.no_grad():
            if module.grouped:
                for g, b in enumerate(module.bits.tolist()):
                    if b > MSE_MAX_BITS:
                        continue
                    lo, hi = self.get(name, int(b), g)
                    if lo != hi:  # an empty bucket keeps its calibrated range
                        module.lo[g], module.hi[g] = lo, hi
            elif int(module.bits) <= MSE_MAX_BITS:
                lo, hi = self.get(name, int(module.bits))
                module.lo.fill_(lo)
                module.hi.fill_(hi)
