"""Numbers the report shows: accuracy, argmax agreement, SQNR."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def accuracy(logits: Tensor, y: Tensor | None, mask: Tensor | None = None) -> float | None:
    """Fraction of correct argmax predictions over ``mask`` (all rows when None); None without labels."""
    if y is None:
        return None
    pred = logits.argmax(dim=-1)
    if mask is not None:
        pred, y = pred[mask], y[mask]
    return float((pred == y).float().mean()) if y.numel() else None


def argmax_agreement(a: Tensor, b: Tensor) -> float:
    return float((a.argmax(dim=-1) == b.argmax(dim=-1)).float().mean()) if a.numel() else 1.0


def sqnr_db(reference: Tensor, approx: Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB (inf when identical)."""
    reference, approx = reference.detach().double(), approx.detach().double()
    noise = torch.sum((reference - approx) ** 2).item()
    signal = torch.sum(reference**2).item()
    if noise == 0:
        return math.inf
    ratio = signal / noise
    if not ratio > 0:  # no signal (or it underflowed against the noise)
        return -math.inf
    return 10.0 * math.log10(ratio)
