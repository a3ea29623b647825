"""The IR marker of SMP's Lagrange multiplier (``quantgraph::smp_multiplier``).

The smoothness-aware propagation of the ``smp`` zoo model computes, at each step k, the coefficient
``2·η_H·λ_k`` of its constraint term from the data (λ and s start at 0.001 in every forward and are updated
step by step, as the differential multiplier method does). The model passes that coefficient through this
identity op so the IR can find it: ``smp-freeze`` records its value on the compile graph and replaces the
marker, and the reductions that computed it, by a constant. No backend sees the marker.
"""

from __future__ import annotations

import torch
from torch import Tensor


@torch.library.custom_op("quantgraph::smp_multiplier", mutates_args=())
def smp_multiplier(coefficient: Tensor) -> Tensor:
    """Identity on the step's ``2·η_H·λ`` (a 0-d tensor); its gradient is zero."""
    return coefficient.clone()


@smp_multiplier.register_fake
def _(coefficient: Tensor) -> Tensor:
    return torch.empty_like(coefficient)


def _no_gradient(ctx, grad: Tensor) -> Tensor:
    """The multiplier is state, not learned: no gradient reaches what computed it (a detach that survives
    canonicalisation, which removes ``detach`` ops)."""
    return torch.zeros_like(grad)


smp_multiplier.register_autograd(_no_gradient)

SMP_MULTIPLIER = torch.ops.quantgraph.smp_multiplier.default
