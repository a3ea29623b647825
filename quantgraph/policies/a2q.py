"""The ``a2q`` policy: A²Q (Zhu et al., ICLR 2023), learned per-node bitwidths, as a pipeline of passes.

``a2q-annotate`` marks the node features entering each layer (per node, or NNS groups with
``a2q_nns=true``), the weights and the linear outputs; ``calibrate`` gives the initial ranges;
``prepare-qat`` inserts the A²Q quantizers; ``a2q-train`` trains them with Local Gradient and the memory
budget; ``a2q-freeze-nns`` and ``convert-qat`` freeze them into quantize/dequantize with per-row (or
gathered per-group) scales and ``qmin``/``qmax``. Defaults: the official README's GCN-Cora learning rates,
but the FP32 recipe's weight decay (5e-4): the official 0.02 trains from scratch, and on our validation-selected
FP32 GCN it wrecked the fine-tuning (Cora seed 0, 40 epochs: validation 0.79 -> 0.28; 5e-4: 0.80).
"""

from __future__ import annotations

from quantgraph.policies.base import GRAPH_PASSES, Policy, register_policy

A2Q_PASSES = (
    *GRAPH_PASSES,
    "dropout-to-module",
    "a2q-annotate",
    "calibrate",
    "prepare-qat",
    "a2q-train",
    "a2q-freeze-nns",
    "convert-qat",
)

A2Q = register_policy(
    Policy(
        name="a2q",
        description="A²Q: learned per-node bits (Local Gradient, memory budget; a2q_nns=true for any graph)",
        pipeline=A2Q_PASSES,
        default_bits=4,
        defaults={"trace_training": True, "epochs": 200, "lr": 0.01, "weight_decay": 5e-4},
    )
)

A2Q_NNS = register_policy(
    Policy(
        name="a2q-nns",
        description="A²Q with the Nearest-Neighbour Strategy: learned (scale, bits) groups chosen per node",
        pipeline=A2Q_PASSES,
        default_bits=4,
        defaults={"trace_training": True, "epochs": 200, "lr": 0.01, "weight_decay": 5e-4, "a2q_nns": True},
    )
)
