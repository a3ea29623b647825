"""Evaluating one ABS candidate on the validation nodes: restore the calibrated state, set the bits,
optionally fine-tune a few epochs (QAT from the FP32 weights and calibrated ranges), score on validation.

The graph module is traced once; a candidate only rewrites the quantizers' bit buffers and reloads the
saved parameters, so nothing is re-traced or re-built per candidate. Only ``train_mask`` and
``val_mask`` are read (the test nodes never are).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from quantgraph.metrics import accuracy


@dataclass
class CandidateEvaluator:
    """Scores bit configurations of one fake-quant graph: ``score(set_bits)`` returns validation accuracy.

    ``forward(x, edge_index)`` gives the logits; ``epochs`` fine-tuning epochs per candidate (0: the
    calibrated ranges as they are), Adam with ``lr`` / ``weight_decay``; the score is the best validation
    accuracy over the epochs (validation selection, as the final QAT does), or after 0 epochs.
    """

    module: nn.Module
    forward: Callable[[Tensor, Tensor], Tensor]
    x: Tensor
    edge_index: Tensor
    y: Tensor
    train_mask: Tensor
    val_mask: Tensor
    epochs: int = 0
    lr: float = 0.005
    weight_decay: float = 5e-4
    seed: int = 0

    def __post_init__(self) -> None:
        self.initial = {k: v.detach().clone() for k, v in self.module.state_dict().items()}

    def restore(self) -> None:
        """Back to the calibrated state (weights and ranges as they were when the evaluator was made)."""
        self.module.load_state_dict(self.initial)

    def _val_acc(self) -> float:
        self.module.eval()
        with torch.no_grad():
            return accuracy(self.forward(self.x, self.edge_index), self.y, self.val_mask)

    def score(self, set_bits: Callable[[], None], epochs: int | None = None) -> float:
        """Validation accuracy after ``set_bits`` and ``epochs`` (default: ``self.epochs``) fine-tuning epochs."""
        epochs = self.epochs if epochs is None else epochs
        self.restore()
        set_bits()
        best = self._val_acc()
        if epochs <= 0:
            return best
        torch.manual_seed(self.seed)
        params = [p for p in self.module.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        for _ in range(epochs):
            self.module.train()
            optimizer.zero_grad()
            logits = self.forward(self.x, self.edge_index)
            F.cross_entropy(logits[self.train_mask], self.y[self.train_mask]).backward()
            optimizer.step()
            best = max(best, self._val_acc())
        return best
