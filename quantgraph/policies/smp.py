"""The ``smp`` policy: SMP (Wang et al., CIKM 2023), QLR-quantized deep propagation at INT8/INT4/INT2.

``smp-annotate`` marks SMP's points with QLR quantizers (``--option smp_bt=bt|bt*`` for the INT2 variants),
``calibrate`` gives their first range, ``prepare-qat`` inserts them, ``smp-train`` trains with the official
recipe, ``smp-freeze`` records the per-step multipliers (and BT*'s offsets) as constants and
``convert-qat`` freezes the quantizers into quantize/dequantize. Meant for the ``smp``/``appnp`` zoo models.
"""

from __future__ import annotations

from quantgraph.policies.base import GRAPH_PASSES, Policy, register_policy

SMP_PASSES = (
    *GRAPH_PASSES,
    "dropout-to-module",
    "smp-annotate",
    "calibrate",
    "prepare-qat",
    "smp-train",
    "smp-freeze",
    "convert-qat",
)

SMP = register_policy(
    Policy(
        name="smp",
        description="SMP: QLR learned-range quantizers at every stage (INT8/4/2; smp_bt=bt|bt* at INT2), QAT",
        pipeline=SMP_PASSES,
        default_bits=2,
        defaults={"trace_training": True, "epochs": 200, "lr": 0.01, "weight_decay": 1e-5},
    )
)
